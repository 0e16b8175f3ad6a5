#!/usr/bin/env bash
# Every HAT overlay in board/overlays/ compiles, and applies with fdtoverlay (what the Pi firmware
# does with a dtoverlay= line) onto the device tree of every Pi model its board preset lists,
# taken from the kernel the image ships; then the merged tree is checked: the I2S controller is
# enabled on GPIO 18-21 and nothing else claims those pins, the simple-audio-card links the I2S
# controller to the codec, and an I2C codec sits on i2c1 at its address.
#
#   bash tests/overlays.sh [DTB_DIR [ARCH]]
#
# ARCH is the image whose kernel the trees come from: armhf (default; the Pi 2's image: the Pi 4
# boards are skipped, armmp has no PCIe/Ethernet for it) or arm64 (the Pi 3/4/Zero 2 W image: the
# Pi 2 boards are skipped, the arm64 kernel has no BCM2836 trees and a Pi 2 cannot run it).
#
# DTB_DIR defaults to the device trees of Debian bookworm's linux-image-armmp (armhf), fetched
# with apt-get download (needs `dpkg --add-architecture armhf`, which scripts/cross-armv7.sh
# install does). image/build.sh runs it against the image's own kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
for tool in dtc fdtoverlay fdtget; do
  command -v "$tool" >/dev/null || die "$tool is missing: apt-get install device-tree-compiler"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

dtb_dir=${1:-}
arch=${2:-armhf}
case "$arch" in
  armhf) skip_boards=" bcm2711-rpi-4-b " ;;
  arm64) skip_boards=" bcm2836-rpi-2-b " ;;
  *) die "ARCH $arch: armhf or arm64" ;;
esac
if [ -z "$dtb_dir" ]; then
  dpkg --print-foreign-architectures | grep -qx armhf ||
    die "no armhf architecture for the kernel package: run scripts/cross-armv7.sh install, or give a DTB directory"
  (cd "$work" && apt-get download -q linux-image-armmp:armhf >/dev/null 2>&1 &&
    pkg=$(apt-cache depends linux-image-armmp:armhf | sed -n 's/.*Depends: \(linux-image-[^ ]*\)/\1/p' | head -n1) &&
    apt-get download -q "$pkg" >/dev/null 2>&1) ||
    die "apt-get download linux-image-armmp:armhf failed (run apt-get update?)"
  for deb in "$work"/linux-image-*.deb; do dpkg-deb -x "$deb" "$work/kernel"; done
  dtb_dir=$(dirname "$(find "$work/kernel" -name bcm2836-rpi-2-b.dtb | head -n1)")
  [ -d "$dtb_dir" ] || die "no Raspberry Pi device trees in the kernel package"
fi
echo "device trees: $dtb_dir"

passed=0 failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }

# Compile every overlay (with symbols, as the firmware's overlays are).
for dts in board/overlays/*.dts; do
  name=$(basename "$dts" .dts)
  if dtc -q -@ -I dts -O dtb -i board/overlays -o "$work/$name.dtbo" "$dts"; then
    ok "$name compiles"
  else
    fail "$name does not compile"
  fi
done

phandle() { fdtget -t x "$1" "$2" phandle 2>/dev/null || echo none; }
path_of() { fdtget -t s "$1" /__symbols__ "$2"; }
# (a board without the label gets "none", which matches no phandle)

check_merged() { # merged.dtb overlay-name preset-name
  local dtb=$1 overlay=$2 what=$3 i2s pins cpu codec codec_path
  i2s=$(path_of "$dtb" i2s)
  pins=$(phandle "$dtb" "$(path_of "$dtb" pcm_gpio18)")
  [ "$(fdtget -t s "$dtb" "$i2s" status)" = okay ] || { fail "$what: i2s not enabled"; return; }
  [ "$(fdtget -t x "$dtb" "$i2s" pinctrl-0)" = "$pins" ] || { fail "$what: i2s not on pcm_gpio18"; return; }
  # Nobody else may hold GPIO 18-21 in a pin mux (the Pi 2's GPIO controller hogs them: that
  # is what pispeaker-pi2-i2s undoes).
  local holders="" alt
  alt=$(phandle "$dtb" "$(path_of "$dtb" i2s_alt0 2>/dev/null)")
  for node in $(fdtget -l "$dtb" /soc 2>/dev/null | sed 's|^|/soc/|'); do
    [ "$node" = "$i2s" ] && continue
    for p in $(fdtget -t x "$dtb" "$node" pinctrl-0 2>/dev/null); do
      if [ "$p" = "$pins" ] || [ "$p" = "$alt" ]; then holders="$holders $node"; fi
    done
  done
  [ -z "$holders" ] || { fail "$what: GPIO 18-21 also claimed by$holders"; return; }
  # A DAI phandle names a node with #sound-dai-cells (0 here): upstream's i2s node has none of
  # its own, and without it simple-audio-card fails to parse the card.
  [ "$(fdtget -t u "$dtb" "$i2s" '#sound-dai-cells' 2>/dev/null)" = 0 ] || { fail "$what: the i2s node has no #sound-dai-cells = <0>"; return; }
  cpu=$(fdtget -t x "$dtb" /pispeaker-sound/simple-audio-card,cpu sound-dai)
  [ "$cpu" = "$(phandle "$dtb" "$i2s")" ] || { fail "$what: the card's CPU DAI is not the I2S controller"; return; }
  codec=$(fdtget -t x "$dtb" /pispeaker-sound/simple-audio-card,codec sound-dai)
  codec_path=$(path_of "$dtb" pispeaker_codec 2>/dev/null || true)
  [ -n "$codec_path" ] && [ "$codec" = "$(phandle "$dtb" "$codec_path")" ] ||
    { fail "$what: the card's codec DAI is not the codec node"; return; }
  [ "$(fdtget -t s "$dtb" /pispeaker-sound compatible)" = simple-audio-card ] ||
    { fail "$what: no simple-audio-card"; return; }
  case "$(fdtget -t s "$dtb" "$codec_path" compatible)" in
    ti,pcm5122)
      local i2c1 reg
      i2c1=$(path_of "$dtb" i2c1)
      [ "${codec_path%/*}" = "$i2c1" ] || { fail "$what: the PCM5122 is not on i2c1"; return; }
      [ "$(fdtget -t s "$dtb" "$i2c1" status)" = okay ] || { fail "$what: i2c1 disabled"; return; }
      reg=$(fdtget -t x "$dtb" "$codec_path" reg)
      [ "0x${reg}" = "0x${codec_path##*@}" ] || { fail "$what: codec reg $reg does not match its node name"; return; }
      ok "$what: I2S on GPIO 18-21, simple-audio-card, PCM5122 on i2c1 at 0x$reg" ;;
    ti,pcm5102a)
      ok "$what: I2S on GPIO 18-21, simple-audio-card, PCM5102A (no I2C)" ;;
    *) fail "$what: unexpected codec $(fdtget -t s "$dtb" "$codec_path" compatible)" ;;
  esac
}

# Apply each preset's overlay onto each of its boards' trees, as the firmware would: the Pi 2
# gets the [pi2] fix-up too.
for preset in board/presets/*.toml; do
  overlay=$(sed -n 's/^image-overlay = "\(.*\)"/\1/p' "$preset")
  [ -n "$overlay" ] || continue
  [ -f "$work/$overlay.dtbo" ] || { fail "$(basename "$preset"): overlay $overlay does not exist"; continue; }
  dtbs=$(sed -n 's/^image-dtbs = \[\(.*\)\]/\1/p' "$preset" | tr -d '",')
  [ -n "$dtbs" ] || { fail "$(basename "$preset") lists no boards (image-dtbs)"; continue; }
  for board in $dtbs; do
    [[ "$skip_boards" != *" $board "* ]] || continue
    base="$dtb_dir/$board.dtb"
    [ -f "$base" ] || { fail "$overlay: the kernel has no $board.dtb"; continue; }
    fdtget "$base" /__symbols__ i2s >/dev/null 2>&1 || { fail "$board.dtb has no __symbols__: overlays cannot apply"; continue; }
    extra=()
    case "$board" in bcm2836-rpi-2-b) extra=("$work/pispeaker-pi2-i2s.dtbo") ;; esac
    if fdtoverlay -i "$base" -o "$work/merged.dtb" "${extra[@]}" "$work/$overlay.dtbo" 2>"$work/err"; then
      check_merged "$work/merged.dtb" "$overlay" "$overlay on $board"
    else
      fail "$overlay does not apply to $board: $(cat "$work/err")"
    fi
  done
done

# The fix-up is needed: without it the Pi 2's tree keeps GPIO 18-21 hogged.
if [ "$arch" = arm64 ]; then
  echo "(no Pi 2 tree in the arm64 kernel: the pispeaker-pi2-i2s check is the armhf image's)"
elif fdtoverlay -i "$dtb_dir/bcm2836-rpi-2-b.dtb" -o "$work/nofix.dtb" "$work/pispeaker-i2s-dac.dtbo" 2>/dev/null &&
  check_merged "$work/nofix.dtb" pispeaker-i2s-dac "without the fix-up" 2>&1 | grep -q "also claimed by"; then
  ok "without pispeaker-pi2-i2s the Pi 2's GPIO controller keeps GPIO 18-21 (the fix-up is needed)"
else
  fail "the Pi 2 tree no longer hogs GPIO 18-21: pispeaker-pi2-i2s may be unneeded (check the kernel's bcm2836-rpi-2-b.dts)"
fi

echo "overlay checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
