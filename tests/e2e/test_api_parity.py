"""API parity with upstream Ollama (issue 14): what clients read from show, tags and version; message roles
in any case; ``raw`` with a template; the cloud and account routes; ``ollama create`` carrying every
Modelfile command; ``ollama run`` on an embedding model.

Driven by the official ``ollama`` client (and the ``openai`` SDK for /v1) against a real server and
the bundled SmolLM2-135M.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import ollama
import openai
import pytest

from appliance import OLLAMA_COMPAT_VERSION
from appliance.cli.embedding import format_vector, go_float32
from appliance.server.cloud import is_cloud_model
from tests.conftest import Server

MODEL = "smollm2:135m"
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 12}
CLOUD_PREFIX = "ollama cloud is disabled: "
CLOUD_REASON = "no ollama.com account features"


@pytest.fixture(scope="module")
def client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=300)


@pytest.fixture(scope="module")
def http(server: Server):
    with server.http() as session:
        yield session


def create(server: Server, name: str, modelfile: str) -> None:
    path = server.home / f"{name.replace(':', '-')}.Modelfile"
    path.write_text(modelfile, encoding="utf-8")
    server.cli("create", name, "-f", str(path))


# -- /api/show, /api/tags, /api/version ----------------------------------------------------------


def test_show_always_answers_a_template(server, client, smollm2_gguf):
    create(server, "parity-bare", f"FROM {smollm2_gguf}\n")
    try:
        bare = client.show("parity-bare")
        assert bare.template == "{{ .Prompt }}"  # upstream's default, for a model without TEMPLATE
        assert bare["template"] == "{{ .Prompt }}"
        # The Modelfile still has no TEMPLATE line: built again, it keeps using the GGUF's own template.
        assert "\nTEMPLATE" not in bare.modelfile
    finally:
        client.delete("parity-bare")
    bundled = client.show(MODEL)
    assert "<|im_start|>" in bundled.template and ".Tools" in bundled.template


def test_show_has_upstreams_fields(client, http):
    shown = client.show(MODEL)
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modified_at is not None and shown.modified_at.year >= 2024
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 8192 and shown.modelinfo["llama.embedding_length"] == 576
    assert shown.details.family == "llama" and shown.details.quantization_level == "Q4_1"
    plain = http.post("/api/show", json={"model": MODEL}).json()
    assert "tensors" not in plain and "projector_info" not in plain
    assert not {"remote_host", "remote_model"} & set(plain)  # upstream sends those for cloud models only
    verbose = http.post("/api/show", json={"model": MODEL, "verbose": True}).json()
    tensors = {t["name"]: t for t in verbose["tensors"]}
    assert tensors["token_embd.weight"]["shape"] == [576, 49152]
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 49152


def test_show_takes_a_system_to_show_instead(http):
    shown = http.post("/api/show", json={"model": MODEL, "system": "You are a pirate."}).json()
    assert shown["system"] == "You are a pirate."
    assert "\nSYSTEM You are a pirate.\n" in shown["modelfile"]
    bad = http.post("/api/show", json={"model": MODEL, "system": 7})
    assert bad.status_code == 400 and bad.json() == {"error": "system must be a string"}


def test_tags_list_capabilities_and_lengths(client, http):
    entry = next(m for m in http.get("/api/tags").json()["models"] if m["name"] == MODEL)
    assert entry["capabilities"] == client.show(MODEL).capabilities == ["completion", "tools"]
    assert entry["details"]["context_length"] == 8192
    assert entry["details"]["embedding_length"] == 576
    listed = next(m for m in client.list().models if m.model == MODEL)
    assert listed.details is not None and listed.details.family == "llama"


def test_version_is_the_upstream_api_this_server_implements(server, http):
    answer = http.get("/api/version").json()
    assert answer["version"] == OLLAMA_COMPAT_VERSION == "0.14.2"
    assert server.cli("-v").stdout.splitlines()[0] == "ollama version is 0.14.2"


# -- /api/chat roles, /api/generate raw ----------------------------------------------------------


def test_roles_are_read_in_any_case(client):
    question = "What is the capital of France?"
    lower = client.chat(model=MODEL, options=GREEDY, messages=[
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}])
    mixed = client.chat(model=MODEL, options=GREEDY, messages=[
        {"role": "System", "content": "Answer briefly."}, {"role": "USER", "content": question}])
    assert mixed.message.content == lower.message.content and lower.message.content.strip()
    without_system = client.chat(model=MODEL, options=GREEDY, messages=[{"role": "user", "content": question}])
    assert without_system.message.content != lower.message.content  # so the system message was read
    history = client.chat(model=MODEL, options=GREEDY, messages=[
        {"role": "User", "content": "hi"}, {"role": "ASSISTANT", "content": "Hello!"},
        {"role": "user", "content": question}])
    assert history.message.role == "assistant" and history.done
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])
    assert err.value.status_code == 400 and "invalid role 'wizard'" in err.value.error


def test_openai_roles_are_read_in_any_case(server):
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="ollama", max_retries=0, timeout=120)
    answers = [sdk.chat.completions.create(model=MODEL, temperature=0, seed=1, max_tokens=12, messages=[
        {"role": role, "content": "What is the capital of France?"}]).choices[0].message.content
        for role in ("user", "User")]
    assert answers[0] == answers[1] and "Paris" in answers[0]


@pytest.mark.parametrize("extra", [{"template": "{{ .Prompt }}"}, {"system": "Be brief."}, {"context": [1, 2]}])
def test_raw_with_template_system_or_context_is_refused_as_upstream(client, extra):
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=MODEL, prompt="1, 2, 3,", raw=True, **extra)
    assert err.value.status_code == 400
    assert err.value.error == "raw mode does not support template, system, or context"


def test_raw_alone_still_answers(client):
    answer = client.generate(model=MODEL, prompt="1, 2, 3, 4,", raw=True, options=GREEDY)
    assert answer.done and answer.response.strip() and answer.context is None


# -- cloud and account routes --------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/me"), ("POST", "/api/signout"), ("DELETE", "/api/user/keys/c3NoLWVkMjU1MTk"),
    ("POST", "/api/experimental/web_search"), ("POST", "/api/experimental/web_fetch"),
])
def test_account_and_web_routes_answer_403_not_404(http, method, path):
    response = http.request(method, path, json={"query": "ollama", "url": "https://ollama.com"})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error.startswith(CLOUD_PREFIX) and CLOUD_REASON in error


def test_status_says_the_cloud_is_disabled(http):
    assert http.get("/api/status").json() == {"cloud": {"disabled": True, "source": "config"}}


def test_cloud_models_answer_403(client, server):
    calls = {
        "chat": lambda: client.chat(model="gpt-oss:120b-cloud", messages=[{"role": "user", "content": "hi"}]),
        "generate": lambda: client.generate(model="qwen3-coder:480b:cloud", prompt="hi"),
        "embed": lambda: client.embed(model="embeddinggemma:cloud", input="hi"),
        "show": lambda: client.show("gpt-oss:20b-cloud"),
        "pull": lambda: client.pull("gpt-oss:20b-cloud"),
    }
    for what, call in calls.items():
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 403, what
        assert err.value.error.startswith(CLOUD_PREFIX) and CLOUD_REASON in err.value.error, what
    assert "remote model details are unavailable" in _error_of(lambda: client.show("gpt-oss:20b-cloud"))
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="ollama", max_retries=0, timeout=60)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk.chat.completions.create(model="gpt-oss:120b-cloud", messages=[{"role": "user", "content": "hi"}])
    assert CLOUD_PREFIX in str(denied.value)
    with pytest.raises(openai.PermissionDeniedError):
        sdk.models.retrieve("gpt-oss:120b-cloud")
    with pytest.raises(ollama.ResponseError) as missing:  # a local name that is not there stays a 404
        client.show("no-such-model:latest")
    assert missing.value.status_code == 404


def _error_of(call) -> str:
    try:
        call()
    except ollama.ResponseError as exc:
        return str(exc.error)
    raise AssertionError("no error")


def test_which_names_are_cloud_models():
    cloud = ["gpt-oss:cloud", "gpt-oss:120b-cloud", "GPT-OSS:120B-CLOUD", "qwen3-coder:480b:cloud",
             "ollama.com/library/gpt-oss:cloud"]
    local = ["smollm2:135m", "cloud", "cloud:latest", "mycloud", "registry.local:5000/cloud",
             "host:5000/x-cloud", "cloud-model:7b"]
    assert [n for n in cloud if not is_cloud_model(n)] == []
    assert [n for n in local if is_cloud_model(n)] == []


# -- ollama create: every command reaches the server and comes back ------------------------------


def test_create_carries_every_command_and_show_round_trips(server, http, smollm2_gguf):
    create(server, "parity-full", "\n".join([
        f"FROM {smollm2_gguf}",
        'TEMPLATE """{{ if .System }}<s>{{ .System }}</s>{{ end }}{{ .Prompt }}"""',
        "SYSTEM You are terse.",
        "RENDERER qwen3-coder",
        "PARSER qwen3-coder",
        "REQUIRES 0.14.0",
        "PARAMETER temperature 0.5",
        'PARAMETER stop "<|im_end|>"',
        "LICENSE MIT",
        "MESSAGE user hi",
        "MESSAGE assistant Hello!",
    ]) + "\n")
    try:
        shown = http.post("/api/show", json={"model": "parity-full"}).json()
        assert (shown["renderer"], shown["parser"], shown["requires"]) == ("qwen3-coder", "qwen3-coder", "0.14.0")
        assert shown["system"] == "You are terse." and shown["license"] == "MIT"
        assert shown["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
        text = server.cli("show", "parity-full", "--modelfile").stdout
        for line in ("RENDERER qwen3-coder", "PARSER qwen3-coder", "REQUIRES 0.14.0", "SYSTEM You are terse.",
                     "LICENSE MIT", "MESSAGE user hi", "MESSAGE assistant Hello!", "PARAMETER temperature 0.5"):
            assert f"\n{line}\n" in text, line
        create(server, "parity-again", text)
        again = http.post("/api/show", json={"model": "parity-again"}).json()
        same = ("template", "system", "renderer", "parser", "requires", "license", "messages", "parameters",
                "capabilities", "details")
        assert {k: again.get(k) for k in same} == {k: shown.get(k) for k in same}
        assert again["modelfile"].replace("parity-again", "parity-full") == shown["modelfile"]
    finally:
        for name in ("parity-full", "parity-again"):
            http.request("DELETE", "/api/delete", json={"model": name})


# -- ollama run on an embedding model ------------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_model(server: Server, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2 with ``llama.pooling_type`` (mean) in its header: a model that reports "embedding"."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    path = tmp_path_factory.mktemp("embedder") / "smollm2-embed.gguf"
    reader = gguf.GGUFReader(str(smollm2_gguf))
    writer = gguf.GGUFWriter(str(path), "llama", endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, {
        "llama.pooling_type": MetadataDetails(gguf.GGUFValueType.UINT32, int(gguf.PoolingType.MEAN))}, [])
    create(server, "parity-embed", f"FROM {path}\nPARAMETER num_ctx 64\n")
    yield "parity-embed"
    with server.http() as session:
        session.request("DELETE", "/api/delete", json={"model": "parity-embed"})


def test_run_prints_the_vector_of_an_embedding_model(server, client, embedding_model):
    assert client.show(embedding_model).capabilities == ["embedding"]
    out = server.cli("run", embedding_model, "hello world").stdout
    assert out.count("\n") == 1 and " " not in out.strip()  # one line, as Go's json.Marshal writes it
    vector = json.loads(out)
    assert len(vector) == 576 and math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-4)
    assert_printed_as(out, client.embed(model=embedding_model, input="hello world").embeddings[0])

    short = server.cli("run", embedding_model, "hello world", "--dimensions", "8").stdout
    assert_printed_as(short, client.embed(model=embedding_model, input="hello world", dimensions=8).embeddings[0])
    piped = server.cli("run", embedding_model, "--dimensions=4", input="hello world").stdout
    assert len(json.loads(piped)) == 4


def assert_printed_as(out: str, expected: list[float]) -> None:
    """``out`` is ``expected``, each number the shortest text of its float32 (as Go prints a []float32)."""
    numbers = out.strip().removeprefix("[").removesuffix("]").split(",")
    assert len(numbers) == len(expected)
    assert [n for n in numbers if go_float32(float(n)) != n] == []
    assert all(math.isclose(float(n), e, rel_tol=1e-5, abs_tol=1e-7) for n, e in zip(numbers, expected, strict=True))


def test_run_embedding_truncate_flag(server, embedding_model):
    long_text = "hello " * 1000  # past the model's context (num_ctx 64, which llama.cpp rounds up to 256)
    assert len(json.loads(server.cli("run", embedding_model, input=long_text).stdout)) == 576
    assert len(json.loads(server.cli("run", embedding_model, "--truncate", input=long_text).stdout)) == 576
    refused = server.cli("run", embedding_model, "--truncate=false", input=long_text, check=False)
    assert refused.returncode == 1 and "exceeds the context length" in refused.stderr
    empty = server.cli("run", embedding_model, input="", check=False)
    assert empty.returncode == 1 and "embedding models require input text" in empty.stderr


def test_vectors_print_as_go_prints_float32():
    assert [go_float32(x) for x in (0.0, -0.0, 1.0, 0.1, -0.25, 1e-5, 1.5e-7, 3.4e-12, 123456.7)] == [
        "0", "-0", "1", "0.1", "-0.25", "0.00001", "1.5e-7", "3.4e-12", "123456.7"]
    third = struct.unpack("<f", struct.pack("<f", 1 / 3))[0]
    assert go_float32(third) == "0.33333334" and float(go_float32(third)) != third  # float32's shortest
    assert format_vector([0.5, -0.125]) == "[0.5,-0.125]"
    with pytest.raises(ValueError):
        go_float32(math.nan)

