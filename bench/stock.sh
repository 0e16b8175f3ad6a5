# Sourced by the bench scripts: builds stock librespot 0.8.0 the same way as pispeaker (same
# librespot features, same release profile: fat LTO, one codegen unit, stripped, panic=abort),
# into bench/out (gitignored). It comes from crates.io at bench time and is never committed.
STOCK_FEATURES="alsa-backend,rustls-tls-webpki-roots,with-libmdns"
STOCK_PROFILE=(--config 'profile.release.lto="fat"' --config 'profile.release.codegen-units=1'
               --config 'profile.release.strip=true' --config 'profile.release.panic="abort"')

stock_host() { # prints the path of the host binary
  local root=bench/out/stock-host
  if [ ! -x "$root/bin/librespot" ]; then
    echo "building stock librespot 0.8.0 for this machine ..." >&2
    cargo install librespot@0.8.0 --locked --no-default-features --features "$STOCK_FEATURES" \
      --root "$root" "${STOCK_PROFILE[@]}" >&2
  fi
  echo "$root/bin/librespot"
}

stock_armv7() { # prints the path of the armv7 binary (Debian's rustc 1.85, as scripts/cross-armv7.sh)
  local root=bench/out/stock-armv7
  if [ ! -x "$root/bin/librespot" ]; then
    echo "building stock librespot 0.8.0 for armv7 with Debian's toolchain ..." >&2
    env RUSTC=/usr/bin/rustc \
      CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc \
      PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_PATH=/usr/lib/arm-linux-gnueabihf/pkgconfig PKG_CONFIG_SYSROOT_DIR=/ \
      CARGO_TARGET_DIR="$PWD/bench/out/stock-armv7-target" \
      /usr/bin/cargo install librespot@0.8.0 --locked --no-default-features --features "$STOCK_FEATURES" \
      --target armv7-unknown-linux-gnueabihf --root "$root" "${STOCK_PROFILE[@]}" >&2
  fi
  echo "$root/bin/librespot"
}

ratio() { echo "$1 $2" | awk '{printf "%.2f", $1 / $2}'; }
