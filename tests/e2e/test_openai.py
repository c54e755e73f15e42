"""The OpenAI-compatible API, driven by the official ``openai`` SDK against a real server and model."""

from __future__ import annotations

import base64
import json
import math
import struct

import jsonschema
import openai
import pytest

MODEL = "smollm2:135m"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the local time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="ollama", max_retries=0, timeout=120)


# -- chat completions ---------------------------------------------------------------------------


def test_chat_answers_with_usage_and_ids(client):
    resp = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop" and resp.choices[0].message.role == "assistant"
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-") and resp.model == MODEL
    assert resp.system_fingerprint == "fp_ollama" and resp.created > 1_600_000_000
    usage = resp.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_streaming_with_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in body) and len({c.id for c in chunks}) == 1


def test_chat_streaming_without_usage_has_none(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=5,
                                                 stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason == "length"


def test_max_completion_tokens_stop_and_seed(client):
    resp = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_completion_tokens=3)
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 3
    resp = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20,
                                          stop=["Paris"])
    text = resp.choices[0].message.content
    assert "Paris" not in text and text.startswith("The capital of France") and resp.choices[0].finish_reason == "stop"
    resp = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20, stop="France")
    assert resp.choices[0].message.content.strip() == "The capital of"
    story = [{"role": "user", "content": "Tell me a story about a cat."}]
    runs = {client.chat.completions.create(model=MODEL, messages=story, temperature=0.9, seed=42, max_tokens=16,
                                           top_p=0.9).choices[0].message.content for _ in range(2)}
    assert len(runs) == 1


def test_frequency_and_presence_penalties(client):
    resp = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20,
                                          frequency_penalty=0.5, presence_penalty=0.5)
    assert "Paris" in resp.choices[0].message.content


def test_content_parts_and_developer_role(client):
    messages = [{"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
                {"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                             {"type": "text", "text": "of France?"}]}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=20)
    assert "Paris" in resp.choices[0].message.content


def test_tool_choice_required_then_tool_result_round_trip(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME],
                                          tool_choice="required", temperature=0, max_tokens=60)
    choice = resp.choices[0]
    [call] = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls" and call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees Celsius"}]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME],
                                           temperature=0, max_tokens=40)
    assert "21" in final.choices[0].message.content and not final.choices[0].message.tool_calls


def test_named_tool_choice_streams_tool_call_deltas(client):
    with client.chat.completions.stream(
            model=MODEL, messages=[{"role": "user", "content": "What time is it in Tokyo?"}], tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=0,
            max_tokens=60) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "get_time" and set(json.loads(call.function.arguments)) == {"timezone"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_drops_tools(client):
    resp = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="none",
                                          temperature=0, max_tokens=20)
    assert "Paris" in resp.choices[0].message.content and not resp.choices[0].message.tool_calls


def test_response_format_json_schema_and_json_object(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a fictional person as JSON."}], temperature=0,
        max_tokens=80, response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    jsonschema.validate(json.loads(resp.choices[0].message.content), schema)
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": 'Reply with the JSON object {"ok": true}.'}], temperature=0,
        max_tokens=300, response_format={"type": "json_object"})
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


# -- completions, embeddings, models ------------------------------------------------------------


def test_completions_plain_and_streaming(client):
    resp = client.completions.create(model=MODEL, prompt="What is the capital of France?", temperature=0,
                                     max_tokens=20)
    assert "Paris" in resp.choices[0].text and resp.object == "text_completion" and resp.id.startswith("cmpl-")
    assert resp.choices[0].finish_reason == "stop" and resp.usage.completion_tokens > 0
    chunks = list(client.completions.create(model=MODEL, prompt="What is the capital of France?", temperature=0,
                                            max_tokens=20, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == resp.choices[0].text
    assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens
    short = client.completions.create(model=MODEL, prompt="Count to fifty:", temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3


def test_completions_echo_is_refused(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="Hi", echo=True, max_tokens=2)
    assert info.value.status_code == 400 and info.value.param == "echo" and "echo" in info.value.message


def test_embeddings_float_base64_and_dimensions(client):
    floats = client.embeddings.create(model=MODEL, input=["hello world", "goodbye"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 576
    assert floats.object == "list" and floats.model == MODEL and floats.usage.prompt_tokens > 0
    vec = floats.data[0].embedding
    assert math.isclose(math.sqrt(sum(x * x for x in vec)), 1.0, rel_tol=1e-5)
    b64 = client.embeddings.create(model=MODEL, input="hello world", encoding_format="base64").data[0].embedding
    raw = base64.b64decode(b64)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == 576 and all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(decoded, vec, strict=True))
    short = client.embeddings.create(model=MODEL, input="hello world", dimensions=8, encoding_format="float")
    assert len(short.data[0].embedding) == 8
    assert math.isclose(math.sqrt(sum(x * x for x in short.data[0].embedding)), 1.0, rel_tol=1e-5)


def test_embeddings_refuse_token_ids(server):
    r = server.http().post("/v1/embeddings", json={"model": MODEL, "input": [[1, 2, 3]]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input" and "token ids" in r.json()["error"]["message"]


def test_models_list_and_retrieve(client):
    models = {m.id: m for m in client.models.list()}
    entry = models[MODEL]
    assert entry.object == "model" and entry.owned_by == "library" and entry.created > 1_600_000_000
    one = client.models.retrieve(MODEL)
    assert one.id == MODEL and one.created == entry.created and one.owned_by == "library"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.body["type"] == "not_found_error" and info.value.code == "model_not_found"


# -- responses ----------------------------------------------------------------------------------


def test_responses_plain(client):
    resp = client.responses.create(model=MODEL, input="What is the capital of France?", temperature=0,
                                   max_output_tokens=20)
    assert "Paris" in resp.output_text and resp.status == "completed" and resp.id.startswith("resp_")
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0 and resp.model == MODEL
    cut = client.responses.create(model=MODEL, input=[{"role": "user", "content": "Count to fifty."}],
                                  instructions="You count.", temperature=0, max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


def test_responses_streaming_event_sequence(client):
    events = list(client.responses.create(model=MODEL, input="What is the capital of France?", temperature=0,
                                          max_output_tokens=20, stream=True))
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 2 and kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * deltas, "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "Paris" in text and events[-1].response.output_text == text
    with client.responses.stream(model=MODEL, input="What is the capital of France?", temperature=0,
                                 max_output_tokens=20) as stream:
        assert stream.get_final_response().output_text == text


def test_responses_function_tool_round_trip(client):
    tool = {"type": "function", **WEATHER["function"]}
    question = {"role": "user", "content": "What is the weather in Paris?"}
    resp = client.responses.create(model=MODEL, input=[question], tools=[tool], tool_choice="required",
                                   temperature=0, max_output_tokens=60)
    [call] = resp.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris"}
    follow = client.responses.create(
        model=MODEL, tools=[tool], temperature=0, max_output_tokens=40,
        input=[question, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 degrees Celsius"}])
    assert "21" in follow.output_text


# -- errors -------------------------------------------------------------------------------------


def test_unknown_model_is_a_404_in_openai_shape(client, server):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert info.value.status_code == 404 and info.value.code == "model_not_found"
    assert info.value.type == "not_found_error" and "no-such-model" in info.value.message
    for path, body in [("/v1/completions", {"prompt": "hi"}), ("/v1/embeddings", {"input": "hi"}),
                       ("/v1/responses", {"input": "hi"}),
                       ("/v1/chat/completions", {"messages": QUESTION, "stream": True})]:
        r = server.http().post(path, json={"model": "no-such-model", **body})
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error", (path, r.text)


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": QUESTION, "temperature": "hot"}, "temperature"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": QUESTION, "max_tokens": "ten"}, "max_tokens"),
    ({"messages": QUESTION, "stop": 5}, "stop"),
    ({"messages": QUESTION, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": QUESTION, "n": 2}, "n"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": QUESTION, "tool_choice": "required"}, "tool_choice"),
    ({"messages": QUESTION, "response_format": {"type": "xml"}}, "response_format.type"),
])
def test_invalid_parameters_are_400_naming_the_param(client, body, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, **body)
    assert info.value.status_code == 400 and info.value.param == param, info.value.body
    assert info.value.type == "invalid_request_error"


def test_images_bad_json_and_native_routes_keep_their_shape(server):
    pixel = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    image = {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}}]}
    with server.http() as http:
        r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [image]})
        assert r.status_code == 400 and "does not support images" in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", content=b"{bad", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert "invalid JSON" in r.json()["error"]["message"]
        r = http.post("/api/chat", json={"model": "no-such-model", "messages": QUESTION})
        assert r.status_code == 404 and r.json() == {"error": "model 'no-such-model' not found"}
