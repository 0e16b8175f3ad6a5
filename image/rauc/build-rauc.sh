#!/usr/bin/env bash
# Builds Debian's own rauc with HTTP streaming, for the image (armhf) or for the host's tests
# (amd64), and copies the binary to OUT:
#
#   bash image/rauc/build-rauc.sh ARCH SOURCE_VERSION CACHE_DIR OUT [APT_LINE...]
#
#   ARCH            armhf (the image; cross-compiled) or the host's own architecture (amd64)
#   SOURCE_VERSION  the Debian source version of the rauc to rebuild, e.g. 1.8-2: the image's
#                   `dpkg-query -W -f='${source:Version}' rauc`, so the binary is the one the
#                   package installed plus streaming, nothing else
#   CACHE_DIR       the finished binary is kept there, under a key of the version, the
#                   architecture and this script: rebuilt only when one of them changes
#   APT_LINE        the image's `deb URL SUITE COMPONENTS` lines (default: Debian bookworm main);
#                   the source comes from the matching deb-src lines
#
# Why: bookworm's rauc 1.8-2 is built without streaming (its Build-Depends lack libnl-genl-3-dev,
# and RAUC 1.8's configure.ac turns streaming on only when libnl-genl-3.0 and
# linux/nbd-netlink.h are found), so a URL is downloaded to a temporary directory first, at most
# max-bundle-download-size (8 MiB). With streaming, RAUC reads the bundle through HTTP range
# requests from an unprivileged helper (src/nbd.c) and the kernel's nbd device: nothing the size
# of the bundle is stored, which a Pi Zero 2 W's small card needs.
#
# How: Debian's source package of exactly that version (its patches applied: they touch only
# Makefile.am, the D-Bus service file and a test, not the program), configured as debian/rules
# does (--enable-gpt, the hardening build flags of dpkg-buildflags) plus --enable-streaming.
# The build runs on the host, without emulation and without installing anything: the -dev
# packages it compiles and links against are extracted (mmdebstrap --variant=extract, no
# maintainer scripts) into a private sysroot of the target architecture; armhf is compiled
# with Debian's cross gcc-12 (already an image build host tool). ~1 min uncached.
#
# Only the `rauc` program is rebuilt. The image keeps Debian's rauc and rauc-service packages
# (unit, D-Bus policy, dependencies) and this binary takes /usr/bin/rauc's place through a
# dpkg diversion (image/build.sh). Its one new library, libnl-genl-3-200, is on the image
# already (wpasupplicant needs it); image/build.sh runs the installed binary to prove that.
set -euo pipefail
export LC_ALL=C

die() { printf 'error: rauc with streaming: %s\n' "$*" >&2; exit 1; }
[ $# -ge 4 ] || die "usage: $0 ARCH SOURCE_VERSION CACHE_DIR OUT [APT_LINE...]"
ARCH=$1 VERSION=$2
# Absolute: the build changes directory.
CACHE=$(realpath -m "$3") OUT=$(realpath -m "$4")
shift 4
APT_LINES=("$@")
[ ${#APT_LINES[@]} -gt 0 ] || APT_LINES=("deb http://deb.debian.org/debian bookworm main")
SCRIPT=$(realpath "$0")

HOST_ARCH=$(dpkg --print-architecture)
case "$ARCH" in
  armhf) TRIPLET=arm-linux-gnueabihf ;;
  "$HOST_ARCH") TRIPLET=$(dpkg-architecture -qDEB_HOST_MULTIARCH) ;;
  *) die "ARCH must be armhf or this machine's $HOST_ARCH, not $ARCH" ;;
esac
if [ "$ARCH" = "$HOST_ARCH" ]; then CC_BIN=gcc-12 STRIP=strip; else CC_BIN=$TRIPLET-gcc-12 STRIP=$TRIPLET-strip; fi
for tool in "$CC_BIN" "$STRIP" make pkg-config python3 mmdebstrap dpkg-source dpkg-buildflags apt-get; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install gcc-12 gcc-12-arm-linux-gnueabihf make pkg-config python3 mmdebstrap dpkg-dev)"
done

key=$( (printf '%s\n' "$ARCH" "$VERSION"; cat "$SCRIPT") | sha256sum | cut -c1-16)
cached=$CACHE/rauc-streaming-$VERSION-$ARCH-$key/rauc
if [ -x "$cached" ]; then
  echo "rauc $VERSION with streaming for $ARCH: reusing $cached"
  install -D -m 0755 "$cached" "$OUT"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "rauc $VERSION with streaming for $ARCH: building (Debian's source, --enable-streaming)"

# Debian's source package through a private apt configuration: the host's sources and lists
# stay untouched, and nothing takes the host's apt lock.
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
for line in "${APT_LINES[@]}"; do
  case "$line" in
    "deb "*) printf 'deb-src %s\n' "${line#deb }" ;;
    *) die "an apt line must start with 'deb ': $line" ;;
  esac
done > "$work/apt/sources.list"
apt_private=(-o Dir::Etc::SourceList="$work/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
             -o Dir::State::Lists="$work/apt/lists" -o Dir::Cache="$work/apt/cache" -o APT::Sandbox::User=root)
apt-get -qq "${apt_private[@]}" update >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; die "apt-get update of the deb-src lines failed"; }
(cd "$work/src" && apt-get -qq "${apt_private[@]}" source --download-only "rauc=$VERSION") >>"$work/apt.log" 2>&1 \
  || { cat "$work/apt.log" >&2; die "Debian's source of rauc $VERSION is not on the mirror (above)"; }
dpkg-source -x "$work/src"/rauc_*.dsc "$work/rauc" >"$work/dpkg-source.log" 2>&1 \
  || { cat "$work/dpkg-source.log" >&2; die "dpkg-source could not unpack rauc $VERSION"; }

# The sysroot: the target's C library and the -dev packages of rauc's Build-Depends that the
# program links with, plus libnl-genl-3-dev for streaming. Extracted only, never configured.
sysroot=$work/sysroot
mmdebstrap --quiet --variant=extract --architectures="$ARCH" \
  --include=libc6-dev,libglib2.0-dev,libcurl4-gnutls-dev,libssl-dev,libjson-glib-dev,libfdisk-dev,libdbus-1-dev,libnl-genl-3-dev \
  bookworm "$sysroot" "${APT_LINES[@]}" >"$work/mmdebstrap.log" 2>&1 \
  || { tail -n 30 "$work/mmdebstrap.log" >&2; die "mmdebstrap could not extract the $ARCH build dependencies (above)"; }
# Some -dev packages link lib.so to an absolute /lib/... path: point those into the sysroot.
find "$sysroot/usr/lib" "$sysroot/lib" -type l -lname '/*' 2>/dev/null | while read -r link; do
  ln -sfn "$sysroot$(readlink "$link")" "$link"
done
# gdbus-codegen (a Python program from libglib2.0-dev-bin) generates the D-Bus glue.
mkdir -p "$work/bin"
printf '#!/bin/sh\nexec python3 %s/usr/bin/gdbus-codegen "$@"\n' "$sysroot" > "$work/bin/gdbus-codegen"
chmod 0755 "$work/bin/gdbus-codegen"

# debian/rules: hardening=+all, -Wl,--as-needed, --enable-gpt; the flags for the target.
export DEB_HOST_ARCH=$ARCH DEB_BUILD_MAINT_OPTIONS=hardening=+all DEB_LDFLAGS_MAINT_APPEND=-Wl,--as-needed
cd "$work/rauc"
grep -q 'AC_ARG_ENABLE(\[streaming\]' configure.ac || die "rauc $VERSION's configure.ac has no --enable-streaming (a meson-built rauc needs -Dstreaming=true instead)"
# --disable-maintainer-mode: the patched Makefile.am must not make make re-run automake.
PATH=$work/bin:$PATH ./configure --build="$(dpkg-architecture -qDEB_BUILD_GNU_TYPE)" --host="$TRIPLET" \
  --prefix=/usr --sysconfdir=/etc --localstatedir=/var --disable-maintainer-mode --disable-dependency-tracking \
  --enable-gpt --enable-streaming \
  CC="$CC_BIN --sysroot=$sysroot" CFLAGS="$(dpkg-buildflags --get CFLAGS)" CPPFLAGS="$(dpkg-buildflags --get CPPFLAGS)" \
  LDFLAGS="$(dpkg-buildflags --get LDFLAGS)" PKG_CONFIG=pkg-config PKG_CONFIG_SYSROOT_DIR="$sysroot" \
  PKG_CONFIG_LIBDIR="$sysroot/usr/lib/$TRIPLET/pkgconfig:$sysroot/usr/share/pkgconfig" >"$work/configure.log" 2>&1 \
  || { tail -n 40 "$work/configure.log" >&2; die "configure failed (above)"; }
grep -Eq '^[[:space:]]*streaming:[[:space:]]+yes' "$work/configure.log" || die "configure did not enable streaming: $(grep -E 'network:|streaming:' "$work/configure.log")"
grep -q '^#define ENABLE_STREAMING 1' config.h || die "config.h does not define ENABLE_STREAMING 1"
PATH=$work/bin:$PATH make -j"$(nproc)" rauc >"$work/make.log" 2>&1 || { tail -n 40 "$work/make.log" >&2; die "make failed (above)"; }

mkdir -p "$(dirname "$cached")"
"$STRIP" -o "$cached.partial" rauc
mv "$cached.partial" "$cached"
install -D -m 0755 "$cached" "$OUT"
echo "rauc $VERSION with streaming for $ARCH: $cached ($(stat -c %s "$cached") bytes)"
