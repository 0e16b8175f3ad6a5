#!/usr/bin/env bash
# Checks tests/image/pi_firmware.sh against a small hand-made SD card whose config.txt uses what
# the image's (and issue 14's A/B slots') config.txt may use: include, os_prefix=, [tryboot],
# model filters, [none], kernel=/initramfs, cmdline.txt and dtoverlay= applied in order with
# fdtoverlay. Seconds, no emulator; scripts/test.sh runs it before tests/image_boot_pi.sh.
#
#   bash tests/image/pi_firmware_test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in mcopy mmd mkfs.fat sfdisk dtc fdtoverlay fdtget; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing (apt-get install mtools dosfstools fdisk device-tree-compiler)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
check() { # what expected actual
  if [ "$2" = "$3" ]; then passed=$((passed + 1)); echo "ok: $1"; else failed=$((failed + 1)); echo "FAIL: $1: expected '$2', got '$3'"; fi
}

# A base tree with the labels our overlays use (the Pi 2's GPIO controller holding GPIO 18-21, as
# the upstream bcm2836-rpi-2-b.dts does).
cat > "$work/base.dts" <<'DTS'
/dts-v1/;
/ {
	#address-cells = <1>;
	#size-cells = <1>;
	model = "test";
	soc {
		gpio: gpio {
			pinctrl-names = "default";
			pinctrl-0 = <&gpioout &alt0 &i2s_alt0>;
			gpioout: gpioout { };
			alt0: alt0 { };
			i2s_alt0: i2s_alt0 { };
			pcm_gpio18: pcm_gpio18 { };
		};
		i2s: i2s { status = "disabled"; };
	};
};
DTS
dtc -q -@ -I dts -O dtb -o "$work/base.dtb" "$work/base.dts"
for o in pispeaker-pi2-i2s pispeaker-i2s-dac; do
  dtc -q -@ -I dts -O dtb -i board/overlays -o "$work/$o.dtbo" "board/overlays/$o.dts"
done

# The card: an MBR with one FAT partition at 1 MiB.
card=$work/card.img
truncate -s 16M "$card"
echo 'start=2048, type=c' | sfdisk -q "$card"
mkfs.fat -C "$work/fat.img" 8192 >/dev/null
dd if="$work/fat.img" of="$card" bs=1M seek=1 conv=notrunc status=none
FAT="$card@@1048576"
put() { printf '%s\n' "$2" > "$work/put"; mcopy -o -i "$FAT" "$work/put" "::$1"; }
mmd -i "$FAT" ::slot_a ::slot_b ::slot_a/overlays ::slot_b/overlays
for slot in slot_a slot_b; do
  put "$slot/vmlinuz" "kernel $slot"
  put "$slot/vmlinuz-pi3" "pi3 kernel $slot"
  put "$slot/initrd.img" "initrd $slot"
  put "$slot/cmdline.txt" "root=LABEL=$slot ro"
  mcopy -i "$FAT" "$work/base.dtb" "::$slot/bcm2836-rpi-2-b.dtb"
  mcopy -i "$FAT" "$work/base.dtb" "::$slot/bcm2837-rpi-3-b.dtb"
  mcopy -i "$FAT" "$work/base.dtb" "::$slot/bcm2837-rpi-zero-2-w.dtb"
  for o in pispeaker-pi2-i2s pispeaker-i2s-dac; do mcopy -i "$FAT" "$work/$o.dtbo" "::$slot/overlays/$o.dtbo"; done
done
put cmdline.txt "root=LABEL=unprefixed"
put config.txt "$(cat <<'CFG'
# as Debian's raspi-firmware writes it, plus an A/B slot choice
enable_uart=1
upstream_kernel=1
kernel=vmlinuz
initramfs initrd.img followkernel
[pi3]
kernel=vmlinuz-pi3
arm_64bit=1
[all]
os_prefix=slot_a/
[tryboot]
os_prefix=slot_b/
[none]
dtoverlay=never-applied
[all]
include board.txt
CFG
)"
put board.txt "$(printf '[pi2]\ndtoverlay=pispeaker-pi2-i2s\n[all]\ndtoverlay=pispeaker-i2s-dac\ndtparam=audio=off')"

run() { # out-dir model [env]
  env ${3:-} bash tests/image/pi_firmware.sh "$card" "$2" "$work/$1" > "$work/$1.txt"
}
val() { sed -n "s/^$2=//p" "$work/$1.txt" | tr '\n' ' ' | sed 's/ $//'; }

run pi2 pi2
check "os_prefix selects slot A" "slot_a/" "$(val pi2 os_prefix)"
check "kernel under os_prefix" "slot_a/vmlinuz" "$(val pi2 kernel)"
check "initramfs under os_prefix" "slot_a/initrd.img" "$(val pi2 initramfs)"
check "the kernel file is the slot's" "kernel slot_a" "$(cat "$work/pi2/kernel")"
check "cmdline.txt under os_prefix" "root=LABEL=slot_a ro" "$(val pi2 cmdline)"
check "Pi 2 upstream tree (upstream_kernel=1)" "slot_a/bcm2836-rpi-2-b.dtb" "$(val pi2 dtb)"
check "overlays from the include, [pi2] first, [none] skipped" \
  "slot_a/overlays/pispeaker-pi2-i2s.dtbo slot_a/overlays/pispeaker-i2s-dac.dtbo" "$(val pi2 overlay)"
check "dtparam listed" "audio=off" "$(val pi2 dtparam)"
check "overlay applied: the card" "simple-audio-card" "$(fdtget -t s "$work/pi2/board.dtb" /pispeaker-sound compatible)"
check "overlay applied: I2S enabled" "okay" "$(fdtget -t s "$work/pi2/board.dtb" /soc/i2s status)"
check "Pi 2 fix-up applied: GPIO controller keeps two hogs" 2 "$(fdtget "$work/pi2/board.dtb" /soc/gpio pinctrl-0 | wc -w)"

run pi3 pi3
check "[pi3] kernel on a Pi 3" "slot_a/vmlinuz-pi3" "$(val pi3 kernel)"
check "Pi 3 tree" "slot_a/bcm2837-rpi-3-b.dtb" "$(val pi3 dtb)"
check "no [pi2] fix-up on a Pi 3" "slot_a/overlays/pispeaker-i2s-dac.dtbo" "$(val pi3 overlay)"
check "[pi3] arm_64bit=1: the Pi 3 starts a 64-bit kernel" 1 "$(val pi3 arm_64bit)"
check "no arm_64bit on the Pi 2 ([pi3] section)" 0 "$(val pi2 arm_64bit)"
run pi02 pi02
check "Zero 2 W tree" "slot_a/bcm2837-rpi-zero-2-w.dtb" "$(val pi02 dtb)"
check "no [pi3] section on a Zero 2 W: 32-bit" 0 "$(val pi02 arm_64bit)"

run tryboot pi2 PI_FIRMWARE_TRYBOOT=1
check "[tryboot] selects slot B" "slot_b/vmlinuz" "$(val tryboot kernel)"
check "slot B's cmdline" "root=LABEL=slot_b ro" "$(val tryboot cmdline)"

# A missing file is an error naming it, as the firmware would not boot.
put board.txt "dtoverlay=missing-overlay"
if run missing pi2 2>"$work/err"; then check "a missing overlay fails" fail ok; else
  check "a missing overlay fails, naming it" 1 "$(grep -c 'slot_a/overlays/missing-overlay.dtbo' "$work/err")"
fi

# A 64-bit boot partition on a Pi 2: its Cortex-A7 cannot run it, the firmware would not boot.
put board.txt "arm_64bit=1"
if run pi2-64 pi2 2>"$work/err"; then check "arm_64bit=1 on a Pi 2 fails" fail ok; else
  check "arm_64bit=1 on a Pi 2 fails, saying why" 1 "$(grep -c 'no 64-bit mode' "$work/err")"
fi

echo "pi_firmware checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
