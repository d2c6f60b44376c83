"""Fixtures for the end-to-end suite: the real `mock-upstream` and `palisade` binaries.

One mock upstream and one gateway are started per test session (session-scoped fixtures) and
killed at teardown. Both bind port 0; the addresses are read from the lines the binaries print
once ready. Every wait is bounded. Output of both processes is drained on background threads so
a pipe never fills, and the tail of it is attached to the report of any failing test.

Build first (what `make test-e2e` does):  make plugins && cargo build -p palisade -p mock-upstream
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
PALISADE_BIN = TARGET_DIR / "debug" / "palisade"
MOCK_BIN = TARGET_DIR / "debug" / "mock-upstream"
PLUGINS_DIR = REPO_ROOT / "dist" / "plugins"
MODEL_ALLOW_WASM = PLUGINS_DIR / "model-allow.wasm"
FIXTURE_WASM = PLUGINS_DIR / "fixture.wasm"

STARTUP_TIMEOUT_S = 60.0  # the gateway compiles the plugins on first start (cached afterwards)
SHUTDOWN_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 30.0

# Agents of the test config: id -> key.
AGENT_KEYS = {
    "support-bot": "pk-e2e-support-bot-7f3a9c",
    "research-bot": "pk-e2e-research-bot-41d2e8",
}

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MOCK_READY = re.compile(r"mock-upstream listening on (http://[0-9.]+:\d+)")
GATEWAY_READY = re.compile(r"palisade listening on (http://[0-9.]+:\d+)")


class ManagedProcess:
    """A child process whose stdout and stderr are drained line by line on daemon threads."""

    def __init__(self, name: str, argv: list[str], cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self._lines: deque[str] = deque(maxlen=2000)
        self._lock = threading.Lock()
        self._new_line = threading.Condition(self._lock)
        env = dict(os.environ)
        env["NO_COLOR"] = "1"
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, "out"), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, "err"), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _drain(self, stream, tag: str) -> None:
        for raw in iter(stream.readline, b""):
            line = ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace")).rstrip("\r\n")
            with self._new_line:
                self._lines.append(f"[{tag}] {line}")
                self._new_line.notify_all()
        stream.close()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Waits until some output line matches `pattern`; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new_line:
            while True:
                lines = list(self._lines)
                for line in lines[seen:]:
                    m = pattern.search(line)
                    if m:
                        return m
                seen = len(lines)
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                        + self.output()
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(
                        f"{self.name} not ready after {timeout:.0f}s:\n" + self.output()
                    )
                self._new_line.wait(min(remaining, 0.5))

    def output(self, last: int | None = None) -> str:
        with self._lock:
            lines = list(self._lines)
        if last is not None:
            lines = lines[-last:]
        return "\n".join(lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        for t in self._readers:
            t.join(timeout=SHUTDOWN_TIMEOUT_S)


# Processes alive in this session, for the failure report hook below.
_RUNNING: list[ManagedProcess] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for p in _RUNNING:
            report.sections.append((f"{p.name} output (last 40 lines)", p.output(last=40)))


def _require_built() -> None:
    missing = [p for p in (PALISADE_BIN, MOCK_BIN, MODEL_ALLOW_WASM, FIXTURE_WASM) if not p.is_file()]
    if missing:
        pytest.fail(
            "missing build outputs: "
            + ", ".join(str(p) for p in missing)
            + "\nrun: make plugins && cargo build -p palisade -p mock-upstream",
            pytrace=False,
        )


def http_get_json(url: str, timeout: float = 10.0):
    """GET a JSON document without any proxy from the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


@dataclass
class MockUpstream:
    url: str
    process: ManagedProcess

    def requests(self) -> list[dict]:
        """What the mock received (GET /_mock/requests), oldest first."""
        return http_get_json(f"{self.url}/_mock/requests")


@dataclass
class Gateway:
    url: str
    config_path: Path
    process: ManagedProcess

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[MockUpstream]:
    _require_built()
    p = ManagedProcess("mock-upstream", [str(MOCK_BIN), "--listen", "127.0.0.1:0"], REPO_ROOT)
    _RUNNING.append(p)
    try:
        url = p.wait_for(MOCK_READY, STARTUP_TIMEOUT_S).group(1)
        yield MockUpstream(url=url, process=p)
    finally:
        p.stop()
        _RUNNING.remove(p)


def _toml_str(value: str | Path) -> str:
    # A TOML basic string; JSON string escaping is valid TOML for these (path) strings.
    return json.dumps(str(value))


def write_gateway_config(directory: Path, mock_url: str) -> Path:
    cache_dir = directory / "plugin-cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    agents = "\n".join(
        f"""
[[agents]]
id = {_toml_str(agent)}
owner = "e2e@example.com"
team = "e2e"
key = {_toml_str(key)}
"""
        for agent, key in AGENT_KEYS.items()
    )
    config = f"""
[server]
listen = "127.0.0.1:0"

[upstream]
name = "mock"
base_url = "http://127.0.0.1:9"   # replaced by --upstream-url

# The mock's Anthropic and Gemini faces as providers of their own (same process, other paths).
[[providers]]
name = "claude"
kind = "anthropic"
base_url = {_toml_str(mock_url)}

[[providers]]
name = "gem"
kind = "gemini"
base_url = {_toml_str(mock_url)}

[plugin_host]
# Generous per-hook deadline: debug builds on a busy machine can exceed the 20 ms default, and
# deadlines are not what this suite tests.
deadline_ms = 2000
cache_dir = {_toml_str(cache_dir)}
{agents}
[[plugins]]
name = "model-allow"
path = {_toml_str(MODEL_ALLOW_WASM)}
on_error = "deny"
[plugins.config]
default = ["gpt-4o-mini", "claude/claude-sonnet-4", "gem/gemini-2.5-flash"]
agents = {{ "research-bot" = ["gpt-4o"] }}

[[plugins]]
name = "upper"
path = {_toml_str(FIXTURE_WASM)}
on_error = "deny"
[plugins.config]
mode = "upper"
"""
    path = directory / "palisade.toml"
    path.write_text(config, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def gateway(mock_upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("palisade")
    config_path = write_gateway_config(directory, mock_upstream.url)
    argv = [
        str(PALISADE_BIN),
        "serve",
        "--config",
        str(config_path),
        "--listen",
        "127.0.0.1:0",
        "--upstream-url",
        mock_upstream.url,
    ]
    p = ManagedProcess("palisade", argv, directory)
    _RUNNING.append(p)
    try:
        url = p.wait_for(GATEWAY_READY, STARTUP_TIMEOUT_S).group(1)
        yield Gateway(url=url, config_path=config_path, process=p)
    finally:
        p.stop()
        _RUNNING.remove(p)


@pytest.fixture(scope="session")
def make_client(gateway: Gateway) -> Iterator[Callable[..., openai.OpenAI]]:
    """A factory of `openai.OpenAI` clients pointed at the gateway (no retries, bounded timeout)."""
    clients: list[openai.OpenAI] = []

    def make(api_key: str = AGENT_KEYS["support-bot"], **kwargs) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", CLIENT_TIMEOUT_S)
        client = openai.OpenAI(
            api_key=api_key,
            base_url=gateway.api_base,
            http_client=openai.DefaultHttpxClient(trust_env=False),
            **kwargs,
        )
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture(scope="session")
def client(make_client) -> openai.OpenAI:
    """A client authenticated as `support-bot` (may use gpt-4o-mini only)."""
    return make_client(AGENT_KEYS["support-bot"])


@pytest.fixture(scope="session")
def research_client(make_client) -> openai.OpenAI:
    """A client authenticated as `research-bot` (may use gpt-4o and gpt-4o-mini)."""
    return make_client(AGENT_KEYS["research-bot"])
