#!/usr/bin/env bash
# Builds the flashable SD image, one of two:
#
#   sudo bash image/build.sh            ->  image/out/pispeaker-<version>-armhf.img.xz (+ .sha256)
#                                           and pispeaker-<version>-armhf.raucb (the update bundle)
#     32-bit, for the Raspberry Pi 2 (also boots a Pi 3 / Zero 2 W): Debian bookworm armhf,
#     the armmp kernel, our armv7 .deb (scripts/cross-armv7.sh)
#   sudo bash image/build.sh --arch arm64   ->  pispeaker-<version>-arm64.img.xz / .raucb
#     64-bit, for the Pi 3, Pi 4 and Zero 2 W: Debian trixie arm64, the arm64 kernel (the only
#     one of Debian's with the Pi 4's PCIe and Ethernet), our aarch64 .deb (scripts/cross-aarch64.sh)
#
# Plus our HAT overlays (board/overlays) and the HATs' codec modules the kernel lacks, built from
# Debian's own kernel source for the image kernel (image/codecs), and, on armhf, Debian's rauc
# rebuilt from its own source with HTTP streaming (image/rauc/build-rauc.sh). No loop devices, no
# docker: mmdebstrap builds the root file system under qemu-user binfmt, genimage writes the
# partitioned image with mke2fs -d and mtools.
#
# Options (flags or environment):
#   --arch armhf|arm64 PISPEAKER_IMAGE_ARCH       which image (default armhf)
#   --mirror URL       PISPEAKER_IMAGE_MIRROR     Debian mirror (default http://deb.debian.org/debian)
#   --apt-line LINE    PISPEAKER_IMAGE_APT_LINES  full sources lines instead (repeatable; env: one per line)
#   --out DIR          PISPEAKER_IMAGE_OUT        where the .img.xz goes (default image/out)
#   --cache DIR        PISPEAKER_IMAGE_CACHE      where the package-only root file system is kept
#                                                 between runs (default image/cache)
#   --no-cache         PISPEAKER_IMAGE_NO_CACHE=1 always run mmdebstrap
#   --deb FILE         PISPEAKER_IMAGE_DEB        use this .deb (of the image's architecture) instead
#                                                 of building one (scripts/cross-armv7.sh deb or
#                                                 scripts/cross-aarch64.sh deb makes it)
#   --sign-key FILE    PISPEAKER_IMAGE_SIGN_KEY   the update signing key (PEM) and its certificate:
#   --sign-cert FILE   PISPEAKER_IMAGE_SIGN_CERT  the image trusts only this certificate, and the
#                                                 update bundle beside the image is signed with the
#                                                 key. Without them a development pair is made in
#                                                 image/keys/ (git-ignored) and used, and said so
#   --xz-level N       PISPEAKER_IMAGE_XZ_LEVEL   xz preset of the .img.xz (default 6, what releases
#                                                 ship; scripts/test.sh uses 1: its images are only
#                                                 unpacked again by the boot tests, and -6 of a
#                                                 2 GiB card is ~3 core-minutes)
#   --keep-work                                   keep the unpacked trees (for debugging)
#   --host-tools                                  only install the host tools (step 1), then stop
#   --base-only                                   only build the cached root file system (steps 1
#                                                 and 3); scripts/test.sh runs this in the
#                                                 background while the other checks run
#
# The apt lines name the suite and its -updates only (bookworm for armhf, trixie for arm64): the
# bookworm-security armhf index has failed mid-sync on build machines, and an image build must not
# depend on it. Add a security line with --apt-line if your mirror carries it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

ARCH=${PISPEAKER_IMAGE_ARCH:-armhf}
MIRROR=${PISPEAKER_IMAGE_MIRROR:-http://deb.debian.org/debian}
OUT=${PISPEAKER_IMAGE_OUT:-$REPO/image/out}
CACHE=${PISPEAKER_IMAGE_CACHE:-$REPO/image/cache}
NO_CACHE=${PISPEAKER_IMAGE_NO_CACHE:-}
DEB=${PISPEAKER_IMAGE_DEB:-}
SIGN_KEY=${PISPEAKER_IMAGE_SIGN_KEY:-}
SIGN_CERT=${PISPEAKER_IMAGE_SIGN_CERT:-}
XZ_LEVEL=${PISPEAKER_IMAGE_XZ_LEVEL:-6}
KEEP_WORK=""
ONLY=""
APT_LINES=()
if [ -n "${PISPEAKER_IMAGE_APT_LINES:-}" ]; then
  while IFS= read -r line; do [ -n "$line" ] && APT_LINES+=("$line"); done <<<"$PISPEAKER_IMAGE_APT_LINES"
fi
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --apt-line) APT_LINES+=("$2"); shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --no-cache) NO_CACHE=1; shift ;;
    --deb) DEB=$2; shift 2 ;;
    --sign-key) SIGN_KEY=$2; shift 2 ;;
    --sign-cert) SIGN_CERT=$2; shift 2 ;;
    --xz-level) XZ_LEVEL=$2; shift 2 ;;
    --keep-work) KEEP_WORK=1; shift ;;
    --host-tools) ONLY=host-tools; shift ;;
    --base-only) ONLY=base; shift ;;
    -h|--help) sed -n '2,46p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
# What differs between the two images. The armhf values are what they were before arm64
# existed: its package list, and with it its cache key, stay the same.
case "$ARCH" in
  armhf)
    SUITE=bookworm KERNEL_PKG=linux-image-armmp ALSA_LIB=libasound2 TRIPLET=arm-linux-gnueabihf
    QEMU_BINFMT=qemu-arm CROSS_SCRIPT=scripts/cross-armv7.sh DEB_DIR=target/debian-armv7
    CODEC_CC=gcc-12-arm-linux-gnueabihf ;;
  arm64)
    # trixie: its arm64 device trees carry __symbols__ (bookworm's do not, so no overlay could be
    # applied to them), its 6.12 kernel has the PCM5102A and WM8804 codecs, and bookworm is in
    # LTS. libasound2t64 is trixie's name for the ALSA library (the 64-bit time_t transition).
    SUITE=trixie KERNEL_PKG=linux-image-arm64 ALSA_LIB=libasound2t64 TRIPLET=aarch64-linux-gnu
    QEMU_BINFMT=qemu-aarch64 CROSS_SCRIPT=scripts/cross-aarch64.sh DEB_DIR=target/debian-aarch64
    CODEC_CC=gcc-aarch64-linux-gnu ;;
  *) echo "error: --arch $ARCH: armhf (Pi 2) or arm64 (Pi 3, Pi 4, Zero 2 W)" >&2; exit 2 ;;
esac
case "$XZ_LEVEL" in [0-9]) ;; *) echo "error: --xz-level $XZ_LEVEL: a preset from 0 to 9" >&2; exit 2 ;; esac
if [ ${#APT_LINES[@]} -eq 0 ]; then
  APT_LINES=("deb $MIRROR $SUITE main non-free-firmware" "deb $MIRROR $SUITE-updates main non-free-firmware")
fi

STEPS=10
step_no=0
T0=$SECONDS
step() { step_no=$((step_no + 1)); printf '\n==> [%d/%d] %s  (%ds)\n' "$step_no" "$STEPS" "$*" "$((SECONDS - T0))"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "building the image needs root (mmdebstrap --mode=root, chroot, file ownership): run it with sudo"
command -v apt-get >/dev/null || die "this builder needs Debian bookworm (or newer) with apt"

# The packages of the image. Only what a headless speaker needs: the armmp kernel (Pi 2/3/Zero 2 W
# device trees, snd-bcm2835, snd-usb-audio, brcmfmac), the Pi boot firmware, Wi-Fi firmware and
# regulatory data, systemd-networkd/resolved/timesyncd (the Pi has no clock), ALSA tools, iptables
# for `pispeaker drop-test`, an SSH server that stays off unless the boot config enables it, and
# RAUC with its D-Bus service for the A/B updates (image/rauc/).
PACKAGES=(
  systemd systemd-sysv systemd-resolved systemd-timesyncd udev dbus kmod
  "$KERNEL_PKG" raspi-firmware firmware-brcm80211 wireless-regdb wpasupplicant
  iproute2 iptables ca-certificates alsa-utils "$ALSA_LIB" adduser openssh-server
  rauc rauc-service
)
# Documentation, manual pages and translations are not read on a speaker.
DPKG_OPTS=(
  'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/locale/*'
  'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' 'path-exclude=/usr/share/lintian/*'
)

# ---------------------------------------------------------------------------------------------
step "host tools"
need=()
for p in mmdebstrap qemu-user-static binfmt-support genimage mtools dosfstools e2fsprogs xz-utils fdisk arch-test device-tree-compiler \
         "$CODEC_CC" make rauc squashfs-tools openssl pkg-config python3 dpkg-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq || echo "warning: apt-get update reported errors; continuing with the indexes that loaded" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || die "could not install ${need[*]}"
fi
# mmdebstrap runs the image's maintainer scripts through qemu-user: binfmt_misc must know its binaries.
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
  || die "cannot mount binfmt_misc (needed to run $ARCH programs under qemu-user)"
[ -e /proc/sys/fs/binfmt_misc/$QEMU_BINFMT ] || update-binfmts --enable "$QEMU_BINFMT" >/dev/null 2>&1 || true
[ -e /proc/sys/fs/binfmt_misc/$QEMU_BINFMT ] || die "$QEMU_BINFMT is not registered with binfmt_misc: install qemu-user-static and binfmt-support"
arch-test "$ARCH" >/dev/null 2>&1 || die "this machine cannot run $ARCH programs (arch-test $ARCH failed): check qemu-user-static/binfmt"
echo "image: $ARCH, Debian $SUITE, $KERNEL_PKG"
echo "mmdebstrap $(mmdebstrap --version | awk '{print $2}'), genimage $(dpkg-query -W -f='${Version}' genimage), apt sources:"
printf '  %s\n' "${APT_LINES[@]}"
[ "$ONLY" = host-tools ] && exit 0

# The update signing pair: the image's RAUC keyring is exactly this certificate, and the bundle
# is signed with its key. Checked now, before the long steps.
if [ "$ONLY" != base ]; then
  if [ -z "$SIGN_KEY" ] && [ -z "$SIGN_CERT" ]; then
    keys=$REPO/image/keys
    SIGN_KEY=$keys/development.key.pem SIGN_CERT=$keys/development.cert.pem
    if [ ! -f "$SIGN_KEY" ] || [ ! -f "$SIGN_CERT" ]; then
      mkdir -p "$keys"
      # Self-signed: the certificate is its own trust anchor. The same names and subject as
      # image/rauc/make-bundle.sh's development pair, so either script reuses the other's.
      (umask 077 && openssl req -x509 -newkey rsa:4096 -nodes -days 36500 \
        -subj "/O=pispeaker/CN=pispeaker development update signing" \
        -keyout "$SIGN_KEY" -out "$SIGN_CERT" 2>/dev/null) || die "openssl could not make a key pair in $keys"
      echo "made a DEVELOPMENT update signing pair: $SIGN_KEY and $SIGN_CERT (git-ignored)"
    fi
    echo "warning: no --sign-key/--sign-cert: the image trusts the DEVELOPMENT certificate $SIGN_CERT and the bundle is signed with its key; only bundles built from this checkout will install. Pass --sign-key and --sign-cert for a release." >&2
  elif [ -z "$SIGN_KEY" ] || [ -z "$SIGN_CERT" ]; then
    die "--sign-key and --sign-cert go together (the key signs the bundle, the image trusts the certificate)"
  fi
  [ -f "$SIGN_KEY" ] || die "no signing key at $SIGN_KEY"
  [ -f "$SIGN_CERT" ] || die "no certificate at $SIGN_CERT"
  SIGN_KEY=$(realpath "$SIGN_KEY") SIGN_CERT=$(realpath "$SIGN_CERT")
  cert_pub=$(openssl x509 -in "$SIGN_CERT" -noout -pubkey 2>/dev/null) || die "$SIGN_CERT is not a PEM certificate"
  key_pub=$(openssl pkey -in "$SIGN_KEY" -pubout 2>/dev/null) || die "$SIGN_KEY is not a PEM private key (without a passphrase)"
  [ "$cert_pub" = "$key_pub" ] || die "$SIGN_KEY is not the key of $SIGN_CERT: bundles signed with it would not install on this image"
  echo "update signing: $(openssl x509 -in "$SIGN_CERT" -noout -subject)"
fi

# ---------------------------------------------------------------------------------------------
step "$ARCH pispeaker .deb (docker-free build, $CROSS_SCRIPT)"
if [ "$ONLY" = base ]; then
  echo "skipped (--base-only)"
elif [ -n "$DEB" ]; then
  [ -s "$DEB" ] && [ "$(dpkg-deb -f "$DEB" Architecture 2>/dev/null)" = "$ARCH" ] || die "--deb $DEB is not an $ARCH .deb"
  VERSION=$(dpkg-deb -f "$DEB" Version)
  echo "$DEB (version $VERSION, given with --deb: not rebuilt)"
else
  bash "$CROSS_SCRIPT" deb >/tmp/pispeaker-image-deb-$ARCH.log 2>&1 \
    || { tail -n 40 /tmp/pispeaker-image-deb-$ARCH.log >&2; die "the $ARCH build failed (full log: /tmp/pispeaker-image-deb-$ARCH.log)"; }
  DEB=$(ls -t "$DEB_DIR"/pispeaker_*_"$ARCH".deb | head -n1)
  VERSION=$(dpkg-deb -f "$DEB" Version)
  echo "$DEB (version $VERSION)"
fi

# ---------------------------------------------------------------------------------------------
# The package-only root file system is the slow part (maintainer scripts under emulation,
# mkinitramfs most of all: ~12 min on 2 cores), so it is kept under a key of everything that
# goes into it and reused while that stays the same.
step "root file system from Debian $SUITE $ARCH (mmdebstrap)"
mkdir -p "$CACHE" "$OUT"
# armhf keeps its key and file name from before arm64 existed (a cached armhf base stays valid);
# arm64 has its own key and its own file.
case "$ARCH" in armhf) key_tag=v3 base_name=base ;; arm64) key_tag=arm64-v1 base_name=base-arm64 ;; esac
key=$( (printf '%s\n' "$key_tag" "${PACKAGES[@]}" "${DPKG_OPTS[@]}" "${APT_LINES[@]}"; find image/initramfs -type f | sort | xargs cat; cat image/rauc/pispeaker-slot) | sha256sum | cut -c1-16)
BASE="$CACHE/$base_name-$key.tar"
if [ -n "$NO_CACHE" ] || [ ! -s "$BASE" ]; then
  echo "mmdebstrap: ${#PACKAGES[@]} packages and their dependencies (progress below; ~12 min under emulation)"
  # The kernel, the Wi-Fi firmware and udev each trigger mkinitramfs, which takes minutes under
  # emulation: update-initramfs is diverted to a no-op while packages install, and the initrd
  # is made once at the end (raspi-firmware's hook then copies it to /boot/firmware), with
  # image/initramfs/ (the module classes a speaker boots from, not MODULES=most; the A/B boot
  # counter, which runs image/rauc/pispeaker-slot, installed here for it) in place.
  mm_args=(--mode=root --architectures="$ARCH" --variant=minbase --format=tar
           --aptopt='Apt::Install-Recommends "false"'
           --include="$(IFS=,; echo "${PACKAGES[*]}")"
           --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && printf "#!/bin/sh\nexit 0\n" > "$1/usr/sbin/update-initramfs" && chmod 0755 "$1/usr/sbin/update-initramfs"'
           --customize-hook="cp -rT --preserve=mode '$REPO/image/initramfs' \"\$1/etc/initramfs-tools\""
           --customize-hook="install -D -m 0755 '$REPO/image/rauc/pispeaker-slot' \"\$1/usr/lib/pispeaker/pispeaker-slot\""
           --customize-hook='rm "$1/usr/sbin/update-initramfs" && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs && for k in "$1"/lib/modules/*; do chroot "$1" update-initramfs -c -k "${k##*/}"; done')
  for o in "${DPKG_OPTS[@]}"; do mm_args+=(--dpkgopt="$o"); done
  t=$SECONDS
  mmdebstrap "${mm_args[@]}" "$SUITE" "$BASE.partial" "${APT_LINES[@]}" \
    || die "mmdebstrap failed: check the apt lines above (--mirror/--apt-line) and the network"
  mv "$BASE.partial" "$BASE"
  echo "root file system built in $((SECONDS - t)) s: $BASE ($(du -h "$BASE" | cut -f1))"
else
  echo "reusing $BASE (same packages and mirrors; --no-cache rebuilds it)"
fi
[ "$ONLY" = base ] && exit 0

# ---------------------------------------------------------------------------------------------
step "customize: pispeaker .deb, image settings, locked root, read-only root"
WORK=$(mktemp -d /var/tmp/pispeaker-image.XXXXXX)
ROOT=$WORK/root
cleanup() {
  for m in "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
  if [ -z "$KEEP_WORK" ]; then rm -rf "$WORK"; else echo "work tree kept in $WORK"; fi
}
trap cleanup EXIT
mkdir -p "$ROOT"
tar --numeric-owner -xpf "$BASE" -C "$ROOT"
mount -t proc proc "$ROOT/proc"
mount --rbind /dev "$ROOT/dev"
cp "$DEB" "$ROOT/tmp/pispeaker.deb"
# In a chroot deb-systemd-invoke does not start the service; it only enables it.
chroot "$ROOT" dpkg -i /tmp/pispeaker.deb >/dev/null
rm -f "$ROOT/tmp/pispeaker.deb"
cp -rT --no-preserve=ownership image/rootfs "$ROOT"
if [ "$ARCH" = arm64 ]; then
  # The 64-bit image runs on a Pi 3, 4 or Zero 2 W only, where the PL011 (ttyAMA0) is the
  # Bluetooth chip's (the upstream trees give uart0 a Bluetooth child, which makes it a serdev,
  # not a tty): the serial console is the mini UART, ttyS1 (serial0), and nothing else.
  sed -i 's/^CONSOLES=.*/CONSOLES="tty0 ttyS1,115200"/' "$ROOT/etc/default/raspi-firmware"
  grep -qx 'CONSOLES="tty0 ttyS1,115200"' "$ROOT/etc/default/raspi-firmware" || die "image/rootfs/etc/default/raspi-firmware has no CONSOLES= line"
fi
# RAUC (image/rauc/): its view of the slots, the Pi firmware backend, and the one certificate
# it trusts.
# Its compatible names the architecture: an armhf bundle never installs on the arm64 image.
sed "s/^compatible=pispeaker-armhf\$/compatible=pispeaker-$ARCH/" image/rauc/system.conf > "$WORK/system.conf"
grep -qx "compatible=pispeaker-$ARCH" "$WORK/system.conf" || die "image/rauc/system.conf has no compatible=pispeaker-armhf line to set"
install -D -m 0644 "$WORK/system.conf" "$ROOT/etc/rauc/system.conf"
install -D -m 0755 image/rauc/pispeaker-slot "$ROOT/usr/lib/pispeaker/pispeaker-slot"
install -m 0644 "$SIGN_CERT" "$ROOT/etc/rauc/keyring.pem"
install -m 0755 image/customize.sh "$ROOT/tmp/customize.sh"
chroot "$ROOT" /tmp/customize.sh
rm -f "$ROOT/tmp/customize.sh"
# RAUC with HTTP streaming: Debian's rauc is built without it (a URL is downloaded first, 8 MiB at
# most). image/rauc/build-rauc.sh rebuilds the same Debian source version with streaming on the
# host (cached in $CACHE by version); it takes /usr/bin/rauc's place through a dpkg diversion,
# Debian's own binary kept as /usr/bin/rauc.debian. Run here, under qemu, it must start (its
# libraries are on the image) and treat a URL as a stream, not a download.
rauc_src=$(chroot "$ROOT" dpkg-query -W -f='${source:Version}' rauc) || die "rauc is not installed in the root file system"
# The rebuild is made for bookworm's armhf rauc; the arm64 image (trixie) keeps Debian's rauc and
# is checked the same way below, which tells whether that one streams.
if [ "$ARCH" = armhf ]; then
  bash image/rauc/build-rauc.sh armhf "$rauc_src" "$CACHE" "$WORK/rauc" "${APT_LINES[@]}" \
    || die "could not build rauc $rauc_src with streaming (above)"
  chroot "$ROOT" dpkg-divert --quiet --local --rename --divert /usr/bin/rauc.debian --add /usr/bin/rauc
  install -m 0755 "$WORK/rauc" "$ROOT/usr/bin/rauc"
  chroot "$ROOT" rauc --version >/dev/null || die "the streaming rauc does not start on the image (a missing library?)"
fi
# Nothing listens on port 9: only the first message matters ("streaming", where Debian's says
# "downloading"); the helper's retries take ~5 s.
chroot "$ROOT" rauc --conf=/etc/rauc/system.conf info http://127.0.0.1:9/check.raucb >"$WORK/rauc-stream.log" 2>&1 || true
if grep -q 'Remote URI detected, streaming bundle' "$WORK/rauc-stream.log"; then
  find "$ROOT/usr/lib/modules" -name 'nbd.ko*' | grep -q . || die "the image kernel has no nbd module, which RAUC's streaming needs"
  echo "rauc: $(chroot "$ROOT" rauc --version) with HTTP streaming (Debian source $rauc_src)"
elif [ "$ARCH" = armhf ]; then
  cat "$WORK/rauc-stream.log" >&2; die "the image's rauc does not stream a URL (log above)"
else
  echo "warning: Debian $SUITE's rauc $rauc_src does not stream a URL: 'pispeaker update URL' downloads (8 MiB at most) on this image; copy bundles onto the speaker instead" >&2
fi
umount -l "$ROOT/dev" "$ROOT/proc"

# ---------------------------------------------------------------------------------------------
step "HAT codec modules for the image kernel (image/codecs/build.sh)"
# Debian's kernel lacks the PCM512x codecs (bookworm's also PCM5102A): built out of tree from
# Debian's source of the image kernel's exact version, checked against its vermagic and symbol
# CRCs. The arm64 image's trixie packages come through the image's own apt lines.
codec_apt=""
[ "$ARCH" = armhf ] || codec_apt=$(printf '%s\n' "${APT_LINES[@]}")
PISPEAKER_CODECS_APT_LINES=$codec_apt bash image/codecs/build.sh "$ROOT" "$CACHE" \
  || die "the codec modules could not be built for the image kernel (above)"
# The user-editable settings file on the FAT partition.
install -m 0644 image/boot/pispeaker.toml "$ROOT/boot/firmware/pispeaker.toml"
# What config.txt includes for the board's overlay (raspi-firmware-custom): as
# pispeaker-board-overlay.service would write it for the default board (no overlay).
install -m 0644 image/boot/pispeaker-board.txt "$ROOT/boot/firmware/pispeaker-board.txt"
grep -qx 'include pispeaker-board.txt' "$ROOT/boot/firmware/config.txt" \
  || die "config.txt does not include pispeaker-board.txt (image/rootfs/etc/default/raspi-firmware-custom)"
# The HAT overlays for Debian's kernel (board/overlays/), where the firmware looks for dtoverlay=
# files, checked against the device trees this image's firmware will load (tests/overlays.sh).
install -d "$ROOT/boot/firmware/overlays"
for dts in board/overlays/*.dts; do
  dtc -q -@ -I dts -O dtb -i board/overlays -o "$ROOT/boot/firmware/overlays/$(basename "$dts" .dts).dtbo" "$dts" \
    || die "overlay $dts does not compile"
done
bash tests/overlays.sh "$ROOT/boot/firmware" "$ARCH" >"$WORK/overlays.log" 2>&1 \
  || { cat "$WORK/overlays.log" >&2; die "the HAT overlays do not apply to this image's device trees (log above)"; }
tail -n 1 "$WORK/overlays.log"
# The writable data partition's starting content: the state directories and systemd's.
mkdir -p "$ROOT/data"
install -d -m 0700 -o "$(chroot "$ROOT" id -u pispeaker)" -g "$(chroot "$ROOT" id -g pispeaker)" "$ROOT/data/pispeaker"
cp -a "$ROOT/var/lib/systemd" "$ROOT/data/systemd"
install -d -m 0700 "$ROOT/data/ssh"
# RAUC's slot status and install history (system.conf data-directory).
install -d -m 0700 "$ROOT/data/rauc"
# Left empty on the root: it is a mount point.
find "$ROOT/var/lib/pispeaker" -mindepth 1 -delete

# ---------------------------------------------------------------------------------------------
step "A/B boot files: slot A's kernel, initrd, device trees, overlays and cmdline.txt under slotA/"
# The Pi firmware reads kernel=, initramfs, the device trees, overlays/ and cmdline.txt from under
# config.txt's os_prefix= (image/rauc/README.md); the firmware itself (bootcode.bin, start*.elf,
# fixup*.dat), config.txt, what it includes and our settings stay at the top.
FW=$ROOT/boot/firmware
kernel=$(sed -n 's/^kernel=//p' "$FW/config.txt" | tail -n1)
initrd=$(sed -n 's/^initramfs[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "$FW/config.txt" | tail -n1)
[ -n "$kernel" ] && [ -s "$FW/$kernel" ] || die "config.txt names no kernel on the boot partition (kernel=$kernel)"
[ -n "$initrd" ] && [ -s "$FW/$initrd" ] || die "config.txt names no initramfs on the boot partition (initramfs $initrd)"
grep -q '^[[:space:]]*os_prefix=' "$FW/config.txt" && die "config.txt already has an os_prefix= line"
mkdir "$FW/slotA"
# Under the same names in every slot and every version (config.txt is shared by both slots and an
# update does not rewrite it): kernel=vmlinuz, initramfs initrd.img. The update bundle's hook
# (image/rauc/pispeaker-bundle-hook) writes the new version's under config.txt's names.
mv "$FW/$kernel" "$FW/slotA/vmlinuz"
mv "$FW/$initrd" "$FW/slotA/initrd.img"
sed -i -e "s/^kernel=$kernel\$/kernel=vmlinuz/" \
  -e "s/^\(initramfs[[:space:]]\{1,\}\)$initrd\([[:space:]]\|\$\)/\1initrd.img\2/" "$FW/config.txt"
grep -qx 'kernel=vmlinuz' "$FW/config.txt" && grep -q '^initramfs[[:space:]]\{1,\}initrd\.img\([[:space:]]\|$\)' "$FW/config.txt" \
  || die "config.txt's kernel= and initramfs lines were not renamed to vmlinuz and initrd.img: $(grep -E '^(kernel=|initramfs)' "$FW/config.txt")"
mv "$FW"/*.dtb "$FW/overlays" "$FW/slotA/"
# The root file system carries the rest of a slot's boot files (device trees, our overlays) in
# /usr/lib/pispeaker/boot/, beside its kernel and initramfs in /boot: an update bundle made of
# this root brings them, and its hook copies them to the other slot's directory.
install -d "$ROOT/usr/lib/pispeaker/boot"
cp "$FW"/slotA/*.dtb "$ROOT/usr/lib/pispeaker/boot/"
cp -R "$FW/slotA/overlays" "$ROOT/usr/lib/pispeaker/boot/overlays"
[ "$(ls "$ROOT"/boot/vmlinuz-* | wc -l)" = 1 ] || die "the root file system has $(ls "$ROOT"/boot/vmlinuz-* | wc -l) kernels in /boot: the bundle hook needs exactly one"
cmp -s "$ROOT"/boot/vmlinuz-* "$FW/slotA/vmlinuz" || die "the root's /boot/vmlinuz-* is not the kernel on the boot partition"
cmp -s "$ROOT/boot/initrd.img-${kernel#vmlinuz-}" "$FW/slotA/initrd.img" || die "the root's /boot/initrd.img-${kernel#vmlinuz-} is not the initramfs on the boot partition"
# The slot's own root partition, by PARTUUID (genimage.cfg), and the slot's name for RAUC.
DISK_SIGNATURE=0x7073706b # "pspk": fixed, see genimage.cfg
ROOT_A="PARTUUID=${DISK_SIGNATURE#0x}-02"
grep -q 'root=' "$FW/cmdline.txt" || die "cmdline.txt has no root= to replace: $(cat "$FW/cmdline.txt")"
# The root's mount options live here, not in fstab: both root partitions carry the same ext4
# label once an update wrote slot B, so fstab cannot name "/" (the initramfs mounts it from
# root= with rootflags=: initramfs-tools 0.142 init `rootflags=*)`, scripts/local
# local_mount_root). panic=10: a kernel panic, or an initramfs that cannot mount the root
# (initramfs-tools scripts/functions panic() reboots after panic= seconds instead of waiting
# at a shell), restarts the Pi, so the boot counter spends the next try of a new slot. The
# bundle hook derives every new slot's cmdline.txt from the running one's, so both stay.
sed -E "s#(^| )root=[^ ]*#\1root=$ROOT_A#; s/(^| )(rootflags|panic|rauc\.slot)=[^ ]*//g; s/^[[:space:]]+//; s/[[:space:]]*\$/ rootflags=noatime,errors=remount-ro panic=10 rauc.slot=A/" \
  "$FW/cmdline.txt" > "$FW/slotA/cmdline.txt"
[ "$(tr ' ' '\n' < "$FW/slotA/cmdline.txt" | grep -xE 'ro|rw' | tail -n 1)" = ro ] \
  || die "slotA/cmdline.txt does not mount the root read-only (its last ro/rw is not ro): $(cat "$FW/slotA/cmdline.txt")"
rm "$FW/cmdline.txt"
printf '%s\n' "" "# A/B root slots (image/rauc/): the kernel, initramfs, device trees, overlays and" \
  "# cmdline.txt come from this directory. RAUC's pispeaker-slot switches it; do not edit." \
  "[all]" "os_prefix=slotA/" >> "$FW/config.txt"
# The slots' boot state (pispeaker-slot): A is the one this image boots, B holds nothing yet.
# Generation 1 of the state's two copies (image/rauc/pispeaker-slot: the first write goes to
# pispeaker-slots.alt.txt); the script must read it back as written.
printf '%s\n' "# A/B boot state for image/rauc/pispeaker-slot and the initramfs: good, bad or try:N" \
  "# (N boots left for a new slot to reach READY). Two copies, pispeaker-slots.txt and" \
  "# pispeaker-slots.alt.txt, written in turn: the whole one with the highest generation" \
  "# counts. Do not edit by hand (pispeaker-slot show prints it)." \
  "generation=1" "A=good" "B=bad" "end" > "$FW/pispeaker-slots.txt"
slots=$(PISPEAKER_BOOT_DIR=$FW sh image/rauc/pispeaker-slot show)
[ "$slots" = "A=good B=bad generation=1 copy=pispeaker-slots.txt other=pispeaker-slots.alt.txt:missing" ] \
  || die "pispeaker-slot does not read the image's slot state back: $slots"
# What RAUC's backend will accept as a complete slot is what the firmware will boot.
PISPEAKER_BOOT_DIR=$FW sh image/rauc/pispeaker-slot get-primary | grep -qx A || die "pispeaker-slot does not read slot A from config.txt"
echo "boot partition: $(ls "$FW" | wc -l) entries, slotA/: $(ls "$FW/slotA" | wc -l); slotA/cmdline.txt: $(cat "$FW/slotA/cmdline.txt")"

# ---------------------------------------------------------------------------------------------
step "partitioned image (genimage: FAT boot, ext4 root A, empty root B, ext4 data; no loop devices)"
root_mb=$(du -sm --exclude="$ROOT/boot/firmware" --exclude="$ROOT/data" "$ROOT" | cut -f1)
# Both root slots have one fixed size, the same in every build: an update bundle's root file
# system (the same root.ext4) must fit the slot of every speaker flashed before it. 768 MB is
# the root (~450 MB today) with room to grow; the card image is padded to 2 GiB (below).
ROOT_SLOT_MB=768
need_mb=$(( root_mb * 115 / 100 + 64 ))
[ "$need_mb" -le "$ROOT_SLOT_MB" ] || die "the root file system (${root_mb} MB, ${need_mb} MB with ext4 metadata) no longer fits a ${ROOT_SLOT_MB} MB root slot: raising the slot size breaks updates of speakers flashed before"
ROOT_SIZE=${ROOT_SLOT_MB}M
sed "s/@ROOT_SIZE@/$ROOT_SIZE/g; s/@DISK_SIGNATURE@/$DISK_SIGNATURE/" image/genimage.cfg > "$WORK/genimage.cfg"
NAME="pispeaker-$VERSION-$ARCH"
mkdir -p "$WORK/out" "$WORK/in"
genimage --config "$WORK/genimage.cfg" --rootpath "$ROOT" --tmppath "$WORK/gtmp" \
  --inputpath "$WORK/in" --outputpath "$WORK/out" >"$WORK/genimage.log" 2>&1 \
  || { tail -n 30 "$WORK/genimage.log" >&2; die "genimage failed (log above)"; }
IMG="$WORK/out/pispeaker.img"
# A power-of-two size, which qemu's Pi machines require of an SD card (the zeros compress away).
img_size=$(stat -c %s "$IMG")
pow2=1
while [ "$pow2" -lt "$img_size" ]; do pow2=$((pow2 * 2)); done
truncate -s "$pow2" "$IMG"
sfdisk -d "$IMG" | sed 's/^/  /'

# ---------------------------------------------------------------------------------------------
step "compress (xz -$XZ_LEVEL) and checksum"
rm -f "$OUT/$NAME.img.xz" "$OUT/$NAME.img.xz.sha256"
xz -T0 -"$XZ_LEVEL" -v -c "$IMG" > "$OUT/$NAME.img.xz.partial"
mv "$OUT/$NAME.img.xz.partial" "$OUT/$NAME.img.xz"
(cd "$OUT" && sha256sum "$NAME.img.xz" > "$NAME.img.xz.sha256")

# ---------------------------------------------------------------------------------------------
step "update bundle (RAUC, verity): the same root file system, signed"
t=$SECONDS
sh image/rauc/make-bundle.sh "$WORK/out/root.ext4" "$VERSION" "$OUT" --key "$SIGN_KEY" --cert "$SIGN_CERT" --arch "$ARCH" \
  || die "the update bundle could not be made (above)"
BUNDLE=$OUT/$NAME.raucb
[ -s "$BUNDLE" ] || die "make-bundle.sh did not write $BUNDLE"
(cd "$OUT" && sha256sum "$NAME.raucb" > "$NAME.raucb.sha256")
rauc info --keyring="$SIGN_CERT" --conf="$ROOT/etc/rauc/system.conf" "$BUNDLE" >/dev/null 2>"$WORK/rauc-info.log" \
  || { cat "$WORK/rauc-info.log" >&2; die "the bundle does not verify against the image's certificate"; }
bundle_s=$((SECONDS - t))

# ---------------------------------------------------------------------------------------------
step "what takes the space"
du -xsm "$ROOT"/usr/lib/modules "$ROOT"/usr/lib/firmware "$ROOT"/boot/firmware "$ROOT"/boot \
  "$ROOT/usr/lib/$TRIPLET" "$ROOT"/usr/share "$ROOT"/usr/bin "$ROOT"/usr/sbin "$ROOT"/var 2>/dev/null \
  | sort -rn | sed "s|$ROOT||; s/^/  MB /"
img_bytes=$(stat -c %s "$IMG")
xz_bytes=$(stat -c %s "$OUT/$NAME.img.xz")
echo
echo "image: $OUT/$NAME.img.xz ($((xz_bytes / 1000000)) MB compressed, $((img_bytes / 1000000)) MB written to the card; root file system ${root_mb} MB)"
echo "checksum: $OUT/$NAME.img.xz.sha256"
echo "bundle: $BUNDLE ($(( $(stat -c %s "$BUNDLE") / 1000000 )) MB, made and verified in ${bundle_s} s)"
echo "image figures: build ${SECONDS}s, compressed $xz_bytes bytes, uncompressed $img_bytes bytes, bundle $(stat -c %s "$BUNDLE") bytes (${bundle_s}s)"
