#!/bin/sh
# Builds the signed update bundle pispeaker-<VERSION>-<ARCH>.raucb (RAUC verity format) from a
# root file system image.
#
#   sh image/rauc/make-bundle.sh ROOTFS_IMAGE VERSION OUT_DIR [--key KEY.pem --cert CERT.pem] [--arch armhf|arm64]
#
# The architecture (default armhf) is in the bundle's name and its compatible string,
# pispeaker-<ARCH>, which the image's system.conf must carry: RAUC refuses an arm64 bundle on an
# armhf speaker and the other way round.
#
# Without --key/--cert it signs with the development key pair in image/keys/ (made on first
# use, git-ignored) and says so: a speaker flashed with an image trusting that certificate
# installs only bundles from this checkout. Release builds pass their own key and certificate.
# (PISPEAKER_KEYS_DIR moves the development keys elsewhere, PISPEAKER_BUNDLE_FORMAT=plain makes
# RAUC's plain format for a host without device-mapper: the tests use them.)
#
# The bundle carries pispeaker-bundle-hook as its slot post-install hook: after RAUC writes the
# root file system into the other slot, it puts that root's kernel, initramfs, device trees and
# overlays, and a cmdline.txt, into the slot's directory on the boot partition.
set -eu

die() { echo "make-bundle: error: $*" >&2; exit 1; }
usage="usage: make-bundle.sh ROOTFS_IMAGE VERSION OUT_DIR [--key KEY.pem --cert CERT.pem] [--arch armhf|arm64]"

[ $# -ge 3 ] || die "$usage"
rootfs=$1 version=$2 out=$3
shift 3
key="" cert="" arch=armhf
while [ $# -gt 0 ]; do
  case "$1" in
    --key) [ $# -ge 2 ] || die "--key needs a file"; key=$2; shift 2 ;;
    --cert) [ $# -ge 2 ] || die "--cert needs a file"; cert=$2; shift 2 ;;
    --arch) [ $# -ge 2 ] || die "--arch needs armhf or arm64"; arch=$2; shift 2 ;;
    *) die "unknown argument '$1'; $usage" ;;
  esac
done

case "$arch" in armhf | arm64) ;; *) die "--arch $arch: armhf or arm64" ;; esac
[ -f "$rootfs" ] || die "no root file system image at '$rootfs'"
# The version is compared by 'pispeaker update' (newer than the running one); keep it a
# plain dotted version, as Cargo.toml's.
case "$version" in
  '' | *[!0-9A-Za-z.+~-]* | [!0-9]*) die "version '$version' must look like 1.2.3" ;;
esac
case "$rootfs" in
  *.ext4) ;;
  *) die "the root file system image must be an .ext4 file (RAUC writes it into an ext4 slot by its file name)" ;;
esac
command -v rauc >/dev/null || die "rauc is not installed (apt-get install rauc squashfs-tools)"
command -v mksquashfs >/dev/null || die "mksquashfs is not installed (apt-get install squashfs-tools)"

if [ -z "$key" ] && [ -z "$cert" ]; then
  keys=${PISPEAKER_KEYS_DIR:-"$(cd "$(dirname "$0")/.." && pwd)/keys"}
  key="$keys/development.key.pem" cert="$keys/development.cert.pem"
  if [ ! -f "$key" ] || [ ! -f "$cert" ]; then
    command -v openssl >/dev/null || die "openssl is not installed (needed to make the development key)"
    mkdir -p "$keys"
    # A self-signed certificate is its own trust anchor: the image's /etc/rauc/keyring.pem.
    (umask 077 && openssl req -x509 -newkey rsa:4096 -nodes -days 36500 \
      -subj "/O=pispeaker/CN=pispeaker development update signing" \
      -keyout "$key" -out "$cert" 2>/dev/null) || die "openssl could not make a key pair in $keys"
    echo "make-bundle: made a DEVELOPMENT key pair: $key and $cert (git-ignored)."
  fi
  echo "make-bundle: signing with the DEVELOPMENT key $key: only images built from this checkout trust it. Pass --key and --cert for a release." >&2
elif [ -z "$key" ] || [ -z "$cert" ]; then
  die "--key and --cert go together"
fi
[ -f "$key" ] || die "no key at '$key'"
[ -f "$cert" ] || die "no certificate at '$cert'"

format=${PISPEAKER_BUNDLE_FORMAT:-verity}
case "$format" in
  verity | plain) ;;
  *) die "PISPEAKER_BUNDLE_FORMAT must be verity or plain, not '$format'" ;;
esac

mkdir -p "$out"
bundle="$out/pispeaker-$version-$arch.raucb"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
mkdir "$work/content"
cp "$rootfs" "$work/content/rootfs.ext4"
install -m 0755 "$(dirname "$0")/pispeaker-bundle-hook" "$work/content/hook"
cat >"$work/content/manifest.raucm" <<MANIFEST
[update]
compatible=pispeaker-$arch
version=$version
description=pispeaker $version for Raspberry Pi ($arch)
build=$(date -u +%Y%m%dT%H%M%SZ)

[bundle]
format=$format

[hooks]
filename=hook

[image.rootfs]
filename=rootfs.ext4
hooks=post-install
MANIFEST
rm -f "$bundle"
rauc bundle --cert="$cert" --key="$key" "$work/content" "$bundle" >"$work/log" 2>&1 \
  || { cat "$work/log" >&2; die "rauc bundle failed (above)"; }
echo "make-bundle: $bundle ($(wc -c <"$bundle") bytes)"
