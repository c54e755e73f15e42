"""Models laid out as Ollama's library publishes them, through a real server: translated where a rename
fixes them (and then they generate on llama.cpp), refused with a 400 naming the family where not
(and then no runner is ever started for them)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from tests.conftest import Server
from tests.fixtures.ollama_layouts import with_embedded_tower, write_header_only, write_ollama_gptoss
from tests.fixtures.registries import FakeRegistry

PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"


def _greedy(server: Server, model: str, prompt: str = PROMPT) -> httpx.Response:
    return httpx.post(f"{server.url}/api/generate", timeout=300, json={
        "model": model, "prompt": prompt, "raw": True, "stream": False,
        "options": {"temperature": 0, "num_predict": 12, "seed": 1, "stop": ["<|im_start|>", "<|im_end|>"]}})


def _upload(server: Server, path: Path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    reply = httpx.post(f"{server.url}/api/blobs/{digest}", content=data, timeout=120)
    assert reply.status_code in (200, 201), reply.text
    return digest


def _create(server: Server, name: str, path: Path) -> tuple[int, list[dict]]:
    body = {"model": name, "files": {path.name: _upload(server, path)}}
    with httpx.stream("POST", f"{server.url}/api/create", json=body, timeout=300) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, [response.json()]
        return 200, [json.loads(line) for line in response.iter_lines() if line.strip()]


def _pull(server: Server, name: str) -> list[dict]:
    with httpx.stream("POST", f"{server.url}/api/pull", json={"model": name, "insecure": True},
                      timeout=120) as response:
        assert response.status_code == 200
        return [json.loads(line) for line in response.iter_lines() if line.strip()]


def _delete(server: Server, name: str) -> None:
    httpx.request("DELETE", f"{server.url}/api/delete", json={"model": name}, timeout=60)


def _running(server: Server) -> list[str]:
    return [m["name"] for m in httpx.get(f"{server.url}/api/ps", timeout=30).json()["models"]]


def test_an_embedded_vision_tower_is_left_out_and_the_text_model_answers_as_before(
        server: Server, smollm2_gguf: Path, tmp_path: Path) -> None:
    published = with_embedded_tower(smollm2_gguf, tmp_path / "smollm2-with-tower.gguf")
    status, lines = _create(server, "smol-tower", published)
    try:
        assert status == 200, lines
        assert lines[-1] == {"status": "success"}
        notes = [line["status"] for line in lines if line.get("status", "").startswith("note: ")]
        assert len(notes) == 1 and "runs as a text model" in notes[0], lines
        reply = _greedy(server, "smol-tower")
        assert reply.status_code == 200, reply.text
        assert reply.json()["eval_count"] > 0
        # the same weights without the tower: the same greedy answer as the model imported plainly
        assert reply.json()["response"] == _greedy(server, "smollm2:135m").json()["response"]
        copies = list((server.models / "cache" / "compat").glob("sha256-*.gguf"))
        assert len(copies) == 1
        digest = _upload(server, published)  # already there: the blob still hashes to its name
        assert copies[0].name.startswith(digest.replace(":", "-"))
    finally:
        _delete(server, "smol-tower")


def test_create_refuses_an_unknown_architecture_with_400_naming_it(server: Server, tmp_path: Path) -> None:
    status, lines = _create(server, "not-here", write_header_only(tmp_path / "x.gguf", "ollamaonly"))
    assert status == 400
    assert "model architecture 'ollamaonly' is not supported by llama.cpp here" in lines[0]["error"]
    assert httpx.post(f"{server.url}/api/show", json={"model": "not-here"}, timeout=30).status_code == 404


def test_a_pulled_mllama_is_stored_with_a_warning_and_refused_before_any_runner_starts(
        server: Server, tmp_path: Path) -> None:
    registry = FakeRegistry()
    model = write_header_only(tmp_path / "mllama.gguf", "mllama",
                              {"mllama.attention.cross_attention_layers": [3, 8]}).read_bytes()
    registry.add_model("library/llama3.2-vision", "11b", model,
                       config=b'{"model_format":"gguf","model_family":"mllama","model_families":["mllama"]}')
    name = f"{registry.host}/library/llama3.2-vision:11b"
    try:
        lines = _pull(server, name)
        assert lines[-1] == {"status": "success"}, lines
        warnings = [line["status"] for line in lines if line.get("status", "").startswith("warning: ")]
        assert len(warnings) == 1, lines
        assert "model family 'llama3.2-vision' (architecture 'mllama')" in warnings[0]
        assert "will not load here" in warnings[0]
        for route, body in (("/api/generate", {"prompt": "hi"}),
                            ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]})):
            reply = httpx.post(f"{server.url}{route}", json={"model": name, "stream": False, **body}, timeout=60)
            assert reply.status_code == 400, reply.text
            assert reply.json()["error"].startswith(
                "model family 'llama3.2-vision' (architecture 'mllama') was published for Ollama's own "
                "engine and cannot run on llama.cpp here: ")
        assert not [n for n in _running(server) if "llama3.2-vision" in n]
        assert _greedy(server, "smollm2:135m").status_code == 200  # the server is fine
    finally:
        _delete(server, name)
        registry.stop()


def test_a_pulled_gptoss_is_translated_and_generates(server: Server, tmp_path: Path) -> None:
    registry = FakeRegistry()
    model = write_ollama_gptoss(tmp_path / "gptoss.gguf").read_bytes()
    registry.add_model("library/gpt-oss", "tiny", model,
                       config=b'{"model_format":"gguf","model_family":"gptoss","model_families":["gptoss"]}')
    name = f"{registry.host}/library/gpt-oss:tiny"
    try:
        lines = _pull(server, name)
        assert lines[-1] == {"status": "success"}, lines
        notes = [line["status"] for line in lines if line.get("status", "").startswith("note: ")]
        assert len(notes) == 1 and "model family 'gpt-oss' (architecture 'gptoss')" in notes[0], lines
        reply = _greedy(server, name, prompt="hello")
        assert reply.status_code == 200, reply.text
        assert reply.json()["eval_count"] > 0
        assert [n for n in _running(server) if "gpt-oss" in n]
        blob = server.models / "blobs" / ("sha256-" + hashlib.sha256(model).hexdigest())
        assert blob.read_bytes() == model  # the published blob is loaded through a copy, never changed
    finally:
        _delete(server, name)
        registry.stop()
