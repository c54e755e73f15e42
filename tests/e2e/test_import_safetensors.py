"""`ollama create` from a safetensors folder through a real server: uploaded, converted in the server's
child, stored as a GGUF model layer, and run by llama.cpp; what cannot be converted is refused before the
create streams anything."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.conftest import Server
from tests.fixtures.hf_safetensors import write_tiny_hf_llama


def test_create_from_a_safetensors_folder_converts_and_runs(server: Server, tmp_path: Path) -> None:
    folder = write_tiny_hf_llama(tmp_path / "tiny-llama")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}))
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {folder}\n")
    out = server.cli("create", "tiny-st", "-f", str(modelfile))
    assert "success" in out.stdout + out.stderr

    show = httpx.post(f"{server.url}/api/show", json={"model": "tiny-st"}, timeout=60).json()
    assert show["details"]["format"] == "gguf"
    assert show["details"]["family"] == "llama"
    assert show["details"]["quantization_level"] == "F16"
    assert show["model_info"]["llama.block_count"] == 1
    assert show["model_info"]["tokenizer.ggml.model"] == "gpt2"
    # every uploaded file stays a blob until pruned; the model layer is the converted GGUF
    manifest = json.loads((server.models / "manifests" / "registry.ollama.ai" / "library" / "tiny-st"
                           / "latest").read_text())
    model_layer = next(layer for layer in manifest["layers"] if layer["mediaType"].endswith(".model"))
    blob = server.models / "blobs" / model_layer["digest"].replace(":", "-")
    assert blob.read_bytes()[:4] == b"GGUF"
    assert not list(server.models.glob(".convert-*"))  # the link folder is gone

    reply = httpx.post(f"{server.url}/api/generate", timeout=120, json={
        "model": "tiny-st", "prompt": "hello", "stream": False, "options": {"num_predict": 5, "temperature": 0}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["eval_count"] >= 1  # random weights: any tokens, but real decoding

    httpx.request("DELETE", f"{server.url}/api/delete", json={"model": "tiny-st"}, timeout=60)


def test_create_quantizes_a_converted_safetensors_folder(server: Server, tmp_path: Path) -> None:
    """``-q`` after the conversion: the converted F16 GGUF goes through llama.cpp's quantizer, and the
    stored model is the quantized one (this tiny model's rows are too short for q8_0 blocks, so llama.cpp
    keeps those tensors in a fallback type, but the file type is the one asked for)."""
    folder = write_tiny_hf_llama(tmp_path / "tiny-llama")
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {folder}\n")
    out = server.cli("create", "tiny-st-q8", "-f", str(modelfile), "-q", "q8_0")
    assert "success" in out.stdout + out.stderr
    show = httpx.post(f"{server.url}/api/show", json={"model": "tiny-st-q8"}, timeout=60).json()
    assert show["details"]["quantization_level"] == "Q8_0"
    reply = httpx.post(f"{server.url}/api/generate", timeout=120, json={
        "model": "tiny-st-q8", "prompt": "hello", "stream": False, "options": {"num_predict": 5, "temperature": 0}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["eval_count"] >= 1
    assert not list(server.models.glob(".convert-*"))
    httpx.request("DELETE", f"{server.url}/api/delete", json={"model": "tiny-st-q8"}, timeout=60)


def test_an_unsupported_folder_is_refused_before_anything_is_written(server: Server, tmp_path: Path) -> None:
    folder = write_tiny_hf_llama(tmp_path / "qwen", config={"architectures": ["Qwen2ForCausalLM"],
                                                           "model_type": "qwen2"})
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {folder}\n")
    before = set((server.models / "manifests").rglob("*"))
    out = server.cli("create", "qwen-st", "-f", str(modelfile), check=False)
    assert out.returncode != 0
    assert "Qwen2ForCausalLM" in out.stderr
    assert set((server.models / "manifests").rglob("*")) == before
    assert not list(server.models.glob(".convert-*"))


def test_api_create_with_safetensors_files_answers_400_for_a_pytorch_bin(server: Server, tmp_path: Path) -> None:
    data = b"not a checkpoint"
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{server.url}/api/blobs/{digest}", content=data, timeout=60).status_code in (200, 201)
    reply = httpx.post(f"{server.url}/api/create", timeout=60,
                       json={"model": "bin-model", "files": {"pytorch_model.bin": digest}})
    assert reply.status_code == 400
    assert "pytorch .bin checkpoints are not supported" in reply.json()["error"]
