# Sourced by the bench scripts: builds stock librespot 0.8.0 with the same librespot features and
# the same toolchain as pispeaker, into bench/out (gitignored). It comes from crates.io at bench
# time and is never committed. Two flavours:
#   shipped: librespot's own release profile (it sets none: cargo's defaults), stripped — the
#            binary a user of stock librespot runs, and the anchor of the size goals;
#   tuned:   pispeaker's release profile (fat LTO, one codegen unit, panic=abort, stripped) — how
#            much of our size is profile and how much is code.
STOCK_FEATURES="alsa-backend,rustls-tls-webpki-roots,with-libmdns"

stock_profile() {
  case "$1" in
    shipped) echo "--config profile.release.strip=true" ;;
    tuned) echo "--config profile.release.lto=\"fat\" --config profile.release.codegen-units=1 --config profile.release.strip=true --config profile.release.panic=\"abort\"" ;;
  esac
}

stock_host() { # flavour → path of the host binary
  local root=bench/out/stock-host-$1
  if [ ! -x "$root/bin/librespot" ]; then
    echo "building stock librespot 0.8.0 ($1) for this machine ..." >&2
    # shellcheck disable=SC2046
    eval cargo install librespot@0.8.0 --locked --no-default-features --features "$STOCK_FEATURES" \
      --root "$root" $(stock_profile "$1") >&2
  fi
  echo "$root/bin/librespot"
}

stock_armv7() { # flavour → path of the armv7 binary (Debian's rustc 1.85, as scripts/cross-armv7.sh)
  local root=bench/out/stock-armv7-$1
  if [ ! -x "$root/bin/librespot" ]; then
    echo "building stock librespot 0.8.0 ($1) for armv7 with Debian's toolchain ..." >&2
    eval env RUSTC=/usr/bin/rustc \
      CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc \
      PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_PATH=/usr/lib/arm-linux-gnueabihf/pkgconfig PKG_CONFIG_SYSROOT_DIR=/ \
      CARGO_TARGET_DIR="$PWD/bench/out/stock-armv7-target" \
      /usr/bin/cargo install librespot@0.8.0 --locked --no-default-features --features "$STOCK_FEATURES" \
      --target armv7-unknown-linux-gnueabihf --root "$root" $(stock_profile "$1") >&2
  fi
  echo "$root/bin/librespot"
}

ratio() { echo "$1 $2" | awk '{printf "%.2f", $1 / $2}'; }
