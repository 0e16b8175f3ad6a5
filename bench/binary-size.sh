#!/usr/bin/env bash
# Stripped armv7 release binary: pispeaker vs stock librespot 0.8.0, all built in this run with
# Debian's rustc 1.85 and the same librespot features. The anchor is stock as shipped (its own,
# default release profile, stripped); the goal of issue 5 is a ratio <= 0.75 against it. The
# ratio against stock built with pispeaker's profile is printed too. `--host` compares x86_64.
# Not a test: a figure. Needs the armv7 toolchain (sudo bash scripts/cross-armv7.sh install).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/stock.sh
if [ "${1:-}" = "--host" ]; then
  shipped=$(stock_host shipped); tuned=$(stock_host tuned)
  cargo build --release --locked >&2
  ours=target/release/pispeaker; arch=x86_64
else
  shipped=$(stock_armv7 shipped); tuned=$(stock_armv7 tuned)
  bash scripts/cross-armv7.sh build >&2
  ours=target/debian-armv7/armv7-unknown-linux-gnueabihf/release/pispeaker; arch=armv7
fi
o=$(stat -c %s "$ours"); s=$(stat -c %s "$shipped"); t=$(stat -c %s "$tuned")
printf 'stripped %s binary: pispeaker %d bytes; stock librespot 0.8.0 as shipped %d bytes (ratio %s); stock with pispeaker'"'"'s profile %d bytes (ratio %s)\n' \
  "$arch" "$o" "$s" "$(ratio "$o" "$s")" "$t" "$(ratio "$o" "$t")"
