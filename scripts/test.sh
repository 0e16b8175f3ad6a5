#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian/Ubuntu machine, then runs every check CI runs:
# formatting, clippy, the host test suite (including the network-namespace tests, which need
# root), the unit-file checks, the armv7 build + tests under qemu, and the SD images: the armhf
# image booted on qemu's virt and raspi2b machines and updated in the emulator, the arm64 image
# (built in the background) booted on raspi3b.
#
#   bash scripts/test.sh            # everything
#   SKIP_ARMV7=1 bash scripts/test.sh   # host only (faster while iterating; implies SKIP_IMAGE)
#   SKIP_IMAGE=1 bash scripts/test.sh   # everything but the SD image builds and their boot tests
#   SKIP_ARM64=1 bash scripts/test.sh   # everything but the 64-bit image (its base, the aarch64
#                                       # build, the image and its boot on raspi3b)
set -euo pipefail
cd "$(dirname "$0")/.."

CI_T0=$(date +%s)
# Every step says when it began (seconds since this script started): the CI log is the timeline.
step() { printf '\n==> [%ss] %s\n' "$(( $(date +%s) - CI_T0 ))" "$*"; }
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

# The SD images' root file systems (mmdebstrap of Debian armhf and arm64, every maintainer script
# under qemu-user: armhf's ~6 min of mostly one core when the machine is idle) and the aarch64
# release build need nothing from the checks below, so they run in the background, niced so the
# timing-sensitive tests keep their CPU, and the image stages wait for them. Everything apt
# installs (both cross toolchains, the images' host tools) and cargo-deb (both .deb builds need
# it) are installed first: two apt runs or two `cargo install`s at once would fight over a lock.
# Each background job leaves its exit status in $BG/<job>.rc and its output in $BG/<job>.log.
BG=/tmp/pispeaker-ci
# The images CI builds are unpacked again at once by the boot tests: xz -1, not the -6 releases
# ship (~3 core-minutes less per image, ~15 % bigger).
export PISPEAKER_IMAGE_XZ_LEVEL=${PISPEAKER_IMAGE_XZ_LEVEL:-1}
bg_pids=()
kill_tree() { local child; for child in $(pgrep -P "$1"); do kill_tree "$child"; done; $SUDO kill -TERM "$1" 2>/dev/null || true; }
# If a check fails first, the background jobs go too (children first: mmdebstrap cleans up its
# temporary root on SIGTERM).
trap 'for p in "${bg_pids[@]}"; do kill_tree "$p"; done' EXIT
bg() { # name nice command...: runs the command in the background
  local name=$1 niceness=$2; shift 2
  ( rc=0 t=$(date +%s)
    $SUDO env "PATH=$PATH" "HOME=$HOME" nice -n "$niceness" "$@" >"$BG/$name.log" 2>&1 || rc=$?
    # The job's wall time and the CPU time of everything it ran (bash's `times`, second line:
    # children's user and system time): what the CI timeline is made of.
    times >"$BG/$name.times"
    echo "background job $name: exit $rc after $(( $(date +%s) - t )) s, CPU (user, system) $(tail -n 1 "$BG/$name.times")" >>"$BG/$name.log"
    echo "$rc" >"$BG/$name.rc" ) &
  bg_pids+=($!)
  echo "background: $name (log: $BG/$name.log)"
}
bg_wait() { # name what: waits for a background job; on failure shows its log's end and stops
  local name=$1 what=$2
  while [ ! -s "$BG/$name.rc" ]; do sleep 2; done
  if [ "$(cat "$BG/$name.rc")" != 0 ]; then
    tail -n 60 "$BG/$name.log"
    echo "error: $what failed (log above: $BG/$name.log)" >&2
    exit 1
  fi
}
ARM64=""
if [ -z "${SKIP_ARMV7:-}" ] && [ -z "${SKIP_IMAGE:-}" ]; then
  [ -n "${SKIP_ARM64:-}" ] || ARM64=1
  rm -rf "$BG" && mkdir -p "$BG"
  step "SD images: host tools, the cross toolchains and cargo-deb; then the root file systems${ARM64:+ and the aarch64 build} in the background"
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash scripts/cross-armv7.sh install
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash image/build.sh --host-tools
  if [ -n "$ARM64" ]; then
    $SUDO env "PATH=$PATH" "HOME=$HOME" bash scripts/cross-aarch64.sh install
    $SUDO env "PATH=$PATH" "HOME=$HOME" bash image/build.sh --arch arm64 --host-tools
  fi
  command -v cargo-deb >/dev/null || [ -x "$HOME/.cargo/bin/cargo-deb" ] || cargo install cargo-deb --locked --version '^3' >/dev/null
  # The armhf base gates the longest stage (the armhf image's boots and updates): it gets the
  # idle CPU before the arm64 work, which is needed only at the end.
  bg base-armhf 10 bash image/build.sh --base-only
  if [ -n "$ARM64" ]; then
    bg base-arm64 12 bash image/build.sh --arch arm64 --base-only
    bg build-aarch64 15 bash scripts/cross-aarch64.sh build
  fi
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
image_logs=()
if [ -z "${SKIP_ARMV7:-}" ] && [ -z "${SKIP_IMAGE:-}" ]; then
  step "SD image (armhf): image/build.sh, then boot it under qemu-system-arm (tests/image_boot.sh)"
  bg_wait base-armhf "building the armhf image's root file system"
  sed 's/^/  base: /' "$BG/base-armhf.log" | grep -E 'base: (==>|root file system built|reusing)' || true
  # The armv7 step above built and checked the .deb (lintian): the image takes that one.
  armhf_deb=$(ls -t "${PISPEAKER_ARMV7_TARGET_DIR:-target/debian-armv7}"/pispeaker_*_armhf.deb 2>/dev/null | head -n1 || true)
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash image/build.sh --deb "$armhf_deb" 2>&1 | tee /tmp/pispeaker-image.log
  if [ -n "$ARM64" ]; then
    # The arm64 image is built in the background while the armhf image boots: after the armhf
    # build (the two would otherwise both make the development signing pair in image/keys/), once
    # its base and the aarch64 build are done. Its .deb step only packages what build-aarch64 built.
    # Its boot on raspi3b follows in the same job, at normal priority, beside the armhf image's
    # boots and update test: those leave the CPU idle at times (a trial boot waits a minute for a
    # READY that never comes). Run last, after the update test, it made CI ~2 min longer.
    bg arm64 0 env "BG=$BG" "PISPEAKER_IMAGE_XZ_LEVEL=$PISPEAKER_IMAGE_XZ_LEVEL" bash -c 'for job in base-arm64 build-aarch64; do
        while [ ! -s "$BG/$job.rc" ]; do sleep 2; done
        [ "$(cat "$BG/$job.rc")" = 0 ] || { echo "error: $job failed (log: $BG/$job.log)" >&2; exit 1; }
      done
      echo "==> [arm64] image/build.sh --arch arm64 (nice 10), from $(date -u +%T)"
      nice -n 10 bash image/build.sh --arch arm64 || exit 1
      echo "==> [arm64] tests/image_boot_pi.sh --machine raspi3b, from $(date -u +%T)"
      exec bash tests/image_boot_pi.sh --machine raspi3b'
  fi
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash tests/image_boot.sh 2>&1 | tee /tmp/pispeaker-image-boot.log
  # The Pi's own boot path: the firmware's choices from config.txt (checked on a hand-made card
  # first, then taken from the image) and a boot on qemu's raspi2b machine.
  step "SD image (armhf): the Pi's boot path (tests/image/pi_firmware_test.sh, tests/image_boot_pi.sh on raspi2b)"
  bash tests/image/pi_firmware_test.sh 2>&1 | tee /tmp/pispeaker-image-firmware.log
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash tests/image_boot_pi.sh 2>&1 | tee /tmp/pispeaker-image-boot-pi.log
  # A/B updates in the emulator (issue 14's scenarios): bundles built from this image, installs,
  # power cuts, a rollback; one copy of the image booted ~10 times.
  step "SD image (armhf): updates, power cuts and rollback in the emulator (tests/image_update.sh)"
  $SUDO env "PATH=$PATH" "HOME=$HOME" bash tests/image_update.sh 2>&1 | tee /tmp/pispeaker-image-update.log
  image_logs+=(/tmp/pispeaker-image-boot.log /tmp/pispeaker-image-firmware.log /tmp/pispeaker-image-boot-pi.log /tmp/pispeaker-image-update.log)
  if [ -n "$ARM64" ]; then
    # The 64-bit image on the Pi 3's boot path (qemu-system-aarch64 -M raspi3b), from the job above.
    step "SD image (arm64): image/build.sh --arch arm64 and tests/image_boot_pi.sh --machine raspi3b (background job arm64)"
    bg_wait arm64 "the arm64 image or its boot on raspi3b"
    cat "$BG/arm64.log" > /tmp/pispeaker-image-arm64.log
    grep -vE '^(==> \[[0-9]+/10\]|  )' "$BG/arm64.log" | grep -E '^(==>|image:|bundle:|image figures:|ok:|FIGURE|image boot|background job)' || true
    image_logs+=(/tmp/pispeaker-image-arm64.log)
  fi
  image_passed=$(cat "${image_logs[@]}" | grep -c '^ok: ' || true)
fi

echo
echo "all checks passed in $(( $(date +%s) - started )) s (host tests: $host_passed, armv7 tests under qemu: ${armv7_passed:-0}, image boot checks: $image_passed${ARM64:+, armhf and arm64 images})"
times >/tmp/pispeaker-ci-times
echo "CPU time of this run (user, system; everything it started): $(tail -n 1 /tmp/pispeaker-ci-times)"
echo "summary: $(( host_passed + ${armv7_passed:-0} + image_passed )) passed, $host_failed failed"
