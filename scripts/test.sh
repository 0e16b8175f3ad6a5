#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian/Ubuntu machine, then runs every check CI runs:
# formatting, clippy, the host test suite (including the network-namespace tests, which need
# root), the unit-file checks, and the armv7 build + tests under qemu.
#
#   bash scripts/test.sh            # everything
#   SKIP_ARMV7=1 bash scripts/test.sh   # host only (faster while iterating; implies SKIP_IMAGE)
#   SKIP_IMAGE=1 bash scripts/test.sh   # everything but the SD image build and its boot test
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "error: installing packages and the namespace tests need root; run as root or install sudo" >&2
    exit 1
  fi
fi

# Debian packages: ALSA headers for the alsa crate, pkg-config, ip/iptables for the namespace
# tests, systemd-analyze for the unit checks, sox (+ its MP3 format) to generate the Jellyfin
# cast tests' audio, and ffmpeg for what sox cannot encode (AAC in .m4a with its native encoder,
# Opus with libopus). ffmpeg goes in without its Recommends (a separate apt call): those are
# desktop and hardware-decoding extras the tests never use, and they make CI slower. chromium
# (headless) drives the web app in tests/web_browser.rs; fonts-dejavu-core gives it a font.
# rauc, squashfs-tools and openssl build and check signed update bundles (tests/rauc_bundle.rs);
# dbus runs a private bus for the RAUC service in tests/rauc_install.rs. mmdebstrap and python3
# build rauc with HTTP streaming (image/rauc/build-rauc.sh), which needs libnl-genl-3-200 to run
# (tests/rauc_stream.rs).
need_pkgs=()
for pkg in build-essential pkg-config libasound2-dev iproute2 iptables systemd curl ca-certificates sox libsox-fmt-mp3 ffmpeg qemu-system-arm mtools fdisk xz-utils chromium fonts-dejavu-core rauc squashfs-tools openssl dbus mmdebstrap python3 libnl-genl-3-200; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  step "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || $SUDO apt-get update -qq -o Acquire::Retries=3 || true
  lean_pkgs=() other_pkgs=()
  for pkg in "${need_pkgs[@]}"; do
    case "$pkg" in
      ffmpeg) lean_pkgs+=("$pkg") ;;
      *) other_pkgs+=("$pkg") ;;
    esac
  done
  if [ ${#other_pkgs[@]} -gt 0 ]; then $SUDO apt-get install -y -qq "${other_pkgs[@]}"; fi
  if [ ${#lean_pkgs[@]} -gt 0 ]; then $SUDO apt-get install -y -qq --no-install-recommends "${lean_pkgs[@]}"; fi
fi

# Rust: the rustup toolchain with rustfmt and clippy.
if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; else
    echo "error: no cargo found. Install rustup (https://rustup.rs) and run this again." >&2
    exit 1
  fi
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

started=$(date +%s)

# The SD image's root file system (mmdebstrap of Debian armhf, every maintainer script under
# qemu-user) takes ~12 min of mostly one core. It needs nothing from this checkout's build, so
# it runs in the background, niced so the timing-sensitive tests keep their CPU, while the
# checks below run; the image stage waits for it. Everything apt installs (the armv7 toolchain,
# the image's host tools) is installed first: two apt runs at once would fight over the lock.
image_base_pid=""
if [ -z "${SKIP_ARMV7:-}" ] && [ -z "${SKIP_IMAGE:-}" ]; then
  step "SD image: host tools and the armv7 toolchain, then the root file system in the background"
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash scripts/cross-armv7.sh install
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash image/build.sh --host-tools
  $SUDO env "PATH=$PATH" "HOME=$HOME" nice -n 10 bash image/build.sh --base-only >/tmp/pispeaker-image-base.log 2>&1 &
  image_base_pid=$!
  # If a check fails first, the background build goes too (children first: mmdebstrap cleans up
  # its temporary root on SIGTERM).
  kill_tree() { local child; for child in $(pgrep -P "$1"); do kill_tree "$child"; done; $SUDO kill -TERM "$1" 2>/dev/null || true; }
  trap '[ -z "$image_base_pid" ] || kill_tree "$image_base_pid"' EXIT
  echo "building the image's root file system in the background (log: /tmp/pispeaker-image-base.log)"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

# The image's rauc is Debian's rebuilt with HTTP streaming (image/rauc/build-rauc.sh);
# tests/rauc_stream.rs runs the same build for this machine (~1 min, then cached by version).
step "rauc with HTTP streaming for the host tests (image/rauc/build-rauc.sh)"
$SUDO nice -n 10 bash image/rauc/build-rauc.sh "$(dpkg --print-architecture)" \
  "$(dpkg-query -W -f='${source:Version}' rauc)" image/cache target/rauc-streaming/rauc
PISPEAKER_STREAMING_RAUC=$PWD/target/rauc-streaming/rauc

step "cargo test (host)"
$SUDO env "PATH=$PATH" "HOME=$HOME" ${CARGO_HOME:+"CARGO_HOME=$CARGO_HOME"} ${RUSTUP_HOME:+"RUSTUP_HOME=$RUSTUP_HOME"} \
  "PISPEAKER_STREAMING_RAUC=$PISPEAKER_STREAMING_RAUC" cargo test --locked --all-targets -- --nocapture 2>&1 | tee /tmp/pispeaker-host-tests.log
host_passed=$(grep -E '^test result:' /tmp/pispeaker-host-tests.log | awk '{p+=$4} END {print p+0}')
host_failed=$(grep -E '^test result:' /tmp/pispeaker-host-tests.log | awk '{f+=$6} END {print f+0}')
echo "host tests: $host_passed passed"

armv7_passed=0
if [ -z "${SKIP_ARMV7:-}" ]; then
  step "armv7: build, tests under qemu, .deb"
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash scripts/cross-armv7.sh ci 2>&1 | tee /tmp/pispeaker-armv7.log
  armv7_passed=$(sed -n 's/.*armv7 tests under qemu: \([0-9]*\) passed.*/\1/p' /tmp/pispeaker-armv7.log | tail -n1)
fi
image_passed=0
if [ -z "${SKIP_ARMV7:-}" ] && [ -z "${SKIP_IMAGE:-}" ]; then
  step "SD image: image/build.sh, then boot it under qemu-system-arm (tests/image_boot.sh)"
  if ! wait "$image_base_pid"; then
    tail -n 60 /tmp/pispeaker-image-base.log
    echo "error: building the image's root file system failed (log above: /tmp/pispeaker-image-base.log)" >&2
    exit 1
  fi
  image_base_pid=""
  sed 's/^/  base: /' /tmp/pispeaker-image-base.log | grep -E 'base: (==>|root file system built|reusing)' || true
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash image/build.sh 2>&1 | tee /tmp/pispeaker-image.log
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash tests/image_boot.sh 2>&1 | tee /tmp/pispeaker-image-boot.log
  # The Pi's own boot path: the firmware's choices from config.txt (checked on a hand-made card
  # first, then taken from the image) and a boot on qemu's raspi2b machine.
  step "SD image: the Pi's boot path (tests/image/pi_firmware_test.sh, tests/image_boot_pi.sh on raspi2b)"
  bash tests/image/pi_firmware_test.sh 2>&1 | tee /tmp/pispeaker-image-firmware.log
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash tests/image_boot_pi.sh 2>&1 | tee /tmp/pispeaker-image-boot-pi.log
  # A/B updates in the emulator (issue 14's scenarios): bundles built from this image, installs,
  # power cuts, a rollback; one copy of the image booted ~10 times.
  step "SD image: updates, power cuts and rollback in the emulator (tests/image_update.sh)"
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash tests/image_update.sh 2>&1 | tee /tmp/pispeaker-image-update.log
  image_passed=$(cat /tmp/pispeaker-image-boot.log /tmp/pispeaker-image-firmware.log /tmp/pispeaker-image-boot-pi.log /tmp/pispeaker-image-update.log | grep -c '^ok: ' || true)
fi

echo
echo "all checks passed in $(( $(date +%s) - started )) s (host tests: $host_passed, armv7 tests under qemu: ${armv7_passed:-0}, image boot checks: $image_passed)"
echo "summary: $(( host_passed + ${armv7_passed:-0} + image_passed )) passed, $host_failed failed"
