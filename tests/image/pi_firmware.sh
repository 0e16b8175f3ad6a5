#!/usr/bin/env bash
# What the Raspberry Pi firmware would boot from an SD image: reads the image's FAT boot partition
# (mtools, by byte offset: no loop device, no mount), follows config.txt the way start.elf does,
# and extracts the kernel, the initramfs, the command line and the device tree with every
# dtoverlay= applied (fdtoverlay), so an emulator can boot exactly that:
#
#   bash tests/image/pi_firmware.sh IMAGE MODEL OUTDIR
#
# MODEL is the board whose firmware is emulated: pi2, pi3, pi3+, pi3a+, pi02 (Zero 2 W), pi4.
# OUTDIR receives `kernel`, `initramfs`, `cmdline.txt` and `board.dtb` (the base tree with the
# overlays applied); stdout gets one `key=value` line per decision (kernel, initramfs, dtb,
# overlay, cmdline, os_prefix, arm_64bit), for a test to check and print.
#
# The subset of config.txt a boot partition of ours uses, with the firmware's semantics
# (https://www.raspberrypi.com/documentation/computers/config_txt.html):
#   - conditional sections: [all], [none], the model filters ([pi2], [pi3], [pi3+], [pi0], [pi0w],
#     [pi02], [pi4]; a model filter replaces the previous one, [all] resets every filter) and
#     [tryboot] (true only with PI_FIRMWARE_TRYBOOT=1, the firmware's one-shot tryboot flag);
#     any other filter is unknown here: its section is skipped, and said on stderr;
#   - `include FILE` (relative to the partition's root), inserted where it stands;
#   - `os_prefix=` prepended to the kernel, the initramfs, the command-line file, the device trees
#     and the overlay directory (`overlay_prefix=`, default `overlays/`): A/B slots use it;
#   - `arm_64bit=1`: the ARMv8 models (Pi 3, Zero 2 W, Pi 4) start the kernel in 64-bit mode; its
#     default kernel name is then kernel8.img instead of kernel7.img. The Pi 2 (BCM2836,
#     Cortex-A7) has no 64-bit mode: arm_64bit=1 on it is an error here;
#   - `kernel=`, `initramfs FILE [ADDRESS|followkernel]` (and `ramfsfile=`), `cmdline=`
#     (default cmdline.txt), `device_tree=` (else the model's own tree: upstream names with
#     `upstream_kernel=1`, as Debian's config.txt sets, the Raspberry Pi kernel's names otherwise);
#   - `dtoverlay=NAME` applied in order onto the tree; an overlay with parameters
#     (`dtoverlay=NAME,param=value`) or `dtparam=` lines need the overlay's __overrides__, which
#     fdtoverlay does not evaluate: a parameter on a dtoverlay line is an error here, dtparam=
#     lines are listed (`dtparam=` on stdout) and not applied: upstream device trees carry no
#     __overrides__, so the firmware cannot apply them to these trees either.
# Later lines win (kernel=, os_prefix= ...), as in the firmware. The firmware also edits the tree
# it hands over (memory, serial number, MAC address, /chosen); an emulator does that part itself.
set -euo pipefail

die() { printf 'pi_firmware: %s\n' "$*" >&2; exit 1; }
[ $# -eq 3 ] || die "usage: $0 IMAGE MODEL OUTDIR"
IMAGE=$1 MODEL=$2 OUT=$3
for tool in mcopy sfdisk fdtoverlay; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install mtools fdisk device-tree-compiler)"
done

# The model's device tree, as the firmware names it: [downstream] [upstream (upstream_kernel=1)].
case "$MODEL" in
  pi2) DTB_DOWN=bcm2709-rpi-2-b.dtb DTB_UP=bcm2836-rpi-2-b.dtb ;;
  pi3) DTB_DOWN=bcm2710-rpi-3-b.dtb DTB_UP=bcm2837-rpi-3-b.dtb ;;
  pi3+) DTB_DOWN=bcm2710-rpi-3-b-plus.dtb DTB_UP=bcm2837-rpi-3-b-plus.dtb ;;
  pi3a+) DTB_DOWN=bcm2710-rpi-3-a-plus.dtb DTB_UP=bcm2837-rpi-3-a-plus.dtb ;;
  pi02) DTB_DOWN=bcm2710-rpi-zero-2-w.dtb DTB_UP=bcm2837-rpi-zero-2-w.dtb ;;
  pi4) DTB_DOWN=bcm2711-rpi-4-b.dtb DTB_UP=bcm2711-rpi-4-b.dtb ;;
  *) die "unknown model $MODEL (pi2, pi3, pi3+, pi3a+, pi02, pi4)" ;;
esac
# Does a model filter section ([pi3] ...) apply to this model?
model_matches() {
  case "$1" in
    pi2) [ "$MODEL" = pi2 ] ;;
    pi3) case "$MODEL" in pi3 | pi3+ | pi3a+) true ;; *) false ;; esac ;;
    pi3+) case "$MODEL" in pi3+ | pi3a+) true ;; *) false ;; esac ;;
    pi0 | pi0w | pi02) [ "$MODEL" = pi02 ] ;;
    pi4) [ "$MODEL" = pi4 ] ;;
    *) false ;;
  esac
}

# The FAT partition, addressed by byte offset (mtools' "@@").
start=$(sfdisk -J "$IMAGE" | sed -n 's/.*"start": *\([0-9]*\).*/\1/p' | head -n1)
[ -n "$start" ] || die "no partition table in $IMAGE"
FAT="$IMAGE@@$((start * 512))"
mkdir -p "$OUT"
fetch() { # FAT-path destination: a boot-partition file, or fail saying which
  mcopy -n -o -i "$FAT" "::$1" "$2" 2>/dev/null || die "the boot partition has no $1 (what config.txt asks for)"
}

model_ok=1 tryboot_ok=1 other_ok=1
active() { [ "$model_ok" = 1 ] && [ "$tryboot_ok" = 1 ] && [ "$other_ok" = 1 ]; }
os_prefix="" overlay_prefix="overlays/" kernel="" initramfs="" cmdline_file="cmdline.txt" device_tree="" upstream=0 arm_64bit=0
overlays=() dtparams=()
depth=0
parse() { # FAT-path of a config file
  local file=$1 line key value filter
  depth=$((depth + 1))
  [ "$depth" -le 8 ] || die "include nesting deeper than 8 at $file"
  fetch "$file" "$OUT/.cfg.$depth"
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    line=${line%%#*}
    line=$(sed 's/^[[:space:]]*//; s/[[:space:]]*$//' <<<"$line")
    [ -n "$line" ] || continue
    if [[ "$line" == "["*"]" ]]; then
      filter=${line:1:${#line}-2}
      case "$filter" in
        all) model_ok=1 tryboot_ok=1 other_ok=1 ;;
        none) other_ok=0 ;;
        tryboot) [ "${PI_FIRMWARE_TRYBOOT:-0}" = 1 ] && tryboot_ok=1 || tryboot_ok=0 ;;
        pi[0-9]*) model_matches "$filter" && model_ok=1 || model_ok=0 ;;
        *) echo "pi_firmware: filter [$filter] is not modelled: its lines are skipped" >&2; other_ok=0 ;;
      esac
      continue
    fi
    active || continue
    case "$line" in
      include[[:space:]]*)
        value=$(sed 's/^include[[:space:]]*//' <<<"$line")
        parse "$value" ;;
      initramfs[[:space:]]*)
        initramfs=$(awk '{print $2}' <<<"$line") ;;
      *=*)
        key=${line%%=*} value=${line#*=}
        case "$key" in
          os_prefix) os_prefix=$value ;;
          overlay_prefix) overlay_prefix=$value ;;
          kernel) kernel=$value ;;
          ramfsfile) initramfs=$value ;;
          cmdline) cmdline_file=$value ;;
          device_tree) device_tree=$value ;;
          upstream_kernel) upstream=$value ;;
          arm_64bit) arm_64bit=$value ;;
          dtoverlay) [ -z "$value" ] || overlays+=("$value") ;;
          dtparam) dtparams+=("$value") ;;
        esac ;;
    esac
  done <"$OUT/.cfg.$depth"
  rm -f "$OUT/.cfg.$depth"
  depth=$((depth - 1))
}
parse config.txt

[ "$arm_64bit" = 1 ] && [ "$MODEL" = pi2 ] && die "arm_64bit=1 is set for a Pi 2, whose Cortex-A7 has no 64-bit mode: flash the armhf image on a Pi 2"
[ "$arm_64bit" = 1 ] && default_kernel=kernel8.img || default_kernel=kernel7.img
[ -n "$kernel" ] || die "config.txt names no kernel= (the firmware's default $default_kernel is not what this image boots)"
echo "arm_64bit=$arm_64bit"
echo "os_prefix=$os_prefix"
echo "kernel=$os_prefix$kernel"
fetch "$os_prefix$kernel" "$OUT/kernel"
if [ -n "$initramfs" ]; then
  echo "initramfs=$os_prefix$initramfs"
  fetch "$os_prefix$initramfs" "$OUT/initramfs"
else
  echo "initramfs="
  rm -f "$OUT/initramfs"
fi
fetch "$os_prefix$cmdline_file" "$OUT/cmdline.txt"
echo "cmdline=$(tr -d '\r\n' <"$OUT/cmdline.txt")"
if [ -z "$device_tree" ]; then
  if [ "$upstream" = 1 ]; then device_tree=$DTB_UP; else device_tree=$DTB_DOWN; fi
fi
echo "dtb=$os_prefix$device_tree"
fetch "$os_prefix$device_tree" "$OUT/base.dtb"
cp "$OUT/base.dtb" "$OUT/board.dtb"
for o in ${overlays[@]+"${overlays[@]}"}; do
  [[ "$o" != *,* ]] || die "dtoverlay=$o has parameters, which this emulation of the firmware does not apply"
  echo "overlay=$os_prefix$overlay_prefix$o.dtbo"
  fetch "$os_prefix$overlay_prefix$o.dtbo" "$OUT/overlay.dtbo"
  fdtoverlay -i "$OUT/board.dtb" -o "$OUT/board.next.dtb" "$OUT/overlay.dtbo" 2>"$OUT/fdtoverlay.err" ||
    die "overlay $o does not apply to $device_tree: $(cat "$OUT/fdtoverlay.err")"
  mv "$OUT/board.next.dtb" "$OUT/board.dtb"
done
rm -f "$OUT/overlay.dtbo" "$OUT/fdtoverlay.err"
for p in ${dtparams[@]+"${dtparams[@]}"}; do echo "dtparam=$p"; done
