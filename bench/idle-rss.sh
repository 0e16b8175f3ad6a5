#!/usr/bin/env bash
# Idle memory: RSS of pispeaker and of stock librespot 0.8.0 after 10 s waiting for discovery,
# both release builds for this machine with the same librespot features, measured in this run
# (stock as shipped: its own default release profile; see bench/stock.sh).
# Prints both and the ratio (pispeaker / librespot). Not a test: a figure for the closing note.
#
# The stock binary is built from crates.io into bench/out (gitignored), never committed.
# Each daemon runs in its own network namespace (a veth pair inside it) so mDNS stays local.
# Needs root (namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/stock.sh
stock=$(stock_host shipped)
echo "building pispeaker (release) ..."
cargo build --release --locked >/dev/null 2>&1
ours=target/release/pispeaker
cfg=$(mktemp); printf '[status]\nlisten = "127.0.0.1:45803"\n' > "$cfg"

measure() { # name, command...
  local name=$1; shift
  local ns="pisp-bench-$$-$name"
  ip netns add "$ns"
  trap 'ip netns del "$ns" 2>/dev/null || true' RETURN
  ip -n "$ns" link set lo up
  ip -n "$ns" link add d0 type veth peer name d1; ip -n "$ns" link set d1 up
  ip -n "$ns" addr add 10.234.0.1/24 dev d0
  ip -n "$ns" link set d0 up multicast on
  ip -n "$ns" route add 224.0.0.0/4 dev d0
  local tmp; tmp=$(mktemp -d)
  ip netns exec "$ns" "$@" --cache "$tmp" >"$tmp/log" 2>&1 &
  local pid=$!
  sleep 10
  local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  if [ "${rss:-0}" = 0 ]; then echo "$name did not stay up; its log:" >&2; cat "$tmp/log" >&2; exit 1; fi
  rm -rf "$tmp"
  echo "$rss"
}

stock_rss=$(measure stock "$stock" --name bench-stock --backend alsa --device default --zeroconf-port 45801)
our_rss=$(measure ours "$ours" --config "$cfg" --name bench-ours --zeroconf-port 45802)
printf 'idle RSS after 10 s waiting for discovery: pispeaker %d KiB, stock librespot %d KiB, ratio %s\n' \
  "$our_rss" "$stock_rss" "$(ratio "$our_rss" "$stock_rss")"
bash bench/binary-size.sh --host
