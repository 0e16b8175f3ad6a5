#!/bin/sh
# Guest side of tests/image_boot_pi.sh (the boot on qemu's raspi2b or raspi3b, the Pi's own boot
# path). NOT part of the image: the test copies it onto a throw-away copy's boot partition and
# runs it from the kernel command line (systemd.run=), like tests/image/ci-probe.sh. It reports
# over the serial console given as its argument (the Pi 2's ttyAMA0, the Pi 3's mini UART
# ttyS1), one "PISPEAKER-CI: " line per fact, for the host to check.
TTY=${1:-/dev/ttyAMA0}
out() { echo "PISPEAKER-CI: $*" > "$TTY"; }

# READY: pispeaker.service is Type=notify, so "active" means it sent READY=1. Generous: under
# TCG on a loaded machine the Pi's boot takes minutes.
wait_active() { # unit seconds
  i=0
  while [ $i -lt "$2" ]; do
    [ "$(systemctl show -p ActiveState --value "$1")" = active ] && return 0
    sleep 1
    i=$((i + 1))
  done
  return 1
}
wait_active pispeaker.service 900
out "state=$(systemctl show -p ActiveState --value pispeaker.service)"
out "ready_us=$(systemctl show -p ActiveEnterTimestampMonotonic --value pispeaker.service)"
out "uptime=$(cut -d' ' -f1 /proc/uptime)"
out "model=$(tr -d '\0' < /proc/device-tree/model)"

# The network: which name the USB Ethernet got, and whether networkd configured it.
for dev in /sys/class/net/*; do
  n=${dev##*/}
  [ "$n" = lo ] && continue
  out "netdev $n driver=$(basename "$(readlink "$dev/device/driver" 2>/dev/null)") state=$(networkctl status "$n" 2>/dev/null | sed -n 's/^ *State: //p' | head -n1) addr=$(ip -4 -o addr show dev "$n" | awk '{print $4}' | head -n1)"
done

# Which units the boot waited for: when each started and became active (seconds since the
# kernel started; systemd-analyze refuses while this probe keeps the boot unfinished).
for u in systemd-udevd.service systemd-udev-trigger.service boot-firmware.mount data.mount \
  pispeaker-board-overlay.service pispeaker-boot-config.service systemd-networkd.service \
  systemd-networkd-wait-online.service network-online.target pispeaker.service multi-user.target; do
  s() { systemctl show -p "$1" --value "$u" | awk '{ printf "%.1f", $1 / 1e6 }'; }
  out "unit $u started=$(s InactiveExitTimestampMonotonic) active=$(s ActiveEnterTimestampMonotonic)"
done

# The firmware's step: the overlay the host applied is in the live device tree, the cards.
out "dt_sound=$(tr -d '\0' < /proc/device-tree/pispeaker-sound/compatible 2>/dev/null)"
while IFS= read -r line; do out "card $line"; done < /proc/asound/cards
out "codecs=$(lsmod | awk '$1 ~ /^snd_soc_(pcm5102a|simple_card|bcm2835_i2s)$/ { print $1 }' | sort | tr '\n' ' ')"
out "codec_paths=$(modinfo -n snd-soc-pcm5102a 2>/dev/null | sed 's|.*/updates/|updates/|; s|.*/kernel/|kernel/|')"
# The PCM512x driver (built out of tree for the image kernel) cannot probe without its I2C chip,
# but the kernel must accept the module itself: vermagic, symbol CRCs, relocations.
out "pcm512x_load=$(modprobe snd-soc-pcm512x-i2c 2>&1 | tr '\n' ' ')$(lsmod | awk '$1 == "snd_soc_pcm512x_i2c" { print "loaded" }') from $(modinfo -n snd-soc-pcm512x-i2c 2>/dev/null | sed 's|.*/updates/|updates/|')"
dmesg | grep -iE 'asoc|simple-card|pcm5102|bcm2835-i2s|dwc2.*(error|fail)' | tail -n 20 | while IFS= read -r line; do out "dmesg $line"; done
journal() { journalctl -b -o cat --no-pager -u pispeaker.service -u pispeaker-boot-config.service -u pispeaker-board-overlay.service; }
out "overlay_log=$(journal | grep -m1 'board overlay:')"
journal | grep -E 'volume|ALSA|sndrpii2sdac|ready' | head -n 5 | while IFS= read -r line; do out "i2s_journal $line"; done

# The same speaker on the USB DAC (board usb-dac), as the next boot with that board would have
# it: no I2S card (its overlay gone) and the USB DAC as card 0, ALSA's default. Stop the speaker,
# unbind the I2S card, and if the two cards registered the other way round (udev loads their
# modules in parallel), reload snd-usb-audio so that it takes the first free index. Then the
# daemon, restarted with that board, must find the USB card's hardware volume.
systemctl stop pispeaker.service
echo pispeaker-sound > /sys/bus/platform/drivers/asoc-simple-card/unbind 2>/dev/null || out "unbind failed"
if ! grep -q '^ *0 \[.*USB-Audio' /proc/asound/cards; then
  modprobe -r snd-usb-audio && modprobe snd-usb-audio
  i=0
  while [ $i -lt 60 ] && ! grep -q '^ *0 \[.*USB-Audio' /proc/asound/cards; do sleep 1; i=$((i + 1)); done
  out "usb_reloaded"
fi
while IFS= read -r line; do out "usb_phase_card $line"; done < /proc/asound/cards
sed 's/^board *=.*/board = "usb-dac"/' /boot/firmware/pispeaker.toml > /tmp/usb-dac.toml
pispeaker boot-config --source /tmp/usb-dac.toml --out /run/pispeaker 2>&1 | while IFS= read -r line; do out "boot_config $line"; done
since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl start pispeaker.service
wait_active pispeaker.service 300
out "usb_state=$(systemctl show -p ActiveState --value pispeaker.service)"
out "hw_line=$(journalctl -o cat --no-pager -u pispeaker.service --since "$since" | grep -m1 'volume: hardware control')"
journalctl -o cat --no-pager -u pispeaker.service --since "$since" | tail -n 15 | while IFS= read -r line; do out "journal $line"; done
systemctl --failed --no-legend --plain | while IFS= read -r line; do out "failed $line"; done
out "done"
