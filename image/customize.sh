#!/bin/sh
# Runs inside the image's root file system (chroot, armhf under qemu-user) after our .deb and the
# overlay in image/rootfs are in place. Everything here must be repeatable on a fresh tree.
set -eu

# No password anywhere: root is locked (log in over SSH with a key from the boot config).
usermod --lock root
passwd --delete --quiet root 2>/dev/null || true
usermod --lock root

# Host keys are made on the device (on PSDATA) the first time SSH is switched on: an image must
# never carry keys that every copy of it shares.
rm -f /etc/ssh/ssh_host_*

# Networking: networkd + resolved (without listening stubs) + timesyncd (the Pi has no clock).
systemctl enable systemd-networkd.service systemd-resolved.service systemd-timesyncd.service \
  pispeaker-boot-config.service pispeaker-board-overlay.service pispeaker-adopt-password.service \
  pispeaker-apply-system.path pispeaker.service ssh.service pispeaker-mark-good.service \
  pispeaker-trial-watch.service
ln -sf /run/systemd/resolve/resolv.conf /etc/resolv.conf
mkdir -p /etc/wpa_supplicant
ln -sf /run/pispeaker/wpa_supplicant-wlan0.conf /etc/wpa_supplicant/wpa_supplicant-wlan0.conf

# Nothing may write to the read-only root behind our back, nor wait for a keyboard.
systemctl mask systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer \
  dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer 2>/dev/null || true

# A fresh machine id on every boot (read-only root); DHCP uses the MAC instead.
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
ln -sf /etc/machine-id /var/lib/dbus/machine-id

# Regenerate /boot/firmware/{config.txt,cmdline.txt} with /etc/default/raspi-firmware*.
DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware

# Mount points for the partitions and the bound state directories.
mkdir -p /boot/firmware /data /var/lib/pispeaker

# apt's lists and caches are not needed on a device that is updated by reflashing.
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/cache/ldconfig/aux-cache
