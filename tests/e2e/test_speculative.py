"""DRAFT models through a real server: create (Modelfile and /api/create), show, copy, delete, push and
pull carry the draft layer; greedy answers with SmolLM2 as its own draft equal the answers without it,
for generate and chat, streamed and not, in parallel; the debug log reports every guess accepted."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server
from tests.e2e.test_registry import transfer_cli
from tests.fixtures.faults import file_sha256
from tests.fixtures.registries import DockerRegistry
from tests.fixtures.tiny_gguf import write_tiny_llama

MODEL = "smollm2:135m"
DRAFTED = "smol-draft"
DRAFT_MEDIA = "application/vnd.ollama.image.draft"
PROMPTS = ["Why is the sky blue?", "Write a short poem about the sea.", "Count from one to twenty."]
ACCEPTANCE = re.compile(r"smol-draft:latest: draft acceptance (\d+)/(\d+) \(([\d.]+)%\)")


def _manifest(server: Server, name: str) -> dict[str, Any]:
    model, _, tag = name.partition(":")
    path = server.models / "manifests" / "registry.ollama.ai" / "library" / model / (tag or "latest")
    return json.loads(path.read_bytes())


def _draft_digest(server: Server, name: str) -> str:
    [layer] = [layer for layer in _manifest(server, name)["layers"] if layer["mediaType"] == DRAFT_MEDIA]
    return str(layer["digest"])


@pytest.fixture(scope="module")
def drafted(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Server:
    """smollm2:135m, and smol-draft: the same model with its own GGUF as the DRAFT (a local path)."""
    server = Server(tmp_path_factory.mktemp("speculative"), OLLAMA_DEBUG="1", OLLAMA_NUM_PARALLEL="2",
                    OLLAMA_KEEP_ALIVE="10m").start()
    server.import_smollm2(smollm2_gguf)
    modelfile = server.home / "draft.Modelfile"
    modelfile.write_text(f"FROM {MODEL}\nDRAFT {smollm2_gguf}\n")
    server.cli("create", DRAFTED, "-f", str(modelfile))
    yield server
    server.stop()


def test_create_with_draft_stores_the_layer_and_show_prints_it(drafted: Server, smollm2_gguf: Path) -> None:
    digest = file_sha256(smollm2_gguf)
    assert _draft_digest(drafted, DRAFTED) == digest  # the GGUF's own blob, shared with the model layer
    layers = _manifest(drafted, DRAFTED)["layers"]
    assert [layer["mediaType"].rsplit(".", 1)[-1] for layer in layers] == ["model", "draft", "template", "system", "params"]
    config_digest = _manifest(drafted, DRAFTED)["config"]["digest"]
    config = json.loads((drafted.models / "blobs" / config_digest.replace(":", "-")).read_bytes())
    assert config["draft"] == {"model_format": "gguf", "architecture": "llama"}
    blob = drafted.models / "blobs" / digest.replace(":", "-")
    with drafted.http() as http:
        modelfile = http.post("/api/show", json={"model": DRAFTED}).json()["modelfile"]
    assert f"\nFROM {blob}\nDRAFT {blob}\nTEMPLATE " in modelfile
    assert f"DRAFT {blob}\n" in drafted.cli("show", DRAFTED, "--modelfile").stdout
    with drafted.http() as http:
        plain = http.post("/api/show", json={"model": MODEL}).json()["modelfile"]
    assert "DRAFT" not in plain


def test_draft_naming_a_model_and_draft_files_over_http(drafted: Server) -> None:
    digest = _draft_digest(drafted, DRAFTED)
    modelfile = drafted.home / "named.Modelfile"
    modelfile.write_text(f"FROM {MODEL}\nDRAFT {MODEL}\n")
    drafted.cli("create", "named-draft", "-f", str(modelfile))
    assert _draft_digest(drafted, "named-draft") == digest
    with drafted.http() as http:
        r = http.post("/api/create", json={"model": "api-draft", "from": MODEL, "stream": False,
                                           "draft_files": {"small.gguf": digest}})
        assert r.status_code == 200 and r.json() == {"status": "success"}
        assert f"DRAFT {drafted.models / 'blobs' / digest.replace(':', '-')}\n" in http.post(
            "/api/show", json={"model": "api-draft"}).json()["modelfile"]
        r = http.post("/api/create", json={"model": "both", "from": MODEL, "draft": MODEL,
                                           "draft_files": {"small.gguf": digest}})
        assert r.status_code == 400 and "either 'draft' or 'draft_files'" in r.json()["error"]
        r = http.post("/api/create", json={"model": "missing", "from": MODEL,
                                           "draft_files": {"small.gguf": "sha256:" + "0" * 64}})
        assert r.status_code == 400 and "upload it first" in r.json()["error"]
        r = http.post("/api/create", json={"model": "traversal", "from": MODEL,
                                           "draft_files": {"../small.gguf": digest}})
        assert r.status_code == 400 and "invalid file path in 'draft_files'" in r.json()["error"]
        # FROM a model with a draft keeps it; copy carries it; deleting one copy keeps the shared blob.
        r = http.post("/api/create", json={"model": "child", "from": "api-draft", "system": "Be brief."})
        assert r.status_code == 200
        assert http.post("/api/copy", json={"source": "child", "destination": "child-copy"}).status_code == 200
        for name in ("child", "child-copy"):
            assert _draft_digest(drafted, name) == digest
        for name in ("api-draft", "child", "child-copy", "named-draft"):
            assert http.request("DELETE", "/api/delete", json={"model": name}).status_code == 200
    assert (drafted.models / "blobs" / digest.replace(":", "-")).is_file()
    missing = drafted.home / "missing.Modelfile"
    missing.write_text(f"FROM {MODEL}\nDRAFT ./nowhere.gguf\n")
    proc = drafted.cli("create", "nowhere", "-f", str(missing), check=False)
    assert proc.returncode != 0 and "draft './nowhere.gguf' not found" in proc.stderr


def _answer(server: Server, model: str, api: str, prompt: str, options: dict[str, Any], stream: bool
            ) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"model": model, "stream": stream, "options": options}
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    with server.http() as http:
        lines = http.post(f"/api/{api}", json=body).raise_for_status().text.splitlines()
    parts = [json.loads(line) for line in lines if line.strip()]
    text = "".join(p["message"]["content"] if api == "chat" else p["response"] for p in parts)
    return text, parts[-1]


def test_greedy_answers_with_the_model_as_its_own_draft_are_unchanged(drafted: Server) -> None:
    cases = [(api, prompt, stream, options) for api in ("generate", "chat") for stream in (False, True)
             for prompt, options in zip(PROMPTS, [{"temperature": 0, "num_predict": 60, "stop": ["blue"]},
                                                  {"temperature": 0, "num_predict": 5},
                                                  {"temperature": 0, "num_predict": 40}],
                                        strict=True)]
    # All answers of one model first: the same weights with other load options replace the runner.
    wanted = [_answer(drafted, MODEL, api, prompt, options, stream) for api, prompt, stream, options in cases]
    assert {final["done_reason"] for _text, final in wanted} == {"stop", "length"}  # "blue" is hit
    before = len(ACCEPTANCE.findall(drafted.log()))
    for (api, prompt, stream, options), (want, want_final) in zip(cases, wanted, strict=True):
        got, final = _answer(drafted, DRAFTED, api, prompt, options, stream)
        assert got == want, (api, prompt, stream)
        assert (final["eval_count"], final["done_reason"]) == (want_final["eval_count"], want_final["done_reason"])
        assert set(final) == set(want_final)  # the response shape does not change
    logged = ACCEPTANCE.findall(drafted.log())[before:]
    assert len(logged) == len(cases)
    assert all(accepted == drafted_n and float(rate) == 100.0 for accepted, drafted_n, rate in logged
               if int(drafted_n) > 0)
    assert sum(int(n) for _a, n, _r in logged) > 0


def test_two_parallel_streams_with_a_draft_match_answers_without(drafted: Server) -> None:
    options = {"temperature": 0, "num_predict": 40}
    want = [_answer(drafted, MODEL, "generate", p, options, True)[0] for p in PROMPTS[:2]]
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        got[i] = _answer(drafted, DRAFTED, "generate", PROMPTS[i], options, True)[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[0], got[1]] == want


def test_a_draft_with_another_vocabulary_fails_clearly(drafted: Server, gemma3_gguf: Path) -> None:
    modelfile = drafted.home / "gemma-draft.Modelfile"
    modelfile.write_text(f"FROM {MODEL}\nDRAFT {gemma3_gguf}\n")
    drafted.cli("create", "smol-gemma-draft", "-f", str(modelfile))
    with drafted.http() as http:
        r = http.post("/api/generate", json={"model": "smol-gemma-draft", "prompt": "hi", "stream": False,
                                             "options": {"num_predict": 2}})
        assert r.status_code == 500
        assert re.search(r"draft model .* cannot be used with this model: its vocabulary does not match",
                         r.json()["error"]), r.text
        # draft_num_predict 0 turns drafting off: the draft is not loaded, the model answers.
        r = http.post("/api/generate", json={"model": "smol-gemma-draft", "prompt": "hi", "stream": False,
                                             "options": {"num_predict": 2, "draft_num_predict": 0}})
        assert r.status_code == 200 and r.json()["done"]
        assert http.request("DELETE", "/api/delete", json={"model": "smol-gemma-draft"}).status_code == 200


@pytest.mark.skipif(not DockerRegistry.available(), reason="docker-registry is not installed (scripts/test-deps.sh)")
def test_push_and_pull_carry_the_draft(make_server: Any, tmp_path: Path) -> None:
    registry = DockerRegistry(tmp_path / "registry").start()
    try:
        source, target = make_server(), make_server()
        base, draft = write_tiny_llama(tmp_path / "base.gguf"), write_tiny_llama(tmp_path / "draft.gguf", n_embd=32)
        name = f"localhost:{registry.port}/library/tiny-draft:latest"
        modelfile = tmp_path / "Modelfile"
        modelfile.write_text(f"FROM {base}\nDRAFT {draft}\n")
        source.cli("create", name, "-f", str(modelfile))
        transfer_cli(source, "push", name)
        transfer_cli(target, "pull", name)
        path = Path("manifests", f"localhost:{registry.port}", "library", "tiny-draft", "latest")
        manifest = (source.models / path).read_bytes()
        assert (target.models / path).read_bytes() == manifest
        [layer] = [la for la in json.loads(manifest)["layers"] if la["mediaType"] == DRAFT_MEDIA]
        assert layer["digest"] == file_sha256(draft)
        assert file_sha256(target.models / "blobs" / layer["digest"].replace(":", "-")) == layer["digest"]
    finally:
        registry.stop()
