"""End to end: the web console (`/console`, issue 17) in a real browser. Playwright drives Debian's
headless Chromium (`make setup` installs it; `playwright install` is never run) against a real
`palisade serve` with the `approvals` plugin in front of `servers/payments_mail.py` (official MCP
SDK, stdio), whose outbox counts the e-mails really sent.

What a person does: an admin signs in, sees the agents, registers one and sees its key once; an
approver approves a held `send_email` from the inbox and the agent's retry then goes out once;
an auditor exports the day's audit as CSV (the file holds those calls), sees no admin buttons,
and a forged POST without the CSRF token is refused. Each page is screenshotted into
target/console-screenshots/ for review.

Every wait is bounded (Playwright's own waits, or a poll with a deadline); nothing sleeps.

Needs: make setup, make plugins, cargo build -p palisade.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import io
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from conftest import (
    GATEWAY_READY,
    PALISADE_BIN,
    PLUGINS_DIR,
    REPO_ROOT,
    STARTUP_TIMEOUT_S,
    TARGET_DIR,
    ManagedProcess,
    _RUNNING,
    _toml_str,
)

playwright_sync = pytest.importorskip("playwright.sync_api")

APPROVALS_WASM = PLUGINS_DIR / "approvals.wasm"
SERVER_PY = REPO_ROOT / "tests" / "e2e" / "servers" / "payments_mail.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = TARGET_DIR / "console-screenshots"
ADMIN_TOKEN = "ut-e2e-console-admin-0123456789"
MAILER_KEY = "pk-console-mailer-5d1f0c"
OWNER = "olivia@example.com"
WAIT_MS = 10_000


@dataclass
class Gw:
    url: str
    outbox: Path
    process: ManagedProcess


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
wait_secs = 0.5

[[agents]]
id = "mailer"
owner = {_toml_str(OWNER)}
team = "ops"
purpose = "sends the customer e-mails"
key = {_toml_str(MAILER_KEY)}
budgets = {{ usd = {{ day = 2.0 }} }}

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
name = "mail"
tools = ["pm__send_email"]
group = "mail"
ttl_secs = 600
"""
    path = directory / "palisade.toml"
    path.write_text(config, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    missing = [p for p in (PALISADE_BIN, APPROVALS_WASM, Path(CHROMIUM)) if not p.exists()]
    if missing:
        pytest.fail(
            "missing: " + ", ".join(map(str, missing)) + "\nrun: make setup plugins && cargo build -p palisade",
            pytrace=False,
        )
    directory = tmp_path_factory.mktemp("palisade-console")
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


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# --- helpers ------------------------------------------------------------------------------------


def admin(gw: Gw, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, object]:
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


def user(gw: Gw, name: str, roles: list[str], groups: list[str] = []) -> str:
    """A user (made once per module); returns their token."""
    if name in _users:
        return _users[name]
    s, v = admin(gw, "POST", "/admin/api/users", ADMIN_TOKEN,
                 {"name": name, "email": f"{name}@example.com", "roles": roles})
    assert s == 201, v
    s, g = admin(gw, "PUT", f"/admin/api/users/{v['user']['id']}/groups", ADMIN_TOKEN, {"groups": groups})
    assert s == 200, g
    _users[name] = v["token"]["secret"]
    return _users[name]


def call_tool(gw: Gw, tool: str, args: dict) -> tuple[bool, str, dict | None]:
    """One MCP tool call as the `mailer` agent: (isError, text, the approval in _meta)."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def go():
        headers = {"Authorization": f"Bearer {MAILER_KEY}"}
        async with streamablehttp_client(f"{gw.url}/mcp", headers=headers) as (r, w, _):
            async with ClientSession(r, w) as s:
                await s.initialize()
                res = await s.call_tool(tool, args)
                text = "".join(getattr(c, "text", "") for c in res.content)
                return bool(res.isError), text, (res.meta or {}).get("palisade/approval")

    return run_async(go)


def run_async(make_coro):
    """Run an agent's coroutine to its end on a thread of its own: Playwright's sync API keeps an
    event loop running on this one."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(asyncio.wait_for(make_coro(), 60))).result(timeout=90)


def list_tools(gw: Gw, key: str) -> list[str]:
    """The tool names an agent with `key` sees on /mcp."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def go():
        headers = {"Authorization": f"Bearer {key}"}
        async with streamablehttp_client(f"{gw.url}/mcp", headers=headers) as (r, w, _):
            async with ClientSession(r, w) as s:
                await s.initialize()
                return [t.name for t in (await s.list_tools()).tools]

    return run_async(go)


def sent(gw: Gw, subject: str) -> list[dict]:
    if not gw.outbox.exists():
        return []
    rows = [json.loads(line) for line in gw.outbox.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "email" and r.get("subject") == subject]


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def signed_in(browser, gw: Gw, token: str):
    """A fresh browser context (its own cookies) signed in with `token`; returns its page."""
    ctx = browser.new_context(base_url=gw.url, accept_downloads=True)
    ctx.set_default_timeout(WAIT_MS)
    page = ctx.new_page()
    page.goto("/console")
    assert page.url.endswith("/console/login"), page.url
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_url(f"{gw.url}/console")
    return page


# --- the tests ----------------------------------------------------------------------------------


def test_admin_sees_agents_and_registers_one_with_its_key_shown_once(browser, gw: Gw) -> None:
    page = signed_in(browser, gw, ADMIN_TOKEN)
    assert page.locator("h1").inner_text() == "Overview"
    assert "admin (admin)" in page.locator("#who").inner_text()
    shot(page, "login-then-overview")

    page.click("header nav >> text=Agents")
    page.wait_for_url("**/console/agents")
    assert "mailer" in page.locator("#agents").inner_text()
    assert page.locator("#create-agent").count() == 1
    shot(page, "agents")

    page.fill("#create-agent input[name=id]", "console-bot")
    page.fill("#create-agent input[name=owner]", "dana@example.com")
    page.fill("#create-agent input[name=purpose]", "made in the console <b>bold?</b>")
    page.fill("#create-agent input[name=usd_day]", "1.5")
    page.click("#create")
    key = page.locator("#new-key").inner_text().strip()
    assert len(key) > 20, key
    shot(page, "agent-created-key-once")
    # The key works: the new agent lists the MCP tools through the gateway.
    assert "pm__send_email" in list_tools(gw, key)

    page.click("#to-agent")
    page.wait_for_url("**/console/agents/console-bot")
    assert key not in page.content(), "the key is shown once only"
    assert "made in the console <b>bold?</b>" in page.locator("#agent").inner_text(), "escaped, shown as text"
    assert page.locator("#suspend").count() == 1
    shot(page, "agent-page")
    page.context.close()


def test_approver_approves_a_held_email_from_the_inbox_and_the_retry_goes_out_once(browser, gw: Gw) -> None:
    args = {"to": "bob@example.com", "subject": "approved in the console", "body": "Hello Bob"}
    is_error, text, approval = call_tool(gw, "pm__send_email", args)
    assert is_error and approval and approval["state"] == "pending", text
    apr = approval["id"]
    assert sent(gw, args["subject"]) == []

    carol = user(gw, "carol", ["approver"], ["mail"])
    page = signed_in(browser, gw, carol)
    assert page.locator("header nav >> text=Agents").count() == 0, "approvers see no inventory"
    page.click("header nav >> text=Approvals")
    page.wait_for_url("**/console/approvals")
    assert apr in page.locator("#inbox").inner_text()
    shot(page, "approvals-inbox")

    page.click(f"#inbox >> text={apr}")
    page.wait_for_url(f"**/console/approvals/{apr}")
    shown = json.loads(page.locator("#arguments").inner_text())
    assert shown == args, "the exact arguments"
    assert "carol" in page.content()  # may still vote
    shot(page, "approval-detail")
    page.fill("#decide textarea[name=reason]", "customer asked for it")
    page.click("#approve")
    page.wait_for_url(f"**/console/approvals/{apr}")
    assert page.locator("#state").inner_text().strip() == "approved"
    assert "carol" in page.locator("#votes").inner_text()
    shot(page, "approval-approved")
    page.context.close()

    is_error, text, approval = call_tool(gw, "pm__send_email", args)
    assert not is_error and text.startswith("sent email #"), text
    assert len(sent(gw, args["subject"])) == 1
    is_error, again, _ = call_tool(gw, "pm__send_email", args)
    assert (is_error, again) == (False, text), "the stored result, not a second e-mail"
    assert len(sent(gw, args["subject"])) == 1


def test_auditor_exports_the_days_audit_sees_no_admin_buttons_and_forged_posts_fail(browser, gw: Gw) -> None:
    subject = "for the auditor"
    args = {"to": "eve@example.com", "subject": subject, "body": "x"}
    is_error, _, approval = call_tool(gw, "pm__send_email", args)
    assert is_error and approval["state"] == "pending"
    held = approval["id"]

    audrey = user(gw, "audrey", ["auditor"])
    page = signed_in(browser, gw, audrey)
    shot(page, "overview-auditor")
    page.goto("/console/agents")
    assert "mailer" in page.locator("#agents").inner_text()
    assert page.locator("#create-agent").count() == 0
    page.goto("/console/agents/mailer")
    assert page.locator("#suspend").count() == 0 and page.locator("text=Rotate").count() == 0
    page.goto(f"/console/approvals/{held}")
    assert page.locator("#approve").count() == 0, "auditors do not vote"

    # A forged POST (the browser's own cookies, no CSRF token or another one) is refused, and
    # changes nothing: forged as the admin, whose role would allow it, so only the CSRF check
    # stands in the way, and the answer says so.
    boss = signed_in(browser, gw, ADMIN_TOKEN)
    for form in [{"x": "1"}, {"csrf": "0" * 64}]:
        r = boss.request.post(f"{gw.url}/console/agents/mailer/suspend", form=form, max_redirects=0)
        assert r.status == 403, r.status
        assert "CSRF token is missing or belongs to another session" in r.text(), r.text()
    boss.context.close()
    s, agent = admin(gw, "GET", "/admin/api/agents/mailer", ADMIN_TOKEN)
    assert s == 200 and agent["agent"]["status"] == "active"
    # Nor may an auditor do what the page does not offer, token or not.
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    r = page.request.post(f"{gw.url}/console/agents/mailer/suspend", form={"csrf": csrf}, max_redirects=0)
    assert r.status == 403, r.status
    assert "CSRF" not in r.text(), "refused by role, the token being right"
    s, agent = admin(gw, "GET", "/admin/api/agents/mailer", ADMIN_TOKEN)
    assert s == 200 and agent["agent"]["status"] == "active"

    today = datetime.now(timezone.utc).date().isoformat()
    page.goto("/console/audit")
    page.fill("#audit-search input[name=agent]", "mailer")
    page.fill("#audit-search input[name=from]", today)
    page.fill("#audit-search input[name=to]", today)
    page.click("#search")
    page.wait_for_url("**/console/audit?*")
    assert "pm__send_email" in page.locator("#events").inner_text()
    shot(page, "audit")
    with page.expect_download() as d:
        page.click("#export")
    path = d.value.path()
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text(encoding="utf-8"))))
    calls = [r for r in rows if r["target"] == "pm__send_email"]
    assert calls, rows
    assert all(r["agent"] == "mailer" and r["time"].startswith(today) for r in rows)
    assert any(r["request_id"] and r["status"] for r in calls)

    page.goto("/console/audit")
    page.click("#verify")
    assert "holds" in page.locator("#verify-result").inner_text()
    shot(page, "audit-verified")
    for name in ["spend", "policy"]:
        page.goto(f"/console/{name}")
        assert page.locator("h1").inner_text().lower() == name
        shot(page, name)

    page.click("#sign-out")
    page.wait_for_url("**/console/login")
    page.goto("/console/audit")
    assert page.url.endswith("/console/login"), "signed out"
    page.context.close()
