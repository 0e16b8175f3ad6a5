#!/usr/bin/env bash
# Builds the I2S DAC HATs' codec drivers that Debian's kernel leaves out (snd-soc-pcm512x,
# snd-soc-pcm512x-i2c, snd-soc-pcm5102a) for the kernel of an image root, and installs them there:
#
#   bash image/codecs/build.sh ROOT CACHE_DIR        (image/build.sh runs it, as root)
#
# For the armhf image's bookworm armmp kernel all three; for the arm64 image's trixie arm64
# kernel only the two PCM512x ones (6.12 has PCM5102A). The arm64 image's packages come from
# trixie, which the build machine (bookworm) has no index of: they are downloaded with a private
# apt configuration (the image's own apt lines, PISPEAKER_CODECS_APT_LINES, one per line, and
# Debian's archive keyring), kept in CACHE_DIR.
# Pinned to that kernel's exact build: the sources come from Debian's linux-source package of the
# kernel package's own version, and they are built out of tree against that version's
# linux-headers (its .config and Module.symvers, so the symbol CRCs are the kernel's) with
# Debian's compiler for it (gcc-12, cross) and its armhf kbuild tools (modpost must be the
# target's: it checks table sizes for 32-bit ARM; they run under qemu-user). Then every module's
# vermagic must equal the image's own modules', and every symbol CRC it imports must equal the
# CRC the image's own sound modules import for the same symbol; any difference stops the build.
# The image's root is read-only and only ever replaced whole (a new card, or an update bundle
# made from an image build's root), so "rebuilt when the kernel changes" is this running in every
# image build.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
export LC_ALL=C

die() { printf 'error: codec modules: %s\n' "$*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: $0 ROOT CACHE_DIR"
ROOT=$1
CACHE=$2

kernels=("$ROOT"/usr/lib/modules/*)
[ ${#kernels[@]} -eq 1 ] && [ -d "${kernels[0]}" ] || die "expected one kernel in $ROOT/usr/lib/modules, found: ${kernels[*]##*/}"
KVER=${kernels[0]##*/}                        # 6.1.0-50-armmp, 6.12.57+deb13-arm64
FLAVOUR=${KVER##*-}                           # armmp, arm64
ABI=${KVER%-*}                                # 6.1.0-50, 6.12.57+deb13
SERIES=$(cut -d. -f1,2 <<<"$KVER")            # 6.1, 6.12
VERSION=$(chroot "$ROOT" dpkg-query -W -f='${Version}' "linux-image-$KVER") ||
  die "linux-image-$KVER is not installed in $ROOT"
echo "kernel $KVER, Debian package version $VERSION"

case "$FLAVOUR" in
  armmp)
    DEB_ARCH=armhf KARCH=arm CROSS=arm-linux-gnueabihf- CC_PKG=gcc-12-arm-linux-gnueabihf
    SOURCES=(pcm512x.c pcm512x.h pcm512x-i2c.c pcm5102a.c) MODULES=(snd-soc-pcm5102a snd-soc-pcm512x snd-soc-pcm512x-i2c)
    MAKE_EXTRA=() ;;
  arm64)
    DEB_ARCH=arm64 KARCH=arm64 CROSS=aarch64-linux-gnu- CC_PKG=gcc-aarch64-linux-gnu
    SOURCES=(pcm512x.c pcm512x.h pcm512x-i2c.c) MODULES=(snd-soc-pcm512x snd-soc-pcm512x-i2c)
    # trixie's kernel gives its modules BTF (CONFIG_DEBUG_INFO_BTF_MODULES), made with pahole from
    # the kernel's own toolchain; a module without BTF loads all the same (BTF serves tracing
    # tools only), so ours are built without it.
    MAKE_EXTRA=(PISPEAKER_KERNEL_HAS_PCM5102A=1 CONFIG_DEBUG_INFO_BTF_MODULES=) ;;
  *) die "kernel flavour $FLAVOUR: armmp or arm64" ;;
esac
for tool in "${CROSS}objcopy" "${CROSS}strip" make perl; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install $CC_PKG make)"
done

# Debian's packages of exactly that version, kept between builds.
dl=$CACHE/codecs-$KVER-$VERSION
mkdir -p "$dl"
apt_opts=(-o APT::Sandbox::User=root)
if [ -n "${PISPEAKER_CODECS_APT_LINES:-}" ]; then
  # The image's suite through a private apt state: the build machine's own sources and
  # architectures stay untouched.
  priv=$CACHE/apt-$FLAVOUR
  mkdir -p "$priv/lists/partial" "$priv/cache/archives/partial" "$priv/sources.list.d" "$priv/trusted.gpg.d"
  printf '%s\n' "$PISPEAKER_CODECS_APT_LINES" > "$priv/sources.list"
  : > "$priv/status"
  ln -sf /usr/share/keyrings/debian-archive-keyring.gpg "$priv/trusted.gpg.d/debian-archive-keyring.gpg"
  apt_opts+=(-o "Dir::Etc::SourceList=$priv/sources.list" -o "Dir::Etc::SourceParts=$priv/sources.list.d"
    -o "Dir::Etc::TrustedParts=$priv/trusted.gpg.d" -o "Dir::State::Lists=$priv/lists"
    -o "Dir::State::status=$priv/status" -o "Dir::Cache=$priv/cache"
    -o "APT::Architecture=$DEB_ARCH" -o "APT::Architectures::=$DEB_ARCH")
fi
if [ ! -e "$dl/.complete" ]; then
  if [ -n "${PISPEAKER_CODECS_APT_LINES:-}" ]; then
    apt-get -q "${apt_opts[@]}" update >/dev/null || die "apt-get update of $PISPEAKER_CODECS_APT_LINES failed"
  fi
  (cd "$dl" && apt-get download -q "${apt_opts[@]}" \
    "linux-source-$SERIES=$VERSION" "linux-headers-$ABI-common=$VERSION" \
    "linux-headers-$KVER:$DEB_ARCH=$VERSION" "linux-kbuild-$SERIES:$DEB_ARCH=$VERSION") ||
    die "cannot download Debian's kernel source and headers $VERSION (apt-get update? dpkg --add-architecture $DEB_ARCH?)"
  touch "$dl/.complete"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for deb in "$dl"/linux-headers-*.deb "$dl"/linux-kbuild-*.deb; do dpkg-deb -x "$deb" "$work/tree"; done
headers=$work/tree/usr/src/linux-headers-$KVER
[ -f "$headers/Module.symvers" ] || die "no Module.symvers in linux-headers-$KVER"
# The flavour's Makefile includes the common one by its installed path.
sed -i "s|^include /usr/src/|include $work/tree/usr/src/|" "$headers/Makefile"

mkdir -p "$work/mod"
dpkg-deb --fsys-tarfile "$dl/linux-source-${SERIES}_${VERSION}_all.deb" |
  tar -xO "./usr/src/linux-source-$SERIES.tar.xz" | xz -dc |
  tar -x -C "$work/mod" --strip-components=4 "${SOURCES[@]/#/linux-source-$SERIES/sound/soc/codecs/}" ||
  die "the codec sources are not in linux-source-$SERIES $VERSION"
cp "$REPO/image/codecs/Kbuild" "$work/mod/Kbuild"

# Debian's headers name the compiler the kernel was built with (.kernelvariables: CC = ...gcc-N).
# The armhf (bookworm) kernel's gcc-12 is the build machine's. trixie's arm64 kernel was built with
# gcc-14, which bookworm has no cross compiler of: gcc-12 builds these two C files, and the one
# kernel option that only gcc-14 understands is turned off for it exactly as the kernel's own
# Makefile does for older compilers (CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT unset: -falign-functions
# instead of -fmin-function-alignment, the same 8-byte alignment). The struct layouts are the C
# ABI's, the same for both; the vermagic and CRC checks below still decide.
kcc=$(sed -n 's/^CC[[:space:]]*=.*$(CROSS_COMPILE)\(gcc-[0-9][0-9]*\).*/\1/p' "$headers/.kernelvariables" 2>/dev/null | head -n1)
[ -n "$kcc" ] || kcc=gcc
if command -v "$CROSS$kcc" >/dev/null; then
  MAKE_EXTRA+=(CC="$CROSS$kcc")
  echo "compiler: $CROSS$kcc (the kernel's own)"
elif [ "$FLAVOUR" = arm64 ] && command -v "${CROSS}gcc-12" >/dev/null; then
  MAKE_EXTRA+=(CC="${CROSS}gcc-12" CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=)
  echo "compiler: ${CROSS}gcc-12 (the kernel's is $CROSS$kcc, which this machine does not have; -falign-functions fallback)"
else
  die "$CROSS$kcc (the compiler of kernel $KVER) is missing"
fi
# The target's kbuild tools run under qemu-user with the image's own C library.
QEMU_LD_PREFIX=$ROOT make -s -C "$headers" M="$work/mod" ARCH="$KARCH" CROSS_COMPILE="$CROSS" ${MAKE_EXTRA[@]+"${MAKE_EXTRA[@]}"} modules \
  >"$work/make.log" 2>&1 || { cat "$work/make.log" >&2; die "the out-of-tree build failed (log above)"; }
if grep -E 'WARNING: modpost|undefined!' "$work/make.log" >&2; then
  die "modpost warnings (above): the modules would not load on this kernel"
fi

# trixie's modules are xz-compressed (.ko.xz): read them uncompressed.
plain() { case "$1" in *.xz) xz -dc "$1" > "$work/plain.ko"; echo "$work/plain.ko" ;; *) echo "$1" ;; esac; }
modinfo_field() { "${CROSS}objcopy" -O binary --only-section=.modinfo "$(plain "$1")" /dev/stdout | tr '\0' '\n' | sed -n "s/^$2=//p"; }
# modversions entries (struct modversion_info): an unsigned long CRC and a name filling 64 bytes,
# i.e. 4 + 60 bytes on 32-bit ARM, 8 + 56 on arm64 (little-endian both).
case "$KARCH" in arm) crc_layout="V Z60" ;; arm64) crc_layout="Q< Z56" ;; esac
crcs() { # "crc symbol" per symbol a module imports
  "${CROSS}objcopy" -O binary --only-section=__versions "$(plain "$1")" /dev/stdout |
    LAYOUT=$crc_layout perl -e 'local $/; my $d = <STDIN>; for (my $i = 0; $i + 64 <= length $d; $i += 64) {
      my ($c, $n) = unpack($ENV{LAYOUT}, substr($d, $i, 64)); printf "%08x %s\n", $c, $n }'
}
moddir=$ROOT/usr/lib/modules/$KVER
reference=$(ls "$moddir"/kernel/sound/soc/generic/snd-soc-simple-card.ko* 2>/dev/null | head -n1)
[ -n "$reference" ] || die "the image kernel has no snd-soc-simple-card.ko to compare with"
want=$(modinfo_field "$reference" vermagic)
find "$moddir/kernel/sound" -name '*.ko' -o -name '*.ko.xz' | while IFS= read -r m; do crcs "$m"; done | sort -u > "$work/kernel-crcs"

install -d "$moddir/updates/pispeaker"
for name in "${MODULES[@]}"; do
  ko=$work/mod/$name.ko
  [ -f "$ko" ] || die "$name.ko was not built"
  got=$(modinfo_field "$ko" vermagic)
  [ "$got" = "$want" ] || die "$name.ko has vermagic '$got', the image kernel '$want'"
  crcs "$ko" | sort -u > "$work/$name.crcs"
  # Same symbol, other CRC: built against headers that are not this kernel's.
  mismatch=$(join -1 2 -2 2 -o 0,1.1,2.1 <(sort -k2 "$work/$name.crcs") <(sort -k2 "$work/kernel-crcs") | awk '$2 != $3')
  [ -z "$mismatch" ] || die "$name.ko imports symbols with other CRCs than the image kernel's modules: $mismatch"
  shared=$(join -1 2 -2 2 <(sort -k2 "$work/$name.crcs") <(sort -k2 "$work/kernel-crcs") | wc -l)
  [ "$shared" -ge 3 ] || die "$name.ko shares only $shared imported symbols with the image's sound modules: nothing to check its CRCs against"
  "${CROSS}strip" --strip-debug -o "$moddir/updates/pispeaker/$name.ko" "$ko"
  echo "$name.ko: vermagic '$got' = the image kernel's; $(wc -l < "$work/$name.crcs") imported symbols, $shared checked against the image's own modules' CRCs; $(stat -c %s "$moddir/updates/pispeaker/$name.ko") bytes"
done
chroot "$ROOT" depmod "$KVER"
grep -q 'of:N\*T\*Cti,pcm5102a snd_soc_pcm5102a' "$moddir/modules.alias" || die "depmod did not index snd-soc-pcm5102a (ours or the kernel's)"
grep -q 'of:N\*T\*Cti,pcm5122 snd_soc_pcm512x_i2c' "$moddir/modules.alias" || die "depmod did not index snd-soc-pcm512x-i2c"
echo "codec modules installed in /usr/lib/modules/$KVER/updates/pispeaker (udev loads them from the overlays' compatible strings)"
