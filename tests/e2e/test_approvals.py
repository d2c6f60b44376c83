"""End to end: human approvals of MCP tool calls (issue 7). The official `mcp` Python SDK (1.x) is
the agent, Palisade's /mcp in the middle with the `approvals` plugin, and `servers/payments_mail.py`
(official SDK, stdio, spawned by Palisade) behind it, appending each executed `send_email` and
`transfer_funds` to $OUTBOX, so the tests count what really ran.

Humans decide through the admin API (`POST /admin/api/approvals/{id}/decisions`) and the CLI
(`palisade approvals approve`). `[approvals] wait_secs` is short, so a pending call is answered
quickly with a tool result (`isError: true`) and the approval's state in `_meta`.

Needs: make setup, make plugins, cargo build -p palisade.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

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

APPROVALS_WASM = PLUGINS_DIR / "approvals.wasm"
SERVER_PY = REPO_ROOT / "tests" / "e2e" / "servers" / "payments_mail.py"
ADMIN_TOKEN = "ut-e2e-approvals-admin-0123456789"
KEYS = {
    "mailer": "pk-apr-mailer-3c9e1a",
    "hasty": "pk-apr-hasty-8b20f4",
}
OWNER = "olivia@example.com"  # owns both agents
WAIT_SECS = 1.0
META = "palisade/approval"


@dataclass
class Gw:
    url: str
    outbox: Path
    process: ManagedProcess

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"


def write_config(directory: Path, outbox: Path) -> Path:
    cache = directory / "plugin-cache"
    cache.mkdir(exist_ok=True)
    config = f"""
database = "sqlite://palisade.db"
[server]
listen = "127.0.0.1:0"
[upstream]
base_url = "http://127.0.0.1:9"
[plugin_host]
deadline_ms = 2000
cache_dir = {_toml_str(cache)}
[approvals]
wait_secs = {WAIT_SECS}

[[agents]]
id = "mailer"
owner = {_toml_str(OWNER)}
team = "ops"
key = {_toml_str(KEYS["mailer"])}
[[agents]]
id = "hasty"
owner = {_toml_str(OWNER)}
team = "ops"
key = {_toml_str(KEYS["hasty"])}

[[mcp_servers]]
name = "pm"
transport = "stdio"
command = {_toml_str(sys.executable)}
args = [{_toml_str(SERVER_PY)}]
env = {{ OUTBOX = {_toml_str(outbox)} }}

[[plugins]]
name = "approvals"
path = {_toml_str(APPROVALS_WASM)}
[[plugins.config.rules]]
name = "brief-mail"
tools = ["pm__send_email"]
agents = ["hasty"]
group = "mail"
ttl_secs = 3
[[plugins.config.rules]]
name = "mail"
tools = ["pm__send_email"]
group = "mail"
ttl_secs = 600
[[plugins.config.rules]]
name = "money"
tools = ["pm__transfer_*"]
when = ["amount > 0"]
approvals = 2
group = "finance"
ttl_secs = 600
"""
    path = directory / "palisade.toml"
    path.write_text(config, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    missing = [p for p in (PALISADE_BIN, APPROVALS_WASM) if not p.exists()]
    if missing:
        pytest.fail(
            "missing: " + ", ".join(map(str, missing)) + "\nrun: make plugins && cargo build -p palisade",
            pytrace=False,
        )
    directory = tmp_path_factory.mktemp("palisade-approvals")
    outbox = directory / "outbox.jsonl"
    config = write_config(directory, outbox)
    os.environ["PALISADE_ADMIN_TOKEN"] = ADMIN_TOKEN
    try:
        p = ManagedProcess(
            "palisade", [str(PALISADE_BIN), "serve", "--config", str(config), "--listen", "127.0.0.1:0"], directory
        )
    finally:
        os.environ.pop("PALISADE_ADMIN_TOKEN", None)
    _RUNNING.append(p)
    try:
        url = p.wait_for(GATEWAY_READY, STARTUP_TIMEOUT_S).group(1)
        yield Gw(url=url, outbox=outbox, process=p)
    finally:
        p.stop()
        _RUNNING.remove(p)


# --- humans, through the admin API --------------------------------------------------------------


def admin(gw: Gw, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    req = urllib.request.Request(gw.url + path, data=data, headers=h, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


_users: dict[str, str] = {}


def user(gw: Gw, name: str, groups: list[str], email: str | None = None) -> str:
    """An approver in `groups` (created once per module); returns their token."""
    if name in _users:
        return _users[name]
    s, v = admin(
        gw, "POST", "/admin/api/users", ADMIN_TOKEN,
        {"name": name, "email": email or f"{name}@example.com", "roles": ["approver"]},
    )
    assert s == 201, v
    s, g = admin(gw, "PUT", f"/admin/api/users/{v['user']['id']}/groups", ADMIN_TOKEN, {"groups": groups})
    assert s == 200, g
    _users[name] = v["token"]["secret"]
    return _users[name]


def decide(gw: Gw, token: str, approval: str, decision: str, reason: str = "") -> tuple[int, dict]:
    return admin(
        gw, "POST", f"/admin/api/approvals/{approval}/decisions", token, {"decision": decision, "reason": reason}
    )


def cli(gw: Gw, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "NO_COLOR": "1"}
    return subprocess.run(
        [str(PALISADE_BIN), "approvals", *args, "--url", gw.url, "--token", token],
        env=env, capture_output=True, text=True, timeout=30,
    )


# --- the agent ----------------------------------------------------------------------------------


@dataclass
class Answer:
    is_error: bool
    text: str
    approval: dict | None


class Agent:
    def __init__(self, session) -> None:
        self._s = session

    async def call(self, name: str, args: dict, progress=None) -> Answer:
        r = await self._s.call_tool(name, args, progress_callback=progress)
        text = "".join(getattr(c, "text", "") for c in r.content)
        meta = r.meta or {}
        return Answer(bool(r.isError), text, meta.get(META))


@contextlib.asynccontextmanager
async def agent(gw: Gw, name: str = "mailer"):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    headers = {"Authorization": f"Bearer {KEYS[name]}"}
    async with streamablehttp_client(gw.mcp_url, headers=headers) as (r, w, _):
        async with ClientSession(r, w) as s:
            await s.initialize()
            yield Agent(s)


def call(gw: Gw, tool: str, args: dict, who: str = "mailer") -> Answer:
    async def go():
        async with agent(gw, who) as a:
            return await a.call(tool, args)

    return asyncio.run(asyncio.wait_for(go(), 60))


def executed(gw: Gw, kind: str, **match) -> list[dict]:
    """What the server really executed, of `kind`, with these fields."""
    if not gw.outbox.exists():
        return []
    rows = [json.loads(line) for line in gw.outbox.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]


def email(subject: str, to: str = "bob@example.com") -> dict:
    return {"to": to, "subject": subject, "body": "Hello Bob"}


def pending(a: Answer) -> str:
    """Assert `a` is a pending approval; return its id."""
    assert a.is_error, a
    assert a.approval is not None and a.approval["state"] == "pending", a
    assert a.text.startswith(f"approval {a.approval['id']} pending"), a.text
    assert "retry the same call unchanged once approved" in a.text, a.text
    return a.approval["id"]


# --- the tests ----------------------------------------------------------------------------------


def test_email_held_until_one_approval_then_sent_exactly_once(gw: Gw) -> None:
    args = email("held until approved")
    first = call(gw, "pm__send_email", args)
    apr = pending(first)
    assert apr.startswith("apr_")
    assert "1 of 1" not in first.text and "0 of 1" in first.text
    assert first.approval["approvals_needed"] == 1 and first.approval["rule"] == "mail"
    again = call(gw, "pm__send_email", args)
    assert pending(again) == apr, "an identical retry attaches to the same approval"
    assert executed(gw, "email", subject="held until approved") == [], "held, not executed"

    carol = user(gw, "carol", ["mail"])
    done = cli(gw, carol, "approve", apr, "--reason", "looks fine")
    assert done.returncode == 0, done.stderr
    assert "approved" in done.stdout

    sent = call(gw, "pm__send_email", args)
    assert sent.is_error is False, sent
    assert sent.text.startswith("sent email #") and "to bob@example.com" in sent.text
    assert sent.approval["id"] == apr and "replayed" not in sent.approval
    assert len(executed(gw, "email", subject="held until approved")) == 1

    replay = call(gw, "pm__send_email", args)
    assert (replay.is_error, replay.text) == (False, sent.text), "the stored result, not a second email"
    assert replay.approval["id"] == apr and replay.approval["replayed"] is True
    assert len(executed(gw, "email", subject="held until approved")) == 1


def test_call_held_open_runs_when_approved_during_the_wait(gw: Gw) -> None:
    args = email("approved while waiting")
    apr = pending(call(gw, "pm__send_email", args))
    carol = user(gw, "carol", ["mail"])

    async def go():
        async with agent(gw) as a:
            task = asyncio.create_task(a.call("pm__send_email", args))
            await asyncio.sleep(WAIT_SECS / 4)
            s, v = await asyncio.to_thread(decide, gw, carol, apr, "approve")
            assert s == 200, v
            return await task

    r = asyncio.run(asyncio.wait_for(go(), 60))
    assert r.is_error is False and r.text.startswith("sent email #"), r
    assert len(executed(gw, "email", subject="approved while waiting")) == 1


def test_held_call_sends_progress_while_it_waits(gw: Gw) -> None:
    args = email("progress please")
    notes: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, message))

    async def go():
        async with agent(gw) as a:
            return await a.call("pm__send_email", args, progress=on_progress)

    r = asyncio.run(asyncio.wait_for(go(), 60))
    pending(r)
    assert notes and notes[0][0] == 1, "the held call streamed progress before its answer"
    assert "human approval" in (notes[0][1] or "")
    assert executed(gw, "email", subject="progress please") == []


def test_changed_arguments_need_a_new_approval(gw: Gw) -> None:
    args = email("original")
    apr = pending(call(gw, "pm__send_email", args))
    s, v = decide(gw, user(gw, "carol", ["mail"]), apr, "approve")
    assert s == 200, v
    changed = call(gw, "pm__send_email", {**args, "to": "mallory@example.com"})
    other = pending(changed)
    assert other != apr
    assert executed(gw, "email", to="mallory@example.com") == []
    ok = call(gw, "pm__send_email", args)
    assert ok.is_error is False, ok
    assert len(executed(gw, "email", subject="original")) == 1


def test_transfer_needs_two_distinct_approvers_and_not_the_owner(gw: Gw) -> None:
    args = {"from_account": "ops", "to_account": "acme", "amount": 250.0}
    held = call(gw, "pm__transfer_funds", args)
    apr = pending(held)
    assert held.approval["approvals_needed"] == 2 and "0 of 2" in held.text

    olivia = user(gw, "olivia", ["finance", "mail"], email=OWNER)
    s, v = decide(gw, olivia, apr, "approve", "my own agent")
    assert s == 403 and "owns agent" in json.dumps(v), v

    erin = user(gw, "erin", ["finance"])
    s, v = decide(gw, erin, apr, "approve")
    assert s == 200, v
    s, v = decide(gw, erin, apr, "approve", "again")
    assert s == 409, v
    still = call(gw, "pm__transfer_funds", args)
    assert pending(still) == apr and "1 of 2" in still.text, still.text
    assert still.approval["approvals"] == 1
    assert executed(gw, "transfer") == []

    frank = user(gw, "frank", ["finance"])
    s, v = decide(gw, frank, apr, "approve")
    assert s == 200, v
    done = call(gw, "pm__transfer_funds", args)
    assert done.is_error is False and "250.0 from ops to acme" in done.text, done
    assert len(executed(gw, "transfer", amount=250.0)) == 1


def test_rejection_reaches_the_agent_with_the_reason(gw: Gw) -> None:
    args = email("please reject")
    apr = pending(call(gw, "pm__send_email", args))
    s, v = decide(gw, user(gw, "carol", ["mail"]), apr, "reject", "not to external addresses")
    assert s == 200, v
    r = call(gw, "pm__send_email", args)
    assert r.is_error and r.approval["state"] == "rejected" and r.approval["id"] == apr, r
    assert "not to external addresses" in r.text and "do not retry" in r.text, r.text
    assert r.approval["reason"] and "not to external addresses" in r.approval["reason"]
    assert executed(gw, "email", subject="please reject") == []


def test_expiry_reaches_the_agent_with_the_reason(gw: Gw) -> None:
    args = email("nobody decides")
    held = call(gw, "pm__send_email", args, who="hasty")
    apr = pending(held)
    assert held.approval["rule"] == "brief-mail"
    left = held.approval["expires_in_secs"]
    assert 0 < left <= 3
    time.sleep(left + 0.5)  # past the rule's ttl_secs = 3
    r = call(gw, "pm__send_email", args, who="hasty")
    assert r.is_error and r.approval["id"] == apr and r.approval["state"] == "expired", r
    assert r.text.startswith(f"approval {apr} expired: "), r.text
    assert r.approval["reason"] and r.approval["reason"] in r.text
    assert executed(gw, "email", subject="nobody decides") == []


def test_concurrent_identical_retries_after_approval_execute_once(gw: Gw) -> None:
    args = email("race")
    apr = pending(call(gw, "pm__send_email", args))
    s, v = decide(gw, user(gw, "carol", ["mail"]), apr, "approve")
    assert s == 200, v

    async def one():
        async with agent(gw) as a:
            return await a.call("pm__send_email", args)

    async def both():
        return await asyncio.gather(one(), one(), one())

    answers = asyncio.run(asyncio.wait_for(both(), 60))
    assert len(executed(gw, "email", subject="race")) == 1, "executed once"
    # One ran it; the others waited (within wait_secs) for its result and got it back.
    assert all(not a.is_error for a in answers), answers
    assert len({a.text for a in answers}) == 1, "every answer is the one execution's result"
    assert sum(1 for a in answers if (a.approval or {}).get("replayed")) == 2, answers
