#!/usr/bin/env bash
# Updates the SD image in the emulator, the way a speaker in a home updates: issue 14's four
# scenarios, on one throw-away copy of the image booted again and again on qemu's `virt` machine.
#
#   sudo bash tests/image_update.sh [image/out/pispeaker-<ver>-armhf.img.xz]
#
# Every boot takes the kernel, initramfs and command line the Pi firmware would pick from the
# card as it is at that moment (tests/image/pi_firmware.sh follows config.txt's os_prefix= to the
# active slot), so the slot switch is what is tested, not bypassed. A guest reboot ends qemu
# (-no-reboot); the next boot is the next loop here. The guest side is tests/image/ci-update-probe.sh,
# told by `pispeaker.ci=PHASE` on the command line what this boot does.
#
# The bundles are built here, from the image's own root file system and with the key the image
# trusts (image/keys/ development pair, or PISPEAKER_IMAGE_SIGN_KEY/_CERT as image/build.sh):
#   next.raucb          version N+1: the same root plus a marker file (/usr/lib/pispeaker/ci-build)
#   never-ready.raucb   version N+2: its speaker daemon never reports READY (a wrapper that sleeps
#                       when started as the daemon; the CLI still works)
#   broken-signature.raucb, other-key.raucb, truncated.raucb: next.raucb damaged three ways
#
# Boots (each checks which slot the firmware picks before it starts):
#   1. slot A, version N: pair state set up (device id, a fake Jellyfin token, a volume); the three
#      damaged bundles are refused and write nothing to slot B (scenario 3); then an install of
#      next.raucb, and the power is cut while RAUC copies the image into slot B (scenario 4)
#   2. slot A again: an install, the power cut inside the bundle hook (slotB/ moved aside)
#   3. slot A again: an install, the power cut in the slot switch (config.txt renamed, its directory
#      not yet synced: the card may hold either config.txt)
#   4. whichever slot config.txt names; if slot A, an install and a reboot
#   5. slot B, version N+1: READY, marked good, state intact (scenario 1); installs never-ready
#      into slot A and reboots
#   6.. slot A on trial: its speaker never becomes ready, pispeaker-trial-watch.service reboots
#      it; after the tries the initramfs switches back (scenario 2)
#   last: slot B, version N+1, the failed update on the status page, state intact
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
pass() { printf 'ok: %s\n' "$*"; }

XZ=${1:-$(ls -t image/out/pispeaker-*-armhf.img.xz 2>/dev/null | head -n1)}
[ -n "$XZ" ] && [ -s "$XZ" ] || die "no image: build one with 'sudo bash image/build.sh' first"
for tool in qemu-system-arm mcopy sfdisk xz debugfs e2fsck mke2fs dumpe2fs rauc openssl; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install qemu-system-arm mtools fdisk xz-utils e2fsprogs rauc openssl)"
done
NAME=$(basename "$XZ" .img.xz)           # pispeaker-0.1.0-1-armhf
VERSION=${NAME#pispeaker-}; VERSION=${VERSION%-armhf}
# N+1 and N+2: the next patch releases of N's upstream version (a Debian revision is not part of
# the version 'pispeaker update' compares).
IFS=. read -r major minor patch <<<"${VERSION%%-*}"
NEXT="$major.$minor.$((patch + 1))" NEVER="$major.$minor.$((patch + 2))"
KEY=${PISPEAKER_IMAGE_SIGN_KEY:-image/keys/development.key.pem}
CERT=${PISPEAKER_IMAGE_SIGN_CERT:-image/keys/development.cert.pem}
[ -f "$KEY" ] && [ -f "$CERT" ] || die "no signing key $KEY / $CERT: the image was built with another key (set PISPEAKER_IMAGE_SIGN_KEY and _CERT as for image/build.sh)"

WORK=$(mktemp -d /var/tmp/pispeaker-update.XXXXXX)
QEMU_PID=""
LOGS=${PISPEAKER_UPDATE_LOG_DIR:-/tmp/pispeaker-image-update}
rm -rf "$LOGS" && mkdir -p "$LOGS"
HTTP_PID=""
cleanup() {
  [ -n "$QEMU_PID" ] && kill -9 "$QEMU_PID" 2>/dev/null || true
  [ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
started=$(date +%s)
IMG=$WORK/disk.img
xz -dc "$XZ" > "$IMG"

# Partitions by byte offset (no loop devices): 1 boot FAT, 2 root A, 3 root B, 4 data.
part_start() { sfdisk -d "$IMG" | awk -v p="img$1 " -F'[=,]' 'index($0, p) {gsub(/ /,"",$2); print $2}'; }
part_size() { sfdisk -d "$IMG" | awk -v p="img$1 " -F'[=,]' 'index($0, p) {gsub(/ /,"",$4); print $4}'; }
FAT="$IMG@@$(( $(part_start 1) * 512 ))"
fsck_ok() { e2fsck -fn "$1" >"$WORK/fsck.log" 2>&1 || { cat "$WORK/fsck.log"; return 1; }; }

echo "==> update bundles for $NAME: N+1 = $NEXT, N+2 (never ready) = $NEVER"
# PISPEAKER_UPDATE_BUNDLE_CACHE=DIR keeps the bundle disk between runs of the same image (for
# working on this test; CI makes them afresh).
BUNDLE_CACHE=""
if [ -n "${PISPEAKER_UPDATE_BUNDLE_CACHE:-}" ]; then
  BUNDLE_CACHE=$PISPEAKER_UPDATE_BUNDLE_CACHE/bundles-$(cut -c1-16 "$XZ.sha256")-$(cat image/rauc/make-bundle.sh image/rauc/pispeaker-bundle-hook | sha256sum | cut -c1-8).img
fi
if [ -n "$BUNDLE_CACHE" ] && [ -s "$BUNDLE_CACHE" ] && [ -s "$BUNDLE_CACHE.http/never-ready.raucb" ]; then
  cp --sparse=always "$BUNDLE_CACHE" "$WORK/bundles.img"
  cp -r "$BUNDLE_CACHE.http" "$WORK/http"
  echo "reusing $BUNDLE_CACHE"
else
make_bundles() {
t=$(date +%s)
dd if="$IMG" of="$WORK/root-n.ext4" bs=512 skip="$(part_start 2)" count="$(part_size 2)" status=none
fsck_ok "$WORK/root-n.ext4" || die "the image's root file system (partition 2) does not check clean"
debugfs -R 'cat /etc/rauc/keyring.pem' "$WORK/root-n.ext4" 2>/dev/null > "$WORK/keyring.pem"
cmp -s <(openssl x509 -in "$WORK/keyring.pem" -noout -fingerprint) <(openssl x509 -in "$CERT" -noout -fingerprint) \
  || die "the image trusts another certificate than $CERT: build the image and this test with the same key"
mkdir -p "$WORK/bundles" "$WORK/out-next" "$WORK/out-never"

# N+1: the same root with a marker the guest reports.
cp --sparse=always "$WORK/root-n.ext4" "$WORK/root-next.ext4"
echo "$NEXT" > "$WORK/ci-build"
debugfs -w -R "write $WORK/ci-build /usr/lib/pispeaker/ci-build" "$WORK/root-next.ext4" >/dev/null 2>&1
fsck_ok "$WORK/root-next.ext4" || die "root-next.ext4 does not check clean after adding the marker"
sh image/rauc/make-bundle.sh "$WORK/root-next.ext4" "$NEXT" "$WORK/out-next" --key "$KEY" --cert "$CERT" >"$LOGS/bundle-next.log" 2>&1 \
  || { cat "$LOGS/bundle-next.log"; die "make-bundle.sh could not make the N+1 bundle"; }
mv "$WORK/out-next/"*.raucb "$WORK/bundles/next.raucb"

# N+2: the daemon, started as systemd starts it (--config first), sleeps instead of becoming
# ready; every other use of the binary (status, update, the boot units) runs the real one.
cp --sparse=always "$WORK/root-next.ext4" "$WORK/root-never.ext4"
echo "$NEVER never-ready" > "$WORK/ci-build"
cat > "$WORK/never-ready" <<'SH'
#!/bin/sh
# CI (tests/image_update.sh): a speaker daemon that never becomes ready.
case "${1:-}" in --config) exec sleep infinity ;; esac
exec /usr/bin/pispeaker.real "$@"
SH
chmod 0755 "$WORK/never-ready"
# debugfs's ln and unlink leave link counts alone, so the pair moves the name without changing it.
debugfs -w -f - "$WORK/root-never.ext4" >/dev/null 2>&1 <<EOF
rm /usr/lib/pispeaker/ci-build
write $WORK/ci-build /usr/lib/pispeaker/ci-build
ln /usr/bin/pispeaker /usr/bin/pispeaker.real
unlink /usr/bin/pispeaker
write $WORK/never-ready /usr/bin/pispeaker
sif /usr/bin/pispeaker mode 0100755
sif /usr/bin/pispeaker uid 0
sif /usr/bin/pispeaker gid 0
EOF
fsck_ok "$WORK/root-never.ext4" || die "root-never.ext4 does not check clean after swapping the daemon"
debugfs -R 'cat /usr/bin/pispeaker' "$WORK/root-never.ext4" 2>/dev/null | grep -q 'never becomes ready' || die "the never-ready wrapper is not in root-never.ext4"
sh image/rauc/make-bundle.sh "$WORK/root-never.ext4" "$NEVER" "$WORK/out-never" --key "$KEY" --cert "$CERT" >"$LOGS/bundle-never.log" 2>&1 \
  || { cat "$LOGS/bundle-never.log"; die "make-bundle.sh could not make the never-ready bundle"; }
mv "$WORK/out-never/"*.raucb "$WORK/bundles/never-ready.raucb"

# Damaged: a byte of the signature (the CMS blob before the 8-byte size at the end) flipped; the
# same bundle signed again with a key the image does not trust (rauc resign); the first half only.
cp "$WORK/bundles/next.raucb" "$WORK/bundles/broken-signature.raucb"
size=$(stat -c %s "$WORK/bundles/broken-signature.raucb")
byte=$(od -An -tu1 -j $((size - 100)) -N1 "$WORK/bundles/broken-signature.raucb" | tr -d ' ')
printf "$(printf '\\%03o' $((byte ^ 0x5a)))" | dd of="$WORK/bundles/broken-signature.raucb" bs=1 seek=$((size - 100)) conv=notrunc status=none
(umask 077 && openssl req -x509 -newkey rsa:4096 -nodes -days 36500 -subj "/O=not pispeaker/CN=another signer" \
  -keyout "$WORK/other.key.pem" -out "$WORK/other.cert.pem" 2>/dev/null) || die "openssl could not make the other key pair"
rauc resign --keyring="$CERT" --signing-keyring="$WORK/other.cert.pem" --cert="$WORK/other.cert.pem" --key="$WORK/other.key.pem" \
  "$WORK/bundles/next.raucb" "$WORK/bundles/other-key.raucb" >"$LOGS/bundle-other.log" 2>&1 \
  || { cat "$LOGS/bundle-other.log"; die "rauc resign could not sign next.raucb with the other key"; }
head -c $(( $(stat -c %s "$WORK/bundles/next.raucb") / 2 )) "$WORK/bundles/next.raucb" > "$WORK/bundles/truncated.raucb"
rm -f "$WORK"/root-*.ext4
bundles_mb=$(du -sm "$WORK/bundles" | cut -f1)
mke2fs -q -t ext4 -L CIBUNDLES -d "$WORK/bundles" "$WORK/bundles.img" "$((bundles_mb + 64))M" >/dev/null
# The never-ready bundle is also served over HTTP (an install from a URL, streamed).
mkdir -p "$WORK/http" && mv "$WORK/bundles/never-ready.raucb" "$WORK/http/"
rm -rf "$WORK/bundles"
pass "bundles made in $(( $(date +%s) - t )) s: next.raucb $(( $(stat -c %s "$WORK/bundles.img") / 1000000 )) MB disk for 5 bundles"
}
make_bundles
[ -z "$BUNDLE_CACHE" ] || { mkdir -p "$(dirname "$BUNDLE_CACHE")" && cp --sparse=always "$WORK/bundles.img" "$BUNDLE_CACHE" && rm -rf "$BUNDLE_CACHE.http" && cp -r "$WORK/http" "$BUNDLE_CACHE.http"; }
fi

# The host's HTTP server for the install from a URL (qemu's user network shows the host's
# loopback to the guest as 10.0.2.2).
free_port() { local port; while :; do port=$((20000 + RANDOM % 40000)); ss -Hltn "sport = :$port" | grep -q . || { echo "$port"; return; }; done; }
HTTP_PORT=$(free_port)
python3 tests/image/range_http_server.py "$WORK/http" "$HTTP_PORT" >"$LOGS/http.log" 2>&1 &
HTTP_PID=$!

# The speaker's settings on the card (as tests/image_boot.sh): a name and the USB DAC preset.
printf 'name = "CI Update Speaker"\nboard = "usb-dac"\n' > "$WORK/pispeaker.toml"
mcopy -o -i "$FAT" "$WORK/pispeaker.toml" ::pispeaker.toml
mcopy -o -i "$FAT" tests/image/ci-update-probe.sh ::ci-update-probe.sh

# What the firmware boots now, and the card's slot files.
firmware() {
  rm -rf "$WORK/fw"
  bash tests/image/pi_firmware.sh "$IMG" pi2 "$WORK/fw" > "$WORK/firmware.txt" || die "the firmware's view of the boot partition failed (above)"
  sed -n 's/^os_prefix=//p' "$WORK/firmware.txt"
}
# The card's slot state as pispeaker-slot reads it from its two copies.
card_slots() { bash tests/image/card_slots.sh "$FAT"; }

BOOT_NO=0
CONSOLE=""
# boot PHASE [TRIAL_TIMEOUT]: starts qemu on the card as it is; returns once it runs.
boot() {
  BOOT_NO=$((BOOT_NO + 1))
  CONSOLE=$LOGS/boot-$BOOT_NO-$1.log
  local cmdline extra=""
  cmdline=$(sed -E 's/console=[^ ]+//g' "$WORK/fw/cmdline.txt")
  [ -z "${2:-}" ] || extra="pispeaker.trial_timeout=$2"
  BOOT_STARTED=$(date +%s)
  qemu-system-arm -M virt,highmem=off -m 1024 -smp 2 \
    -kernel "$WORK/fw/kernel" -initrd "$WORK/fw/initramfs" \
    -append "console=ttyAMA0 $cmdline systemd.run=\"/bin/sh /boot/firmware/ci-update-probe.sh\" systemd.run_success_action=none systemd.run_failure_action=none systemd.wants=multi-user.target pispeaker.ci=$1 pispeaker.ci_url=http://10.0.2.2:$HTTP_PORT $extra" \
    -drive file="$IMG",if=none,format=raw,id=hd -device virtio-blk-device,drive=hd \
    -drive file="$WORK/bundles.img",if=none,format=raw,id=bundles,readonly=on -device virtio-blk-device,drive=bundles \
    -netdev user,id=n -device virtio-net-device,netdev=n \
    -device qemu-xhci -device usb-audio,audiodev=a -audiodev none,id=a \
    -nographic -no-reboot </dev/null >"$CONSOLE" 2>&1 &
  QEMU_PID=$!
  echo "boot $BOOT_NO ($1): $(sed -n 's/^os_prefix=//p' "$WORK/firmware.txt") on the card's config.txt; slots: $(card_slots) (console: $CONSOLE)"
}
probe() { sed -n "s/.*PISPEAKER-CI: $1//p" "$CONSOLE" | tr -d '\r' | head -n1; }
probe_all() { sed -n "s/.*PISPEAKER-CI: $1//p" "$CONSOLE" | tr -d '\r'; }
# A guest kernel oops or panic does not heal: the test says so at once, not at the deadline.
check_oops() {
  if grep -qE 'Internal error: Oops|Kernel panic' "$CONSOLE"; then
    sleep 5; tail -n 80 "$CONSOLE"; die "boot $BOOT_NO: the guest kernel oopsed or panicked (above)"
  fi
}
# wait_for REGEX: until the console has a line matching it (0), or qemu ends (1); dies at the deadline.
wait_for() {
  local deadline=$(( $(date +%s) + ${BOOT_TIMEOUT:-900} ))
  until grep -qE "$1" "$CONSOLE"; do
    check_oops
    kill -0 "$QEMU_PID" 2>/dev/null || { wait "$QEMU_PID" 2>/dev/null || true; QEMU_PID=""; grep -qE "$1" "$CONSOLE"; return; }
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 60 "$CONSOLE"; die "boot $BOOT_NO: no '$1' on the console within ${BOOT_TIMEOUT:-900} s"; }
    sleep 1
  done
}
# The guest ends the boot itself (a reboot, or a reset at a power-cut point): qemu exits.
wait_exit() {
  local deadline=$(( $(date +%s) + ${BOOT_TIMEOUT:-900} ))
  while kill -0 "$QEMU_PID" 2>/dev/null; do
    check_oops
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 60 "$CONSOLE"; die "boot $BOOT_NO: the guest did not reboot within ${BOOT_TIMEOUT:-900} s"; }
    sleep 1
  done
  wait "$QEMU_PID" 2>/dev/null || true
  QEMU_PID=""
  echo "  boot $BOOT_NO ended after $(( $(date +%s) - BOOT_STARTED )) s"
}
power_cut() { kill -9 "$QEMU_PID" 2>/dev/null || true; wait "$QEMU_PID" 2>/dev/null || true; QEMU_PID=""; }
# (qemu runs as a job of this shell: a power cut by SIGKILL is expected, not a crash to report.)
# A boot of a good slot: READY, and the booted slot good afterwards.
expect_ready() { # SLOT
  wait_for 'PISPEAKER-CI: state=' || { tail -n 60 "$CONSOLE"; die "boot $BOOT_NO: qemu ended before the speaker's state was reported"; }
  wait_for 'PISPEAKER-CI: build=' || die "boot $BOOT_NO: qemu ended before mark-good and the running build were reported"
  [ "$(probe 'boot phase=[a-z-]* slot=' | cut -d' ' -f1)" = "$1" ] || die "boot $BOOT_NO booted slot $(probe 'boot phase=[a-z-]* slot='), not $1"
  [ "$(probe state=)" = active ] || { probe_all ''; die "boot $BOOT_NO: the speaker on slot $1 did not become READY"; }
  [ "$(probe rauc_booted=)" = "$1" ] || die "boot $BOOT_NO: rauc status says slot $(probe rauc_booted=) booted, not $1"
  grep -q "$1=good" <<<"$(probe slots_after_ready=)" || die "boot $BOOT_NO: slot $1 is not good after READY: $(probe slots_after_ready=) (mark-good: $(probe markgood=))"
}
# The pair state (hashes of the device id, the Jellyfin token, the web API token) is the same as
# on the first boot, and the volume file is still there (its value follows the DAC, see the probe).
expect_fingerprint() {
  local now
  wait_for 'PISPEAKER-CI: fingerprint=' || die "boot $BOOT_NO: qemu ended before the pair state was reported"
  now=$(probe fingerprint=)
  [ "${now% volume-file:*}" = "${FINGERPRINT% volume-file:*}" ] || die "boot $BOOT_NO: the speaker's state changed: $now, was $FINGERPRINT"
  [[ "$now" == *volume-file:[0-9]* ]] || die "boot $BOOT_NO: the volume file is gone: $now"
}

# --- boot 1: slot A, version N; state; refusals; a power cut while the image is copied.
[ "$(firmware)" = slotA/ ] || die "the fresh card does not boot slot A"
boot first
expect_ready A
wait_for 'PISPEAKER-CI: cut-point install-copy' || { tail -n 60 "$CONSOLE"; die "boot 1 ended before its install"; }
FINGERPRINT=$(probe fingerprint=)
grep -q 'device_id:[0-9a-f]\{16\} jellyfin_token:[0-9a-f]\{16\} .*volume-file:24248$' <<<"$FINGERPRINT" \
  || die "the pair state is incomplete before the update: $FINGERPRINT"
pass "boot 1, slot A ($VERSION): READY; pair state: $FINGERPRINT"
probe_all 'refus' | sed 's/^/  /'
for b in broken-signature other-key truncated; do
  line=$(probe "refused $b.raucb ")
  [[ "$line" == rc=1\ unchanged=yes ]] || die "the $b bundle: $line (want rc=1, slot B unchanged)"
done
grep -q 'signature' <<<"$(probe_all 'refusal broken-signature.raucb ')" || die "the broken signature was refused without saying so: $(probe_all 'refusal broken-signature.raucb ')"
grep -qiE 'not signed by a key|signer|trust' <<<"$(probe_all 'refusal other-key.raucb ')" || die "the other key's bundle was refused without saying so: $(probe_all 'refusal other-key.raucb ')"
grep -qiE 'damaged|incomplete' <<<"$(probe_all 'refusal truncated.raucb ')" || die "the truncated bundle was refused without saying so: $(probe_all 'refusal truncated.raucb ')"
pass "scenario 3: a broken signature, another key's signature and a truncated bundle are refused with their reason; slot B's partition start, RAUC's slot status and the FAT's slotB/ unchanged"
wait_for 'PISPEAKER-CI: update .*Copying image to rootfs' || { tail -n 40 "$CONSOLE"; die "boot 1: the install did not start copying"; }
sleep 3
copy_done=$(grep -c 'Copying image to rootfs.* done' "$CONSOLE" || true)
power_cut
[ "$copy_done" = 0 ] || die "the image copy finished before the power cut (the copy was faster than 3 s?)"
[ "$(firmware)" = slotA/ ] || die "after a power cut during the copy the firmware would boot $(sed -n 's/^os_prefix=//p' "$WORK/firmware.txt")"
pass "scenario 4: power cut while RAUC copied the image into slot B: config.txt still boots slot A ($(card_slots))"

# --- boot 2: slot A; a power cut inside the bundle hook, slotB/ moved aside.
boot cut-hook
expect_ready A
expect_fingerprint
wait_exit
grep -q 'PISPEAKER-CUT: moved-old' "$CONSOLE" || { tail -n 40 "$CONSOLE"; die "boot 2 ended without reaching the hook's cut point"; }
[ "$(firmware)" = slotA/ ] || die "after a power cut in the bundle hook the firmware would boot $(sed -n 's/^os_prefix=//p' "$WORK/firmware.txt")"
pass "scenario 4: power cut in the bundle hook (slotB/ moved aside, slotB.new/ complete): config.txt boots slot A ($(card_slots))"

# --- boot 3: slot A; a power cut in the slot switch, after config.txt's rename, before the sync.
boot cut-switch
expect_ready A
expect_fingerprint
wait_exit
grep -q 'PISPEAKER-CUT: config.txt:renamed' "$CONSOLE" || { tail -n 40 "$CONSOLE"; die "boot 3 ended without reaching the switch's cut point"; }
after_switch=$(firmware)
case "$after_switch" in
  slotA/ | slotB/) ;;
  *) die "after a power cut in the slot switch the firmware would boot '$after_switch'" ;;
esac
pass "scenario 4: power cut in the slot switch (config.txt renamed, directory not synced): the card boots $after_switch ($(card_slots))"
# The card may name slot B while the state copy written last (B=try:3, written just before the
# switch) did not survive: fsck.vfat has emptied it after such a reset. The older copy then says
# B=bad (RAUC marked B bad before writing it), and the initramfs must go back to slot A at once.
if [ "$after_switch" = slotB/ ] && ! grep -q 'B=try:' <<<"$(card_slots)"; then
  grep -q 'B=bad' <<<"$(card_slots)" || die "the card boots slot B with neither a trial nor B=bad: $(card_slots)"
  boot lost-trial
  wait_exit
  after_switch=$(firmware)
  [ "$after_switch" = slotA/ ] || { tail -n 40 "$CONSOLE"; die "slot B is bad but its boot left config.txt on $after_switch"; }
  pass "scenario 4: the slot switch reached the card but B's trial did not (the copy written last was lost): B=bad, the initramfs went back to slot A ($(card_slots))"
fi

# --- boot 4 (if the card still boots A): a whole install, then the speaker reboots.
if [ "$after_switch" = slotA/ ]; then
  boot install
  expect_ready A
  expect_fingerprint
  wait_for 'PISPEAKER-CI: install next.raucb rc=' || die "boot $BOOT_NO ended before the install finished"
  grep -q "PISPEAKER-CI: install next.raucb rc=0" "$CONSOLE" || { probe_all 'update '; die "the install of $NEXT failed"; }
  wait_exit
  [ "$(firmware)" = slotB/ ] || die "after installing $NEXT config.txt does not boot slot B"
fi
install_line=$(grep -h 'PISPEAKER-CI: install next.raucb rc=0' "$LOGS"/boot-*.log | tail -n1 | tr -d '\r')
grep -q 'B=try:3' <<<"$(card_slots)" || die "slot B is not on trial (try:3) after the install: $(card_slots)"

# --- slot B, version N+1: scenario 1.
boot updated
expect_ready B
[ "$(probe build=)" = "$NEXT" ] || die "slot B runs build $(probe build=), not $NEXT"
grep -q 'spends a try' <<<"$(probe bootcount=)" || die "the initramfs did not spend a try of slot B: $(probe bootcount=)"
expect_fingerprint
wait_for 'PISPEAKER-CI: status-end' || die "boot $BOOT_NO ended before the speaker's status was reported"
grep -qE "^running +$NEXT \\(slot B\\)" <<<"$(probe_all 'status ')" || { probe_all 'status '; die "the status does not show $NEXT running"; }
pass "scenario 1: installed $NEXT from $VERSION (${install_line#*seconds=} s in the emulator), rebooted: slot B runs $NEXT, READY and marked good (B: $(probe slots_after_ready=)), device id, Jellyfin token and API token unchanged, volume file kept"
probe_all 'status ' | sed 's/^/  /'
wait_for 'PISPEAKER-CI: install never-ready.raucb rc=' || die "boot $BOOT_NO ended before the install from a URL finished"
grep -q "PISPEAKER-CI: install never-ready.raucb rc=0" "$CONSOLE" && wait_exit || { probe_all 'update '; tail -n 20 "$LOGS/http.log"; die "the install of the never-ready bundle from http://10.0.2.2:$HTTP_PORT/ failed"; }
ranges=$(grep -c '^sent .* for bytes=' "$LOGS/http.log" || true)
whole=$(grep -c '^sent .* for the whole file' "$LOGS/http.log" || true)
sent=$(awk '/^sent /{s+=$2} END{print s+0}' "$LOGS/http.log")
[ "$ranges" -ge 2 ] && [ "$whole" = 0 ] || die "the install from a URL was not streamed: $ranges range requests, $whole whole-file requests"
pass "an install from a URL (http://10.0.2.2:$HTTP_PORT/never-ready.raucb) was streamed by RAUC: $ranges range requests, $((sent / 1000000)) MB read, no whole-file download"
[ "$(firmware)" = slotA/ ] && grep -q 'A=try:3' <<<"$(card_slots)" || die "after installing the never-ready bundle config.txt does not boot slot A on trial: $(card_slots)"

# --- slot A on trial, never ready: boots until the card boots slot B again (scenario 2).
trials=0
rollback_started=$(date +%s)
while [ "$(firmware)" = slotA/ ]; do
  trials=$((trials + 1))
  [ "$trials" -le 5 ] || die "slot A was booted $trials times without the speaker going back to slot B"
  boot trial 60
  wait_exit
  echo "  $(probe bootcount=)"
done
rollback_s=$(( $(date +%s) - rollback_started ))
boot rolled-back
expect_ready B
[ "$(probe build=)" = "$NEXT" ] || die "after the rollback slot B runs build $(probe build=), not $NEXT"
grep -q 'A=bad' <<<"$(probe slots=)" || die "slot A is not marked bad after its tries: $(probe slots=)"
expect_fingerprint
wait_for 'PISPEAKER-CI: status-end' || die "boot $BOOT_NO ended before the speaker's status was reported"
probe_all 'status ' | sed 's/^/  /'
grep -q 'rolled back' <<<"$(probe_all 'status ')" || die "the status does not show the failed update as rolled back"
wait_for 'PISPEAKER-CI: done' || true
power_cut
pass "scenario 2: $NEVER never became ready: $trials boots of slot A (the last one switched back in the initramfs), then slot B ($NEXT) again with A=bad, the rollback on the status page, state intact ($rollback_s s from the reboot after the install)"
echo "FIGURE install of a bundle in the emulator: ${install_line#*seconds=} s; boots until rollback: $trials; bundle $(( $(stat -c %s "$(dirname "$XZ")/$NAME.raucb" 2>/dev/null || echo 0) / 1000000 )) MB; this test: $(( $(date +%s) - started )) s"
echo "image update test: PASS"
