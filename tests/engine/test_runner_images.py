"""Images in real runners (SmolLM2 + the tiny random projector): the projector loads with the model,
image tokens count in prompt_eval_count, the prefix cache reuses an image only for the same pixels, a
draft model stands aside for image prompts, context shifts drop whole images, and no bad input ends the
runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance import envconfig
from appliance.api import images as image_files
from appliance.engine.protocol import MEDIA_MARKER
from appliance.engine.scheduler import Scheduler
from appliance.engine.vision import MARKER
from appliance.errors import BadRequest, RunnerError
from appliance.store import create as creating
from appliance.store.local import Store
from appliance.store.model import Model, capabilities
from appliance.store.names import parse_name
from tests.fixtures.tiny_projector import tiny_projector_tokens, write_tiny_projector
from tests.fixtures.vision_images import PromptCounter, png

CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
GREEDY = {"temperature": 0, "num_predict": 8}
N_IMAGE = tiny_projector_tokens()


def _create(store: Store, request: dict[str, Any]) -> None:
    creating.run_create(store, creating.plan_create(store, request), lambda _status: None)


@pytest.fixture
def store(tmp_path: Path, smollm2_gguf: Path, tiny_projector_gguf: Path) -> Store:
    st = Store(tmp_path)
    smol, _size, _ = st.blobs.put_file(smollm2_gguf)
    projector, _size, _ = st.blobs.put_file(tiny_projector_gguf)
    wrong, _size, _ = st.blobs.put_file(write_tiny_projector(tmp_path / "wrong.gguf", n_embd_text=64))
    _create(st, {"model": "smol", "files": {smollm2_gguf.name: smol}})
    _create(st, {"model": "smol-vision", "files": {smollm2_gguf.name: smol, "mmproj.gguf": projector}})
    _create(st, {"model": "vision-draft", "from": "smol-vision", "draft_files": {"draft.gguf": smol}})
    _create(st, {"model": "wrong-vision", "from": "smol", "files": {"wrong.gguf": wrong}})
    return st


@pytest.fixture(scope="module")
def counter(smollm2_gguf: Path, tiny_projector_gguf: Path) -> Iterator[PromptCounter]:
    c = PromptCounter(smollm2_gguf, tiny_projector_gguf)
    yield c
    c.close()


def _model(store: Store, name: str) -> Model:
    return store.get(parse_name(name))


def _wire(*seeds: int) -> list[dict[str, Any]]:
    return [image_files.decode(png(seed), "test").to_wire() for seed in seeds]


def _scheduler(**env: str) -> Scheduler:
    return Scheduler(envconfig.Config.from_env({"HOME": "/tmp", **env}))


async def _complete(sched: Scheduler, model: Model, prompt: str, images: list[dict[str, Any]],
                    options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    options = options or GREEDY
    async with sched.use(model, options, None) as loaded:
        text, done = "", {}
        request = {"op": "completion", "prompt": prompt, "options": options, "images": images}
        async for event in loaded.runner.request(request):
            if event["event"] == "token":
                text += event["text"]
            elif event["event"] == "done":
                done = event
        return text, done


def test_the_media_marker_of_the_protocol_is_mtmds() -> None:
    assert MEDIA_MARKER == MARKER


async def test_a_projector_layer_is_loaded_with_the_model(store: Store) -> None:
    sched = _scheduler()
    vision, plain = _model(store, "smol-vision"), _model(store, "smol")
    info = await sched.gguf(vision)
    assert "vision" in capabilities(vision, info) and "vision" not in capabilities(plain, info)
    options = sched.load_options(vision, {}, info)
    assert options.projector_path == str(vision.projector_paths[0])
    assert options.argv(False)[-2:] == ["--mmproj", options.projector_path]
    assert sched.load_options(plain, {}, info).projector_path == ""
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        loaded = await sched.load(vision, {}, None)
        assert loaded.runner.info["vision"] is True
        await sched.aclose()


async def test_a_projector_that_cannot_load_fails_the_load_with_the_reason(store: Store) -> None:
    sched = _scheduler()
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        with pytest.raises(RunnerError, match=r"unable to load the projector .*mismatch between text model"):
            await sched.load(_model(store, "wrong-vision"), {}, None)
        await sched.aclose()


async def test_image_tokens_count_and_the_cache_reuses_only_the_same_pixels(store: Store,
                                                                              counter: PromptCounter) -> None:
    sched = _scheduler()
    model = _model(store, "smol-vision")
    prompt = CHATML.format(f"{MARKER}What is in this picture?")
    n_tokens, n_image, n_before = counter.count(prompt, [png(1)])
    assert n_image == N_IMAGE
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        first, done = await _complete(sched, model, prompt, _wire(1))
        assert done["prompt_eval_count"] == n_tokens and done["prompt_cached"] == 0
        again, done = await _complete(sched, model, prompt, _wire(1))
        assert again == first and done["prompt_cached"] == n_tokens - 1  # all but the last token reused
        # Another picture, the same text: only the text before the image comes from the cache.
        _other, done = await _complete(sched, model, prompt, _wire(2))
        assert done["prompt_eval_count"] == n_tokens and done["prompt_cached"] == n_before
        # Two images count twice.
        two = CHATML.format(f"{MARKER}{MARKER}Compare them.")
        n_two, n_image_two, _ = counter.count(two, [png(3), png(4)])
        assert n_image_two == 2 * N_IMAGE
        _text, done = await _complete(sched, model, two, _wire(3, 4))
        assert done["prompt_eval_count"] == n_two
        # A text-only prompt on the same runner reads no images.
        _text, done = await _complete(sched, model, CHATML.format("Hello"), [])
        assert done["prompt_eval_count"] < N_IMAGE
        await sched.aclose()


async def test_bad_image_requests_are_400_and_the_runner_keeps_serving(store: Store) -> None:
    sched = _scheduler()
    model = _model(store, "smol-vision")
    good = CHATML.format(f"{MARKER}Describe it.")
    wrong_size = {**_wire(1)[0], "width": 63}
    bad = [
        (CHATML.format("no marker"), _wire(1), "0 image markers for 1 images"),
        (good, [wrong_size], "needs 12096 bytes"),
        (good, [{"width": 64, "height": 64, "rgb": "%%%"}], "rgb is not base64"),
        (good, ["not an object"], "must be an object"),
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        loaded = await sched.load(model, GREEDY, None)
        pid = loaded.runner.pid
        for prompt, images, message in bad:
            with pytest.raises(BadRequest, match=message):
                await _complete(sched, model, prompt, images)
        _text, done = await _complete(sched, model, good, _wire(1))
        assert done["done_reason"] in ("stop", "length") and loaded.runner.pid == pid
        assert not loaded.runner.dead
        # A prompt with images is never truncated: beyond the context it is refused.
        small = {**GREEDY, "num_ctx": 256}
        many = CHATML.format(MARKER * 17 + "Describe them.")  # 17 x 16 image tokens
        with pytest.raises(BadRequest, match="more than the context allows"):
            await _complete(sched, model, many, _wire(*range(17)), small)
        # Images for a model without a projector: refused by the runner too.
        with pytest.raises(BadRequest, match="does not support images"):
            await _complete(sched, _model(store, "smol"), good, _wire(1))
        await sched.aclose()


async def test_generating_past_the_context_drops_whole_images(store: Store) -> None:
    sched = _scheduler()
    model = _model(store, "smol-vision")
    options = {"temperature": 0, "num_predict": 120, "num_ctx": 64}
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        _text, done = await _complete(sched, model, CHATML.format(f"{MARKER}Count to a hundred."), _wire(5),
                                      options)
        assert done["eval_count"] == 120 or done["done_reason"] == "stop"
        await sched.aclose()


async def test_a_draft_stands_aside_for_image_prompts_and_drafts_for_text(store: Store) -> None:
    sched = _scheduler(OLLAMA_NUM_PARALLEL="2")
    plain, drafted = _model(store, "smol-vision"), _model(store, "vision-draft")
    prompt = CHATML.format(f"{MARKER}What is in this picture?")
    text_prompt = "Count from one to twenty: one, two,"
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        want, _done = await _complete(sched, plain, prompt, _wire(1))
        want_text, _done = await _complete(sched, plain, text_prompt, [], {"temperature": 0, "num_predict": 24})
        results: dict[str, Any] = {}

        async def run(key: str, p: str, images: list[dict[str, Any]], options: dict[str, Any]) -> None:
            results[key] = await _complete(sched, drafted, p, images, options)

        async with trio.open_nursery() as both:  # side by side: one slot drafts, the other does not
            both.start_soon(run, "image", prompt, _wire(1), GREEDY)
            both.start_soon(run, "text", text_prompt, [], {"temperature": 0, "num_predict": 24})
        got, done = results["image"]
        assert got == want and done["draft_count"] == 0
        got_text, done_text = results["text"]
        assert got_text == want_text and done_text["draft_count"] > 0
        await sched.aclose()
