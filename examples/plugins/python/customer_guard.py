"""customer-guard: a Palisade policy plugin in Python.

Denies tool calls whose arguments mention a blocked customer id, for example a customer under
legal hold whose records no agent may read or change; with `scan_llm`, also LLM calls whose
messages mention one (so the customer's data does not reach a model either).

Config (`palisade.toml`):

    [[plugins]]
    name = "customer-guard"
    path = "dist/plugins/customer-guard-py.wasm"
    memory_mb = 64           # a Python interpreter needs more than a Rust plugin
    deadline_ms = 200
    [plugins.config]
    blocked = ["CUST-1001", "CUST-2002"]   # ids, matched case-insensitively as whole words
    tools = ["crm__*"]                      # which tools to check ("*" globs; default: all)
    scan_llm = true                         # also check LLM requests (default: false)

Built with `componentize-py` against `wit/` (see `make plugins-py`). The gateway calls the hooks
listed by `init`; this one only uses `on-request`.
"""

import json
import re
from fnmatch import fnmatchcase

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    CallKind,
    Deny,
    Hooks,
    Level,
    Outcome,
    Verdict_Allow,
    Verdict_Deny,
)

# componentize-py may build a fresh `Policy` object for every exported call, so what `init`
# parsed lives at module level. One Wasm instance serves one call at a time, so this is per
# instance, never shared across calls running at once. It is all the plugin keeps, so `init`
# declares the plugin stateless and the gateway reuses the instance for later calls (a fresh
# Python instance costs about a millisecond).
_rules = None


class _Rules:
    def __init__(self, blocked, tools, scan_llm):
        self.blocked = blocked
        self.tools = tools
        self.scan_llm = scan_llm
        # Whole-word match: CUST-10 must not fire on CUST-100.
        alternatives = "|".join(re.escape(b) for b in blocked)
        self.pattern = re.compile(r"(?<![\w-])(" + alternatives + r")(?![\w-])", re.IGNORECASE)

    def applies_to(self, call):
        if call.kind == CallKind.TOOL_CALL:
            return any(fnmatchcase(call.target, pattern) for pattern in self.tools)
        return call.kind == CallKind.LLM_CALL and self.scan_llm


def _parse_config(config_json):
    try:
        config = json.loads(config_json or "{}")
    except ValueError as e:
        raise Err(f"customer-guard config is not JSON: {e}")
    if not isinstance(config, dict):
        raise Err("customer-guard config must be a table")
    unknown = sorted(set(config) - {"blocked", "tools", "scan_llm"})
    if unknown:
        raise Err(
            f"customer-guard config: unknown key(s) {', '.join(unknown)}; expected blocked, tools, scan_llm"
        )
    blocked = config.get("blocked")
    if not isinstance(blocked, list) or not blocked or not all(
        isinstance(b, str) and b.strip() for b in blocked
    ):
        raise Err("customer-guard config: `blocked` must be a non-empty list of customer ids")
    tools = config.get("tools", ["*"])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise Err("customer-guard config: `tools` must be a list of tool name patterns")
    scan_llm = config.get("scan_llm", False)
    if not isinstance(scan_llm, bool):
        raise Err("customer-guard config: `scan_llm` must be true or false")
    return _Rules([b.strip() for b in blocked], tools, scan_llm)


def _strings(value):
    """Every string in a JSON value: keys and values, at any depth."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def _what(call):
    if call.kind == CallKind.TOOL_CALL:
        return f"tool call '{call.target}'"
    return f"request to model '{call.target}'"


def _allow(notes=()):
    return Outcome(verdict=Verdict_Allow(), annotations=list(notes))


class Policy(exports.Policy):
    def init(self, config_json):
        global _rules
        _rules = _parse_config(config_json)
        host.declare_stateless()
        return Hooks.ON_REQUEST

    def on_request(self, call):
        if not _rules.applies_to(call):
            return _allow()
        try:
            arguments = json.loads(call.body) if call.body else {}
        except ValueError:
            # The gateway hands over canonical JSON (tool arguments, or the OpenAI chat request);
        # anything else is scanned as plain text.
            arguments = call.body
        for text in _strings(arguments):
            found = _rules.pattern.search(text)
            if found:
                customer = found.group(1)
                host.log(
                    Level.WARN,
                    f"denied {call.target} for agent {call.agent.id}: mentions blocked customer {customer}",
                )
                return Outcome(
                    verdict=Verdict_Deny(
                        Deny(
                            status=403,
                            code="customer_blocked",
                            message=(
                                f"{_what(call)} may not mention customer '{customer}': "
                                "that customer is blocked for agents"
                            ),
                        )
                    ),
                    annotations=[("customer-guard.customer", customer)],
                )
        return _allow([("customer-guard.checked", call.target)])

    def on_response(self, call, body):
        return _allow()

    def on_text(self, call, delta, last):
        return delta

    def on_complete(self, call, usage, status):
        pass

    def filter_tools(self, call, tools):
        return [t.name for t in tools]
