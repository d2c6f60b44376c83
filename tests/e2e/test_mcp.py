"""End to end: the official `mcp` Python SDK as the agent, Palisade's /mcp in the middle, and two
real npm MCP servers behind it: `server-everything` over Streamable HTTP and `server-filesystem`
over stdio (Palisade spawns it). `tool-acl` gives the two agents different tools and arguments.

Runs with either SDK line: mcp 1.x (ClientSession, initialize handshake) from requirements.txt,
and mcp 2.x (Client, which probes the stateless 2026-07-28 revision first) from
requirements-mcp2.txt in its own venv (`make test-e2e` runs both).

Needs: make setup (npm servers), make plugins, cargo build -p palisade.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import mcp as mcp_pkg
from conftest import (
    GATEWAY_READY,
    PALISADE_BIN,
    PLUGINS_DIR,
    REPO_ROOT,
    STARTUP_TIMEOUT_S,
    ManagedProcess,
    _RUNNING,
    _toml_str,
)

try:  # mcp 2.x
    from mcp import Client as _V2Client  # type: ignore[attr-defined]

    SDK_MAJOR = 2
except ImportError:  # mcp 1.x
    _V2Client = None
    SDK_MAJOR = 1

try:
    from mcp import MCPError as SdkError  # type: ignore[attr-defined]
except ImportError:
    from mcp.shared.exceptions import McpError as SdkError  # type: ignore[no-redef]

SERVERS_DIR = REPO_ROOT / "tests" / "e2e" / "mcp-servers" / "node_modules"
EVERYTHING_BIN = SERVERS_DIR / ".bin" / "mcp-server-everything"
FILESYSTEM_JS = SERVERS_DIR / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"
TOOL_ACL_WASM = PLUGINS_DIR / "tool-acl.wasm"

KEYS = {
    "support-bot": "pk-mcp-support-bot-5b1e0c",
    "research-bot": "pk-mcp-research-bot-9d7f21",
}
CHAIN_KEY = "e2e-mcp-chain-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class McpGateway:
    url: str
    db: Path
    fs_root: Path
    process: ManagedProcess

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"


def _require() -> None:
    missing = [p for p in (PALISADE_BIN, TOOL_ACL_WASM, EVERYTHING_BIN, FILESYSTEM_JS) if not p.exists()]
    if missing:
        pytest.fail(
            "missing: " + ", ".join(map(str, missing))
            + "\nrun: make setup && make plugins && cargo build -p palisade",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def everything() -> Iterator[str]:
    _require()
    port = free_port()
    env_port = {"PORT": str(port)}
    os.environ.update(env_port)  # ManagedProcess copies os.environ
    try:
        p = ManagedProcess("server-everything", [str(EVERYTHING_BIN), "streamableHttp"], REPO_ROOT)
    finally:
        os.environ.pop("PORT", None)
    _RUNNING.append(p)
    try:
        import re

        p.wait_for(re.compile(r"listening on port"), STARTUP_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        p.stop()
        _RUNNING.remove(p)


def write_config(directory: Path, everything_url: str, fs_root: Path) -> Path:
    cache = directory / "plugin-cache"
    cache.mkdir(exist_ok=True)
    public = fs_root / "public"
    config = f"""
database = "sqlite://palisade.db"
[server]
listen = "127.0.0.1:0"
[upstream]
base_url = "http://127.0.0.1:9"
[plugin_host]
deadline_ms = 2000
cache_dir = {_toml_str(cache)}
[audit]
flush_ms = 5

[[agents]]
id = "support-bot"
team = "support"
key = {_toml_str(KEYS["support-bot"])}
[[agents]]
id = "research-bot"
team = "research"
key = {_toml_str(KEYS["research-bot"])}

[[mcp_servers]]
name = "everything"
transport = "http"
url = {_toml_str(everything_url)}

[[mcp_servers]]
name = "fs"
transport = "stdio"
command = "node"
args = [{_toml_str(FILESYSTEM_JS)}, {_toml_str(fs_root)}]

[[plugins]]
name = "tool-acl"
path = {_toml_str(TOOL_ACL_WASM)}
[[plugins.config.rules]]
agents = ["support-bot"]
allow = ["everything__echo", "everything__get-sum", "fs__read_text_file", "fs__list_allowed_directories"]
[[plugins.config.rules.args]]
tool = "everything__get-sum"
path = "$.a"
min = 0
max = 100
[[plugins.config.rules.args]]
tool = "fs__read_text_file"
path = "$.path"
regex = {_toml_str(str(public) + "/.*")}
[[plugins.config.rules]]
teams = ["research"]
allow = ["everything__*"]
deny = ["everything__get-env"]
"""
    path = directory / "palisade.toml"
    path.write_text(config, encoding="utf-8")
    return path


def start_gateway(directory: Path, config: Path) -> tuple[ManagedProcess, str]:
    os.environ["PALISADE_CHAIN_KEY"] = CHAIN_KEY
    try:
        p = ManagedProcess(
            "palisade", [str(PALISADE_BIN), "serve", "--config", str(config), "--listen", "127.0.0.1:0"], directory
        )
    finally:
        os.environ.pop("PALISADE_CHAIN_KEY", None)
    _RUNNING.append(p)
    url = p.wait_for(GATEWAY_READY, STARTUP_TIMEOUT_S).group(1)
    return p, url


@pytest.fixture(scope="module")
def gw(everything: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpGateway]:
    directory = tmp_path_factory.mktemp("palisade-mcp")
    fs_root = (directory / "files").resolve()
    (fs_root / "public").mkdir(parents=True)
    (fs_root / "public" / "faq.txt").write_text("opening hours: 9-17\n")
    (fs_root / "salaries.txt").write_text("Marcus: 123456\n")
    config = write_config(directory, everything, fs_root)
    p, url = start_gateway(directory, config)
    g = McpGateway(url=url, db=directory / "palisade.db", fs_root=fs_root, process=p)
    try:
        yield g
    finally:
        p.stop()
        _RUNNING.remove(p)


# --- the SDK, either line -------------------------------------------------------------------


class Agent:
    """One MCP client session through the gateway, with the SDK line installed."""

    def __init__(self, session, sid) -> None:
        self._s = session
        self._sid = sid

    async def tool_names(self) -> set[str]:
        return {t.name for t in (await self._s.list_tools()).tools}

    async def call(self, name: str, args: dict) -> tuple[bool, str]:
        r = await self._s.call_tool(name, args)
        is_error = getattr(r, "is_error", None)
        if is_error is None:
            is_error = getattr(r, "isError", False)
        text = "".join(getattr(c, "text", "") for c in r.content)
        return bool(is_error), text


@contextlib.asynccontextmanager
async def agent(gw: McpGateway, name: str, mode: str = "auto"):
    headers = {"Authorization": f"Bearer {KEYS[name]}"}
    if SDK_MAJOR == 2:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60), trust_env=False) as http:
            async with _V2Client(streamable_http_client(gw.mcp_url, http_client=http), mode=mode) as c:
                yield Agent(c, None)
    else:
        from mcp import ClientSession
        from mcp.client.streamable_http import streamablehttp_client

        async with streamablehttp_client(gw.mcp_url, headers=headers) as (r, w, get_sid):
            async with ClientSession(r, w) as s:
                await s.initialize()
                yield Agent(s, get_sid)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def audit_rows(gw: McpGateway, where: str, args: tuple = (), want: int = 1, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        con = sqlite3.connect(gw.db)
        con.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in con.execute(f"SELECT * FROM audit_events WHERE {where} ORDER BY seq", args)]
        finally:
            con.close()
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def mcp_facts(row: dict) -> dict:
    verdicts = json.loads(row["verdicts"])
    return next(v for v in verdicts if isinstance(v, dict) and v.get("gateway") == "mcp")


# --- the tests ------------------------------------------------------------------------------


SUPPORT_TOOLS = {"everything__echo", "everything__get-sum", "fs__read_text_file", "fs__list_allowed_directories"}


def test_two_agents_see_different_tools(gw: McpGateway) -> None:
    async def go():
        async with agent(gw, "support-bot") as a:
            support = await a.tool_names()
        async with agent(gw, "research-bot") as b:
            research = await b.tool_names()
        return support, research

    support, research = run(go())
    assert support == SUPPORT_TOOLS
    assert "everything__get-tiny-image" in research and "everything__echo" in research
    assert "everything__get-env" not in research, "denied by name"
    assert not any(n.startswith("fs__") for n in research), "deny by default"
    rows = audit_rows(gw, "kind = 'tool-list' AND agent = 'support-bot'")
    assert rows and mcp_facts(rows[-1])["tools_shown"] == len(SUPPORT_TOOLS)
    assert mcp_facts(rows[-1])["tools_total"] > len(SUPPORT_TOOLS)


def test_allowed_calls_return_the_servers_answers(gw: McpGateway) -> None:
    async def go():
        async with agent(gw, "support-bot") as a:
            return (
                await a.call("everything__get-sum", {"a": 1, "b": 41}),
                await a.call("everything__echo", {"message": "hi"}),
                await a.call("fs__read_text_file", {"path": str(gw.fs_root / "public" / "faq.txt")}),
            )

    total, echo, faq = run(go())
    assert total == (False, "The sum of 1 and 41 is 42.")
    assert echo == (False, "Echo: hi")
    assert faq == (False, "opening hours: 9-17\n")
    rows = audit_rows(gw, "kind = 'tool-call' AND target = 'everything__get-sum' AND error_code IS NULL")
    facts = mcp_facts(rows[-1])
    assert facts["server"] == "everything" and facts["tool"] == "get-sum"
    assert facts["is_error"] is False and len(facts["arguments_sha256"]) == 64
    assert rows[-1]["agent"] == "support-bot" and rows[-1]["latency_us"] > 0
    assert json.loads(rows[-1]["chain"]) == ["support-bot"]


def test_denied_tool_and_forbidden_arguments_are_refused_and_audited(gw: McpGateway) -> None:
    async def go():
        async with agent(gw, "support-bot") as a:
            with pytest.raises(SdkError) as hidden:
                await a.call("everything__get-env", {})
            with pytest.raises(SdkError) as missing:
                await a.call("everything__nope", {})
            too_big = await a.call("everything__get-sum", {"a": 1000, "b": 1})
            secret = await a.call("fs__read_text_file", {"path": str(gw.fs_root / "salaries.txt")})
            return hidden.value, missing.value, too_big, secret

    hidden, missing, too_big, secret = run(go())
    assert hidden.error.code == -32602 and "Unknown tool: everything__get-env" in hidden.error.message
    assert missing.error.code == -32602, "hidden and missing tools look the same"
    assert too_big[0] is True and "'a' = 1000" in too_big[1] and "between 0 and 100" in too_big[1]
    assert secret[0] is True and "must match" in secret[1] and "Marcus" not in secret[1]
    denied = audit_rows(gw, "agent = 'support-bot' AND error_code = 'unknown_tool'", want=2)
    assert {r["target"] for r in denied} >= {"everything__get-env", "everything__nope"}
    hidden_row = next(r for r in denied if r["target"] == "everything__get-env")
    assert hidden_row["decided_by"] == "tool-acl"
    args_denied = audit_rows(gw, "agent = 'support-bot' AND error_code = 'tool_arguments_denied'", want=2)
    assert {r["target"] for r in args_denied} == {"everything__get-sum", "fs__read_text_file"}
    assert all(mcp_facts(r)["is_error"] is True for r in args_denied)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"server-filesystem" in cmd:
            out.append(int(entry.name))
    return out


def test_stdio_server_killed_mid_session_restarts(gw: McpGateway) -> None:
    path = str(gw.fs_root / "public" / "faq.txt")

    async def go():
        async with agent(gw, "support-bot") as a:
            first = await a.call("fs__read_text_file", {"path": path})
            [pid] = _children(gw.process.proc.pid)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while True:
                fresh = _children(gw.process.proc.pid)
                if fresh and fresh != [pid]:
                    break
                assert time.monotonic() < deadline, "no new stdio server"
                await asyncio.sleep(0.1)
            second = await a.call("fs__read_text_file", {"path": path})
            return first, second

    first, second = run(go())
    assert first == (False, "opening hours: 9-17\n")
    assert second == first


# --- the wire, raw ---------------------------------------------------------------------------


def post(gw: McpGateway, body: bytes | dict | list, key: str | None = KEYS["support-bot"], headers: dict | None = None,
         method: str = "POST") -> tuple[int, dict, dict | None]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    req = urllib.request.Request(gw.mcp_url, data=data if method == "POST" else None, headers=h, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=30) as r:
            raw = r.read()
            return r.status, dict(r.headers), (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, dict(e.headers), (json.loads(raw) if raw else None)


def initialize(gw: McpGateway, key: str = KEYS["support-bot"], version: str = "2025-06-18") -> str:
    status, headers, body = post(gw, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}, key)
    assert status == 200 and body["result"]["protocolVersion"] == version
    sid = {k.lower(): v for k, v in headers.items()}["mcp-session-id"]
    status, _, _ = post(gw, {"jsonrpc": "2.0", "method": "notifications/initialized"}, key,
                        {"Mcp-Session-Id": sid, "MCP-Protocol-Version": version})
    assert status == 202
    return sid


def test_wire_errors_follow_the_spec(gw: McpGateway) -> None:
    status, _, body = post(gw, b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert status == 400 and body["error"]["code"] == -32700 and body["id"] is None

    status, _, body = post(gw, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
    assert status == 400 and body["error"]["code"] == -32600 and "batch" in body["error"]["message"]

    status, _, body = post(gw, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                           headers={"Mcp-Session-Id": "mcp1.bm9wZQ.bm9wZQ", "MCP-Protocol-Version": "2025-06-18"})
    assert status == 404

    status, _, body = post(gw, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert status == 400, "no session id"

    sid = initialize(gw)
    h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "everything__echo", "arguments": {"message": "x"}}}
    status, _, body = post(gw, call, headers={**h, "Mcp-Name": "everything__get-env"})
    assert status == 400 and body["error"]["code"] == -32020
    status, _, body = post(gw, call, headers={**h, "Mcp-Method": "tools/list"})
    assert status == 400 and body["error"]["code"] == -32020
    status, _, body = post(gw, call, headers={**h, "Mcp-Method": "tools/call", "Mcp-Name": "everything__echo"})
    assert status == 200 and body["result"]["content"][0]["text"] == "Echo: x"

    status, _, body = post(gw, {"jsonrpc": "2.0", "id": 3, "method": "nope/nope"}, headers=h)
    assert status == 200 and body["error"]["code"] == -32601

    status, _, body = post(gw, call, key=None, headers=h)
    assert status == 401

    # A session is bound to the agent that opened it.
    status, _, body = post(gw, call, key=KEYS["research-bot"], headers=h)
    assert status == 404

    status, _, _ = post(gw, b"", headers=h, method="DELETE")
    assert status == 200
    status, _, body = post(gw, call, headers=h)
    assert status == 404, "ended session"


def test_sse_only_client_gets_an_event_stream(gw: McpGateway) -> None:
    sid = initialize(gw, version="2025-11-25")
    req = urllib.request.Request(
        gw.mcp_url,
        data=json.dumps({"jsonrpc": "2.0", "id": 9, "method": "ping"}).encode(),
        headers={"Content-Type": "application/json", "Accept": "text/event-stream",
                 "Authorization": f"Bearer {KEYS['support-bot']}", "Mcp-Session-Id": sid,
                 "MCP-Protocol-Version": "2025-11-25"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        text = r.read().decode()
    data = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert json.loads(data[0]) == {"jsonrpc": "2.0", "id": 9, "result": {}}


@pytest.mark.skipif(SDK_MAJOR != 2, reason="mcp 2.x only: its client can be held to the handshake era")
def test_v2_client_in_legacy_mode_uses_the_handshake(gw: McpGateway) -> None:
    async def go():
        async with agent(gw, "support-bot", mode="legacy") as a:
            return await a.tool_names(), await a.call("everything__echo", {"message": "old"})

    names, echo = run(go())
    assert names == SUPPORT_TOOLS
    assert echo == (False, "Echo: old")
