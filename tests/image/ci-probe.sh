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
out "root_mount=$(findmnt -no OPTIONS /)"
out "data_mount=$(findmnt -no SOURCE,OPTIONS /var/lib/pispeaker | tr ' ' ,)"
out "root_password=$(passwd -S root | cut -d' ' -f2)"
out "journal_storage=$(journalctl --header 2>/dev/null | sed -n 's/^File path: //p' | head -n1)"

journal() { journalctl -b -o cat --no-pager -u pispeaker.service -u pispeaker-boot-config.service; }
control=$(journal | sed -n 's/.*picked "\([^"]*\)" index.*/\1/p' | head -n1)
out "hw_control=$control"
out "hw_line=$(journal | grep -m1 'volume: hardware control')"

# The daemon must see volume changes made outside it (a knob, amixer).
volume_after() { # amixer value -> the speaker's volume line, once it changed from $2
  amixer -q -c 0 sset "$control" "$1" >/dev/null 2>&1 || { echo "amixer-failed"; return; }
  j=0
  while [ $j -lt 20 ]; do
    v=$(pispeaker status 2>/dev/null | awk '$1 == "volume" {print $2}')
    [ -n "$v" ] && [ "$v" != "$2" ] && break
    sleep 1
    j=$((j + 1))
  done
  echo "$v"
}
v100=$(volume_after 100% none)
v0=$(volume_after 0% "$v100")
v60=$(volume_after 60% "$v0")
out "volume amixer=100% speaker=$v100"
out "volume amixer=0% speaker=$v0"
out "volume amixer=60% speaker=$v60"
out "amixer=$(amixer -c 0 sget "$control" | grep -m1 -o '\[[-0-9.]*dB\]')"

ss -ltnupH | while IFS= read -r line; do out "listen $line"; done
journal | tail -n 40 | while IFS= read -r line; do out "journal $line"; done
systemctl --failed --no-legend --plain | while IFS= read -r line; do out "failed $line"; done
out "done"
