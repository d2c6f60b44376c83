"""The official SDKs through Palisade to the mock's Anthropic and Gemini faces: the `openai` SDK's
chat completion (whole, streamed, with tool calls) translated by the provider dialects to
Anthropic Messages and Gemini generateContent and back, and the `anthropic` SDK's message
reaching the Anthropic face (Anthropic in, canonical OpenAI inside the gateway, Anthropic out).
The providers `claude` (kind anthropic) and `gem` (kind gemini) are configured in conftest.py.
"""

from __future__ import annotations

import json
import uuid

import anthropic
import pytest

from conftest import AGENT_KEYS, CLIENT_TIMEOUT_S

TARGETS = {
    # model the agent asks for -> (path the mock must see, model the mock answers as)
    "claude/claude-sonnet-4": ("/v1/messages", "claude-sonnet-4"),
    "gem/gemini-2.5-flash": ("/v1beta/models/gemini-2.5-flash:", "gemini-2.5-flash"),
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def marker(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def mock_reply(model: str, user_text: str) -> str:
    return f"Hello from mock-upstream ({model}). You said: {user_text}"


def seen_by_mock(mock_upstream, needle: str) -> dict:
    found = [r for r in mock_upstream.requests() if needle in (r.get("body") or "")]
    assert found, f"the mock never saw {needle}"
    return found[-1]


@pytest.mark.parametrize("model", sorted(TARGETS))
def test_openai_sdk_reaches_the_face_and_gets_an_openai_answer(client, mock_upstream, model):
    path, served = TARGETS[model]
    text = marker("face-plain")
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        max_tokens=200,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}],
    )
    completion = raw.parse()
    assert raw.headers["palisade-provider"] == model
    # The `upper` plugin ran on the canonical answer the dialect decoded.
    assert completion.choices[0].message.content == mock_reply(served, text).upper()
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    request = seen_by_mock(mock_upstream, text)
    assert request["path"].startswith(path), request["path"]
    body = json.loads(request["body"])
    if model.startswith("claude/"):
        assert body["system"] == "You are terse." or body["system"][0]["text"] == "You are terse."
        assert body["max_tokens"] == 200
    else:
        assert body["systemInstruction"]["parts"][0]["text"] == "You are terse."
        assert body["generationConfig"]["maxOutputTokens"] == 200


@pytest.mark.parametrize("model", sorted(TARGETS))
def test_openai_sdk_stream_through_the_face(client, model):
    _, served = TARGETS[model]
    text = marker("face-stream")
    stream = client.chat.completions.create(
        model=model,
        max_tokens=200,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": text}],
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    reply = mock_reply(served, text)
    # on-text ran per delta; the fixture appends a length trailer at the end.
    assert "".join(pieces) == reply.upper() + f" [{len(reply)} chars]"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("model", sorted(TARGETS))
def test_openai_sdk_tool_call_through_the_face(client, mock_upstream, model):
    text = marker("face-tool") + " please use get_weather"
    completion = client.chat.completions.create(
        model=model,
        max_tokens=200,
        tools=[WEATHER],
        messages=[{"role": "user", "content": text}],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock"}
    assert call.id
    # The tool result goes back through the same translation, keeping the call id.
    follow = client.chat.completions.create(
        model=model,
        max_tokens=200,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": text},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18C"},
        ],
    )
    assert follow.choices[0].finish_reason == "stop"
    body = json.loads(
        [r for r in mock_upstream.requests() if "18C" in (r.get("body") or "") and text in r["body"]][-1]["body"]
    )
    flat = json.dumps(body)
    assert "18C" in flat and "get_weather" in flat
    if model.startswith("claude/"):
        results = [
            b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result"
        ]
        assert results and results[0]["tool_use_id"] == call.id


@pytest.fixture(scope="module")
def claude(gateway):
    c = anthropic.Anthropic(
        api_key=AGENT_KEYS["support-bot"],
        base_url=gateway.url,
        max_retries=0,
        timeout=CLIENT_TIMEOUT_S,
    )
    yield c
    c.close()


def test_anthropic_sdk_through_palisade_to_the_anthropic_face(claude, mock_upstream):
    text = marker("anth-to-anth")
    raw = claude.messages.with_raw_response.create(
        model="claude/claude-sonnet-4",
        max_tokens=200,
        messages=[{"role": "user", "content": text}],
    )
    msg = raw.parse()
    assert raw.headers["palisade-provider"] == "claude/claude-sonnet-4"
    assert msg.content[0].text == mock_reply("claude-sonnet-4", text).upper()
    assert msg.stop_reason == "end_turn"
    assert seen_by_mock(mock_upstream, text)["path"] == "/v1/messages"
    with claude.messages.stream(
        model="claude/claude-sonnet-4", max_tokens=200, messages=[{"role": "user", "content": text + "-s"}]
    ) as stream:
        final = stream.get_final_message()
    reply = mock_reply("claude-sonnet-4", text + "-s")
    assert final.content[0].text == reply.upper() + f" [{len(reply)} chars]"
