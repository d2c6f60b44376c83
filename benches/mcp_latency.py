"""Latency of one MCP tools/call (server-everything `echo`), direct vs through Palisade's /mcp
with tool-acl, on one keep-alive connection each, calls interleaved so both see the same machine
load. The direct session speaks the protocol version Palisade speaks upstream (2025-11-25:
server-everything answers it more slowly than 2025-06-18, which would otherwise be counted as
Palisade's). Prints p50/p99 of each and what Palisade adds. Used by benches/mcp.sh.

usage: mcp_latency.py DIRECT_URL GATEWAY_URL AGENT_KEY [N]
"""

import http.client
import json
import statistics
import sys
import time
from urllib.parse import urlparse

# What Palisade speaks to upstream servers (gateway/src/mcp/upstream.rs UPSTREAM_VERSION).
VERSION = "2025-11-25"


class Conn:
    def __init__(self, url: str, key: str | None) -> None:
        u = urlparse(url)
        self.path = u.path
        self.c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        self.h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if key:
            self.h["Authorization"] = f"Bearer {key}"
        status, headers, _ = self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}})
        assert status == 200, status
        self.h["Mcp-Session-Id"] = headers["mcp-session-id"]
        self.h["MCP-Protocol-Version"] = VERSION
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})[0] == 202

    def post(self, msg: dict):
        self.c.request("POST", self.path, json.dumps(msg), self.h)
        r = self.c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main() -> None:
    direct_url, gw_url, key = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 500
    direct, gw = Conn(direct_url, None), Conn(gw_url, key)
    calls = {"direct": (direct, "echo"), "palisade": (gw, "everything__echo")}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(n + 20):
        for name, (conn, tool) in calls.items():
            t = time.perf_counter()
            status, _, body = conn.post({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                                         "params": {"name": tool, "arguments": {"message": "hi"}}})
            dt = (time.perf_counter() - t) * 1000
            assert status == 200 and b"Echo: hi" in body, body
            if i >= 20:  # warm-up
                times[name].append(dt)
    for name, xs in times.items():
        print(f"{name:9s} n={len(xs)} p50={pct(xs, 0.5):.2f} ms p99={pct(xs, 0.99):.2f} ms mean={statistics.mean(xs):.2f} ms")
    d, g = times["direct"], times["palisade"]
    print(f"added     p50={pct(g, 0.5) - pct(d, 0.5):.2f} ms p99={pct(g, 0.99) - pct(d, 0.99):.2f} ms")


if __name__ == "__main__":
    main()
