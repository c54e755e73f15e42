"""Images through a real server: SmolLM2 with the tiny random projector, created from a Modelfile with two
FROM lines.  The answers are nonsense; the tests check that images reach the runner and count (expected
token counts are computed by tokenizing the same prompt in process), that a text-only client on the other
slot keeps streaming meanwhile, that the OpenAI and Anthropic routes carry images, and that every hostile
image is a 400 while the same runner keeps serving."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.api import images as image_files
from appliance.assets.default_model import modelfile
from appliance.prompt import render
from appliance.server import image_prompt
from tests.conftest import Server
from tests.fixtures.tiny_projector import tiny_projector_tokens
from tests.fixtures.vision_images import HOSTILE, PromptCounter, b64, png

TEXT_MODEL = "smollm2:135m"
MODEL = "smol-vision"
PROJECTOR_MEDIA = "application/vnd.ollama.image.projector"
GREEDY = {"temperature": 0, "num_predict": 6}
N_IMAGE = tiny_projector_tokens()


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path,
                  tiny_projector_gguf: Path) -> Iterator[Server]:
    """smollm2:135m (text only) and smol-vision: the same GGUF plus the projector, two slots."""
    server = Server(tmp_path_factory.mktemp("vision"), OLLAMA_NUM_PARALLEL="2", OLLAMA_KEEP_ALIVE="10m").start()
    server.import_smollm2(smollm2_gguf)
    path = server.home / "vision.Modelfile"
    path.write_text(modelfile(smollm2_gguf) + f"FROM {tiny_projector_gguf}\n")
    server.cli("create", MODEL, "-f", str(path))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def counter(smollm2_gguf: Path, tiny_projector_gguf: Path) -> Iterator[PromptCounter]:
    c = PromptCounter(smollm2_gguf, tiny_projector_gguf)
    yield c
    c.close()


@pytest.fixture(scope="module")
def template(vision_server: Server) -> str:
    with vision_server.http() as http:
        return str(http.post("/api/show", json={"model": MODEL}).json()["template"])


@pytest.fixture(scope="module")
def system(vision_server: Server) -> list[dict[str, Any]]:
    """The model's SYSTEM as the message the server puts first (none if it has none)."""
    with vision_server.http() as http:
        text = http.post("/api/show", json={"model": MODEL}).json().get("system")
    return [{"role": "system", "content": text}] if text else []


def _expected(counter: PromptCounter, rendered: str, pngs: list[bytes]) -> int:
    """The token count of a rendered prompt holding ``[img-N]`` tags, as the runner will see it."""
    decoded = [image_files.decode(data, "test") for data in pngs]
    prompt, sent = image_prompt.place(rendered, decoded)
    assert len(sent) == len(pngs)
    return counter.count(prompt, pngs)[0]


def _runner_pids(server: Server) -> set[int]:
    assert server.proc is not None
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == server.proc.pid:
                pids.add(int(entry))
    return pids


def test_a_model_with_a_projector_shows_vision(vision_server: Server, tiny_projector_gguf: Path) -> None:
    with vision_server.http() as http:
        shown = http.post("/api/show", json={"model": MODEL}).json()
        plain = http.post("/api/show", json={"model": TEXT_MODEL}).json()
    assert "vision" in shown["capabilities"] and "completion" in shown["capabilities"]
    assert "vision" not in plain["capabilities"] and "projector_info" not in plain
    assert shown["projector_info"]["general.architecture"] == "clip"
    assert shown["projector_info"]["clip.projector_type"] == "gemma3"
    from_lines = [line for line in shown["modelfile"].splitlines() if line.startswith("FROM ")]
    assert len(from_lines) == 2  # the model, then its projector (parses back to the same model)
    printed = vision_server.cli("show", MODEL).stdout
    assert "Projector" in printed and "clip" in printed and "vision" in printed
    manifest = vision_server.models / "manifests" / "registry.ollama.ai" / "library" / MODEL / "latest"
    layers = json.loads(manifest.read_bytes())["layers"]
    assert [layer["size"] for layer in layers if layer["mediaType"] == PROJECTOR_MEDIA] == \
        [tiny_projector_gguf.stat().st_size]


def test_generate_with_images_counts_their_tokens(vision_server: Server, counter: PromptCounter,
                                                  template: str, system: list[dict[str, Any]]) -> None:
    with vision_server.http() as http:
        # raw: the prompt as written, the marker where [img] is
        r = http.post("/api/generate", json={"model": MODEL, "prompt": "[img]What is this?", "raw": True,
                                             "images": [b64(png(1))], "stream": False, "options": GREEDY})
        assert r.status_code == 200, r.text
        n, n_image, _ = counter.count(f"{image_prompt.MEDIA_MARKER}What is this?", [png(1)])
        assert n_image == N_IMAGE and r.json()["prompt_eval_count"] == n
        # templated, two images: their tags go before the prompt
        r = http.post("/api/generate", json={"model": MODEL, "prompt": "Compare them.", "stream": False,
                                             "images": [b64(png(1)), b64(png(2))], "options": GREEDY})
        assert r.status_code == 200, r.text
        rendered = render.render_generate_go(template, "[img-0][img-1]Compare them.", "",
                                             system[0]["content"] if system else "", None)
        assert r.json()["prompt_eval_count"] == _expected(counter, rendered, [png(1), png(2)])
        assert counter.count(image_prompt.place(rendered, [image_files.decode(png(i), "t") for i in (1, 2)])[0],
                             [png(1), png(2)])[1] == 2 * N_IMAGE


def test_chat_with_one_and_two_images(vision_server: Server, counter: PromptCounter, template: str,
                                      system: list[dict[str, Any]]) -> None:
    with vision_server.http() as http:
        for pngs in ([png(3)], [png(3), png(4)]):
            message = {"role": "user", "content": "What is this?", "images": [b64(p) for p in pngs]}
            r = http.post("/api/chat", json={"model": MODEL, "messages": [message], "stream": False,
                                             "options": GREEDY})
            assert r.status_code == 200, r.text
            tags = "".join(f"[img-{i}]" for i in range(len(pngs)))
            rendered = render.render_go(template, [*system, {**message, "content": tags + "What is this?"}],
                                        None, None)
            assert r.json()["prompt_eval_count"] == _expected(counter, rendered, pngs)
        # [img] in the text places the image there; a literal marker in the text is only text
        message = {"role": "user", "content": "Before [img] after <__media__>", "images": [b64(png(3))]}
        r = http.post("/api/chat", json={"model": MODEL, "messages": [message], "stream": False,
                                         "options": GREEDY})
        assert r.status_code == 200, r.text
        rendered = render.render_go(template, [*system, {**message, "content": "Before [img-0] after <__media__>"}],
                                    None, None)
        assert r.json()["prompt_eval_count"] == _expected(counter, rendered, [png(3)])


def test_a_text_client_keeps_streaming_while_images_are_read(vision_server: Server) -> None:
    chunks: list[float] = []
    final: dict[str, Any] = {}

    def stream_text() -> None:
        body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "raw": True,
                "options": {"temperature": 0, "num_predict": 300}}
        with vision_server.http() as http, http.stream("POST", "/api/generate", json=body) as r:
            for line in r.iter_lines():
                obj = json.loads(line)
                if obj.get("done"):
                    final.update(obj)
                else:
                    chunks.append(time.monotonic())

    with vision_server.http() as http:  # loaded first, so that both requests share one runner
        assert http.post("/api/generate", json={"model": MODEL}).status_code == 200
    thread = threading.Thread(target=stream_text)
    thread.start()
    while not chunks and thread.is_alive():
        time.sleep(0.01)
    started = time.monotonic()
    with vision_server.http() as http:
        for seed in range(10, 16):
            message = {"role": "user", "content": "What is this?", "images": [b64(png(seed))]}
            r = http.post("/api/chat", json={"model": MODEL, "messages": [message], "stream": False,
                                             "options": {"temperature": 0, "num_predict": 4}})
            assert r.status_code == 200, r.text
    ended = time.monotonic()
    thread.join(timeout=300)
    assert final.get("done") is True and final["eval_count"] > 0
    if final["eval_count"] == 300:  # it ran all along: some of its tokens came while images were read
        assert any(started <= t <= ended for t in chunks)


def test_openai_data_urls_and_anthropic_image_blocks(vision_server: Server, counter: PromptCounter,
                                                     template: str, system: list[dict[str, Any]]) -> None:
    message = {"role": "user", "content": "[img-0]What is this?", "images": [b64(png(5))]}
    expected = _expected(counter, render.render_go(template, [*system, message], None, None), [png(5)])
    with vision_server.http() as http:
        parts = [{"type": "text", "text": "What is this?"},
                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(png(5))}"}}]
        r = http.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 4, "temperature": 0,
                                                    "messages": [{"role": "user", "content": parts}]})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == expected
        parts[1] = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
        r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": parts}]})
        assert r.status_code == 400 and "image URLs are not supported" in r.json()["error"]["message"]
        blocks = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(png(5))}},
                  {"type": "text", "text": "What is this?"}]
        r = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 4, "temperature": 0,
                                            "messages": [{"role": "user", "content": blocks}]})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["input_tokens"] == expected


@pytest.mark.parametrize(("what", "data"), HOSTILE, ids=[what for what, _ in HOSTILE])
def test_every_hostile_image_is_a_400_and_the_runner_keeps_serving(vision_server: Server, what: str,
                                                                    data: str) -> None:
    with vision_server.http() as http:
        assert http.post("/api/generate", json={"model": MODEL}).status_code == 200
        runners = _runner_pids(vision_server)
        assert runners
        requests = [
            ("/api/chat", {"model": MODEL, "stream": False,
                           "messages": [{"role": "user", "content": "What is this?", "images": [data]}]}),
            ("/api/generate", {"model": MODEL, "prompt": "What is this?", "images": [data], "stream": False}),
        ]
        for path, body in requests:
            r = http.post(path, json=body)
            assert r.status_code == 400, (what, path, r.text)
            assert list(r.json()) == ["error"] and "image" in r.json()["error"], r.text
        url = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
        r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, url]}]})
        assert r.status_code == 400 and r.json()["error"]["message"], r.text
        r = http.post("/api/chat", json={"model": MODEL, "stream": False, "options": GREEDY, "messages": [
            {"role": "user", "content": "What is this?", "images": [b64(png(6))]}]})
        assert r.status_code == 200, r.text
        assert _runner_pids(vision_server) == runners


def test_images_for_a_text_only_model_are_a_400(vision_server: Server) -> None:
    with vision_server.http() as http:
        r = http.post("/api/chat", json={"model": TEXT_MODEL, "messages": [
            {"role": "user", "content": "What is this?", "images": [b64(png(1))]}]})
        assert r.status_code == 400 and r.json() == {"error": f'"{TEXT_MODEL}" does not support images'}
        r = http.post("/api/generate", json={"model": TEXT_MODEL, "prompt": "What?", "images": [b64(png(1))]})
        assert r.status_code == 400 and r.json() == {"error": f'"{TEXT_MODEL}" does not support images'}
