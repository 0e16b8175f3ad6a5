#!/usr/bin/env bash
# Docker-free builds for the Raspberry Pi with Debian's own cross toolchain, for either target:
#
#   armv7    (armv7-unknown-linux-gnueabihf, the armhf .deb: Pi 2/3/Zero 2 W on a 32-bit OS)
#   aarch64  (aarch64-unknown-linux-gnu, the arm64 .deb: Pi 3/4/Zero 2 W on a 64-bit OS)
#
#   sudo bash scripts/cross.sh TARGET install   # toolchain only (idempotent: installs nothing twice)
#   sudo bash scripts/cross.sh TARGET build     # + stripped release binary
#   sudo bash scripts/cross.sh TARGET test      # + unit/logic tests under qemu-user
#   sudo bash scripts/cross.sh TARGET deb       # + pispeaker_<ver>_<arch>.deb, checked with lintian
#   sudo bash scripts/cross.sh TARGET ci        # all of the above, with timings (what CI runs)
#
# scripts/cross-armv7.sh and scripts/cross-aarch64.sh are this with the target filled in.
#
# Why Debian's rustc 1.85 and not rustup: it comes with an armhf and an arm64 standard library as
# Debian packages, so nothing is downloaded outside the package registries. Versions are pinned
# to bookworm main: the bookworm-security armhf index has failed mid-sync on build machines, so no
# step depends on it, and multiarch needs the same version of a library on both architectures.
#
# The PKG_CONFIG_* and linker variables are set for the cross cargo call only: leaking them into
# a host build links the host binary against the target's libasound. Artifacts go to
# target/debian-<target> because Debian's 1.85 and rustup's compiler would otherwise keep
# invalidating each other's host build-script artifacts in target/.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  armv7)
    NAME=armv7 TARGET=armv7-unknown-linux-gnueabihf DEB_ARCH=armhf GNU=arm-linux-gnueabihf
    QEMU=qemu-arm BINFMT_MAGIC='\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00'
    BINFMT_MASK='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    TARGET_DIR=${PISPEAKER_ARMV7_TARGET_DIR:-$PWD/target/debian-armv7} ;;
  aarch64)
    # The ELF header qemu's own binfmt table (scripts/qemu-binfmt-conf.sh, aarch64) registers.
    NAME=aarch64 TARGET=aarch64-unknown-linux-gnu DEB_ARCH=arm64 GNU=aarch64-linux-gnu
    QEMU=qemu-aarch64 BINFMT_MAGIC='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    BINFMT_MASK='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    TARGET_DIR=${PISPEAKER_AARCH64_TARGET_DIR:-$PWD/target/debian-aarch64} ;;
  *) printf 'usage: %s armv7|aarch64 install|build|test|deb|ci\n' "$0" >&2; exit 2 ;;
esac
shift
RUST_VERSION="1.85.0+dfsg3-1~deb12u3"
LZMA_VERSION="5.4.1-1+deb12u1"
export CARGO_TARGET_DIR="$TARGET_DIR"
OUT="$CARGO_TARGET_DIR/$TARGET/release"
# Cargo's per-target variables: CARGO_TARGET_<TRIPLE in upper case, - as _>_LINKER/RUNNER.
TARGET_VAR=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$TARGET")
# Target programs run under qemu-user-static with the multiarch libc6:<arch> (/lib/<triplet>),
# not with `-L /usr/<triplet>`: with the cross sysroot's glibc, bookworm's qemu-user 7.2 crashes
# on the first thread a program starts (every Rust test runs in a thread).

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Under emulation: the library's unit and logic tests (config, mixer mapping, supervisor with the
# fake session, state writer, Jellyfin messages), config_cli (drives the cross-built binary itself) and
# jellyfin_sidecar (the sidecar against the fake server over loopback).
# Tests that stay on the host, and why:
#   ap_link_drop, e2e_discovery, jellyfin_netns: network namespaces, veth and iptables need root
#     on the host kernel; under qemu-user the ip/iptables tools and setns run as host binaries
#     anyway, so emulation would prove nothing more.
#   systemd_unit: runs the host's systemd-analyze on the unit file; nothing target-specific about it.
TARGET_TESTS=(--lib --test config_cli --test jellyfin_sidecar)

pinned_packages() {
  echo "rustc-web=$RUST_VERSION cargo-web=$RUST_VERSION libstd-rust-web-dev=$RUST_VERSION"
  echo "libstd-rust-web-dev:$DEB_ARCH=$RUST_VERSION liblzma5=$LZMA_VERSION liblzma5:$DEB_ARCH=$LZMA_VERSION"
  echo "gcc-$GNU libc6-dev-$DEB_ARCH-cross libc6:$DEB_ARCH libasound2-dev:$DEB_ARCH qemu-user-static binfmt-support"
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
  if ! dpkg --print-foreign-architectures | grep -qx "$DEB_ARCH"; then
    [ "$(id -u)" = 0 ] || die "adding the $DEB_ARCH architecture needs root: run with sudo"
    say "dpkg --add-architecture $DEB_ARCH"
    dpkg --add-architecture "$DEB_ARCH"
    missing+=(force-update)
  fi
  if [ ${#missing[@]} -eq 0 ]; then
    say "$NAME toolchain already installed (Debian rustc $RUST_VERSION)"
    return
  fi
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root: run with sudo"
  command -v apt-get >/dev/null || die "no apt-get: this script needs Debian bookworm (or use cross, see Cross.toml)"
  say "apt-get update"
  # A half-synced bookworm-security armhf index makes `update` fail although everything we need
  # comes from bookworm main: carry on, and let the install below say what is really missing.
  apt-get update -qq || echo "warning: apt-get update reported errors; continuing with the indexes that loaded" >&2
  say "installing the pinned $NAME toolchain"
  # shellcheck disable=SC2046
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
    $(pinned_packages) \
    || die "the $NAME toolchain did not install (see apt's message above). It needs Debian bookworm main with the $DEB_ARCH architecture; rustc-web must be available at $RUST_VERSION"
  [ -x /usr/bin/rustc ] && /usr/bin/rustc --version | grep -q '1\.85' || die "/usr/bin/rustc is not Debian's 1.85 ($(/usr/bin/rustc --version 2>&1))"
}

target_cargo() {
  # Everything cross-specific lives in this environment only.
  env RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
    "${TARGET_VAR}_LINKER=$GNU-gcc" "${TARGET_VAR}_RUNNER=$QEMU-static" \
    PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_PATH="/usr/lib/$GNU/pkgconfig" \
    PKG_CONFIG_SYSROOT_DIR=/ CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback \
    /usr/bin/cargo "$@"
}

build() {
  say "cargo build --release --target $TARGET (Debian rustc 1.85)"
  local start=$SECONDS
  target_cargo build --release --locked --target "$TARGET"
  [ -f "$OUT/pispeaker" ] || die "no binary at $OUT/pispeaker"
  BUILD_SECS=$((SECONDS - start))
  say "built $OUT/pispeaker: $(stat -c %s "$OUT/pispeaker") bytes stripped, in ${BUILD_SECS}s"
  "$QEMU-static" "$OUT/pispeaker" --version
}

run_tests() {
  say "$NAME tests under $QEMU-static: ${TARGET_TESTS[*]}"
  local log; log=$(mktemp)
  # The test binaries run under qemu through the cargo runner; the binary under test
  # (CARGO_BIN_EXE_pispeaker) is a target program too, run by the kernel's qemu binfmt handler
  # when present, so config_cli exercises the cross-built daemon itself.
  target_cargo test --locked --target "$TARGET" "${TARGET_TESTS[@]}" 2>&1 | tee "$log"
  TESTS_PASSED=$(grep -E '^test result:' "$log" | awk '{p+=$4} END {print p+0}')
  local failed; failed=$(grep -E '^test result:' "$log" | awk '{f+=$6} END {print f+0}')
  rm -f "$log"
  [ "$failed" = 0 ] || die "$failed $NAME test(s) failed"
  say "$NAME tests under emulation: $TESTS_PASSED passed"
}

ensure_binfmt() {
  # config_cli starts the target's pispeaker binary from the target's test binary: that exec needs
  # the kernel's binfmt_misc handler for it (qemu-user-static registers it through binfmt-support).
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  fi
  if [ ! -e "/proc/sys/fs/binfmt_misc/$QEMU" ]; then
    if command -v update-binfmts >/dev/null; then update-binfmts --enable "$QEMU" 2>/dev/null || true; fi
  fi
  if [ ! -e "/proc/sys/fs/binfmt_misc/$QEMU" ] && [ -w /proc/sys/fs/binfmt_misc/register ]; then
    printf '%s' ":$QEMU:M::$BINFMT_MAGIC:$BINFMT_MASK:/usr/bin/$QEMU-static:F" \
      > /proc/sys/fs/binfmt_misc/register 2>/dev/null || true
  fi
  [ -e "/proc/sys/fs/binfmt_misc/$QEMU" ] || die "cannot register $QEMU with binfmt_misc (needed to run $NAME binaries from $NAME tests): install binfmt-support or run as root"
}

build_deb() {
  command -v cargo-deb >/dev/null || [ -x "$HOME/.cargo/bin/cargo-deb" ] || {
    say "installing cargo-deb (host toolchain)"
    cargo install cargo-deb --locked --version '^3' >/dev/null
  }
  say "cargo deb --target $TARGET"
  # cargo-deb only packages: the binary comes from the build above (--no-build).
  cargo deb --no-build --no-strip --target "$TARGET" --output "$CARGO_TARGET_DIR/" >/dev/null
  DEB=$(ls -t "$CARGO_TARGET_DIR"/pispeaker_*_"$DEB_ARCH".deb | head -n1)
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
    echo "$NAME figures: toolchain ${t_install}s, release build ${BUILD_SECS}s, stripped binary $(stat -c %s "$OUT/pispeaker") bytes, $NAME tests under qemu: $TESTS_PASSED passed, lintian: $LINTIAN_SUMMARY, total $((SECONDS - t0))s"
    ;;
  *) die "usage: $0 $NAME install|build|test|deb|ci" ;;
esac
