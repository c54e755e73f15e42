"""appliance/engine/vision.py with real llama.cpp: SmolLM2-135M plus the tiny random projector.

One llama_context with two sequences, as the runner has.  The images' answers are nonsense; the
tests check the pipeline: token counts, evaluation into the right sequence, and that the image
actually reaches the logits (different pixels -> different logits, same pixels -> same logits).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.engine.vision import (
    MARKER,
    Image,
    ImageChunk,
    ImageInputError,
    Prompt,
    TextChunk,
    Vision,
    VisionError,
)
from tests.fixtures.tiny_projector import tiny_projector_tokens

N_SEQ = 2
N_CTX_SEQ = 512


class Model:
    """SmolLM2 loaded the way the runner loads it: one context, N_SEQ sequences, separate KV."""

    def __init__(self, gguf: Path) -> None:
        import llama_cpp as llama

        self.llama = llama
        llama.llama_backend_init()
        self.model = llama.llama_model_load_from_file(str(gguf).encode(), llama.llama_model_default_params())
        assert self.model
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = N_CTX_SEQ * N_SEQ
        cparams.n_batch = cparams.n_ubatch = 256
        cparams.n_seq_max = N_SEQ
        cparams.n_threads = cparams.n_threads_batch = 2
        cparams.kv_unified = False
        cparams.no_perf = True
        self.ctx = llama.llama_init_from_model(self.model, cparams)
        assert self.ctx
        self.mem = llama.llama_get_memory(self.ctx)
        self.n_vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(self.model))
        self.batch = llama.llama_batch_init(256, 0, N_SEQ)

    def decode_tokens(self, tokens: list[int], *, seq_id: int, n_past: int) -> np.ndarray:
        """Decode text tokens (logits for the last one); returns a copy of those logits."""
        llama, batch = self.llama, self.batch
        for i, tok in enumerate(tokens):
            batch.token[i] = tok
            batch.pos[i] = n_past + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        assert llama.llama_decode(self.ctx, batch) == 0
        ptr = llama.llama_get_logits_ith(self.ctx, len(tokens) - 1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def clear(self, seq_id: int) -> None:
        self.llama.llama_memory_seq_rm(self.mem, seq_id, -1, -1)

    def close(self) -> None:
        self.llama.llama_batch_free(self.batch)
        self.llama.llama_free(self.ctx)
        self.llama.llama_model_free(self.model)


@pytest.fixture(scope="module")
def model(smollm2_gguf: Path) -> Iterator[Model]:
    m = Model(smollm2_gguf)
    yield m
    m.close()


@pytest.fixture(scope="module")
def vision(model: Model, tiny_projector_gguf: Path) -> Iterator[Vision]:
    v = Vision(model.model, str(tiny_projector_gguf), n_threads=2)
    yield v
    v.close()


def picture(seed: int, width: int = 64, height: int = 64) -> Image:
    rng = np.random.default_rng(seed)
    return Image(width, height, rng.integers(0, 256, size=width * height * 3, dtype=np.uint8).tobytes())


def evaluate(model: Model, vision: Vision, prompt: Prompt, *, seq_id: int) -> tuple[np.ndarray, int]:
    """Evaluate a prompt chunk by chunk as the runner will; the last chunk must be text."""
    n_past, logits = 0, None
    for chunk in prompt.chunks:
        if isinstance(chunk, TextChunk):
            logits = model.decode_tokens(chunk.tokens, seq_id=seq_id, n_past=n_past)
            n_past += chunk.n_pos
        else:
            n_past = vision.evaluate(model.ctx, chunk, seq_id=seq_id, n_past=n_past)
            logits = None
    assert logits is not None
    return logits, n_past


def test_the_tiny_projector_is_small_and_deterministic(tiny_projector_gguf: Path, tmp_path: Path) -> None:
    from tests.fixtures.tiny_projector import write_tiny_projector

    again = write_tiny_projector(tmp_path / "again.gguf")
    assert again.read_bytes() == tiny_projector_gguf.read_bytes()
    assert again.stat().st_size < 4 << 20


def test_the_projector_loads_for_smollm2(vision: Vision) -> None:
    assert vision.n_embd == 576
    assert vision.non_causal  # gemma3-type: images attend both ways
    assert not vision.mrope


def test_a_projector_for_another_width_is_refused_with_the_reason(model: Model, tmp_path: Path) -> None:
    from tests.fixtures.tiny_projector import write_tiny_projector

    wrong = write_tiny_projector(tmp_path / "wrong.gguf", n_embd_text=64)
    with pytest.raises(VisionError, match=r"mismatch between text model \(n_embd = 576\) and mmproj \(n_embd = 64\)"):
        Vision(model.model, str(wrong), n_threads=1)
    with pytest.raises(VisionError, match="unable to load the projector"):
        Vision(model.model, str(tmp_path / "missing.gguf"), n_threads=1)


def test_one_image_is_text_image_text(model: Model, vision: Vision) -> None:
    prompt = vision.tokenize(f"Describe this: {MARKER}\nWhat is it?", [picture(1)])
    kinds = [type(c) for c in prompt.chunks]
    assert kinds == [TextChunk, ImageChunk, TextChunk]
    (image,) = prompt.images
    assert image.n_tokens == image.n_pos == tiny_projector_tokens()
    n_text = sum(c.n_tokens for c in prompt.chunks if isinstance(c, TextChunk))
    assert prompt.n_tokens == n_text + image.n_tokens
    assert prompt.n_pos == prompt.n_tokens
    assert len(image.cache_keys) == image.n_tokens
    assert not set(image.cache_keys) & {t for c in prompt.chunks if isinstance(c, TextChunk) for t in c.tokens}
    prompt.close()
    assert image.closed


def test_two_images_both_count(vision: Vision) -> None:
    a, b = picture(1), picture(2, width=40, height=30)  # any size: mtmd resizes to the projector's
    prompt = vision.tokenize(f"{MARKER}{MARKER} Compare them.", [a, b])
    images = prompt.images
    assert [i.n_tokens for i in images] == [tiny_projector_tokens()] * 2
    assert [i.id for i in images] == [a.id, b.id]
    assert prompt.n_tokens == sum(c.n_tokens for c in prompt.chunks)
    assert prompt.n_tokens - sum(i.n_tokens for i in images) > 0  # the delimiters and the text
    prompt.close()


def test_image_ids_follow_the_pixels() -> None:
    assert picture(1).id == picture(1).id
    assert picture(1).id != picture(2).id
    same_bytes = picture(3, 32, 48)
    assert Image(48, 32, same_bytes.rgb).id != same_bytes.id


def test_markers_and_pixels_must_match_the_images(vision: Vision) -> None:
    with pytest.raises(ImageInputError, match="2 image markers for 1 images"):
        vision.tokenize(f"{MARKER} and {MARKER}", [picture(1)])
    with pytest.raises(ImageInputError, match="0 image markers"):
        vision.tokenize("no marker", [picture(1)])
    with pytest.raises(ImageInputError, match="needs 12 bytes"):
        vision.tokenize(MARKER, [Image(2, 2, b"\0" * 11)])
    with pytest.raises(ImageInputError, match="out of range"):
        vision.tokenize(MARKER, [Image(0, 2, b"")])


def test_images_evaluate_and_generate(model: Model, vision: Vision) -> None:
    prompt = vision.tokenize(f"Look: {MARKER} and {MARKER}. Now say", [picture(1), picture(2)])
    logits, n_past = evaluate(model, vision, prompt, seq_id=0)
    assert n_past == prompt.n_pos
    assert np.isfinite(logits).all()
    for _ in range(4):  # greedy: nonsense, but it must run
        token = int(np.argmax(logits))
        assert 0 <= token < model.n_vocab
        logits = model.decode_tokens([token], seq_id=0, n_past=n_past)
        n_past += 1
        assert np.isfinite(logits).all()
    model.clear(0)
    prompt.close()


def test_the_image_reaches_the_logits_per_sequence(model: Model, vision: Vision) -> None:
    text = f"A picture: {MARKER}\nIt shows"

    def run(image: Image, seq_id: int) -> np.ndarray:
        prompt = vision.tokenize(text, [image])
        try:
            return evaluate(model, vision, prompt, seq_id=seq_id)[0]
        finally:
            prompt.close()

    first_a = run(picture(1), seq_id=0)
    b = run(picture(2), seq_id=1)  # decoded while sequence 0 still holds image A
    model.clear(0)
    second_a = run(picture(1), seq_id=0)  # and A again, next to B in sequence 1
    model.clear(0)
    model.clear(1)
    assert np.allclose(first_a, second_a, atol=1e-4)
    assert np.abs(first_a - b).max() > 1e-3


def test_a_freed_chunk_is_refused(model: Model, vision: Vision) -> None:
    prompt = vision.tokenize(MARKER + " x", [picture(1)])
    (image,) = prompt.images
    image.close()
    image.close()
    with pytest.raises(RuntimeError, match="already freed"):
        vision.encode(image)


def test_a_non_causal_image_larger_than_the_micro_batch_is_refused_not_aborted(model: Model,
                                                                               vision: Vision) -> None:
    llama = model.llama
    cparams = llama.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_seq_max = 256, 8, 8, 1
    small = llama.llama_init_from_model(model.model, cparams)
    assert small
    prompt = vision.tokenize(MARKER + " x", [picture(1)])
    try:
        (image,) = prompt.images
        with pytest.raises(ImageInputError, match=r"micro-batch \(num_batch\) of at least 16; this model runs with 8"):
            vision.evaluate(small, image, seq_id=0, n_past=0)
    finally:
        prompt.close()
        llama.llama_free(small)
