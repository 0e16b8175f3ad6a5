#!/bin/sh
# Guest side of tests/image_boot.sh. NOT part of the image: the test copies it onto a throw-away
# copy's boot partition and runs it from the kernel command line (systemd.run=). It reports
# over the serial console, one "PISPEAKER-CI:" line per fact, for the host to check.
out() { echo "PISPEAKER-CI: $*" > /dev/ttyAMA0; }

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
out "uptime=$(cut -d' ' -f1 /proc/uptime)"

# A/B (image/rauc/): RAUC's view of the boot, and pispeaker-mark-good.service, which runs
# after READY (the host set slot A to try:3 before the boot).
rauc status --output-format=shell 2>&1 | while IFS= read -r line; do out "rauc $line"; done
out "rauc_booted=$(rauc status --output-format=shell 2>/dev/null | sed -n "s/^RAUC_SYSTEM_BOOTED_BOOTNAME='*\([^']*\)'*$/\1/p")"
out "rauc_compatible=$(rauc status --output-format=shell 2>/dev/null | sed -n "s/^RAUC_SYSTEM_COMPATIBLE='*\([^']*\)'*$/\1/p")"
i=0
while [ $i -lt 120 ]; do
  mg=$(systemctl show -p ActiveState --value pispeaker-mark-good.service)
  case "$mg" in active | failed) break ;; esac
  sleep 1
  i=$((i + 1))
done
out "markgood_state=$mg,$(systemctl show -p Result --value pispeaker-mark-good.service)"
ready=$(systemctl show -p ActiveEnterTimestampMonotonic --value pispeaker.service)
marked=$(systemctl show -p ExecMainStartTimestampMonotonic --value pispeaker-mark-good.service)
out "markgood_order=READY at ${ready} us, mark-good started at ${marked} us"
[ "${marked:-0}" -ge "${ready:-1}" ] 2>/dev/null && out "markgood_after_ready=yes" || out "markgood_after_ready=no"
out "markgood_log=$(journalctl -b -o cat --no-pager -u pispeaker-mark-good.service | grep -v '^Start\|^Finish\|Deactivated' | tail -n 1)"
# The slot state as the backend reads it from its two copies on the FAT.
out "slots=$(sh /usr/lib/pispeaker/pispeaker-slot show 2>&1 | tr '\n' ' ')"
out "slot_A=$(sh /usr/lib/pispeaker/pispeaker-slot show 2>/dev/null | tr ' ' '\n' | sed -n 's/^A=//p')"
# What the initramfs's boot counter did (scripts/local-premount/pispeaker-bootcount).
out "bootcount=$(tr '\n' ' ' </run/pispeaker-bootcount.log 2>&1)"
out "root_mount=$(findmnt -no OPTIONS /)"
out "data_mount=$(findmnt -no SOURCE,OPTIONS /var/lib/pispeaker | tr ' ' ,)"
out "root_password=$(passwd -S root | cut -d' ' -f2)"
out "journal_storage=$(journalctl --header 2>/dev/null | sed -n 's/^File path: //p' | head -n1)"

journal() { journalctl -b -o cat --no-pager -u pispeaker.service -u pispeaker-boot-config.service; }
control=$(journal | sed -n 's/.*picked "\([^"]*\)" index.*/\1/p' | head -n1)
out "hw_control=$control"
out "hw_line=$(journal | grep -m1 'volume: hardware control')"

# The daemon must see volume changes made outside it (a knob, amixer): set the control, then
# poll the speaker's own status until it shows what the test expects (or 20 s pass).
speaker_volume() { # whole percent, e.g. "83%"
  pispeaker status 2>/dev/null | awk '$1 == "volume" {sub(/%/, "", $2); printf "%d%%\n", $2 + 0.5}'
}
volume_after() { # <amixer value> <shell test on $v>
  amixer -q -c 0 sset "$control" -- "$1" >/dev/null 2>&1 || { echo "amixer-failed"; return; }
  j=0
  while [ $j -lt 40 ]; do
    v=$(speaker_volume)
    eval "$2" && break
    sleep 0.5
    j=$((j + 1))
  done
  echo "$v after $((j / 2)) s"
}
out "volume before=$(speaker_volume)"
out "volume amixer=0% speaker=$(volume_after 0% '[ "$v" = 0% ]')"
out "volume amixer=100% speaker=$(volume_after 100% '[ "$v" = 100% ]')"
# 10 dB below the control's top (+8 dB on qemu's USB audio): the usb-dac preset's log curve
# over 50 dB puts that at 80 %.
top=$(amixer -c 0 sget "$control" | grep -m1 -o '\[[-0-9.]*dB\]' | tr -d '[]dB')
target=$(awk -v top="$top" 'BEGIN { printf "%.2fdB", top - 10 }')
out "volume amixer=top-10dB speaker=$(volume_after "$target" '[ -n "$v" ] && [ "$v" != 100% ]') ($target)"
amixer -c 0 sget "$control" | while IFS= read -r line; do out "sget $line"; done
out "amixer=$(amixer -c 0 sget "$control" | grep -m1 -o '\[[-0-9.]*dB\]' | head -n1)"

ss -ltnupH | while IFS= read -r line; do out "listen $line"; done
journal | tail -n 40 | while IFS= read -r line; do out "journal $line"; done
systemctl --failed --no-legend --plain | while IFS= read -r line; do out "failed $line"; done

# The board overlay: at boot the unit found the card's file up to date for usb-dac (a reboot
# here would end qemu: -no-reboot). Then what choosing a HAT does, run the way the unit runs it
# (its own mount namespace; the FAT stays read-only outside) minus the reboot: the overlay line
# lands on the FAT, the FAT is read-only again, and the card's own usb-dac removes the line.
out "overlay_state=$(systemctl show -p ActiveState --value pispeaker-board-overlay.service),$(systemctl show -p Result --value pispeaker-board-overlay.service)"
out "overlay_log=$(journalctl -b -o cat --no-pager -u pispeaker-board-overlay.service | grep -m1 'board overlay:')"
echo 'board = "hifiberry-dacplus"' > /tmp/hat.toml
unshare -m --propagation slave pispeaker board-overlay --source /tmp/hat.toml --remount /boot/firmware 2>&1 \
  | while IFS= read -r line; do out "overlay_run $line"; done
out "overlay_hat=$(grep -c '^dtoverlay=pispeaker-hifiberry-dacplus$' /boot/firmware/pispeaker-board.txt) $(findmnt -no OPTIONS /boot/firmware | cut -d, -f1)"
unshare -m --propagation slave pispeaker board-overlay --remount /boot/firmware 2>&1 \
  | while IFS= read -r line; do out "overlay_run $line"; done
out "overlay_back=$(grep -c '^dtoverlay=' /boot/firmware/pispeaker-board.txt) $(findmnt -no OPTIONS /boot/firmware | cut -d, -f1)"

# The HATs' codec modules (image/codecs) load into this kernel: vermagic and symbol versions
# accepted (no device needed; udev loads them on a Pi from the overlay's compatible string).
for m in snd-soc-pcm5102a snd-soc-pcm512x-i2c; do
  modprobe "$m" 2>&1 | while IFS= read -r line; do out "codec_error $line"; done
done
out "codecs=$(lsmod | awk '$1 ~ /^snd_soc_pcm51/ { print $1 }' | sort | tr '\n' ' ')"
out "codec_paths=$(modinfo -n snd-soc-pcm512x | sed 's|.*/updates/|updates/|')"
dmesg | grep -iE 'pcm51.*(disagrees|invalid|unknown symbol)' | while IFS= read -r line; do out "codec_error $line"; done

# The host now casts a track from its fake Jellyfin server: wait until the speaker's own status
# says the cast plays, then measure the daemon over 3 s of it (CPU of one guest core, memory).
out "cast-ready"
i=0
while [ $i -lt 240 ]; do
  pispeaker status 2>/dev/null | awk '$1 == "cast" && $2 == "playing" { found = 1 } END { exit !found }' && break
  sleep 0.5
  i=$((i + 1))
done
out "cast_status=$(pispeaker status 2>/dev/null | awk '$1 == "cast" { $1 = ""; sub(/^ +/, ""); printf "%s%s", sep, $0; sep = "; " }')"
pid=$(systemctl show -p MainPID --value pispeaker.service)
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
t0=$(ticks); u0=$(cut -d' ' -f1 /proc/uptime)
sleep 3
t1=$(ticks); u1=$(cut -d' ' -f1 /proc/uptime)
out "cast_cpu=$(awk -v t0="$t0" -v t1="$t1" -v u0="$u0" -v u1="$u1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (t1 - t0) / hz / (u1 - u0) * 100 }')"
out "cast_rss_kb=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")"
out "done"
