"""The official `anthropic` SDK through Palisade's `POST /v1/messages`, reaching the OpenAI face
of mock-upstream: the Anthropic request is translated to the canonical OpenAI call, runs the same
life of a call (identity from `x-api-key`, plugins: `model-allow` and the `upper` fixture, audit),
and the answer comes back as an Anthropic message or Anthropic SSE events. Tool calls included.
"""

from __future__ import annotations

import json
import uuid

import anthropic
import pytest

from conftest import AGENT_KEYS, CLIENT_TIMEOUT_S

ALLOWED = "gpt-4o-mini"

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def marker(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def mock_reply(model: str, user_text: str) -> str:
    return f"Hello from mock-upstream ({model}). You said: {user_text}"


@pytest.fixture(scope="session")
def claude(gateway):
    c = anthropic.Anthropic(
        api_key=AGENT_KEYS["support-bot"],
        base_url=gateway.url,
        max_retries=0,
        timeout=CLIENT_TIMEOUT_S,
        http_client=anthropic.DefaultHttpxClient(trust_env=False),
    )
    yield c
    c.close()


def upstream_request(mock_upstream, needle: str) -> dict:
    found = [r for r in mock_upstream.requests() if needle in (r.get("body") or "")]
    assert found, f"the mock never saw {needle}"
    return json.loads(found[-1]["body"])


def test_message_is_translated_both_ways_and_runs_the_plugins(claude, mock_upstream):
    text = marker("anth-plain")
    msg = claude.messages.create(
        model=ALLOWED,
        max_tokens=200,
        system="You are terse.",
        messages=[{"role": "user", "content": text}],
    )
    assert msg.type == "message" and msg.role == "assistant"
    # The `upper` plugin rewrote the canonical answer before it was translated back.
    assert msg.content[0].type == "text"
    assert msg.content[0].text == mock_reply(ALLOWED, text).upper()
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    sent = upstream_request(mock_upstream, text)
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
    assert sent["max_tokens"] == 200


def test_stream_is_reencoded_as_anthropic_events(claude):
    text = marker("anth-stream")
    with claude.messages.stream(
        model=ALLOWED, max_tokens=200, messages=[{"role": "user", "content": text}]
    ) as stream:
        kinds = []
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    reply = mock_reply(ALLOWED, text)
    # on-text plugins ran per delta; the fixture appends a length trailer at the end.
    assert final.content[0].text == reply.upper() + f" [{len(reply)} chars]"
    assert kinds[0] == "message_start"
    assert "content_block_delta" in kinds and kinds[-1] == "message_stop"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0


def test_tool_call_round_trip_keeps_ids(claude, mock_upstream):
    text = marker("anth-tool") + " please use get_weather"
    msg = claude.messages.create(
        model=ALLOWED,
        max_tokens=200,
        tools=[WEATHER],
        tool_choice={"type": "auto"},
        messages=[{"role": "user", "content": text}],
    )
    assert msg.stop_reason == "tool_use"
    use = [b for b in msg.content if b.type == "tool_use"]
    assert len(use) == 1 and use[0].name == "get_weather"
    assert use[0].input == {"city": "mock"}
    sent = upstream_request(mock_upstream, text)
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == "auto"

    follow = claude.messages.create(
        model=ALLOWED,
        max_tokens=200,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": text},
            {"role": "assistant", "content": msg.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use[0].id, "content": "18C"}]},
        ],
    )
    assert follow.stop_reason == "end_turn"
    sent = [r for r in mock_upstream.requests() if '"role":"tool"' in (r.get("body") or "") and text in r["body"]]
    tool_msg = [m for m in json.loads(sent[-1]["body"])["messages"] if m["role"] == "tool"][0]
    assert tool_msg == {"role": "tool", "tool_call_id": use[0].id, "content": "18C"}


def test_streamed_tool_call_arrives_as_input_json_deltas(claude):
    text = marker("anth-tool-stream") + " use get_weather"
    with claude.messages.stream(
        model=ALLOWED, max_tokens=200, tools=[WEATHER], messages=[{"role": "user", "content": text}]
    ) as stream:
        deltas = [e for e in stream if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        final = stream.get_final_message()
    assert len(deltas) >= 2  # the arguments arrived in pieces
    use = [b for b in final.content if b.type == "tool_use"]
    assert len(use) == 1 and use[0].input == {"city": "mock"} and use[0].id
    assert final.stop_reason == "tool_use"


def test_errors_come_in_anthropic_shape(gateway, claude):
    bad = anthropic.Anthropic(
        api_key="pk-unknown", base_url=gateway.url, max_retries=0,
        http_client=anthropic.DefaultHttpxClient(trust_env=False),
    )
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model=ALLOWED, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "authentication_error"
    bad.close()
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        claude.messages.create(model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "permission_error"
    # What the canonical request cannot carry is refused, never dropped.
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model=ALLOWED, max_tokens=10, top_k=5, messages=[{"role": "user", "content": "x"}])
    assert "top_k" in e.value.body["error"]["message"]
