#!/bin/sh
# Guest side of tests/image_update.sh. NOT part of the image: the test copies it onto a
# throw-away copy's boot partition and runs it from the kernel command line (systemd.run=) at
# every boot. `pispeaker.ci=PHASE` on the command line says what this boot does; it reports over
# the serial console, one "PISPEAKER-CI: " line per fact, for the host to check.
#
# The update bundles are on a second disk (/dev/vdb, ext4 labelled CIBUNDLES) that the host made.
out() { echo "PISPEAKER-CI: $*" > /dev/ttyAMA0; }

phase=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^pispeaker\.ci=//p' | tail -n1)
slot=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^rauc\.slot=//p' | tail -n1)
out "boot phase=$phase slot=$slot uptime=$(cut -d' ' -f1 /proc/uptime)"
out "bootcount=$(tr '\n' ' ' </run/pispeaker-bootcount.log 2>&1)"
# The slot state as the backend reads it from its two copies on the FAT (and, on stderr, a
# warning if neither is whole).
slots() { sh /usr/lib/pispeaker/pispeaker-slot show 2>&1 | tr '\n' ' '; }
out "slots=$(slots)"

# A boot of a slot that never becomes ready: report nothing more; pispeaker-trial-watch.service
# reboots it (the host counts the boots).
if [ "$phase" = trial ]; then
  out "trial-boot"
  exit 0
fi

# READY: pispeaker.service is Type=notify, so "active" means it sent READY=1.
state=unknown
i=0
while [ $i -lt 300 ]; do
  state=$(systemctl show -p ActiveState --value pispeaker.service)
  [ "$state" = active ] && break
  sleep 1
  i=$((i + 1))
done
out "state=$state"
out "ready_us=$(systemctl show -p ActiveEnterTimestampMonotonic --value pispeaker.service)"
# mark-good runs right after READY (pispeaker-mark-good.service).
i=0
while [ $i -lt 120 ]; do
  mg=$(systemctl show -p ActiveState --value pispeaker-mark-good.service)
  case "$mg" in active | failed) break ;; esac
  sleep 1
  i=$((i + 1))
done
out "markgood=$mg,$(systemctl show -p Result --value pispeaker-mark-good.service)"
out "slots_after_ready=$(slots)"
out "rauc_booted=$(rauc status --output-format=shell 2>/dev/null | sed -n "s/^RAUC_SYSTEM_BOOTED_BOOTNAME='*\([^']*\)'*$/\1/p")"
out "build=$(cat /usr/lib/pispeaker/ci-build 2>/dev/null || echo flashed)"

STATE=/var/lib/pispeaker
# The pair state that must survive every update and rollback: the Spotify device id, the
# Jellyfin token, the web API token (secrets: only their hashes leave the guest). The volume
# file is reported as it is: with a hardware mixer the daemon stores the DAC's live volume, which
# the emulated DAC resets at every power-on.
fingerprint() {
  for f in device_id jellyfin_token web-api-token; do
    printf '%s:%s ' "$f" "$(sha256sum "$STATE/$f" 2>/dev/null | cut -c1-16)"
  done
  printf 'volume-file:%s' "$(cat "$STATE/volume" 2>/dev/null | tr -cd 0-9 | grep . || echo missing)"
}

# The speaker's own view of the update (what the status page shows).
status() { pispeaker status 2>&1 | while IFS= read -r line; do out "status $line"; done; out "status-end"; }

mkdir -p /run/ci-bundles
mount -o ro LABEL=CIBUNDLES /run/ci-bundles 2>/dev/null || mount -o ro /dev/vdb /run/ci-bundles || out "error: no bundle disk"

# An install, its output on the console as it goes (the host cuts the power at chosen lines).
# BUNDLE is a file on the bundle disk, or with `url` the same name on the host's HTTP server
# (pispeaker.ci_url= on the command line), which RAUC streams.
install() { # BUNDLE [url]
  src=/run/ci-bundles/$1
  [ "${2:-}" != url ] || src=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^pispeaker\.ci_url=//p' | tail -n1)/$1
  out "installing from $src"
  t0=$(cut -d' ' -f1 /proc/uptime)
  pispeaker update "$src" >/run/ci-update.log 2>&1 &
  pid=$!
  tail -n +1 -f /run/ci-update.log --pid=$pid 2>/dev/null | while IFS= read -r line; do out "update $line"; done
  wait $pid
  rc=$?
  t1=$(cut -d' ' -f1 /proc/uptime)
  out "install $1 rc=$rc seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')"
  return $rc
}

# The other slot's partition: its first 64 MiB (superblock, group descriptors, the start of
# whatever RAUC would write first) and its RAUC status, before and after a refused bundle.
other_slot_fingerprint() {
  case "$slot" in A) dev=/dev/disk/by-partuuid/7073706b-03 other=B ;; *) dev=/dev/disk/by-partuuid/7073706b-02 other=A ;; esac
  printf '%s %s %s' "$(head -c 67108864 "$dev" | sha256sum | cut -c1-16)" \
    "$(rauc status --detailed --output-format=shell 2>/dev/null | grep -E "^RAUC_SLOT_(STATE|BOOT_STATUS|STATUS|INSTALLED_TIMESTAMP)_" | tr '\n' ' ' | sha256sum | cut -c1-16)" \
    "$(ls -d /boot/firmware/slot$other* 2>/dev/null | tr '\n' ' ')$(sed -n 's/^os_prefix=//p' /boot/firmware/config.txt)"
}

# A power cut at a chosen step of the bundle hook or the slot switch (image/rauc/): RAUC runs both
# with its own environment, so a drop-in sets the cut for the next start of the service.
cut_at() { # VAR=VALUE
  mkdir -p /run/systemd/system/rauc.service.d
  printf '[Service]\nEnvironment=%s PISPEAKER_CUT_ACTION=sysrq\n' "$1" >/run/systemd/system/rauc.service.d/ci-cut.conf
  systemctl daemon-reload
  systemctl stop rauc.service
}

case "$phase" in
  first)
    # Pair state as a user's speaker has it: the device id the daemon made, a Jellyfin token, a
    # volume set on the DAC (the daemon keeps the last volume in the state directory).
    owner=$(stat -c %U:%G "$STATE/device_id")
    (umask 077 && printf 'ci-fake-jellyfin-token-%s\n' "$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$STATE/jellyfin_token.tmp")
    chown "$owner" "$STATE/jellyfin_token.tmp" && mv "$STATE/jellyfin_token.tmp" "$STATE/jellyfin_token"
    # The last volume as the daemon keeps it once Spotify connected (src/audio/volume_memory.rs;
    # there is no Spotify here): written as the daemon writes it, 0600, its owner.
    (umask 077 && echo 24248 >"$STATE/volume.tmp")
    chown "$owner" "$STATE/volume.tmp" && mv "$STATE/volume.tmp" "$STATE/volume"
    sync
    out "fingerprint=$(fingerprint)"
    status
    # Refused bundles write nothing to the other slot.
    for b in broken-signature.raucb other-key.raucb truncated.raucb; do
      fp_before=$(other_slot_fingerprint)
      msg=$(pispeaker update "/run/ci-bundles/$b" 2>&1)
      rc=$?
      out "refused $b rc=$rc unchanged=$([ "$(other_slot_fingerprint)" = "$fp_before" ] && echo yes || echo "no: $fp_before -> $(other_slot_fingerprint)")"
      printf '%s\n' "$msg" | grep -E '^(error|=>)' | while IFS= read -r line; do out "refusal $b $line"; done
    done
    # The host cuts the power while RAUC copies the image into the other slot.
    out "cut-point install-copy"
    install next.raucb
    ;;
  cut-hook)
    out "fingerprint=$(fingerprint)"
    cut_at PISPEAKER_HOOK_CUT=moved-old
    out "cut-point hook moved-old"
    install next.raucb
    ;;
  cut-switch)
    out "fingerprint=$(fingerprint)"
    cut_at PISPEAKER_SLOT_CUT=config.txt:renamed
    out "cut-point switch config.txt:renamed"
    install next.raucb
    ;;
  install)
    out "fingerprint=$(fingerprint)"
    install next.raucb && { status; sync; systemctl reboot; }
    ;;
  updated)
    out "fingerprint=$(fingerprint)"
    status
    # The next bundle's speaker never becomes ready: after its tries the speaker comes back here.
    # From a URL: RAUC streams it (no copy of the bundle on the speaker).
    install never-ready.raucb url && { status; sync; systemctl reboot; }
    ;;
  rolled-back)
    out "fingerprint=$(fingerprint)"
    status
    ;;
esac
out "done"
