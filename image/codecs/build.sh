#!/usr/bin/env bash
# Builds the I2S DAC HATs' codec drivers that Debian's kernel leaves out (snd-soc-pcm512x,
# snd-soc-pcm512x-i2c, snd-soc-pcm5102a) for the kernel of an image root, and installs them there:
#
#   bash image/codecs/build.sh ROOT CACHE_DIR        (image/build.sh runs it, as root)
#
# Pinned to that kernel's exact build: the sources come from Debian's linux-source package of the
# kernel package's own version, and they are built out of tree against that version's
# linux-headers (its .config and Module.symvers, so the symbol CRCs are the kernel's) with
# Debian's compiler for it (gcc-12, cross) and its armhf kbuild tools (modpost must be the
# target's: it checks table sizes for 32-bit ARM; they run under qemu-user). Then every module's
# vermagic must equal the image's own modules', and every symbol CRC it imports must equal the
# CRC the image's own sound modules import for the same symbol; any difference stops the build.
# The image is updated by reflashing (read-only root), so "rebuilt when the kernel changes" is
# this running in every image build.
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
KVER=${kernels[0]##*/}                        # 6.1.0-50-armmp
ABI=${KVER%-*}                                # 6.1.0-50
SERIES=$(cut -d. -f1,2 <<<"$KVER")            # 6.1
VERSION=$(chroot "$ROOT" dpkg-query -W -f='${Version}' "linux-image-$KVER") ||
  die "linux-image-$KVER is not installed in $ROOT"
echo "kernel $KVER, Debian package version $VERSION"

CROSS=arm-linux-gnueabihf-
for tool in "${CROSS}gcc-12" "${CROSS}objcopy" "${CROSS}strip" make perl; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install gcc-12-arm-linux-gnueabihf make)"
done

# Debian's packages of exactly that version, kept between builds.
dl=$CACHE/codecs-$KVER-$VERSION
mkdir -p "$dl"
if [ ! -e "$dl/.complete" ]; then
  (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root \
    "linux-source-$SERIES=$VERSION" "linux-headers-$ABI-common=$VERSION" \
    "linux-headers-$KVER:armhf=$VERSION" "linux-kbuild-$SERIES:armhf=$VERSION") ||
    die "cannot download Debian's kernel source and headers $VERSION (apt-get update? dpkg --add-architecture armhf?)"
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
  tar -x -C "$work/mod" --strip-components=4 \
    "linux-source-$SERIES/sound/soc/codecs/pcm512x.c" "linux-source-$SERIES/sound/soc/codecs/pcm512x.h" \
    "linux-source-$SERIES/sound/soc/codecs/pcm512x-i2c.c" "linux-source-$SERIES/sound/soc/codecs/pcm5102a.c" ||
  die "the codec sources are not in linux-source-$SERIES $VERSION"
cp "$REPO/image/codecs/Kbuild" "$work/mod/Kbuild"

# The armhf kbuild tools run under qemu-user with the image's own C library.
QEMU_LD_PREFIX=$ROOT make -s -C "$headers" M="$work/mod" ARCH=arm CROSS_COMPILE="$CROSS" modules \
  >"$work/make.log" 2>&1 || { cat "$work/make.log" >&2; die "the out-of-tree build failed (log above)"; }
if grep -E 'WARNING: modpost|undefined!' "$work/make.log" >&2; then
  die "modpost warnings (above): the modules would not load on this kernel"
fi

modinfo_field() { "${CROSS}objcopy" -O binary --only-section=.modinfo "$1" /dev/stdout | tr '\0' '\n' | sed -n "s/^$2=//p"; }
crcs() { # "crc symbol" per symbol a module imports (modversions: 4-byte CRC + 60-byte name on 32-bit)
  "${CROSS}objcopy" -O binary --only-section=__versions "$1" /dev/stdout |
    perl -e 'local $/; my $d = <STDIN>; for (my $i = 0; $i + 64 <= length $d; $i += 64) {
      my ($c, $n) = unpack("V Z60", substr($d, $i, 64)); printf "%08x %s\n", $c, $n }'
}
moddir=$ROOT/usr/lib/modules/$KVER
reference=$moddir/kernel/sound/soc/generic/snd-soc-simple-card.ko
[ -f "$reference" ] || die "the image kernel has no snd-soc-simple-card.ko to compare with"
want=$(modinfo_field "$reference" vermagic)
find "$moddir/kernel/sound" -name '*.ko' -print0 | while IFS= read -r -d '' m; do crcs "$m"; done | sort -u > "$work/kernel-crcs"

install -d "$moddir/updates/pispeaker"
for name in snd-soc-pcm5102a snd-soc-pcm512x snd-soc-pcm512x-i2c; do
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
grep -q 'of:N\*T\*Cti,pcm5102a snd_soc_pcm5102a' "$moddir/modules.alias" || die "depmod did not index snd-soc-pcm5102a"
grep -q 'of:N\*T\*Cti,pcm5122 snd_soc_pcm512x_i2c' "$moddir/modules.alias" || die "depmod did not index snd-soc-pcm512x-i2c"
echo "codec modules installed in /usr/lib/modules/$KVER/updates/pispeaker (udev loads them from the overlays' compatible strings)"
