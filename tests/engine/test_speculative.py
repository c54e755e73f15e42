"""Speculative decoding in real runners: the bundled model as its own draft changes nothing but the
speed, every guess of such a draft is accepted, and a draft that cannot serve the model fails the load."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance import envconfig
from appliance.engine.scheduler import Scheduler
from appliance.engine.speculative import MAX_DRAFT_TOKENS, vocab_mismatch
from appliance.errors import RunnerError
from appliance.store import create as creating
from appliance.store.local import Store
from appliance.store.model import Model
from appliance.store.names import parse_name

CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [CHATML.format("Why is the sky blue?"), CHATML.format("Write a short poem about the sea."),
           "Count from one to twenty: one, two,"]


def _create(store: Store, request: dict[str, Any]) -> None:
    creating.run_create(store, creating.plan_create(store, request), lambda _status: None)


@pytest.fixture
def store(tmp_path: Path, smollm2_gguf: Path, gemma3_gguf: Path) -> Store:
    st = Store(tmp_path)
    smol, _size, _ = st.blobs.put_file(smollm2_gguf)
    gemma, _size, _ = st.blobs.put_file(gemma3_gguf)
    _create(st, {"model": "smol", "files": {smollm2_gguf.name: smol}})
    _create(st, {"model": "smol-draft", "from": "smol", "draft_files": {"draft.gguf": smol}})
    _create(st, {"model": "smol-gemma-draft", "from": "smol", "draft_files": {"draft.gguf": gemma}})
    return st


class _FakeVocabs:
    """The llama_vocab_* calls vocab_mismatch makes, on dicts standing for vocabularies."""

    def __getattr__(self, name: str) -> Any:
        field = name.removeprefix("llama_vocab_").removeprefix("get_")
        if field == "text":
            return lambda vocab, i: vocab["tokens"][i]
        if field == "n_tokens":
            return lambda vocab: len(vocab["tokens"])
        return lambda vocab: vocab[field]


def _vocab(**changes: Any) -> dict[str, Any]:
    return {"type": 2, "add_bos": False, "bos": 1, "add_eos": False, "eos": 2,
            "tokens": [f"t{i}".encode() for i in range(300)], **changes}


@pytest.mark.parametrize(("draft", "reason"), [
    (_vocab(), None),
    (_vocab(bos=7, eos=8), None),  # ids that are never added do not matter (llama.cpp's rule)
    (_vocab(tokens=[b"x"] * 5 + [f"t{i}".encode() for i in range(5, 420)]), None),  # +120, ids < 5 differ
    (_vocab(type=1), "vocabulary type differs (target 2, draft 1)"),
    (_vocab(add_bos=True), "BOS token differs"),
    (_vocab(add_eos=True), "EOS token differs"),
    (_vocab(tokens=[f"t{i}".encode() for i in range(429)]), "vocabulary size differs (target 300 tokens, draft 429)"),
    (_vocab(tokens=[f"t{i}".encode() for i in range(299)] + [b"other"]), "token 299 differs"),
])
def test_vocabulary_compatibility_follows_llama_cpp(draft: dict[str, Any], reason: str | None) -> None:
    found = vocab_mismatch(_FakeVocabs(), _vocab(), draft)
    assert found == reason if reason is None else found is not None and found.startswith(reason)


def _model(store: Store, name: str) -> Model:
    return store.get(parse_name(name))


async def _complete(sched: Scheduler, model: Model, prompt: str, options: dict[str, Any]) -> tuple[str, dict]:
    async with sched.use(model, options, None) as loaded:
        text, done = "", {}
        async for event in loaded.runner.request({"op": "completion", "prompt": prompt, "options": options}):
            if event["event"] == "token":
                text += event["text"]
            elif event["event"] == "done":
                done = event
        return text, done


def _scheduler(**env: str) -> Scheduler:
    return Scheduler(envconfig.Config.from_env({"HOME": "/tmp", **env}))


async def test_load_options_carry_the_draft(store: Store) -> None:
    sched = _scheduler()
    plain, drafted = _model(store, "smol"), _model(store, "smol-draft")
    info = await sched.gguf(plain)
    assert (sched.load_options(plain, {}, info).draft_path, sched.load_options(plain, {}, info).draft_num_predict) \
        == ("", 0)
    with_draft = sched.load_options(drafted, {}, info)
    assert with_draft.draft_path == str(drafted.draft_path) and with_draft.draft_num_predict == 4
    assert "--draft" in with_draft.argv(False)
    # Another draft_num_predict is another runner; 0 (or less) loads no draft at all, as upstream.
    assert sched.load_options(drafted, {"draft_num_predict": 2}, info) != with_draft
    off = sched.load_options(drafted, {"draft_num_predict": 0}, info)
    assert (off.draft_path, off.draft_num_predict) == ("", 0) and "--draft" not in off.argv(False)
    assert sched.load_options(drafted, {"draft_num_predict": 10**6}, info).draft_num_predict == MAX_DRAFT_TOKENS


async def test_greedy_output_with_the_model_as_its_own_draft_is_unchanged(store: Store) -> None:
    sched = _scheduler(OLLAMA_NUM_PARALLEL="2")
    plain, drafted = _model(store, "smol"), _model(store, "smol-draft")
    cases = [{"temperature": 0, "num_predict": 48}, {"temperature": 0, "num_predict": 7},
             {"temperature": 0, "num_predict": 48, "stop": ["blue", "ten"]},
             # Sampled requests draft too (speculative.py says why the distribution is the target's):
             # with a seed, even the random draws are the same.
             {"temperature": 0.8, "seed": 7, "num_predict": 32}]
    runs = [(options, prompt) for options in cases for prompt in PROMPTS]
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        # One model after the other: the same weights with other load options replace the runner.
        wanted = [await _complete(sched, plain, prompt, options) for options, prompt in runs]
        for (options, prompt), (want, want_done) in zip(runs, wanted, strict=True):
            got, done = await _complete(sched, drafted, prompt, options)
            assert got == want, (options, prompt)
            for key in ("eval_count", "done_reason", "stop_sequence"):
                assert done[key] == want_done[key], (key, options, prompt)
            assert "draft_count" not in want_done
            if options["temperature"] == 0:
                # Its own draft guesses exactly what the target picks: every guess is accepted.
                assert done["draft_accepted"] == done["draft_count"], (options, prompt, done)
                if done["eval_count"] > 2:
                    assert done["draft_count"] > 0
        nursery.cancel_scope.cancel()


# With a 4-token batch, two generating slots leave room for two guesses in all: the draft shares it out.
@pytest.mark.parametrize("num_batch", [512, 4])
async def test_parallel_requests_with_a_draft_match_serial_ones_without(store: Store, num_batch: int) -> None:
    sched = _scheduler(OLLAMA_NUM_PARALLEL="2")
    plain, drafted = _model(store, "smol"), _model(store, "smol-draft")
    options = {"temperature": 0, "num_predict": 40, "num_batch": num_batch}
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        want = [(await _complete(sched, plain, p, options))[0] for p in PROMPTS[:2]]
        got: dict[int, tuple[str, dict]] = {}

        async def one(i: int) -> None:
            got[i] = await _complete(sched, drafted, PROMPTS[i], options)

        async with trio.open_nursery() as clients:
            for i in range(2):
                clients.start_soon(one, i)
        assert [got[i][0] for i in range(2)] == want
        assert all(got[i][1]["draft_accepted"] == got[i][1]["draft_count"] > 0 for i in range(2))
        nursery.cancel_scope.cancel()


async def test_a_cached_prefix_and_a_grammar_work_with_a_draft(store: Store) -> None:
    sched = _scheduler()
    plain, drafted = _model(store, "smol"), _model(store, "smol-draft")
    greedy = {"temperature": 0, "num_predict": 24}
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        first, _ = await _complete(sched, plain, PROMPTS[0], greedy)
        follow = PROMPTS[0] + first + "<|im_end|>\n" + CHATML.format("And why is grass green?")
        want, _ = await _complete(sched, plain, follow, greedy)
        assert (await _complete(sched, drafted, PROMPTS[0], greedy))[0] == first
        # The same prompt again, and a longer one starting with it, are served from the slot's cache
        # (the draft's cache must follow it).
        again, done = await _complete(sched, drafted, PROMPTS[0], greedy)
        assert again == first and done["prompt_cached"] > 0
        got, done = await _complete(sched, drafted, follow, greedy)
        assert got == want and done["prompt_cached"] > 0
        # A grammar turns drafting off for its request: the answer is the same, nothing was guessed.
        async with sched.use(drafted, greedy, None) as loaded:
            request = {"op": "completion", "prompt": PROMPTS[0], "options": greedy, "grammar": 'root ::= "yes" | "no"'}
            events = [e async for e in loaded.runner.request(request)]
        assert "".join(e.get("text", "") for e in events) in ("yes", "no")
        assert events[-1]["draft_count"] == 0
        nursery.cancel_scope.cancel()


async def test_a_context_shift_keeps_output_unchanged_with_a_draft(store: Store) -> None:
    sched = _scheduler()
    plain, drafted = _model(store, "smol"), _model(store, "smol-draft")
    # A 64-token context and 100 tokens to write: the context is shifted (halved) along the way.
    options = {"temperature": 0, "num_predict": 100, "num_ctx": 64}
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        want, want_done = await _complete(sched, plain, PROMPTS[2], options)
        got, done = await _complete(sched, drafted, PROMPTS[2], options)
        assert want_done["eval_count"] == 100 and want_done["prompt_eval_count"] + 100 > 64
        assert got == want and done["eval_count"] == 100 and done["draft_count"] > 0
        nursery.cancel_scope.cancel()


async def test_a_small_batch_and_a_cancelled_reply_with_a_draft(store: Store) -> None:
    sched = _scheduler()
    plain, drafted = _model(store, "smol"), _model(store, "smol-draft")
    # An 8-token batch: the prompt reaches the draft in chunks over several steps, guesses stay below it.
    options = {"temperature": 0, "num_predict": 24, "num_batch": 8}
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        want, _ = await _complete(sched, plain, PROMPTS[1], options)
        async with sched.use(drafted, options, None) as loaded:
            request = {"op": "completion", "prompt": PROMPTS[0], "options": {**options, "num_predict": 500}}
            async with aclosing(loaded.runner.request(request)) as events:
                async for _event in events:
                    break  # the client goes away after its first token: the runner is told to cancel
        got, done = await _complete(sched, drafted, PROMPTS[1], options)
        assert got == want and done["draft_accepted"] == done["draft_count"] > 0
        nursery.cancel_scope.cancel()


async def test_a_draft_with_another_vocabulary_fails_the_load_clearly(store: Store) -> None:
    sched = _scheduler()
    model = _model(store, "smol-gemma-draft")
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        with pytest.raises(RunnerError, match=r"draft model .* cannot be used with this model: its vocabulary "
                                              r"does not match \(.*\)"):
            await _complete(sched, model, PROMPTS[0], {"temperature": 0, "num_predict": 4})
        assert sched.loaded == []
        # draft_num_predict 0 does not load the draft: the model serves without it.
        text, done = await _complete(sched, model, PROMPTS[0], {"temperature": 0, "num_predict": 4,
                                                                 "draft_num_predict": 0})
        assert text and "draft_count" not in done
        nursery.cancel_scope.cancel()


async def test_a_draft_that_cannot_load_fails_the_load(store: Store, tmp_path: Path) -> None:
    sched = _scheduler()
    model = _model(store, "smol-draft")
    assert model.draft_path is not None
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(model.draft_path.read_bytes()[: 1 << 20])  # a valid header, truncated weights
    model = Model(**{**model.__dict__, "draft_path": broken})
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        with pytest.raises(RunnerError, match="unable to load draft model"):
            await _complete(sched, model, PROMPTS[0], {"temperature": 0, "num_predict": 4})
        nursery.cancel_scope.cancel()
