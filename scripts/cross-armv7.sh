#!/usr/bin/env bash
# Docker-free armv7 (Raspberry Pi 2/3/Zero 2 W, 32-bit OS) build with Debian's own cross toolchain.
#
#   sudo bash scripts/cross-armv7.sh install   # toolchain only (idempotent: installs nothing twice)
#   sudo bash scripts/cross-armv7.sh build     # + stripped release binary
#   sudo bash scripts/cross-armv7.sh test      # + unit/logic tests under qemu-arm-static
#   sudo bash scripts/cross-armv7.sh deb       # + pispeaker_<ver>_armhf.deb, checked with lintian
#   sudo bash scripts/cross-armv7.sh ci        # all of the above, with timings (what CI runs)
#
# Why Debian's rustc 1.85 and not rustup: it comes with an armhf standard library as a Debian
# package, so nothing is downloaded outside the package registries. Versions are pinned to
# bookworm main: the bookworm-security armhf index has failed mid-sync on build machines, so no
# step depends on it, and multiarch needs the same version of a library on both architectures.
#
# The PKG_CONFIG_* and linker variables are set for the armv7 cargo call only: leaking them into
# a host build links the host binary against the armhf libasound. Artifacts go to
# target/debian-armv7 because Debian's 1.85 and rustup's compiler would otherwise keep
# invalidating each other's host build-script artifacts in target/.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=armv7-unknown-linux-gnueabihf
RUST_VERSION="1.85.0+dfsg3-1~deb12u3"
LZMA_VERSION="5.4.1-1+deb12u1"
export CARGO_TARGET_DIR="${PISPEAKER_ARMV7_TARGET_DIR:-$PWD/target/debian-armv7}"
OUT="$CARGO_TARGET_DIR/$TARGET/release"
# armv7 programs run under qemu-arm-static with the multiarch libc6:armhf (/lib/arm-linux-gnueabihf),
# not with `-L /usr/arm-linux-gnueabihf`: with the cross sysroot's glibc, bookworm's qemu-user
# 7.2 crashes on the first thread a program starts (every Rust test runs in a thread).

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Under emulation: the library's unit and logic tests (config, mixer mapping, supervisor with the
# fake session, state writer, Jellyfin messages), config_cli (drives the armv7 binary itself) and
# jellyfin_sidecar (the sidecar against the fake server over loopback).
# Tests that stay on the host, and why:
#   ap_link_drop, e2e_discovery, jellyfin_netns: network namespaces, veth and iptables need root
#     on the host kernel; under qemu-user the ip/iptables tools and setns run as host binaries
#     anyway, so emulation would prove nothing more.
#   systemd_unit: runs the host's systemd-analyze on the unit file; nothing armv7 about it.
ARMV7_TESTS=(--lib --test config_cli --test jellyfin_sidecar)

pinned_packages() {
  echo "rustc-web=$RUST_VERSION cargo-web=$RUST_VERSION libstd-rust-web-dev=$RUST_VERSION"
  echo "libstd-rust-web-dev:armhf=$RUST_VERSION liblzma5=$LZMA_VERSION liblzma5:armhf=$LZMA_VERSION"
  echo "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross libc6:armhf libasound2-dev:armhf qemu-user-static binfmt-support"
  echo "pkg-config dpkg-dev lintian"
}

installed() { # pkg[=version]
  local pkg=${1%%=*} want=${1#*=} have
  have=$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null) || return 1
  case "$have" in "install ok installed "*) ;; *) return 1 ;; esac
  [ "$want" = "$1" ] || [ "${have##* }" = "$want" ]
}

install_toolchain() {
  local missing=()
  for p in $(pinned_packages); do installed "$p" || missing+=("$p"); done
  if ! dpkg --print-foreign-architectures | grep -qx armhf; then
    [ "$(id -u)" = 0 ] || die "adding the armhf architecture needs root: run with sudo"
    say "dpkg --add-architecture armhf"
    dpkg --add-architecture armhf
    missing+=(force-update)
  fi
  if [ ${#missing[@]} -eq 0 ]; then
    say "armv7 toolchain already installed (Debian rustc $RUST_VERSION)"
    return
  fi
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root: run with sudo"
  command -v apt-get >/dev/null || die "no apt-get: this script needs Debian bookworm (or use cross, see Cross.toml)"
  say "apt-get update"
  # A half-synced bookworm-security armhf index makes `update` fail although everything we need
  # comes from bookworm main: carry on, and let the install below say what is really missing.
  apt-get update -qq || echo "warning: apt-get update reported errors; continuing with the indexes that loaded" >&2
  say "installing the pinned armv7 toolchain"
  # shellcheck disable=SC2046
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
    $(pinned_packages) \
    || die "the armv7 toolchain did not install (see apt's message above). It needs Debian bookworm main with the armhf architecture; rustc-web must be available at $RUST_VERSION"
  [ -x /usr/bin/rustc ] && /usr/bin/rustc --version | grep -q '1\.85' || die "/usr/bin/rustc is not Debian's 1.85 ($(/usr/bin/rustc --version 2>&1))"
}

armv7_cargo() {
  # Everything cross-specific lives in this environment only.
  env RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
    CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc \
    CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER=qemu-arm-static \
    PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_PATH=/usr/lib/arm-linux-gnueabihf/pkgconfig \
    PKG_CONFIG_SYSROOT_DIR=/ \
    /usr/bin/cargo "$@"
}

build() {
  say "cargo build --release --target $TARGET (Debian rustc 1.85)"
  local start=$SECONDS
  armv7_cargo build --release --locked --target "$TARGET"
  file "$OUT/pispeaker" 2>/dev/null | grep -q 'ARM' || [ -f "$OUT/pispeaker" ] || die "no binary at $OUT/pispeaker"
  BUILD_SECS=$((SECONDS - start))
  say "built $OUT/pispeaker: $(stat -c %s "$OUT/pispeaker") bytes stripped, in ${BUILD_SECS}s"
  qemu-arm-static "$OUT/pispeaker" --version
}

run_tests() {
  say "armv7 tests under qemu-arm-static: ${ARMV7_TESTS[*]}"
  local log; log=$(mktemp)
  # The test binaries run under qemu through the cargo runner; the binary under test
  # (CARGO_BIN_EXE_pispeaker) is an armv7 program too, run by the kernel's qemu binfmt handler
  # when present, so config_cli exercises the armv7 daemon itself.
  armv7_cargo test --locked --target "$TARGET" "${ARMV7_TESTS[@]}" 2>&1 | tee "$log"
  ARMV7_TESTS_PASSED=$(grep -E '^test result:' "$log" | awk '{p+=$4} END {print p+0}')
  local failed; failed=$(grep -E '^test result:' "$log" | awk '{f+=$6} END {print f+0}')
  rm -f "$log"
  [ "$failed" = 0 ] || die "$failed armv7 test(s) failed"
  say "armv7 tests under emulation: $ARMV7_TESTS_PASSED passed"
}

ensure_binfmt() {
  # config_cli starts the armv7 pispeaker binary from the armv7 test binary: that exec needs the
  # kernel's binfmt_misc handler for ARM (qemu-user-static registers it through binfmt-support).
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-arm ]; then
    if command -v update-binfmts >/dev/null; then update-binfmts --enable qemu-arm 2>/dev/null || true; fi
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-arm ] && [ -w /proc/sys/fs/binfmt_misc/register ]; then
    printf '%s' ':qemu-arm:M::\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-arm-static:F' \
      > /proc/sys/fs/binfmt_misc/register 2>/dev/null || true
  fi
  [ -e /proc/sys/fs/binfmt_misc/qemu-arm ] || die "cannot register qemu-arm with binfmt_misc (needed to run armv7 binaries from armv7 tests): install binfmt-support or run as root"
}

build_deb() {
  command -v cargo-deb >/dev/null || [ -x "$HOME/.cargo/bin/cargo-deb" ] || {
    say "installing cargo-deb (host toolchain)"
    cargo install cargo-deb --locked --version '^3' >/dev/null
  }
  say "cargo deb --target $TARGET"
  # cargo-deb only packages: the binary comes from the build above (--no-build).
  cargo deb --no-build --no-strip --target "$TARGET" --output "$CARGO_TARGET_DIR/" >/dev/null
  DEB=$(ls -t "$CARGO_TARGET_DIR"/pispeaker_*_armhf.deb | head -n1)
  say "$DEB"
  dpkg-deb -I "$DEB" | sed -n '1,40p'
  dpkg-deb -c "$DEB"
  local expect listing
  listing=$(dpkg-deb -c "$DEB")
  for expect in ./usr/bin/pispeaker ./usr/lib/systemd/system/pispeaker.service ./etc/pispeaker/config.toml \
                ./usr/share/doc/pispeaker/copyright ./usr/share/pispeaker/boards/hifiberry-dacplus.toml; do
    grep -q " $expect\$" <<<"$listing" || die "the .deb lacks $expect"
  done
  grep -qx /etc/pispeaker/config.toml <<<"$(dpkg-deb -I "$DEB" conffiles)" || die "config.toml is not a conffile"
  say "lintian"
  LINTIAN_OUT=$(lintian --no-tag-display-limit "$DEB" 2>&1 || true)
  echo "$LINTIAN_OUT"
  if echo "$LINTIAN_OUT" | grep -q '^E: '; then die "lintian reports errors"; fi
  LINTIAN_SUMMARY="$(echo "$LINTIAN_OUT" | grep -c '^E: ' || true) errors, $(echo "$LINTIAN_OUT" | grep -c '^W: ' || true) warnings"
}

case "${1:-build}" in
  install) install_toolchain ;;
  build) install_toolchain; build ;;
  test) install_toolchain; ensure_binfmt; run_tests ;;
  deb) install_toolchain; build; build_deb ;;
  ci)
    t0=$SECONDS
    install_toolchain; t_install=$((SECONDS - t0))
    build
    ensure_binfmt; run_tests
    build_deb
    echo
    echo "armv7 figures: toolchain ${t_install}s, release build ${BUILD_SECS}s, stripped binary $(stat -c %s "$OUT/pispeaker") bytes, armv7 tests under qemu: $ARMV7_TESTS_PASSED passed, lintian: $LINTIAN_SUMMARY, total $((SECONDS - t0))s"
    ;;
  *) die "usage: $0 install|build|test|deb|ci" ;;
esac
