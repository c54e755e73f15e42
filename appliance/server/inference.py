"""The one inference path every API family uses: request -> prompt -> runner -> parsed chunks.

Native, OpenAI and Anthropic routes all build a :class:`Generation` and iterate
:func:`generate`; this module knows nothing about their wire formats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import trio

from appliance import envconfig
from appliance.api.images import Image
from appliance.api.options import validate_options
from appliance.engine.grammar import format_grammar
from appliance.engine.protocol import MAX_TOP_LOGPROBS
from appliance.engine.scheduler import Loaded, Scheduler
from appliance.errors import BadRequest
from appliance.prompt import output, render
from appliance.prompt.builtin import think_on
from appliance.server import image_prompt, requests_control
from appliance.server.requests_control import RequestCancelled, Tracked
from appliance.store.gguf import GGUFInfo
from appliance.store.local import Store
from appliance.store.model import Model, capabilities
from appliance.store.names import parse_name

log = logging.getLogger("appliance.inference")


@dataclass
class Generation:
    """What to generate, independent of the API it came from."""

    model: Model
    messages: list[dict[str, Any]] | None = None  # chat
    prompt: str | None = None  # generate
    images: list[str] | None = None  # generate: base64 images (chat messages carry their own)
    system: str | None = None
    suffix: str = ""
    template: str | None = None  # per-request TEMPLATE override (generate)
    raw: bool = False
    context: list[int] | None = None
    tools: list[dict[str, Any]] | None = None
    format: Any = None  # None | "json" | JSON schema dict
    logprobs: bool = False  # a logprobs entry per generated token (Chunk.logprobs) ...
    top_logprobs: int = 0  # ... listing this many most likely alternatives (0-20)
    options: dict[str, Any] = field(default_factory=dict)
    keep_alive_s: float | None = None
    think: bool | str | None = None
    want_context: bool = False
    stop_sequences: list[str] = field(default_factory=list)  # the caller's own, reported when hit
    truncate: bool = True  # a prompt longer than num_ctx loses old messages/tokens (False: a 400)
    shift: bool = True  # a full context drops old tokens and generation goes on (False: done "length")


@dataclass
class Chunk:
    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    done_reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    context: list[int] | None = None
    stop_sequence: str | None = None  # the one of Generation.stop_sequences that ended the reply
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # entries of the tokens of this chunk


async def resolve_model(store: Store, name: Any) -> Model:
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required")
    return await trio.to_thread.run_sync(store.get, parse_name(name), name)


def parse_keep_alive(value: Any) -> float | None:
    """keep_alive as seconds (inf = forever); None when not given. Numbers are seconds."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("keep_alive must be a duration or a number of seconds")
    if isinstance(value, int | float):
        if value != value:  # NaN: JSON cannot carry it, but a Python caller can
            raise BadRequest("keep_alive must be a duration or a number of seconds")
        if value < 0:
            return float("inf")
        try:
            return float(value)  # the scheduler treats anything past Go's Duration (~292 years) as inf
        except OverflowError:  # an integer too large for a float
            return float("inf")
    if isinstance(value, str):
        try:
            seconds = envconfig.parse_duration(value)
        except ValueError as exc:
            raise BadRequest(f"invalid keep_alive duration {value!r}") from exc
        return float("inf") if seconds < 0 else seconds
    raise BadRequest("keep_alive must be a duration or a number of seconds")


def context_flags(gen: Generation, body: dict[str, Any]) -> None:
    """``truncate`` and ``shift`` of /api/generate and /api/chat: booleans, true when absent or null."""
    for key in ("truncate", "shift"):
        value = body.get(key)
        if value is not None and not isinstance(value, bool):
            raise BadRequest(f"{key} must be a boolean")
        setattr(gen, key, value is not False)


def logprob_options(logprobs: Any, top_logprobs: Any) -> tuple[bool, int]:
    """``logprobs`` and ``top_logprobs`` of a native request, checked as upstream does (the range even
    when logprobs are not asked for)."""
    if logprobs is not None and not isinstance(logprobs, bool):
        raise BadRequest("logprobs must be a boolean")
    if top_logprobs is None:
        top_logprobs = 0
    if not isinstance(top_logprobs, int) or isinstance(top_logprobs, bool):
        raise BadRequest("top_logprobs must be an integer")
    if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise BadRequest(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    return bool(logprobs), top_logprobs


def check_format(fmt: Any) -> Any:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return "json"
    if isinstance(fmt, dict):
        return fmt
    raise BadRequest(f'invalid format: expected "json" or a JSON schema object, got {str(fmt)[:80]!r}')


def merged_options(model: Model, request_options: Any) -> dict[str, Any]:
    if request_options is not None and not isinstance(request_options, dict):
        raise BadRequest("options must be an object")
    opts = dict(model.parameters)
    opts.update(validate_options(request_options or {}))
    return opts


async def check_capabilities(gen: Generation, scheduler: Scheduler) -> GGUFInfo:
    info = await scheduler.gguf(gen.model)
    caps = capabilities(gen.model, info)
    name = gen.model.name.display
    if "completion" not in caps:
        raise BadRequest(f'"{name}" does not support generate')
    if gen.tools and "tools" not in caps:
        raise BadRequest(f'"{name}" does not support tools')
    if "thinking" in caps:
        if gen.think is None:  # as upstream: a thinking model thinks unless told not to
            gen.think = True
        gen.think = output.effective_think(gen.model.config, gen.model.template, gen.think)
    elif think_on(gen.think):
        raise BadRequest(f'"{name}" does not support thinking')
    if gen.suffix and "insert" not in caps:
        raise BadRequest(f'"{name}" does not support insert')
    if gen.images or any(m.get("images") for m in gen.messages or ()):
        if "vision" not in caps:
            raise BadRequest(f'"{name}" does not support images')
        if not gen.model.projector_paths:  # vision.block_count in the model GGUF itself
            raise BadRequest(f'"{name}" has its vision encoder inside the model GGUF, which llama.cpp cannot '
                             "load; import the model with its projector as a separate GGUF (mmproj)")
    return info


async def _decode_images(gen: Generation) -> list[Image]:
    """Tag the request's images in its messages (or prompt) and decode them, in tag order."""
    if gen.messages is not None:
        gen.messages, groups = image_prompt.tag_messages(gen.messages)
    elif gen.images:
        gen.prompt = image_prompt.tag_text(gen.prompt or "", len(gen.images), 0)
        groups = [("generate", gen.images)]
    else:
        groups = []
    return await image_prompt.decode(groups) if groups else []


def _chat_messages(gen: Generation) -> list[dict[str, Any]]:
    """Modelfile MESSAGEs, then the model's SYSTEM unless the request brings one, then the chat."""
    request = gen.messages or []
    messages = [dict(m) for m in gen.model.messages]
    if gen.model.system and not any(m.get("role") == "system" for m in request):
        messages.insert(0, {"role": "system", "content": gen.model.system})
    return messages + [dict(m) for m in request]


def _render(gen: Generation, info: GGUFInfo, messages: Sequence[dict[str, Any]]) -> str:
    renderer = None if gen.template else output.renderer(gen.model.config)
    if renderer is not None:  # RENDERER: the prompt is built in code, not by the template
        return renderer.render(messages, gen.tools, gen.think)
    template = gen.template or gen.model.template
    if template:
        return render.render_go(template, messages, gen.tools, gen.think)
    if info.chat_template:
        tokens = info.metadata.get("tokenizer.ggml.tokens") or []

        def token(key: str) -> str:
            idx = info.metadata.get(key)
            return tokens[idx] if isinstance(idx, int) and 0 <= idx < len(tokens) else ""

        return render.render_jinja(
            info.chat_template,
            messages,
            gen.tools,
            token("tokenizer.ggml.bos_token_id"),
            token("tokenizer.ggml.eos_token_id"),
            gen.think,
        )
    return render.render_plain(messages)


async def _count(loaded: Loaded, text: str) -> int:
    async for event in loaded.runner.request({"op": "tokenize", "text": text, "add_special": True}):
        return len(event.get("tokens") or [])
    return 0


async def _render_off_loop(gen: Generation, info: GGUFInfo, messages: Sequence[dict[str, Any]]) -> str:
    """Render in a worker thread: templates and messages scale with the request."""
    return await trio.to_thread.run_sync(_render, gen, info, messages)


async def build_prompt(gen: Generation, info: GGUFInfo, loaded: Loaded) -> str:
    """The prompt text, dropping the oldest non-system messages until it fits in num_ctx (unless the
    request says ``truncate: false``: then the runner refuses a prompt that does not fit)."""
    if gen.messages is None:  # /api/generate
        prompt = gen.prompt or ""
        if gen.raw:
            return prompt
        system = gen.system if gen.system is not None else (gen.model.system or "")
        template = gen.template or gen.model.template
        renderer_wins = not gen.suffix and not gen.template and output.renderer(gen.model.config) is not None
        if template and not renderer_wins:
            return await trio.to_thread.run_sync(
                render.render_generate_go, template, prompt, gen.suffix, system, gen.think)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return await _render_off_loop(gen, info, messages)
    messages = _chat_messages(gen)
    text = await _render_off_loop(gen, info, messages)
    limit = loaded.context_length
    if not gen.truncate:  # the whole conversation or nothing: the runner answers a 400 if it does not fit
        return text
    if len(text) < limit:  # fewer characters than tokens allowed: it fits, no need to count
        return text
    n = await _count(loaded, text)
    if n <= limit:
        return text
    # Drop the fewest oldest non-system messages that make it fit (the last message always stays);
    # fewer messages never render longer, so a binary search needs only log2(n) tokenizations.
    droppable = [i for i, m in enumerate(messages[:-1]) if m.get("role") != "system"]
    if not droppable:
        return text  # nothing to drop: the runner keeps num_keep tokens and the most recent rest

    def without(k: int) -> list[dict[str, Any]]:
        gone = set(droppable[:k])
        return [m for i, m in enumerate(messages) if i not in gone]

    lo, hi = 1, len(droppable)
    best_text = await _render_off_loop(gen, info, without(hi))
    best_n = await _count(loaded, best_text)
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = await _render_off_loop(gen, info, without(mid))
        count = await _count(loaded, candidate)
        if count <= limit:
            hi, best_text, best_n = mid, candidate, count
        else:
            lo = mid + 1
    log.info("truncated %d oldest message(s) of %s to fit num_ctx %d (prompt now %d tokens)",
             hi, gen.model.name.display, limit, best_n)
    return best_text


async def generate(gen: Generation, scheduler: Scheduler) -> AsyncIterator[Chunk]:
    """Run one generation; yields content/thinking/tool-call chunks and a final ``done`` chunk.

    The generation is listed by ``GET /api/requests`` while it runs; cancelled there, it ends with a
    final chunk whose ``done_reason`` is ``"cancelled"`` (see requests_control.py).
    """
    t0 = time.perf_counter_ns()
    tracked = requests_control.begin(gen.model.name.display)
    try:
        info = await check_capabilities(gen, scheduler)
        decoded = await _decode_images(gen)  # before loading: a bad image must not cost a model load
        grammar = None
        if gen.format is not None:
            grammar = await trio.to_thread.run_sync(format_grammar, gen.format)
        async with contextlib.AsyncExitStack() as stack:
            try:
                loaded = await tracked.interruptible(
                    stack.enter_async_context, scheduler.use(gen.model, gen.options, gen.keep_alive_s))
            except RequestCancelled:
                yield _cancelled(tracked, t0, time.perf_counter_ns())
                return
            tracked.mark_running()
            t_loaded = time.perf_counter_ns()
            splitter = _splitter(gen, info)
            prompt = await build_prompt(dataclasses.replace(gen, tools=splitter.prompt_tools), info, loaded)
            splitter.prompt_ready(prompt)
            prompt = _without_rendered_bos(gen, info, prompt)
            if gen.context:
                async for event in loaded.runner.request({"op": "detokenize", "tokens": gen.context}):
                    prompt = str(event.get("text", "")) + prompt
            request = _completion_request(gen, prompt, decoded, grammar)
            async for chunk in _decode(gen, loaded, request, splitter, tracked, (t0, t_loaded)):
                yield chunk
    finally:
        tracked.end()


def _tokenizer_adds_bos(info: GGUFInfo) -> bool:
    """Whether llama.cpp puts BOS in front of the prompt itself (it forces it for gemma4 and lfm2)."""
    meta = info.metadata
    if meta.get("tokenizer.ggml.pre") in ("lfm2", "gemma4") or meta.get("tokenizer.ggml.model") == "gemma4":
        return True
    return meta.get("tokenizer.ggml.add_bos_token") is True


def _without_rendered_bos(gen: Generation, info: GGUFInfo, prompt: str) -> str:
    """A RENDERER's prompt without the BOS text it starts with when the tokenizer adds BOS anyway.

    The text may not even tokenize to the BOS token (another model's spelling), so the runner's check
    for two BOS tokens cannot catch it: the tokenizer's BOS stands for it, as upstream's LeadingBOS does.
    """
    renderer = None if gen.raw or gen.template else output.renderer(gen.model.config)
    bos = renderer.leading_bos if renderer is not None else ""
    if bos and prompt.startswith(bos) and _tokenizer_adds_bos(info):
        return prompt[len(bos):]
    return prompt


def _completion_request(gen: Generation, prompt: str, decoded: list[Image],
                        grammar: str | None) -> dict[str, Any]:
    """The runner's ``completion`` op for ``gen`` and its rendered ``prompt``."""
    request: dict[str, Any] = {"op": "completion", "options": gen.options}
    request.update(truncate=gen.truncate, shift=gen.shift)
    if decoded:
        prompt, sent = image_prompt.place(prompt, decoded)
        if sent:
            request["images"] = [image.to_wire() for image in sent]
    request["prompt"] = prompt
    if grammar is not None:
        request["grammar"] = grammar
    if gen.logprobs:
        request.update(logprobs=True, top_logprobs=gen.top_logprobs)
    if gen.stop_sequences:  # the caller's own stops, on top of the model's (the runner names the hit)
        stops = list(gen.options.get("stop") or [])
        extra = [s for s in gen.stop_sequences if s not in stops]
        request["options"] = {**gen.options, "stop": stops + extra}
    return request


async def _decode(gen: Generation, loaded: Loaded, request: dict[str, Any], splitter: output.OutputSplitter,
                  tracked: Tracked, times: tuple[int, int]) -> AsyncIterator[Chunk]:
    """The runner's events for ``request`` as chunks, until they end or the request is cancelled."""
    generated: list[str] = []
    done = False
    events = cast(AsyncGenerator[dict[str, Any], None],
                  loaded.runner.request(request, on_cancel=tracked.on_cancel))
    async with contextlib.aclosing(events):
        async for event in events:
            if tracked.cancelled:
                break
            if event.get("event") == "token":
                tracked.count_token()
                text = str(event.get("text", ""))
                generated.append(text)
                chunk = _parse(text, splitter)
                chunk.logprobs = event.get("logprobs") or []  # sent even while a parser holds their text
                if chunk.content or chunk.thinking or chunk.tool_calls or chunk.logprobs:
                    yield chunk
            elif event.get("event") == "done":
                done = True
                tail = _flush(splitter)
                if tail.content or tail.thinking or tail.tool_calls:
                    yield tail
                final = _final(gen, event, times)
                tracked.finished(final.metrics["prompt_eval_count"], final.metrics["eval_count"],
                                 final.metrics["eval_duration"])
                if gen.want_context:
                    async for result in loaded.runner.request(
                        {"op": "tokenize", "text": str(request["prompt"]) + "".join(generated),
                         "add_special": False}
                    ):
                        final.context = list(result.get("tokens") or [])
                yield final
    if tracked.cancelled and not done:  # the runner was told to cancel as its events ended
        tail = _flush(splitter)
        if tail.content or tail.thinking or tail.tool_calls:
            yield tail
        yield _cancelled(tracked, *times)


def _final(gen: Generation, event: dict[str, Any], times: tuple[int, int]) -> Chunk:
    """The ``done`` chunk for the runner's ``done`` event."""
    t0, t_loaded = times
    matched = event.get("stop_sequence")
    final = Chunk(done=True, done_reason=str(event.get("done_reason", "stop")),
                  stop_sequence=matched if matched in gen.stop_sequences else None)
    final.metrics = {
        "total_duration": time.perf_counter_ns() - t0,
        "load_duration": t_loaded - t0,
        "prompt_eval_count": int(event.get("prompt_eval_count", 0)),
        "prompt_eval_duration": int(event.get("prompt_eval_duration", 0)),
        "eval_count": int(event.get("eval_count", 0)),
        "eval_duration": int(event.get("eval_duration", 0)),
    }
    if "draft_count" in event:  # speculative decoding: how often the draft guessed right
        drafted, accepted = int(event["draft_count"]), int(event.get("draft_accepted", 0))
        log.debug("%s: draft acceptance %d/%d (%.1f%%) over %d tokens", gen.model.name.display,
                  accepted, drafted, 100.0 * accepted / drafted if drafted else 0.0,
                  final.metrics["eval_count"])
    return final


def _cancelled(tracked: Tracked, t0: int, t_loaded: int) -> Chunk:
    """The final chunk of a generation cancelled through ``DELETE /api/requests/<id>``."""
    log.info("request %s (%s) cancelled after %d tokens", tracked.id, tracked.model, tracked.tokens)
    tracked.finished(0, tracked.tokens, 0)
    final = Chunk(done=True, done_reason="cancelled")
    final.metrics = {"total_duration": time.perf_counter_ns() - t0, "load_duration": t_loaded - t0,
                     "prompt_eval_count": 0, "prompt_eval_duration": 0, "eval_count": tracked.tokens,
                     "eval_duration": 0}
    return final


async def count_prompt_tokens(gen: Generation, scheduler: Scheduler) -> int:
    """How many tokens the whole prompt for ``gen`` takes in the model's tokenizer (loads the model)."""
    info = await check_capabilities(gen, scheduler)
    async with scheduler.use(gen.model, gen.options, gen.keep_alive_s) as loaded:
        return await _count(loaded, await _render_off_loop(gen, info, _chat_messages(gen)))


def tool_call_id() -> str:
    """``call_`` + 8 random lowercase letters/digits, as Ollama names the calls it parses."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(8))


def _with_ids(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": call.get("id") or tool_call_id(), **call} for call in calls]


def _splitter(gen: Generation, info: GGUFInfo) -> output.OutputSplitter:
    """How this reply's output is split: the model's PARSER, else its template's conventions."""
    template = gen.template or gen.model.template or info.chat_template or ""
    return output.OutputSplitter(
        parser=None if gen.raw else output.parser_name(gen.model.config, gen.model.template),
        template=template, tools=gen.tools, last_message=gen.messages[-1] if gen.messages else None,
        think=gen.think,
        thinking_capable="thinking" in capabilities(gen.model, info))


async def render_only(gen: Generation, scheduler: Scheduler) -> str:
    """The prompt ``gen`` would run (upstream's ``_debug_render_only``); loads the model to count tokens."""
    info = await check_capabilities(gen, scheduler)
    async with scheduler.use(gen.model, gen.options, gen.keep_alive_s) as loaded:
        splitter = _splitter(gen, info)
        return await build_prompt(dataclasses.replace(gen, tools=splitter.prompt_tools), info, loaded)


def _parse(text: str, splitter: output.OutputSplitter) -> Chunk:
    chunk = Chunk()
    chunk.content, chunk.thinking, calls = splitter.feed(text)
    chunk.tool_calls = _with_ids(calls)
    return chunk


def _flush(splitter: output.OutputSplitter) -> Chunk:
    chunk = Chunk()
    chunk.content, chunk.thinking, calls = splitter.flush()
    chunk.tool_calls = _with_ids(calls)
    return chunk
