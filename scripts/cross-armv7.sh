#!/usr/bin/env bash
# The docker-free armv7 build: scripts/cross.sh armv7 (see there), e.g. `sudo bash scripts/cross-armv7.sh deb`.
exec bash "$(dirname "$0")/cross.sh" armv7 "$@"
