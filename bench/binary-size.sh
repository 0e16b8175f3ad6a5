#!/usr/bin/env bash
# Stripped armv7 release binary: pispeaker vs stock librespot 0.8.0, both built in this run with
# Debian's rustc 1.85, the same librespot features and the same release profile.
# Goal (issue 5): ratio <= 0.75. `--host` compares the x86_64 builds instead.
# Not a test: a figure. Needs the armv7 toolchain (sudo bash scripts/cross-armv7.sh install).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/stock.sh
if [ "${1:-}" = "--host" ]; then
  stock=$(stock_host)
  cargo build --release --locked >&2
  ours=target/release/pispeaker
  arch=x86_64
else
  stock=$(stock_armv7)
  bash scripts/cross-armv7.sh build >&2
  ours=target/debian-armv7/armv7-unknown-linux-gnueabihf/release/pispeaker
  arch=armv7
fi
o=$(stat -c %s "$ours"); s=$(stat -c %s "$stock")
printf 'stripped %s binary: pispeaker %d bytes, stock librespot 0.8.0 %d bytes, ratio %s\n' "$arch" "$o" "$s" "$(ratio "$o" "$s")"
