#!/usr/bin/env bash
# Boots the SD image in qemu-system-arm and checks that it is a working speaker:
#
#   sudo bash tests/image_boot.sh [image/out/pispeaker-<ver>-armhf.img.xz]
#
# A throw-away copy of the image boots on qemu's `virt` machine (virtio: fast, and the checks
# below need it; tests/image_boot_pi.sh takes the Pi's own boot path on `raspi2b`) with the
# kernel, initrd and command line the Pi firmware would pick (tests/image/pi_firmware.sh follows
# config.txt and its os_prefix= to the active A/B slot's directory), the image's root file system
# and an emulated USB audio device, so the guest has a real ALSA card with a hardware volume
# control (snd-usb-audio), like a USB DAC. On that copy only, the boot partition's
# pispeaker.toml gets a test name and one invalid value, and a probe script (tests/image/
# ci-probe.sh) runs from the kernel command line and reports over the serial console.
#
# Checked: the speaker reaches READY; answers zeroconf getInfo from the host (port forward);
# found the USB card's hardware volume control; follows volumes set with amixer in the guest;
# reports the invalid boot setting on its status page and still runs; A/B slots: the firmware's
# choice is slot A, RAUC reports slot A booted, and the slot put on trial before the boot
# (A=try:3) spends a try in the initramfs's boot counter and is marked good after READY by
# pispeaker-mark-good.service; read-only root, state on
# PSDATA, root locked, volatile journal; `ss -ltnup` lists only the speaker's own sockets; and,
# last, a Jellyfin cast: the fake Jellyfin server (tests/image/fake_jellyfin_cast.rs) runs on the
# host, the guest reaches it at 10.0.2.2 through qemu's user network, registers with Quick
# Connect, and on a Play command plays a generated sweep through the emulated USB DAC; the WAV
# qemu records from that DAC must contain the sweep.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
pass() { printf 'ok: %s\n' "$*"; }

XZ=${1:-$(ls -t image/out/pispeaker-*-armhf.img.xz 2>/dev/null | head -n1)}
[ -n "$XZ" ] && [ -s "$XZ" ] || die "no image: build one with 'sudo bash image/build.sh' first"
for tool in qemu-system-arm mcopy sfdisk curl xz sox; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install qemu-system-arm mtools fdisk curl xz-utils sox)"
done
command -v cargo >/dev/null || die "cargo is missing: the cast check builds its fake Jellyfin server (the fake-jellyfin-cast example) on the host"

(cd "$(dirname "$XZ")" && sha256sum -c --quiet "$(basename "$XZ").sha256") || die "checksum of $XZ does not match"

WORK=$(mktemp -d /var/tmp/pispeaker-boot.XXXXXX)
QEMU_PID=""
JELLYFIN_PID=""
CONSOLE_COPY=${PISPEAKER_BOOT_CONSOLE_LOG:-/tmp/pispeaker-image-console.log}
cleanup() {
  [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null || true
  [ -n "$JELLYFIN_PID" ] && kill "$JELLYFIN_PID" 2>/dev/null || true
  # The guest's console (boot messages, the probe's report) outlives the run, for a failure.
  [ -f "$WORK/console.log" ] && cp "$WORK/console.log" "$CONSOLE_COPY" && echo "guest console log: $CONSOLE_COPY"
  # So is what the emulated USB DAC played (the Jellyfin cast check), to listen to.
  [ -s "$WORK/out.wav" ] && cp "$WORK/out.wav" "${CONSOLE_COPY%.log}-dac.wav" && echo "emulated DAC recording: ${CONSOLE_COPY%.log}-dac.wav"
  rm -rf "$WORK"
}
trap cleanup EXIT
IMG=$WORK/disk.img
xz -dc "$XZ" > "$IMG"

# The FAT partition, addressed by byte offset (mtools' "@@"): no loop device needed.
start=$(sfdisk -d "$IMG" | awk -F'[=,]' '/^.*img1 /{gsub(/ /,"",$2); print $2}')
[ -n "$start" ] || die "no first partition in $IMG"
FAT="$IMG@@$((start * 512))"
mdir -b -i "$FAT" :: > "$WORK/boot-files"
for f in config.txt pispeaker-slots.txt pispeaker.toml pispeaker-board.txt bootcode.bin start.elf fixup.dat; do
  grep -qx "::/$f" "$WORK/boot-files" || die "the boot partition lacks $f"
done
mdir -b -i "$FAT" ::slotA > "$WORK/slotA-files" || die "the boot partition has no slotA/ (A/B layout)"
for f in cmdline.txt bcm2836-rpi-2-b.dtb bcm2837-rpi-3-b.dtb bcm2837-rpi-3-b-plus.dtb bcm2837-rpi-zero-2-w.dtb overlays/; do
  grep -qx "::/slotA/$f" "$WORK/slotA-files" || die "slotA/ on the boot partition lacks $f"
done
# What the Pi firmware boots: config.txt, its include and its os_prefix= (the active slot).
bash tests/image/pi_firmware.sh "$IMG" pi2 "$WORK/fw" > "$WORK/firmware.txt" || die "the firmware's view of the boot partition failed (above)"
sed 's/^/  firmware: /' "$WORK/firmware.txt"
fw() { sed -n "s/^$1=//p" "$WORK/firmware.txt"; }
[ "$(fw os_prefix)" = slotA/ ] || die "config.txt boots os_prefix=$(fw os_prefix), not slot A's slotA/"
KERNEL=$(fw kernel) INITRD=$(fw initramfs)
[ "$KERNEL" = slotA/vmlinuz ] && [ "$INITRD" = slotA/initrd.img ] || die "the firmware would boot $KERNEL with $INITRD, not slot A's kernel and initrd"
mcopy -i "$FAT" ::config.txt ::pispeaker.toml "$WORK/"
# The card's slot state as pispeaker-slot reads it from its two copies.
card_slots() { bash tests/image/card_slots.sh "$FAT"; }
grep -q '^dtparam=audio=on' "$WORK/config.txt" || die "config.txt does not switch the headphone jack on"
grep -qx 'include pispeaker-board.txt' "$WORK/config.txt" || die "config.txt does not include pispeaker-board.txt (the board's overlay)"
slots=$(card_slots)
[[ "$slots" == "A=good B=bad generation=1 copy=pispeaker-slots.txt "* ]] || die "the card's slot state is not slot A good, B bad (generation 1 in pispeaker-slots.txt): $slots"
pass "boot partition: config.txt boots slot A (os_prefix=slotA/): $KERNEL, $INITRD, slotA/cmdline.txt, Pi 2/3/Zero 2 W device trees and overlays under slotA/; slot state $slots; pispeaker.toml"

# The Pi's command line, with the serial console of qemu's virt machine instead of the Pi's.
cmdline=$(sed -E 's/console=[^ ]+//g' "$WORK/fw/cmdline.txt")
grep -q 'root=PARTUUID=7073706b-02' <<<"$cmdline" || die "slot A's cmdline.txt does not mount partition 2 (root A) by PARTUUID: $cmdline"
grep -qE '(^| )rauc\.slot=A( |$)' <<<"$cmdline" || die "slot A's cmdline.txt does not name the slot for RAUC (rauc.slot=A): $cmdline"
[ "$(grep -oE '(^| )r[ow]( |$)' <<<"$cmdline" | tail -n1 | tr -d ' ')" = ro ] || die "cmdline.txt mounts the root read-write: $cmdline"
grep -qE '(^| )rootflags=noatime,errors=remount-ro( |$)' <<<"$cmdline" || die "slot A's cmdline.txt has not the root's mount options (fstab has no / line): $cmdline"
grep -qE '(^| )panic=10( |$)' <<<"$cmdline" || die "slot A's cmdline.txt has no panic=10 (a kernel panic would hang instead of rebooting to the boot counter): $cmdline"

free_port() { # a TCP port nothing on the host listens on
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    ss -Hltn "sport = :$port" | grep -q . || { echo "$port"; return; }
  done
}
ZC_PORT=$(free_port); STATUS_PORT=$(free_port); JELLYFIN_PORT=$(free_port)

# The Jellyfin cast's track: 10 s of two sine sweeps (one per channel) at the USB DAC's 48 kHz,
# as FLAC. A sweep has no repeating stretch, so each part of it can be found in the capture.
sox -n -r 48000 -b 16 -c 2 "$WORK/track.flac" synth 10 sine 200-3000 sine 300-2500 gain -3
ITEM_ID=7e1c0a5d2b9f4e3a8c6d1f0b2a3e4d5c
cargo build --quiet --locked --example fake-jellyfin-cast || die "cannot build the fake Jellyfin server (cargo build --example fake-jellyfin-cast)"
FAKE_JELLYFIN=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/examples/fake-jellyfin-cast
[ -x "$FAKE_JELLYFIN" ] || die "the fake Jellyfin server was not built at $FAKE_JELLYFIN"
"$FAKE_JELLYFIN" serve --bind "127.0.0.1:$JELLYFIN_PORT" --track "$WORK/track.flac" --item-id "$ITEM_ID" \
  --trigger "$WORK/play-now" --seconds 10 --timeout "${BOOT_TIMEOUT:-900}" >"$WORK/jellyfin.log" 2>&1 &
JELLYFIN_PID=$!

# The test's settings: a name, the USB DAC preset, one invalid value that must be reported, and
# the fake Jellyfin server on the host (qemu's user network shows the host's loopback as 10.0.2.2).
cat > "$WORK/pispeaker.toml" <<TOML
name = "CI Speaker"
board = "usb-dac"
wifi_country = "XYZ"
ssh = false
jellyfin_server = "http://10.0.2.2:$JELLYFIN_PORT"
TOML
mcopy -o -i "$FAT" "$WORK/pispeaker.toml" ::pispeaker.toml
mcopy -o -i "$FAT" tests/image/ci-probe.sh ::ci-probe.sh
# Slot A on trial, as after an update: the boot must mark it good once the speaker is READY.
# A whole copy of the state with the next generation, in the copy the next write goes to (as
# pispeaker-slot writes it; image/rauc/pispeaker-slot describes the format).
printf '%s\n' "# slot A put on trial by tests/image_boot.sh" "generation=2" "A=try:3" "B=bad" "end" > "$WORK/slots-trial.txt"
mcopy -o -i "$FAT" "$WORK/slots-trial.txt" ::pispeaker-slots.alt.txt
slots=$(card_slots)
[[ "$slots" == "A=try:3 B=bad generation=2 copy=pispeaker-slots.alt.txt "* ]] || die "slot A was not put on trial on the card: $slots"

# admin-password on the FAT before the first boot (pispeaker-adopt-password.service): gone after
# the boot, and the web app takes it. Notepad's line ending on purpose.
ADMIN_PASSWORD='CI admin password 1'
admin_password_before_boot() {
  printf '%s\r\n' "$ADMIN_PASSWORD" > "$WORK/admin-password"
  mcopy -o -i "$FAT" "$WORK/admin-password" ::admin-password
  rm -f "$WORK/admin-password"
}
admin_password_after_boot() {
  ! mdir -b -i "$FAT" ::admin-password >/dev/null 2>&1 || die "admin-password is still on the FAT after the boot"
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 60 -X POST -H 'Content-Type: application/json' \
    -d "{\"password\":\"$ADMIN_PASSWORD\"}" "http://127.0.0.1:$STATUS_PORT/api/login")
  [ "$code" = 200 ] || die "logging in with the admin-password from the FAT answered $code"
  ! probe_all "journal " | grep -qF "$ADMIN_PASSWORD" || die "the admin password is in the journal"
  pass "admin-password on the FAT: adopted at boot, removed from the card, logging in with it works"
}
admin_password_before_boot

CONSOLE=$WORK/console.log
started=$(date +%s)
qemu-system-arm -M virt,highmem=off -m 1024 -smp 2 \
  -kernel "$WORK/fw/kernel" -initrd "$WORK/fw/initramfs" \
  -append "console=ttyAMA0 $cmdline systemd.run=\"/bin/sh /boot/firmware/ci-probe.sh\" systemd.run_success_action=none systemd.run_failure_action=none systemd.wants=multi-user.target" \
  -drive file="$IMG",if=none,format=raw,id=hd -device virtio-blk-device,drive=hd \
  -netdev "user,id=n,hostfwd=tcp:127.0.0.1:$ZC_PORT-:7071,hostfwd=tcp:127.0.0.1:$STATUS_PORT-:7070" \
  -device virtio-net-device,netdev=n \
  -device qemu-xhci -device usb-audio,audiodev=a -audiodev "wav,id=a,path=$WORK/out.wav,out.frequency=48000,out.channels=2,out.format=s16" \
  -nographic -no-reboot </dev/null >"$CONSOLE" 2>&1 &
QEMU_PID=$!
echo "booting $(basename "$XZ") under qemu-system-arm (console log: $CONSOLE)"

# systemd.run boots into kernel-command-line.target; systemd.wants pulls the normal
# multi-user.target (and so the speaker) in beside it.
# Boot under TCG on 2 cores takes minutes; the probe prints "done" when it has checked everything.
deadline=$((started + ${BOOT_TIMEOUT:-900}))
until grep -q 'PISPEAKER-CI: done' "$CONSOLE"; do
  # Once the probe has finished with the mixer, the fake server may cast (it sends Play as soon
  # as the speaker's session is up; the probe measures the speaker while it plays).
  [ -e "$WORK/play-now" ] || ! grep -q 'PISPEAKER-CI: cast-ready' "$CONSOLE" || touch "$WORK/play-now"

  kill -0 "$QEMU_PID" 2>/dev/null || { tail -n 60 "$CONSOLE"; die "qemu exited before the probe finished"; }
  # A guest kernel oops or panic does not heal: say so now, not at the deadline.
  if grep -qE 'Internal error: Oops|Kernel panic' "$CONSOLE"; then
    sleep 5; tail -n 80 "$CONSOLE"; die "the guest kernel oopsed or panicked (above)"
  fi
  [ "$(date +%s)" -lt "$deadline" ] || { tail -n 80 "$CONSOLE"; die "the probe did not finish within ${BOOT_TIMEOUT:-900} s"; }
  sleep 2
done
probe() { sed -n "s/.*PISPEAKER-CI: $1//p" "$CONSOLE" | tr -d '\r' | head -n1; }
probe_all() { sed -n "s/.*PISPEAKER-CI: $1//p" "$CONSOLE" | tr -d '\r'; }
echo "--- the speaker's journal in the guest"
probe_all "journal " | sed 's/^/  /'

[ "$(probe state=)" = active ] || die "pispeaker.service did not reach READY (state $(probe state=))"
ready_us=$(probe ready_us=)
pass "READY $(awk -v us="$ready_us" 'BEGIN{printf "%.1f", us/1e6}') s after the guest kernel started (host wall time to the probe's end: $(( $(date +%s) - started )) s)"
echo "FIGURE boot-to-READY on virt (emulated, TCG): $(awk -v us="$ready_us" 'BEGIN{printf "%.1f", us/1e6}') s after the guest kernel started"

# A/B: RAUC's view of the boot, and the mark-good unit after READY.
probe_all "rauc " | sed 's/^/  rauc status: /'
[ "$(probe rauc_booted=)" = A ] || die "rauc status does not report slot A booted: $(probe_all 'rauc ' | tr '\n' ' ')"
[ "$(probe markgood_state=)" = "active,success" ] || die "pispeaker-mark-good.service: $(probe markgood_state=) ($(probe markgood_log=))"
[ "$(probe markgood_after_ready=)" = yes ] || die "pispeaker-mark-good.service ran before the speaker was READY: $(probe markgood_order=)"
grep -q 'slot A is on trial: this boot spends a try, 2 left' <<<"$(probe bootcount=)" \
  || die "the initramfs's boot counter did not spend one of slot A's 3 tries: $(probe bootcount=)"
[ "$(probe slot_A=)" = good ] || die "slot A is $(probe slot_A=) after mark-good (it was try:3): $(probe slots=)"
pass "RAUC: slot A booted ($(probe rauc_compatible=)); pispeaker-mark-good.service ran after READY ($(probe markgood_order=)) and slot A went from try:3 (the initramfs's counter: $(probe bootcount=)) to good ($(probe markgood_log=))"

# From the host, through the port forward: what the Spotify app asks first.
info=$(curl -fsS --max-time 20 "http://127.0.0.1:$ZC_PORT/?action=getInfo") || die "zeroconf getInfo did not answer through the port forward"
for field in '"remoteName":"CI Speaker"' '"deviceID":' '"publicKey":' '"deviceType":"Speaker"' '"activeUser":'; do
  grep -q "$field" <<<"$info" || die "getInfo lacks $field: $info"
done
pass "zeroconf getInfo from the host: remoteName CI Speaker, deviceID, publicKey, activeUser"

control=$(probe hw_control=)
[ -n "$control" ] || die "the speaker did not pick a hardware volume control: $(probe hw_line=)"
grep -q 'volume: hardware control' <<<"$(probe hw_line=)" || die "no hardware volume: $(probe hw_line=)"
pass "hardware volume control on the USB card: \"$control\""

v0=$(probe 'volume amixer=0% speaker=') v100=$(probe 'volume amixer=100% speaker=') v10=$(probe 'volume amixer=top-10dB speaker=')
probe_all "sget " | sed 's/^/  amixer: /'
[[ "$v0" == "0% "* ]] && [[ "$v100" == "100% "* ]] || die "amixer 0% / 100% read back as $v0 / $v100"
# The usb-dac preset's log curve spans 50 dB: -10 dB is 80 % (a control step is finer than 1 %).
pct=${v10%%\%*}
[ "$pct" -ge 78 ] 2>/dev/null && [ "$pct" -le 82 ] || die "amixer at 10 dB below the top read back as $v10 (expected 80 % on the 50 dB log curve)"
pass "volume set with amixer in the guest is read by the speaker: 0% -> $v0, 100% -> $v100, top - 10 dB -> $v10 (before: $(probe 'volume before='))"

status=$(curl -fsS --max-time 20 "http://127.0.0.1:$STATUS_PORT/status.json") || die "status page did not answer"
grep -q '"key":"wifi_country"' <<<"$status" || die "the invalid wifi_country is not on the status page: $status"
grep -q '"name":"CI Speaker"' <<<"$status" || die "the boot partition's name was not applied: $status"
pass "invalid boot setting reported on the status page; the speaker runs with the rest"
admin_password_after_boot

# ro and noatime come from slot A's cmdline.txt (ro, rootflags=): fstab has no "/" line.
[[ "$(probe root_mount=)" == ro,noatime* ]] || die "root is not read-only with cmdline.txt's rootflags=noatime: $(probe root_mount=)"
[[ "$(probe data_mount=)" == *rw* ]] || die "state is not on a writable partition: $(probe data_mount=)"
[ "$(probe root_password=)" = L ] || die "root's password is not locked: $(probe root_password=)"
[[ "$(probe journal_storage=)" == /run/* ]] || die "the journal is not volatile: $(probe journal_storage=)"
pass "root read-only ($(probe root_mount=)), state on $(probe data_mount=), root locked, journal in /run"

# Listening sockets: only the speaker's own (status page 7070, zeroconf 7071, mDNS 5353) and
# the DHCP client of systemd-networkd (a client socket bound to port 68, not a service).
echo "--- ss -ltnup in the guest"
probe_all "listen " | sed 's/^/  /'
unexpected=$(probe_all "listen " | grep -v 'users:(("pispeaker"' \
  | grep -vE '^udp +UNCONN .*:(68|546) .*users:\(\("systemd-network"' || true)
[ -z "$unexpected" ] || die "unexpected listening sockets: $unexpected"
for port in 7070 7071 5353; do
  probe_all "listen " | grep -q ":$port .*pispeaker" || die "pispeaker does not listen on $port"
done
pass "only the speaker listens (7070 status, 7071 zeroconf, 5353 mDNS); no SSH while ssh = false"
failed=$(probe_all "failed ")
[ -z "$failed" ] || die "failed units in the guest: $failed"
pass "no failed units"

# The board's overlay (pispeaker-board-overlay.service; see the probe).
probe_all "overlay_run " | sed 's/^/  /'
[ "$(probe overlay_state=)" = "active,success" ] || die "pispeaker-board-overlay.service: $(probe overlay_state=) ($(probe overlay_log=))"
grep -q 'up to date for board "usb-dac"' <<<"$(probe overlay_log=)" || die "the overlay unit did not find the shipped file up to date: $(probe overlay_log=)"
[ "$(probe overlay_hat=)" = "1 ro" ] || die "choosing hifiberry-dacplus did not write its overlay to the read-only FAT (lines, mount: $(probe overlay_hat=))"
[ "$(probe overlay_back=)" = "0 ro" ] || die "going back to usb-dac did not remove the overlay (lines, mount: $(probe overlay_back=))"
pass "board overlay: the unit left the shipped file alone at boot (usb-dac, no reboot); hifiberry-dacplus wrote its dtoverlay line to the read-only FAT and usb-dac removed it, the FAT read-only outside the unit throughout"

probe_all "codec_error " | sed 's/^/  /'
[ -z "$(probe_all "codec_error ")" ] || die "the codec modules do not load cleanly (lines above)"
[ "$(probe codecs=)" = "snd_soc_pcm5102a snd_soc_pcm512x snd_soc_pcm512x_i2c " ] || die "codec modules loaded: $(probe codecs=)"
pass "HAT codec modules load into the image kernel: $(probe codecs=)(from $(probe codec_paths=))"

# The Jellyfin cast, started once the probe was done with the mixer (see the wait above).
echo "--- Jellyfin cast from the fake server on the host"
grep -q 'session ready' "$WORK/jellyfin.log" \
  || { cat "$WORK/jellyfin.log"; die "the speaker did not register with the fake Jellyfin server at 10.0.2.2:$JELLYFIN_PORT with Play advertised"; }
rc=0
wait "$JELLYFIN_PID" || rc=$?
JELLYFIN_PID=""
sed 's/^/  /' "$WORK/jellyfin.log"
if [ "$rc" -ne 0 ]; then
  curl -fsS --max-time 20 "http://127.0.0.1:$STATUS_PORT/status.json" | sed 's/^/  status: /' || true
  die "the cast did not play to the end (see the fake server's lines above)"
fi
# Stopped is reported when the last item is decoded; the guest then plays out its ALSA buffer
# (a fraction of a second). qemu writes the WAV header's sizes when it shuts down; SIGTERM is a
# clean shutdown.
sleep 3
kill -TERM "$QEMU_PID" 2>/dev/null || true
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=""
[ -s "$WORK/out.wav" ] || die "qemu recorded no WAV from the emulated USB DAC"
# The mark-good write reached the card itself (fsync, rename, fsync of the directory).
slots=$(card_slots)
[[ "$slots" == "A=good "* ]] || die "the card's slot state after the boot: $slots"
pass "the card's slot state says A=good after the boot (it was A=try:3): $slots"
# Both as mono 8 kHz: the sweeps stay below 3 kHz, and the comparison is 36x cheaper.
sox "$WORK/track.flac" -r 8000 -c 1 -e signed -b 16 "$WORK/source.raw"
sox "$WORK/out.wav" -r 8000 -c 1 -e signed -b 16 "$WORK/captured.raw" 2>/dev/null \
  || die "cannot read the WAV qemu recorded ($(stat -c %s "$WORK/out.wav") bytes)"
rc=0
"$FAKE_JELLYFIN" compare --source "$WORK/source.raw" --captured "$WORK/captured.raw" --rate 8000 >"$WORK/compare.log" 2>&1 || rc=$?
sed 's/^/  /' "$WORK/compare.log"
[ "$rc" -eq 0 ] || die "the track is not in the WAV recorded from the emulated USB DAC"
pass "Jellyfin cast: Play from the fake server on the host; the guest streamed the FLAC, played it through the emulated USB DAC, and the recorded WAV contains it ($(sed -n 's/.*Playing reported \([0-9]*\) ms.*/Play -> Playing in \1 ms/p' "$WORK/jellyfin.log"); $(sed -n 's/.*; \([0-9]*\/[0-9]*\) quarter-second windows found.*/\1 windows found/p' "$WORK/compare.log"))"
grep -q 'playing' <<<"$(probe cast_status=)" || die "the speaker's status did not show the cast playing: $(probe cast_status=)"
pass "the speaker's status showed the cast ($(probe cast_status=)); while playing the FLAC: $(probe cast_cpu=) % of one emulated core, RSS $(( $(probe cast_rss_kb=) / 1024 )) MiB"
echo "image boot test: PASS"
