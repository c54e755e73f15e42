"""The Anthropic-compatible API, driven by the official ``anthropic`` SDK against a real server and model.

Recent SDKs no longer take ``temperature`` as an argument; it still goes on the wire via ``extra_body``.
"""

from __future__ import annotations

import json

import anthropic
import pytest

MODEL = "smollm2:135m"
GREEDY = {"temperature": 0}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {"name": "get_weather", "description": "Get the current weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "description": "Get the local time in a timezone",
        "input_schema": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="ollama", max_retries=0, timeout=120)


def _sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_message_answers(client):
    msg = client.messages.create(model=MODEL, max_tokens=20, messages=QUESTION, extra_body=GREEDY,
                                 metadata={"user_id": "someone"})
    [block] = msg.content
    assert block.type == "text" and "Paris" in block.text
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None and msg.role == "assistant"
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.model == MODEL
    assert msg.usage.input_tokens > 0 and 0 < msg.usage.output_tokens <= 20


def test_streaming_through_the_sdk(client):
    with client.messages.stream(model=MODEL, max_tokens=20, messages=QUESTION, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Paris" in text and final.content[0].text == text and final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_streaming_event_sequence_on_the_wire(server):
    body = {"model": MODEL, "max_tokens": 20, "stream": True, "messages": QUESTION, **GREEDY}
    r = server.http().post("/v1/messages", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r.text)
    kinds = [kind for kind, _ in events]
    deltas = kinds.count("content_block_delta")
    assert deltas > 2 and kinds == ["message_start", "content_block_start", "ping",
                                    *["content_block_delta"] * deltas, "content_block_stop", "message_delta",
                                    "message_stop"]
    assert all(data["type"] == kind for kind, data in events)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["role"] == "assistant"
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    text = "".join(d["delta"]["text"] for k, d in events if k == "content_block_delta")
    assert "Paris" in text and all(d["delta"]["type"] == "text_delta" for k, d in events if k == "content_block_delta")
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] > 0


def test_stop_sequences_and_max_tokens(client):
    msg = client.messages.create(model=MODEL, max_tokens=20, messages=QUESTION, stop_sequences=["Paris"],
                                 extra_body=GREEDY)
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "Paris"
    assert msg.content[0].text.startswith("The capital of France") and "Paris" not in msg.content[0].text
    assert msg.usage.output_tokens > 0 and msg.usage.input_tokens > 0
    with client.messages.stream(model=MODEL, max_tokens=20, messages=QUESTION, stop_sequences=["France", "Paris"],
                                extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "France"
    assert final.content[0].text.strip() == "The capital of"
    msg = client.messages.create(model=MODEL, max_tokens=3, messages=QUESTION, stop_sequences=["zebra"],
                                 extra_body=GREEDY)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 3


def test_system_blocks(client):
    system = [{"type": "text", "text": "You are a helpful assistant."},
              {"type": "text", "text": "Answer in one short sentence."}]
    msg = client.messages.create(model=MODEL, max_tokens=30, system=system, messages=QUESTION, extra_body=GREEDY)
    assert "Paris" in msg.content[0].text
    first_only = client.messages.count_tokens(model=MODEL, messages=QUESTION, system=system[:1]).input_tokens
    with_system = client.messages.count_tokens(model=MODEL, messages=QUESTION, system=system).input_tokens
    assert with_system > first_only + 5  # the second block counts too


def test_count_tokens_matches_usage(client):
    counted = client.messages.count_tokens(model=MODEL, messages=QUESTION)
    used = client.messages.create(model=MODEL, max_tokens=1, messages=QUESTION, extra_body=GREEDY).usage
    assert counted.input_tokens == used.input_tokens > 0


def test_forced_tool_use_then_tool_result(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    msg = client.messages.create(model=MODEL, max_tokens=60, tools=[WEATHER, TIME], messages=messages,
                                 tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    [use] = msg.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    assert use.id.startswith("toolu_") and msg.stop_reason == "tool_use"
    messages += [{"role": "assistant", "content": msg.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": [{"type": "text", "text": "Sunny, 21 degrees Celsius"}]}]}]
    final = client.messages.create(model=MODEL, max_tokens=40, tools=[WEATHER, TIME], messages=messages,
                                   extra_body=GREEDY)
    assert final.content[0].type == "text" and "21" in final.content[0].text
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_tool_choice_any_streams_input_json(client):
    with client.messages.stream(model=MODEL, max_tokens=60, tools=[WEATHER, TIME], tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
                                extra_body=GREEDY) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds
    [use] = final.content
    assert use.type == "tool_use" and use.name in ("get_weather", "get_time") and use.input
    assert final.stop_reason == "tool_use"


def test_tool_choice_none_answers_in_text(client):
    msg = client.messages.create(model=MODEL, max_tokens=20, tools=[WEATHER], tool_choice={"type": "none"},
                                 messages=QUESTION, extra_body=GREEDY)
    assert [b.type for b in msg.content] == ["text"] and "Paris" in msg.content[0].text


# -- errors -------------------------------------------------------------------------------------


def test_unknown_model_is_a_404_in_anthropic_shape(client):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="no-such-model", max_tokens=5, messages=QUESTION)
    body = info.value.body
    assert info.value.status_code == 404 and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and "no-such-model" in body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=QUESTION)
    with pytest.raises(anthropic.NotFoundError):  # a stream fails before it starts, with the real status
        client.messages.create(model="no-such-model", max_tokens=5, messages=QUESTION, stream=True)


def test_missing_max_tokens_is_a_400(server):
    r = server.http().post("/v1/messages", json={"model": MODEL, "messages": QUESTION})
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]


@pytest.mark.parametrize(("extra", "field"), [
    ({"temperature": "hot"}, "temperature"),
    ({"messages": "hi"}, "messages"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
])
def test_invalid_requests_are_400(server, extra, field):
    body = {"model": MODEL, "max_tokens": 5, "messages": QUESTION, **extra}
    r = server.http().post("/v1/messages", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert r.json()["type"] == "error" and error["type"] == "invalid_request_error" and field in error["message"]


def test_bad_json_and_images(client, server):
    r = server.http().post("/v1/messages", content=b"{bad", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=MODEL, max_tokens=5, messages=[
            {"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}])
    assert "does not support images" in info.value.body["error"]["message"]
