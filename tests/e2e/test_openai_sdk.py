"""End to end: the official `openai` Python SDK against the real gateway and the mock upstream.

The gateway runs two plugins (see conftest.py): `model-allow` (support-bot: gpt-4o-mini;
research-bot: gpt-4o too) and the `fixture` plugin in mode `upper`, which upper-cases full
answers and streamed deltas and ends every stream with one more delta ` [N chars]`, N being the
length of the deltas it saw.

Each test tags its user message with a unique marker so it can find its own requests in the
mock's record (`GET /_mock/requests`) whatever the test order.
"""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from conftest import AGENT_KEYS

ALLOWED = "gpt-4o-mini"
DENIED = "gpt-4o"  # not allowed for support-bot; allowed for research-bot
REQUEST_ID = re.compile(r"^req_[0-9A-Za-z]+$")


def marker(label: str) -> str:
    """A unique, ASCII, whitespace-free tag for one test's user message."""
    return f"{label}-{uuid.uuid4().hex[:12]}"


def mock_reply(model: str, user_text: str) -> str:
    """What mock-upstream answers (before the gateway's plugins)."""
    return f"Hello from mock-upstream ({model}). You said: {user_text}"


def upper_stream_text(reply: str) -> str:
    """What the `upper` fixture makes of a streamed reply: upper-cased, plus the length trailer."""
    # Messages in this suite are ASCII, so bytes, chars and Python/Rust case mapping all agree.
    assert reply.isascii()
    return reply.upper() + f" [{len(reply)} chars]"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def stream_text(chunks) -> str:
    return "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)


def requests_with(mock_upstream, needle: str) -> list[dict]:
    return [r for r in mock_upstream.requests() if needle in (r.get("body") or "")]


def header_items(recorded: dict) -> list[tuple[str, str]]:
    """The mock records headers as [name, value] pairs (accept a mapping too)."""
    headers = recorded.get("headers") or []
    if isinstance(headers, dict):
        return [(k.lower(), str(v)) for k, v in headers.items()]
    return [(k.lower(), str(v)) for k, v in headers]


def assert_error_shape(exc: openai.APIStatusError, status: int, code: str) -> dict:
    assert exc.status_code == status
    body = exc.body
    assert isinstance(body, dict), f"error body is not the OpenAI error object: {body!r}"
    assert body.get("code") == code
    assert exc.code == code
    assert isinstance(body.get("message"), str) and body["message"]
    assert isinstance(body.get("type"), str) and body["type"]
    header_id = exc.response.headers.get("palisade-request-id")
    assert header_id and REQUEST_ID.match(header_id), header_id
    assert body.get("request_id") == header_id
    return body


# 1. Non-streaming chat ------------------------------------------------------------------------


def test_chat_completion_is_rewritten_by_plugin(client):
    text = f"non-stream {marker('t1')}"
    resp = client.chat.completions.create(model=ALLOWED, messages=user(text))

    assert resp.object == "chat.completion"
    assert resp.model == ALLOWED
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == mock_reply(ALLOWED, text).upper()
    assert choice.finish_reason == "stop"

    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_completion_raw_response_headers(client):
    text = f"raw {marker('t1raw')}"
    ids = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model=ALLOWED, messages=user(text))
        assert raw.status_code == 200
        request_id = raw.headers.get("palisade-request-id")
        assert request_id and REQUEST_ID.match(request_id), request_id
        assert raw.headers.get("palisade-provider") == f"mock/{ALLOWED}"
        ids.append(request_id)
        parsed = raw.parse()
        assert parsed.choices[0].message.content == mock_reply(ALLOWED, text).upper()
    assert ids[0] != ids[1], "request ids must be unique per call"


def test_agent_specific_allow_list(research_client):
    text = f"research {marker('t1r')}"
    resp = research_client.chat.completions.create(model=DENIED, messages=user(text))
    assert resp.model == DENIED
    assert resp.choices[0].message.content == mock_reply(DENIED, text).upper()


def test_upstream_latency_directive_is_transparent(client):
    text = f"slow {marker('lat')}"
    resp = client.chat.completions.create(
        model=ALLOWED, messages=user(f"{text} [mock:latency=200]")
    )
    # The mock strips its directive from the echo.
    assert resp.choices[0].message.content == mock_reply(ALLOWED, text).upper()


# 2. Streaming chat ----------------------------------------------------------------------------


def test_stream_deltas_are_rewritten_and_trailer_appended(client):
    text = f"stream {marker('t2')}"
    chunks = list(client.chat.completions.create(model=ALLOWED, messages=user(text), stream=True))

    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    reply = mock_reply(ALLOWED, text)
    assert stream_text(chunks) == upper_stream_text(reply)
    # More than one content delta: the answer really was streamed word by word.
    assert sum(1 for ch in chunks for c in ch.choices if c.delta.content) > 3
    finishes = [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason]
    assert finishes == ["stop"]
    # Usage was not asked for: no chunk carries it.
    assert all(c.usage is None for c in chunks)


def test_stream_include_usage_false_has_no_usage(client):
    text = f"stream-nousage {marker('t2f')}"
    chunks = list(
        client.chat.completions.create(
            model=ALLOWED,
            messages=user(text),
            stream=True,
            stream_options={"include_usage": False},
        )
    )
    assert stream_text(chunks) == upper_stream_text(mock_reply(ALLOWED, text))
    assert all(c.usage is None for c in chunks)


def test_stream_include_usage_last_chunk_has_usage(client):
    text = f"stream-usage {marker('t2u')}"
    chunks = list(
        client.chat.completions.create(
            model=ALLOWED,
            messages=user(text),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert stream_text(chunks) == upper_stream_text(mock_reply(ALLOWED, text))

    last = chunks[-1]
    assert last.usage is not None, "the last chunk must carry usage"
    assert last.choices == []
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1]), "only the last chunk carries usage"


def test_concurrent_streams_keep_per_call_plugin_state(make_client):
    """Each stream's trailer counts only its own deltas (no state leaks between calls)."""
    c = make_client(AGENT_KEYS["support-bot"])
    texts = [f"{'word ' * i}{marker(f'conc{i}')}" for i in range(8)]

    def run(text: str) -> str:
        return stream_text(c.chat.completions.create(model=ALLOWED, messages=user(text), stream=True))

    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        results = list(pool.map(run, texts))
    for text, got in zip(texts, results):
        assert got == upper_stream_text(mock_reply(ALLOWED, text))


# 3. Denied model ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["full", "stream"])
def test_denied_model_is_permission_error(client, mock_upstream, stream):
    tag = marker("t3")
    with pytest.raises(openai.PermissionDeniedError) as ei:
        resp = client.chat.completions.create(model=DENIED, messages=user(tag), stream=stream)
        if stream:
            list(resp)
    body = assert_error_shape(ei.value, 403, "model_not_allowed")
    # Names the denied model itself, not just as part of "gpt-4o-mini" in the allowed list.
    assert re.search(rf"(?<![\w.-]){re.escape(DENIED)}(?![\w.-])", body["message"]), body["message"]
    assert body.get("plugin") == "model-allow"
    assert requests_with(mock_upstream, tag) == [], "a denied call must not reach the upstream"


# 4. Unknown key -------------------------------------------------------------------------------


def test_unknown_key_is_authentication_error(make_client, mock_upstream):
    bad = make_client("pk-e2e-not-a-real-key")
    tag = marker("t4")
    with pytest.raises(openai.AuthenticationError) as ei:
        bad.chat.completions.create(model=ALLOWED, messages=user(tag))
    assert_error_shape(ei.value, 401, "invalid_api_key")
    assert requests_with(mock_upstream, tag) == []


def test_unknown_key_cannot_list_models(make_client):
    bad = make_client("pk-e2e-not-a-real-key")
    with pytest.raises(openai.AuthenticationError) as ei:
        bad.models.list()
    assert_error_shape(ei.value, 401, "invalid_api_key")


# 5. Models ------------------------------------------------------------------------------------


def test_models_list_is_the_upstreams(client):
    models = client.models.list()
    ids = [m.id for m in models]
    assert ids == ["gpt-4o-mini", "gpt-4o", "mock-small"]
    assert all(m.object == "model" and m.owned_by == "mock" for m in models.data)


# 6. Upstream fault ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["full", "stream"])
def test_upstream_503_becomes_502(client, mock_upstream, stream):
    tag = marker("t6")
    with pytest.raises(openai.APIStatusError) as ei:
        resp = client.chat.completions.create(
            model=ALLOWED, messages=user(f"{tag} [mock:status=503]"), stream=stream
        )
        if stream:
            list(resp)
    assert isinstance(ei.value, openai.InternalServerError)
    assert_error_shape(ei.value, 502, "upstream_error")
    assert len(requests_with(mock_upstream, tag)) >= 1, "the call did reach the upstream"


# 7. Stream cut by the upstream ----------------------------------------------------------------


def test_stream_cut_raises_after_a_proper_prefix(client):
    text = f"cut {marker('t7')}"
    full = upper_stream_text(mock_reply(ALLOWED, text))
    stream = client.chat.completions.create(
        model=ALLOWED, messages=user(f"[mock:drop_after=3] {text}"), stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as ei:
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)
    stream.close()

    exc = ei.value
    # The gateway ends the stream with an SSE error event (parsed by the SDK), not a bare
    # dropped connection.
    assert not isinstance(exc, openai.APIConnectionError), repr(exc)
    assert isinstance(exc.body, dict), exc.body
    assert exc.body.get("message")
    assert REQUEST_ID.match(str(exc.body.get("request_id"))), exc.body

    got = "".join(received)
    assert got, "the deltas sent before the cut should have arrived"
    assert full.startswith(got) and len(got) < len(full), f"not a proper prefix: {got!r}"
    assert "chars]" not in got, "a cut stream must not get the end-of-stream trailer"


# 8. What the upstream saw ---------------------------------------------------------------------


def test_upstream_never_sees_agent_key_and_always_gets_usage(client, research_client, mock_upstream):
    tag = marker("t8")
    client.chat.completions.create(model=ALLOWED, messages=user(f"full {tag}"))
    list(client.chat.completions.create(model=ALLOWED, messages=user(f"plain {tag}"), stream=True))
    list(
        client.chat.completions.create(
            model=ALLOWED,
            messages=user(f"nousage {tag}"),
            stream=True,
            stream_options={"include_usage": False},
        )
    )
    list(
        research_client.chat.completions.create(
            model=DENIED,
            messages=user(f"usage {tag}"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    client.models.list()

    recorded = mock_upstream.requests()
    mine = [r for r in recorded if tag in (r.get("body") or "")]
    assert len(mine) == 4, [r.get("body") for r in mine]
    assert any(r.get("path") == "/v1/models" for r in recorded)

    # No recorded request (from any test) carried an agent key anywhere.
    for r in recorded:
        for name, value in header_items(r):
            for key in AGENT_KEYS.values():
                assert key not in value, f"agent key leaked upstream in header {name!r}"
        for key in AGENT_KEYS.values():
            assert key not in (r.get("body") or ""), "agent key leaked upstream in the body"

    streams = [json.loads(r["body"]) for r in mine if json.loads(r["body"]).get("stream")]
    assert len(streams) == 3
    for body in streams:
        assert body.get("stream_options", {}).get("include_usage") is True, body
