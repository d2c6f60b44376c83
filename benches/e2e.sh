#!/usr/bin/env bash
# End-to-end on loopback: the latency Palisade adds over calling the mock provider directly
# (p50/p99 at 1 connection) and throughput at 16 connections, with 0 and 5 plugins in the chain,
# and with the audit log's `sync` durability (each answer waits for its event's commit).
# Needs wrk (`apt-get install wrk`) and the plugins (`make plugins`). Everything runs on this
# machine: wrk, the gateway and the mock share its cores, so read the figures as relative.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
[ -f dist/plugins/trivial.wasm ] || { echo "run 'make plugins' first" >&2; exit 1; }
DURATION=${DURATION:-10s}

cargo build --quiet --release -p palisade -p mock-upstream
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

target/release/mock-upstream --listen 127.0.0.1:18081 --max-recorded 0 >"$work/mock.log" 2>&1 &
pids+=($!)

config() { # $1 = number of trivial plugins, $2 = audit durability
  cat <<TOML
database = "sqlite://$work/p$1-$2.db"
[audit]
durability = "$2"
[upstream]
base_url = "http://127.0.0.1:18081"
[plugin_host]
cache_dir = "$work/cache"
watch = false
[[agents]]
id = "bench"
key = "pk-bench"
TOML
  for i in $(seq 1 "$1"); do
    printf '[[plugins]]\nname = "p%s"\npath = "%s"\n' "$i" "$PWD/dist/plugins/trivial.wasm"
  done
}
config 0 batched >"$work/p0.toml"
config 5 batched >"$work/p5.toml"
config 0 sync >"$work/p0-sync.toml"
RUST_LOG=warn target/release/palisade serve --config "$work/p0.toml" --listen 127.0.0.1:18080 >"$work/g0.log" 2>&1 &
pids+=($!)
RUST_LOG=warn target/release/palisade serve --config "$work/p5.toml" --listen 127.0.0.1:18082 >"$work/g5.log" 2>&1 &
pids+=($!)
RUST_LOG=warn target/release/palisade serve --config "$work/p0-sync.toml" --listen 127.0.0.1:18083 >"$work/g0s.log" 2>&1 &
pids+=($!)
for port in 18081 18080 18082 18083; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.1; done
done

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer pk-bench"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"What is the status of order 1234?"}],"max_tokens":64}'
LUA

run() { # $1 label, $2 port, $3 connections, $4 threads
  wrk -t"$4" -c"$3" -d"$DURATION" --latency -s "$work/post.lua" "http://127.0.0.1:$2/v1/chat/completions" >"$work/$1.out"
  local p50 p99 rps
  p50=$(awk '/^ +50%/{print $2}' "$work/$1.out")
  p99=$(awk '/^ +99%/{print $2}' "$work/$1.out")
  rps=$(awk '/^Requests\/sec/{print $2}' "$work/$1.out")
  if grep -q "Non-2xx" "$work/$1.out"; then echo "$1: errors!"; cat "$work/$1.out"; exit 1; fi
  printf '%-28s p50 %-9s p99 %-9s %10s req/s\n' "$1" "$p50" "$p99" "$rps"
}

echo "1 connection (latency):"
run "mock direct" 18081 1 1
run "palisade, 0 plugins" 18080 1 1
run "palisade, 5 plugins" 18082 1 1
run "palisade, 0 plugins, sync" 18083 1 1
echo "16 connections (throughput):"
run "mock direct" 18081 16 2
run "palisade, 0 plugins" 18080 16 2
run "palisade, 5 plugins" 18082 16 2
run "palisade, 0 plugins, sync" 18083 16 2
