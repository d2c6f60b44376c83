"""End to end: prompts, resources and list changes through Palisade's /mcp, with the official
`mcp` Python SDK as the agent. Behind the gateway: `server-everything` over Streamable HTTP
and the mock upstream's support desk over stdio (`mock-upstream --mcp-stdio`). `tool-acl`
polices prompts as `prompt:server__prompt` and resources as `resource:server+uri`.

Runs with either SDK line, like test_mcp.py (whose fixtures and helpers it reuses): mcp 1.x
(ClientSession, initialize handshake) and mcp 2.x (Client, which settles on the stateless
2026-07-28 revision with Palisade, or the handshake with mode="legacy").

Needs: make setup (npm servers), make plugins, cargo build -p palisade -p mock-upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import test_mcp
from conftest import MOCK_BIN, ManagedProcess, _RUNNING, _toml_str
from test_mcp import (  # noqa: F401  (`everything` is a fixture used by name)
    EVERYTHING_BIN,
    SDK_MAJOR,
    TOOL_ACL_WASM,
    SdkError,
    audit_rows,
    everything,
    mcp_facts,
    run,
    start_gateway,
)

EVERYTHING_DOCS = EVERYTHING_BIN.resolve().parent / "docs"
MODERN = "2026-07-28"
KEYS = {
    "librarian": "pk-mcpcat-librarian-3c9e51",
    "greeter": "pk-mcpcat-greeter-8a20f4",
    "clerk": "pk-mcpcat-clerk-61d7b3",
}
STATIC = "everything+demo://resource/static/document/"
ARCHITECTURE = STATIC + "architecture.md"
TEXT_TEMPLATE = "everything+demo://resource/dynamic/text/{resourceId}"
BLOB_TEMPLATE = "everything+demo://resource/dynamic/blob/{resourceId}"
LIST_CHANGED = "notifications/tools/list_changed"


@dataclass
class CatalogGateway:
    url: str
    db: Path  # what test_mcp.audit_rows reads
    process: ManagedProcess

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"


def write_config(directory: Path, everything_url: str) -> Path:
    cache = directory / "plugin-cache"
    cache.mkdir(exist_ok=True)
    agents = "".join(
        f'[[agents]]\nid = "{a}"\nteam = "{a}s"\nkey = {_toml_str(k)}\n' for a, k in KEYS.items()
    )
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
[mcp]
catalog_ttl_ms = 600000   # only a server's list_changed can refresh a list within a test

{agents}
[[mcp_servers]]
name = "everything"
transport = "http"
url = {_toml_str(everything_url)}

[[mcp_servers]]
name = "desk"
transport = "stdio"
command = {_toml_str(MOCK_BIN)}
args = ["--mcp-stdio"]

[[plugins]]
name = "tool-acl"
path = {_toml_str(TOOL_ACL_WASM)}
[[plugins.config.rules]]
agents = ["librarian"]
allow = ["prompt:everything__*", "resource:everything+demo://resource/static/*",
         "resource:everything+demo://resource/dynamic/*"]
[[plugins.config.rules.args]]
tool = "prompt:everything__args-prompt"
path = "$.city"
one_of = ["Paris", "Lyon"]
[[plugins.config.rules]]
agents = ["greeter"]
allow = ["prompt:everything__simple-prompt"]
[[plugins.config.rules]]
agents = ["clerk"]
allow = ["desk__*", "prompt:desk__reply_template", "resource:desk+desk://policies/*"]
"""
    path = directory / "palisade.toml"
    path.write_text(config, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gw(everything: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CatalogGateway]:
    if not MOCK_BIN.exists():
        pytest.fail(f"missing: {MOCK_BIN}\nrun: cargo build -p mock-upstream", pytrace=False)
    directory = tmp_path_factory.mktemp("palisade-mcp-catalog")
    p, url = start_gateway(directory, write_config(directory, everything))
    try:
        yield CatalogGateway(url=url, db=directory / "palisade.db", process=p)
    finally:
        p.stop()
        _RUNNING.remove(p)


# --- the SDK, either line -------------------------------------------------------------------


def _field(obj, snake: str, camel: str):
    """A result field under the 2.x (snake_case) or 1.x (camelCase) spelling."""
    return getattr(obj, snake) if hasattr(obj, snake) else getattr(obj, camel)


class Agent(test_mcp.Agent):
    """test_mcp's Agent plus prompts, resources and the negotiated protocol version."""

    def __init__(self, session, version: str) -> None:
        super().__init__(session, None)
        self.version = version

    @property
    def modern(self) -> bool:
        return self.version == MODERN

    async def names(self, kind: str) -> set[str]:
        s = self._s
        if kind == "prompts":
            return {p.name for p in (await s.list_prompts()).prompts}
        if kind == "resources":
            return {str(r.uri) for r in (await s.list_resources()).resources}
        if kind == "templates":
            page = await s.list_resource_templates()
            return {_field(t, "uri_template", "uriTemplate") for t in _field(page, "resource_templates", "resourceTemplates")}
        return await self.tool_names()

    async def prompt(self, name: str, args: dict | None = None) -> str:
        r = await self._s.get_prompt(name, args)
        return "".join(getattr(m.content, "text", "") for m in r.messages)

    async def read(self, uri: str) -> str:
        r = await self._s.read_resource(uri)
        return "".join(getattr(c, "text", "") for c in r.contents)


@contextlib.asynccontextmanager
async def connect(gw: CatalogGateway, name: str, *, legacy: bool = False, seen: list[str] | None = None,
                  get_opened: asyncio.Event | None = None):
    """A session as `name`; `seen` collects the methods of server notifications, `get_opened`
    is set once the SDK's GET /mcp event stream is open (the handshake era only)."""

    async def on_response(response) -> None:
        if get_opened is not None and response.request.method == "GET" and response.status_code == 200:
            get_opened.set()

    async def on_message(message) -> None:
        method = getattr(getattr(message, "root", message), "method", None)
        if seen is not None and isinstance(method, str):
            seen.append(method)

    from mcp.client.streamable_http import streamable_http_client

    if SDK_MAJOR == 2:
        import httpx2 as httpx
    else:
        import httpx
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {KEYS[name]}"}, trust_env=False,
                             timeout=httpx.Timeout(30, read=60), event_hooks={"response": [on_response]})
    async with http:
        transport = streamable_http_client(gw.mcp_url, http_client=http)
        if SDK_MAJOR == 2:
            mode = "legacy" if legacy else "auto"
            async with test_mcp._V2Client(transport, mode=mode, message_handler=on_message) as c:
                yield Agent(c, c.protocol_version)
        else:
            from mcp import ClientSession

            async with transport as (r, w, _), ClientSession(r, w, message_handler=on_message) as s:
                init = await s.initialize()
                yield Agent(s, init.protocolVersion)


async def refused(coro) -> SdkError:
    with pytest.raises(SdkError) as e:
        await coro
    return e.value


def sha256(args: dict) -> str:
    return hashlib.sha256(json.dumps(args, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


# --- the tests ------------------------------------------------------------------------------


def test_agents_see_and_use_different_prompts_and_resources(gw: CatalogGateway) -> None:
    async def go():
        async with connect(gw, "librarian") as a:
            lib = {k: await a.names(k) for k in ("prompts", "resources")}
            lib["prompt"] = await a.prompt("everything__args-prompt", {"city": "Paris"})
            lib["simple"] = await a.prompt("everything__simple-prompt")
            lib["doc"] = await a.read(ARCHITECTURE)
        async with connect(gw, "greeter") as b:
            greet = {k: await b.names(k) for k in ("prompts", "resources")}
            greet["simple"] = await b.prompt("everything__simple-prompt")
            greet["hidden_prompt"] = await refused(b.prompt("everything__args-prompt", {"city": "Paris"}))
            greet["hidden_resource"] = await refused(b.read(ARCHITECTURE))
            greet["missing_resource"] = await refused(b.read("nope+demo://nothing"))
            greet["modern"] = b.modern
        return lib, greet

    lib, greet = run(go())
    assert {"everything__simple-prompt", "everything__args-prompt", "everything__resource-prompt"} <= lib["prompts"]
    assert all(n.startswith("everything__") for n in lib["prompts"]), "no desk prompts: deny by default"
    assert ARCHITECTURE in lib["resources"] and all(u.startswith(STATIC) for u in lib["resources"])
    assert lib["prompt"] == "What's weather in Paris?"
    assert lib["simple"] == "This is a simple prompt without arguments."
    assert lib["doc"] == (EVERYTHING_DOCS / "architecture.md").read_text(encoding="utf-8")

    assert greet["prompts"] == {"everything__simple-prompt"} and greet["resources"] == set()
    assert greet["simple"] == lib["simple"]
    hidden = greet["hidden_prompt"]
    assert hidden.error.code == -32602 and "Unknown prompt: everything__args-prompt" in hidden.error.message
    # Palisade's Item::unknown: -32002 in the handshake era, folded into -32602 by 2026-07-28.
    want = -32602 if greet["modern"] else -32002
    for e, uri in ((greet["hidden_resource"], ARCHITECTURE), (greet["missing_resource"], "nope+demo://nothing")):
        assert e.error.code == want and "Resource not found" in e.error.message
        assert (e.error.data or {}).get("uri") == uri, "hidden and missing resources look the same"

    rows = audit_rows(gw, "kind = 'tool-list' AND agent = 'greeter' AND target = 'prompts/list'")
    facts = mcp_facts(rows[-1])
    assert facts["method"] == "prompts/list" and facts["prompts_shown"] == 1
    assert facts["prompts_total"] >= 6, "4 everything prompts + 2 desk prompts"


def test_prompt_argument_constraints(gw: CatalogGateway) -> None:
    async def go():
        async with connect(gw, "librarian") as a:
            bad = await refused(a.prompt("everything__args-prompt", {"city": "Atlantis"}))
            missing = await refused(a.prompt("everything__args-prompt"))
            good = await a.prompt("everything__args-prompt", {"city": "Lyon", "state": "Rhone"})
            return bad, missing, good

    bad, missing, good = run(go())
    assert bad.error.code == -32602
    msg = bad.error.message
    assert "argument 'city' = \"Atlantis\" is not allowed for prompt 'everything__args-prompt'" in msg
    assert '"Paris"' in msg and '"Lyon"' in msg, msg
    assert missing.error.code == -32602 and "argument 'city' set" in missing.error.message
    assert good == "What's weather in Lyon, Rhone?"
    rows = audit_rows(gw, "agent = 'librarian' AND error_code = 'tool_arguments_denied'", want=2)
    assert {r["target"] for r in rows} == {"everything__args-prompt"}
    facts = mcp_facts(rows[0])
    assert facts["method"] == "prompts/get" and facts["prompt"] == "args-prompt" and facts["is_error"] is True
    assert rows[0]["decided_by"] == "tool-acl"


def test_resource_templates(gw: CatalogGateway) -> None:
    async def go():
        async with connect(gw, "librarian") as a:
            shown = await a.names("templates")
            text = await a.read("everything+demo://resource/dynamic/text/1")
        async with connect(gw, "greeter") as b:
            hidden = await b.names("templates")
        return shown, text, hidden

    shown, text, hidden = run(go())
    assert shown == {TEXT_TEMPLATE, BLOB_TEMPLATE}
    assert text.startswith("Resource 1: This is a plaintext resource created at ")
    assert hidden == set()


def test_argument_completions_for_visible_prompts_only(gw: CatalogGateway) -> None:
    from mcp.types import PromptReference

    async def go():
        async with connect(gw, "librarian") as a:
            ok = await a._s.complete(
                PromptReference(type="ref/prompt", name="everything__completable-prompt"),
                {"name": "department", "value": "S"},
            )
        async with connect(gw, "greeter") as b:
            no = await refused(b._s.complete(
                PromptReference(type="ref/prompt", name="everything__completable-prompt"),
                {"name": "department", "value": "S"},
            ))
        return ok, no

    ok, no = run(go())
    assert sorted(ok.completion.values) == ["Sales", "Support"], ok
    assert no.error.code == -32602 and "Unknown prompt" in no.error.message


def test_stdio_desk_prompts_and_resources(gw: CatalogGateway) -> None:
    async def go():
        async with connect(gw, "clerk") as c:
            return (
                await c.names("prompts"),
                await c.names("resources"),
                await c.prompt("desk__reply_template", {"tone": "formal"}),
                await c.read("desk+desk://policies/refunds"),
                await refused(c.prompt("desk__salary_letter", {"employee": "Marcus Webb"})),
                await refused(c.read("desk+desk://hr/salaries")),
                c.modern,
            )

    prompts, resources, reply, policy, letter, salaries, modern = run(go())
    assert prompts == {"desk__reply_template"}
    assert resources == {"desk+desk://policies/refunds"}
    assert reply == "Write a formal reply to the customer's last message. Thank them first."
    assert policy == "Refunds are granted within 30 days of delivery."
    assert letter.error.code == -32602 and "123,456" not in letter.error.message
    assert salaries.error.code == (-32602 if modern else -32002) and "Marcus" not in salaries.error.message


def test_tools_list_changed_reaches_the_catalog_and_the_agent(gw: CatalogGateway) -> None:
    """The desk adds `issue_refund` when `enable_refunds` is called and announces it on its
    stdout. The catalog is cached for 10 minutes, so only that announcement can refresh it; the
    listener (a handshake-era session, whose SDK opens the GET /mcp stream) must hear Palisade
    pass it on. The actor is the SDK line's default session (2.x: the stateless revision)."""

    async def go():
        seen: list[str] = []
        opened = asyncio.Event()
        async with connect(gw, "clerk", legacy=True, seen=seen, get_opened=opened) as listener:
            await asyncio.wait_for(opened.wait(), 15)
            async with connect(gw, "clerk") as actor:
                before = await actor.names("tools")
                await asyncio.sleep(0.3)  # let any earlier announcement (the desk's start) land
                heard_before = seen.count(LIST_CHANGED)
                enabled = await actor.call("desk__enable_refunds", {})
                after = await actor.names("tools")
                refund = await actor.call("desk__issue_refund", {"order": "A-1042"})
                for _ in range(100):
                    if seen.count(LIST_CHANGED) > heard_before:
                        break
                    await asyncio.sleep(0.1)
                return before, enabled, after, refund, seen.count(LIST_CHANGED) - heard_before, \
                    await listener.names("tools"), actor.version

    before, enabled, after, refund, heard, listener_sees, version = run(go())
    assert {"desk__crm_query", "desk__enable_refunds"} <= before and "desk__issue_refund" not in before
    assert enabled == (False, "refund desk enabled")
    assert after == before | {"desk__issue_refund"}, f"catalog not refreshed ({version})"
    assert refund == (False, "order A-1042 refunded")
    assert heard >= 1, f"no {LIST_CHANGED} on the GET /mcp stream"
    assert "desk__issue_refund" in listener_sees


def test_prompt_and_resource_uses_are_audited(gw: CatalogGateway) -> None:
    async def go():
        async with connect(gw, "librarian") as a:
            await a.prompt("everything__args-prompt", {"city": "Lyon"})
            await a.read(ARCHITECTURE)
        async with connect(gw, "greeter") as b:
            await refused(b.read(ARCHITECTURE))

    run(go())
    ok = "kind = 'tool-call' AND agent = ? AND target = ? AND error_code IS NULL"
    [*_, prompt] = audit_rows(gw, ok, ("librarian", "everything__args-prompt"))
    facts = mcp_facts(prompt)
    assert facts["method"] == "prompts/get" and facts["server"] == "everything"
    assert facts["prompt"] == "args-prompt" and "tool" not in facts
    assert facts["arguments_sha256"] == sha256({"city": "Lyon"})
    assert prompt["provider"] == "everything" and prompt["latency_us"] > 0

    [*_, read] = audit_rows(gw, ok, ("librarian", ARCHITECTURE))
    facts = mcp_facts(read)
    assert facts["method"] == "resources/read" and facts["server"] == "everything"
    assert facts["resource"] == "demo://resource/static/document/architecture.md"
    assert facts["arguments_sha256"] == sha256({"uri": ARCHITECTURE})

    [*_, denied] = audit_rows(gw, "agent = 'greeter' AND target = ? AND error_code = 'unknown_tool'", (ARCHITECTURE,))
    assert denied["decided_by"] == "tool-acl" and mcp_facts(denied)["method"] == "resources/read"
