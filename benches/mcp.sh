#!/usr/bin/env bash
# The latency Palisade (with tool-acl) adds to an MCP tools/call over calling the upstream
# server directly: server-everything over Streamable HTTP on loopback, p50/p99, one connection.
# Needs `make setup` (npm servers) and `make plugins`. Everything shares this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-500}
# PROFILE=debug measures the dev build (dependencies optimised, the gateway crate not).
PROFILE=${PROFILE:-release}
[ -f dist/plugins/tool-acl.wasm ] || { echo "run 'make plugins' first" >&2; exit 1; }
EVERYTHING=tests/e2e/mcp-servers/node_modules/.bin/mcp-server-everything
[ -x "$EVERYTHING" ] || { echo "run 'make setup' first" >&2; exit 1; }

if [ "$PROFILE" = release ]; then cargo build --quiet --release -p palisade; else cargo build --quiet -p palisade; fi
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

PORT=18901 "$EVERYTHING" streamableHttp >"$work/everything.log" 2>&1 &
pids+=($!)
cat >"$work/palisade.toml" <<TOML
database = "sqlite://$work/palisade.db"
[upstream]
base_url = "http://127.0.0.1:9"
[plugin_host]
cache_dir = "$work/cache"
watch = false
[[agents]]
id = "bench"
key = "pk-bench"
[[mcp_servers]]
name = "everything"
transport = "http"
url = "http://127.0.0.1:18901/mcp"
[[plugins]]
name = "tool-acl"
path = "$PWD/dist/plugins/tool-acl.wasm"
[[plugins.config.rules]]
agents = ["bench"]
allow = ["everything__echo"]
[[plugins.config.rules.args]]
tool = "everything__echo"
path = "\$.message"
regex = "[a-z ]{1,100}"
TOML
target/$PROFILE/palisade serve --config "$work/palisade.toml" --listen 127.0.0.1:18902 >"$work/palisade.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  grep -q "listening on port" "$work/everything.log" 2>/dev/null && grep -q "palisade listening" "$work/palisade.log" 2>/dev/null && break
  sleep 0.2
done
python3 benches/mcp_latency.py http://127.0.0.1:18901/mcp http://127.0.0.1:18902/mcp pk-bench "$N"
