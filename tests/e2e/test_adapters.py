"""LoRA adapters (Modelfile ADAPTER) are applied when the model loads: a random adapter changes what
SmolLM2 says, the base model is unchanged beside it, and an adapter that does not fit fails the load
with a clear error instead of running as the base."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import Server
from tests.fixtures.tiny_lora import write_tiny_lora

BASE = "smollm2:135m"
PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"


def _greedy(server: Server, model: str) -> httpx.Response:
    return httpx.post(f"{server.url}/api/generate", timeout=300, json={
        "model": model, "prompt": PROMPT, "raw": True, "stream": False,
        "options": {"temperature": 0, "num_predict": 16, "seed": 1}})


def test_an_adapter_changes_the_output_and_the_base_stays_as_it_was(server: Server, tmp_path: Path) -> None:
    lora = write_tiny_lora(tmp_path / "lora.gguf")
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {BASE}\nADAPTER {lora}\n")
    server.cli("create", "smol-lora", "-f", str(modelfile))
    try:
        base_before = _greedy(server, BASE).json()["response"]
        adapted = _greedy(server, "smol-lora")
        assert adapted.status_code == 200, adapted.text
        assert adapted.json()["response"] != base_before
        assert _greedy(server, "smol-lora").json()["response"] == adapted.json()["response"]  # deterministic
        assert _greedy(server, BASE).json()["response"] == base_before
        show = httpx.post(f"{server.url}/api/show", json={"model": "smol-lora"}, timeout=60).json()
        assert "ADAPTER" in show["modelfile"]
    finally:
        httpx.request("DELETE", f"{server.url}/api/delete", json={"model": "smol-lora"}, timeout=60)


def test_an_adapter_for_another_model_fails_the_load_clearly(server: Server, tmp_path: Path) -> None:
    wrong = write_tiny_lora(tmp_path / "wrong.gguf", n_embd=64, n_layers=2)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {BASE}\nADAPTER {wrong}\n")
    server.cli("create", "smol-wrong-lora", "-f", str(modelfile))
    try:
        reply = _greedy(server, "smol-wrong-lora")
        assert reply.status_code >= 400
        # the adapter is named by its blob: that is the file the runner was given
        assert "unable to load LoRA adapter sha256-" in reply.json()["error"]
        assert "not a LoRA GGUF for this model" in reply.json()["error"]
        assert _greedy(server, BASE).status_code == 200  # the server and the base model are fine
    finally:
        httpx.request("DELETE", f"{server.url}/api/delete", json={"model": "smol-wrong-lora"}, timeout=60)
