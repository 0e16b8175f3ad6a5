#!/usr/bin/env bash
# Prints a card's A/B slot state on one line, as image/rauc/pispeaker-slot reads it from the
# two copies on the boot partition (pispeaker-slots.txt and pispeaker-slots.alt.txt; `show`):
#
#   bash tests/image/card_slots.sh IMAGE@@OFFSET      (the FAT partition, as mtools names it)
#
# Used by tests/image_boot.sh and tests/image_update.sh to read the card between boots. A copy
# that is missing stays missing, so `show` says so (other=…:missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${1:-}" ] || { echo "usage: $0 IMAGE@@OFFSET" >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for f in pispeaker-slots.txt pispeaker-slots.alt.txt; do
  mcopy -o -i "$1" "::$f" "$dir/$f" 2>/dev/null || true
done
PISPEAKER_BOOT_DIR=$dir sh image/rauc/pispeaker-slot show 2>&1 | tr '\n' ' '
