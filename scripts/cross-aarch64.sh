#!/usr/bin/env bash
# The docker-free aarch64 build: scripts/cross.sh aarch64 (see there), e.g. `sudo bash scripts/cross-aarch64.sh deb`.
exec bash "$(dirname "$0")/cross.sh" aarch64 "$@"
