#!/usr/bin/env bash
# Boots the SD image the way a Raspberry Pi does, on qemu's raspi2b or raspi3b machine, and checks
# that it is a working speaker there:
#
#   sudo bash tests/image_boot_pi.sh [image/out/pispeaker-<ver>-armhf.img.xz]      (Pi 2, raspi2b)
#   sudo bash tests/image_boot_pi.sh --machine raspi3b [pispeaker-<ver>-arm64.img.xz]
#                                     (Pi 3 with the 64-bit image: qemu-system-aarch64 -M raspi3b)
#
# tests/image_boot.sh boots the image on qemu's generic `virt` machine (fast, virtio) and checks
# the speaker in depth; this one takes the Pi's own boot path. On a throw-away copy of the image:
#   1. the boot partition's pispeaker.toml selects the generic I2S DAC (`board = "i2s-dac"`), and
#      pispeaker-board.txt (which config.txt includes) is written by the same code the image's
#      pispeaker-board-overlay.service runs at boot (`pispeaker board-overlay`, built on the
#      host), so in the guest the unit finds it up to date and does not reboot;
#   2. tests/image/pi_firmware.sh reads config.txt from the image's FAT partition as the Pi
#      firmware does (include, os_prefix, arm_64bit, kernel=, initramfs, the model's device tree,
#      dtoverlay=) and applies the overlays onto the Pi 2's (Pi 3's) tree with fdtoverlay;
#   3. qemu-system-arm -M raspi2b (qemu-system-aarch64 -M raspi3b) boots that kernel, initramfs,
#      tree and cmdline.txt with the
#      image as its SD card (a power-of-two sized copy: qemu refuses others), a USB audio device
#      and a USB Ethernet device on the Pi's dwc2 USB controller, the network through qemu's
#      user-mode stack with port forwards. Emulation-only: the SD host runs without DMA (see step
#      2), and the command line adds `modprobe.blacklist=vchiq,snd_bcm2835` (the VideoCore
#      mailbox oopses under emulation) and the probe (tests/image/ci-probe-pi.sh, run with
#      systemd.run= beside multi-user.target), and `systemd.default_timeout_start_sec=600`: under
#      TCG on a loaded 2-core host the guest runs some 20 times slower than a Pi, and systemd's
#      90 s default, a few seconds of a real Pi's time, killed the speaker before its READY in a
#      run beside stress-ng. A guest kernel oops fails the test at once.
#
# Checked: READY (Type=notify) and the time to it (a FIGURE line); zeroconf getInfo and the status
# page from the host through usb-net; the usb-net interface configured by the image's networkd;
# the I2S DAC overlay's simple-audio-card registered its sound card (qemu's I2S is a stub, and
# the PCM5102A needs no I2C) and the image's out-of-tree codec module was loaded for it by udev;
# the speaker restarted with board usb-dac drives the USB DAC on dwc2 with its hardware volume.
# Not checkable here: a PCM512x (I2C; qemu has no such device) and sound out of the I2S pins.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
pass() { printf 'ok: %s\n' "$*"; }

MACHINE=raspi2b
if [ "${1:-}" = --machine ]; then MACHINE=${2:-}; shift 2; fi
# What differs between the two boards: the image, the emulator, the firmware's model and tree,
# the overlays config.txt gives it, and the UART the console and the probe use.
case "$MACHINE" in
  raspi2b)
    ARCH=armhf QEMU=qemu-system-arm MODEL=pi2 DTB=bcm2836-rpi-2-b.dtb ARM_64BIT=0
    # The Pi 2's tree hogs GPIO 18-21: the [pi2] fix-up comes first.
    OVERLAYS="slotA/overlays/pispeaker-pi2-i2s.dtbo slotA/overlays/pispeaker-i2s-dac.dtbo"
    # Its console is the PL011, qemu's first serial port.
    PROBE_TTY=/dev/ttyAMA0 SERIAL=(-nographic) EMU_CMDLINE="" ;;
  raspi3b)
    ARCH=arm64 QEMU=qemu-system-aarch64 MODEL=pi3 DTB=bcm2837-rpi-3-b.dtb ARM_64BIT=1
    OVERLAYS="slotA/overlays/pispeaker-i2s-dac.dtbo"
    # On a Pi 3 the PL011 (ttyAMA0) belongs to Bluetooth: the upstream bcm2837-rpi-3-b.dts gives
    # uart0 a brcm,bcm43438-bt child, so the kernel makes it a serdev, not a tty, and the serial
    # console is the mini UART (serial0 = uart1, ttyS1; Debian's raspi-firmware lists
    # console=ttyS1). qemu attaches its first serial port to the PL011 and its second to the mini
    # UART (hw/arm/bcm2835_peripherals.c): both go into one log through a mux chardev.
    PROBE_TTY=/dev/ttyS1 SERIAL=(-display none -monitor none)
    # Emulation only: with trixie's 6.12 kernel on qemu 7.2's dwc2 model, USB devices do not
    # enumerate with the kernel's default ("new") scheme: every attempt ends in "dwc2 ...: Not
    # connected" and the port is given up (seen with a lone usb-net device too). With the old
    # scheme (SET_ADDRESS before the first GET_DESCRIPTOR, usbcore.old_scheme_first) they do.
    # Real Pis enumerate with the default; raspi2b with bookworm's 6.1 needs nothing.
    EMU_CMDLINE="usbcore.old_scheme_first=1" ;;
  *) die "--machine $MACHINE: raspi2b (armhf image) or raspi3b (arm64 image)" ;;
esac

XZ=${1:-$(ls -t image/out/pispeaker-*-"$ARCH".img.xz 2>/dev/null | head -n1)}
[ -n "$XZ" ] && [ -s "$XZ" ] || die "no $ARCH image: build one with 'sudo bash image/build.sh --arch $ARCH' first"
for tool in "$QEMU" mcopy sfdisk curl xz fdtoverlay fdtget; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install qemu-system-arm mtools fdisk curl xz-utils device-tree-compiler)"
done
command -v cargo >/dev/null || die "cargo is missing: the test writes pispeaker-board.txt with the host's pispeaker board-overlay"
(cd "$(dirname "$XZ")" && sha256sum -c --quiet "$(basename "$XZ").sha256") || die "checksum of $XZ does not match"

TIMEOUT=${PI_BOOT_TIMEOUT:-1800}
WORK=$(mktemp -d /var/tmp/pispeaker-boot-pi.XXXXXX)
QEMU_PID=""
CONSOLE_COPY=${PISPEAKER_PI_CONSOLE_LOG:-/tmp/pispeaker-image-console-$MACHINE.log}
cleanup() {
  [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null || true
  [ -f "$WORK/console.log" ] && cp "$WORK/console.log" "$CONSOLE_COPY" && echo "guest console log: $CONSOLE_COPY"
  rm -rf "$WORK"
}
trap cleanup EXIT

IMG=$WORK/sd.img
xz -dc "$XZ" > "$IMG"
size=$(stat -c %s "$IMG")
sd=1
while [ "$sd" -lt "$size" ]; do sd=$((sd * 2)); done
truncate -s "$sd" "$IMG"
start=$(sfdisk -J "$IMG" | sed -n 's/.*"start": *\([0-9]*\).*/\1/p' | head -n1)
FAT="$IMG@@$((start * 512))"

# 1. The board: the generic I2S DAC, with its overlay lines as the image's unit writes them.
cargo build --quiet --locked --bin pispeaker || die "cannot build the host's pispeaker (for pispeaker board-overlay)"
PISPEAKER=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/pispeaker
cat > "$WORK/pispeaker.toml" <<TOML
name = "CI Pi Speaker"
board = "i2s-dac"
ssh = false
TOML
"$PISPEAKER" board-overlay --source "$WORK/pispeaker.toml" --target "$WORK/pispeaker-board.txt" >/dev/null 2>&1 \
  || die "pispeaker board-overlay could not write the overlay lines for i2s-dac"
mcopy -o -i "$FAT" "$WORK/pispeaker.toml" ::pispeaker.toml
mcopy -o -i "$FAT" "$WORK/pispeaker-board.txt" ::pispeaker-board.txt
mcopy -o -i "$FAT" tests/image/ci-probe-pi.sh ::ci-probe-pi.sh

# 2. What the Pi's firmware would load.
bash tests/image/pi_firmware.sh "$IMG" "$MODEL" "$WORK/fw" > "$WORK/firmware.txt" || die "the firmware's view of the boot partition failed (above)"
sed 's/^/  firmware: /' "$WORK/firmware.txt"
fw() { sed -n "s/^$1=//p" "$WORK/firmware.txt"; }
# The image boots A/B slot A: everything the firmware loads comes from under os_prefix=slotA/.
[ "$(fw os_prefix)" = slotA/ ] || die "config.txt boots os_prefix=$(fw os_prefix), not slot A's slotA/"
[ "$(fw dtb)" = "slotA/$DTB" ] || die "the firmware would load $(fw dtb), not the $MODEL's upstream tree slotA/$DTB (upstream_kernel=1 in config.txt?)"
[ "$(fw arm_64bit)" = "$ARM_64BIT" ] || die "config.txt sets arm_64bit=$(fw arm_64bit) for the $ARCH image (expected $ARM_64BIT)"
[ "$(fw overlay | tr '\n' ' ')" = "$OVERLAYS " ] \
  || die "overlays from config.txt and pispeaker-board.txt: $(fw overlay | tr '\n' ' ') (expected $OVERLAYS)"
[ "$(fdtget -t s "$WORK/fw/board.dtb" /pispeaker-sound compatible)" = simple-audio-card ] || die "the merged tree has no simple-audio-card"
[ -s "$WORK/fw/initramfs" ] || die "config.txt names no initramfs"
pass "firmware's view: $(fw kernel), $(fw initramfs), $(fw dtb) + $(fw overlay | tr '\n' ' ')applied with fdtoverlay"

# Emulation only: the SD host (sdhost, drivers/mmc/host/bcm2835.c) runs without DMA here. Under
# load an emulated transfer can outlast the driver's software timeout; the 6.1 driver then
# finishes the request in bcm2835_timeout, and when the late DMA completion arrives
# bcm2835_dma_complete_work calls bcm2835_finish_data with host->data already NULL: a kernel
# oops that leaves the SD card dead (seen in CI: "timeout waiting for hardware interrupt", then
# "PC is at bcm2835_finish_data"). Without `dmas` in its node the driver takes its PIO path
# (dma_request_chan fails, "Ignore errors to fall back to PIO mode"), whose interrupt handlers
# check host->data, so a slow transfer is retried instead. The card's own tree is not changed.
sdhost=""
for node in $(fdtget -l "$WORK/fw/board.dtb" /soc); do
  [ "$(fdtget -t s "$WORK/fw/board.dtb" "/soc/$node" compatible 2>/dev/null)" = brcm,bcm2835-sdhost ] && sdhost=/soc/$node
done
[ -n "$sdhost" ] || die "the $MODEL's tree has no brcm,bcm2835-sdhost node (the SD card's controller)"
fdtput -d "$WORK/fw/board.dtb" "$sdhost" dmas && fdtput -d "$WORK/fw/board.dtb" "$sdhost" dma-names \
  || die "could not take the DMA channel off $sdhost in the emulator's copy of the tree"

# 3. Boot. dwc2 is the Pi's only USB controller: the USB DAC and the network both hang off it.
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    ss -Hltn "sport = :$port" | grep -q . || { echo "$port"; return; }
  done
}
ZC_PORT=$(free_port); STATUS_PORT=$(free_port)
cmdline=$(tr -d '\r\n' < "$WORK/fw/cmdline.txt")
CONSOLE=$WORK/console.log
started=$(date +%s)
if [ "$MACHINE" = raspi3b ]; then
  SERIAL+=(-chardev "file,id=uarts,path=$CONSOLE,mux=on,append=on" -serial chardev:uarts -serial chardev:uarts)
fi
nice -n "${PI_BOOT_NICE:-0}" "$QEMU" -M "$MACHINE" \
  -kernel "$WORK/fw/kernel" -initrd "$WORK/fw/initramfs" -dtb "$WORK/fw/board.dtb" \
  -append "$cmdline modprobe.blacklist=vchiq,snd_bcm2835 systemd.default_timeout_start_sec=600${EMU_CMDLINE:+ $EMU_CMDLINE} systemd.run=\"/bin/sh /boot/firmware/ci-probe-pi.sh $PROBE_TTY\" systemd.run_success_action=none systemd.run_failure_action=none systemd.wants=multi-user.target" \
  -drive file="$IMG",if=sd,format=raw \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$ZC_PORT-:7071,hostfwd=tcp:127.0.0.1:$STATUS_PORT-:7070" -device usb-net,netdev=n0 \
  -device usb-audio,audiodev=a -audiodev "wav,id=a,path=$WORK/out.wav" \
  "${SERIAL[@]}" -no-reboot </dev/null >>"$CONSOLE" 2>&1 &
QEMU_PID=$!
echo "booting $(basename "$XZ") on qemu $MACHINE (deadline ${TIMEOUT} s)"
deadline=$((started + TIMEOUT))
until grep -q 'PISPEAKER-CI: done' "$CONSOLE"; do
  kill -0 "$QEMU_PID" 2>/dev/null || { tail -n 60 "$CONSOLE"; die "qemu exited before the probe finished"; }
  # A guest kernel oops or panic does not heal: say so now, not at the deadline.
  if grep -qE 'Internal error: Oops|Kernel panic' "$CONSOLE"; then
    sleep 5; tail -n 80 "$CONSOLE"; die "the guest kernel oopsed or panicked (above)"
  fi
  [ "$(date +%s)" -lt "$deadline" ] || { tail -n 80 "$CONSOLE"; die "the probe did not finish within ${TIMEOUT} s"; }
  sleep 2
done
probe() { sed -n "s/.*PISPEAKER-CI: $1//p" "$CONSOLE" | tr -d '\r' | head -n1; }
probe_all() { sed -n "s/.*PISPEAKER-CI: $1//p" "$CONSOLE" | tr -d '\r'; }
echo "--- in the guest"
probe_all "" | grep -E '^(model|netdev|unit|card|dmesg|i2s_journal|usb_reloaded|usb_phase_card|journal|boot_config|failed|unbind)( |$)' | sed 's/^/  /'

[ "$(probe state=)" = active ] || die "pispeaker.service did not reach READY on $MACHINE (state $(probe state=))"
ready_us=$(probe ready_us=)
ready_s=$(awk -v us="$ready_us" 'BEGIN{printf "%.1f", us/1e6}')
pass "READY on $MACHINE ($(probe model=))"
echo "FIGURE boot-to-READY on $MACHINE (emulated, TCG): $ready_s s after the guest kernel started"

# The network through the Pi's USB: the image's networkd must configure the usb-net interface.
probe_all "netdev " | grep -q 'addr=10\.0\.2\.' || die "no USB network interface got an address: $(probe_all 'netdev ' | tr '\n' ';')"
info=$(curl -fsS --max-time 30 "http://127.0.0.1:$ZC_PORT/?action=getInfo") || die "zeroconf getInfo did not answer through usb-net"
for field in '"remoteName":"CI Pi Speaker"' '"deviceID":' '"publicKey":'; do
  grep -q "$field" <<<"$info" || die "getInfo lacks $field: $info"
done
# (By now the probe has restarted the speaker with board usb-dac: see below.)
curl -fsS --max-time 30 "http://127.0.0.1:$STATUS_PORT/status.json" | grep -q '"name":"CI Pi Speaker"' || die "the status page did not answer through usb-net"
pass "zeroconf getInfo and the status page answer from the host through usb-net ($(probe_all 'netdev ' | grep 'addr=10' | cut -d' ' -f1-2))"

# The I2S DAC: the overlay the host applied (as the firmware does) is in the live tree, the
# simple-audio-card registered its card, and udev loaded the image's codec module for it.
[ "$(probe dt_sound=)" = simple-audio-card ] || die "the overlay's sound node is not in the guest's device tree"
grep -q 'overlay: .*up to date for board "i2s-dac"' <<<"$(probe overlay_log=)" || die "pispeaker-board-overlay did not find the card's file up to date: $(probe overlay_log=)"
probe_all "card " | grep -q '\[sndrpii2sdac *\]' || die "the I2S DAC's card did not register: $(probe_all 'card ' | tr '\n' ';')"
probe_all "card " | grep -q 'USB-Audio' || die "the USB DAC on dwc2 did not register: $(probe_all 'card ' | tr '\n' ';')"
[ "$(probe codecs=)" = "snd_soc_bcm2835_i2s snd_soc_pcm5102a snd_soc_simple_card " ] || die "sound modules loaded: $(probe codecs=)"
if [ "$MACHINE" = raspi3b ]; then
  # trixie's kernel has PCM5102A itself; PCM512x is ours, built out of tree (image/codecs).
  grep -q '^loaded from updates/pispeaker/snd-soc-pcm512x-i2c.ko' <<<"$(probe pcm512x_load=)" \
    || die "the image's PCM512x module did not load into the kernel: $(probe pcm512x_load=)"
  pass "the out-of-tree PCM512x codec module loads into the image kernel ($(probe pcm512x_load=))"
fi
pass "I2S DAC overlay: card sndrpii2sdac registered (simple-audio-card, PCM5102A codec from $(probe codec_paths=), loaded by udev), beside the USB DAC"

# The USB DAC with its hardware volume, on the Pi's dwc2 USB.
[ "$(probe usb_state=)" = active ] || die "pispeaker with board usb-dac did not reach READY: $(probe usb_state=)"
grep -q 'volume: hardware control' <<<"$(probe hw_line=)" || die "the speaker found no hardware volume on the USB DAC: $(probe hw_line=)"
pass "board usb-dac: the speaker drives the USB DAC on dwc2 with its hardware volume ($(probe hw_line=))"
failed=$(probe_all "failed ")
[ -z "$failed" ] || die "failed units in the guest: $failed"
pass "no failed units"
echo "$MACHINE boot test: PASS (host wall time $(( $(date +%s) - started )) s)"
