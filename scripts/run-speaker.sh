#!/usr/bin/env bash
# Installs what is missing on a fresh Debian/Ubuntu machine, builds pispeaker and starts the
# speaker on the machine's default ALSA device. Pick "pispeaker" in the Spotify app's device list.
# Extra arguments go to pispeaker (e.g. --name "Kitchen" --device hw:1).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need_pkgs=()
for pkg in build-essential pkg-config libasound2-dev curl ca-certificates; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing ${need_pkgs[*]} (needs sudo)"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
fi
if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; else
    echo "error: Rust is not installed. Install it with rustup (https://rustup.rs), then run this again." >&2
    exit 1
  fi
fi

cargo build --release --locked
state="${XDG_STATE_HOME:-$HOME/.local/state}/pispeaker"
# The system config if there is one (pispeaker reads /etc/pispeaker/config.toml by itself; a
# missing one means defaults). PISPEAKER_CONFIG=path picks another file.
exec ./target/release/pispeaker --cache "$state" --status-listen 127.0.0.1:7070 "$@"
