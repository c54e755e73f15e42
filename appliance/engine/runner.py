"""The runner process: one loaded model served to up to N parallel sequences (``ollama runner``).

Why a process: llama.cpp aborts the whole process on some inputs, and killing a process is the
one sure way to stop a stuck generation or free a model's memory.  The server talks to it with
the JSON line protocol in :mod:`appliance.engine.protocol`.

Why this shape: the per-token path decides throughput, so it stays in C as far as possible.
Each step builds ONE ``llama_batch`` holding the next token of every generating sequence plus
prompt chunks of sequences still reading their prompt (continuous batching), calls
``llama_decode`` once, and samples each sequence with its own ``llama_sampler`` chain directly on
llama.cpp's logits (no logits are copied into Python).  A sequence keeps its KV cache between
requests; a new request goes to the idle slot sharing the longest prompt prefix, and only the
tokens after that prefix are evaluated.  With a draft model (:mod:`appliance.engine.speculative`),
a generating sequence puts its draft's guesses in the same batch, each with logits for the check.
With a projector (``--mmproj``, :mod:`appliance.engine.vision`), a prompt's images are items of its
sequence (:mod:`appliance.engine.sequence`): each is evaluated by its own decode call between two
steps' batches (a batch holds tokens or embeddings, never both), one image per step, so that other
sequences keep generating while images are read.
"""

from __future__ import annotations

import argparse
import codecs
import ctypes
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from appliance.api.options import predict_limits
from appliance.engine import protocol, rpc
from appliance.engine.sequence import (
    Item,
    Key,
    close_images,
    cut_after_image,
    cut_before_image,
    items_after,
    keys_of,
)
from appliance.engine.speculative import MAX_DRAFT_TOKENS, Draft, put_token
from appliance.engine.speculative import common_prefix as _common_prefix
from appliance.engine.threads import DecodeThreads, IdleCores, OtherCores
from appliance.engine.vision import ImageChunk, ImageInputError, TextChunk, Vision, VisionError

LLAMA_DEFAULT_SEED = 0xFFFFFFFF
MAX_PARALLEL = 64
#: Micro-batches one step may decode (llama-server's defaults: -b 2048 with -ub 512).
STEP_MICRO_BATCHES = 4
#: A client's ``context`` may span this many context windows; the prompt keeps only one anyway.
MAX_CONTEXT_WINDOWS = 4
#: GBNF text the runner accepts; the server's schema conversion stays far below it.
MAX_GRAMMAR_CHARS = 1 << 20
#: Upstream's answers (400) for a prompt longer than the context with ``truncate: false``, and with
#: ``shift: false`` (it cuts an over-long prompt only by a context shift).
INPUT_TOO_LONG = "the input length exceeds the context length"
PROMPT_TOO_LONG = ("the prompt is longer than the context length currently available to the model; "
                   "shorten the prompt, adjust the context length in settings, or use a model with a "
                   "longer context length")


@dataclass
class Slot:
    """One sequence of the context (``seq_id``) and the request it is serving, if any."""

    seq_id: int
    cached: list[Key] = field(default_factory=list)  # keys of the KV entries in the cache (sequence.py)
    request_id: int | None = None
    pending: list[Item] = field(default_factory=list)  # prompt tokens and images still to evaluate
    has_images: bool = False  # the request's prompt holds images (the draft cannot read them)
    sampler: Any = None  # the sampler chain (penalties, top-k/p, temperature, dist or greedy)
    grammar: Any = None  # a grammar sampler, kept out of the chain (see Runner._sample_constrained)
    options: dict[str, Any] = field(default_factory=dict)
    stops: tuple[str, ...] = ()
    held: str = ""  # generated text not sent yet: it may be the start of a stop sequence
    decoder: Any = None
    last_token: int | None = None  # sampled, not yet decoded
    n_predicted: int = 0
    n_prompt: int = 0
    n_cached: int = 0
    t_start: float = 0.0
    t_prompt_done: float = 0.0
    cancelled: bool = False
    truncated: bool = False
    shift: bool = True  # at a full context, drop old tokens and go on (else stop with "length")
    last_used: float = 0.0
    matched_stop: str | None = None  # the stop string that ended the reply, reported in "done"
    n_drafted: int = 0  # draft tokens the target checked for this request
    n_accepted: int = 0  # ... and agreed with
    top_logprobs: int = -1  # -1: no logprobs; else alternatives per token (0-20), see Runner._logprob
    logprobs_held: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (end, entry), unsent
    n_chars: int = 0  # characters decoded for this request so far (tracked only with logprobs) ...
    n_sent: int = 0  # ... and sent to the server

    @property
    def busy(self) -> bool:
        return self.request_id is not None


class Runner:
    """A loaded model + context + slots, and the decode loop that serves them."""

    def __init__(self, args: argparse.Namespace, out: BinaryIO) -> None:
        import llama_cpp as llama

        self.llama = llama
        self.out = out
        self.out_lock = threading.Lock()
        self.commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
        llama.llama_backend_init()
        if not args.verbose:
            self._silence_logs()
        # Workers become llama.cpp devices before the model loads; the placement reads the load's log.
        self.rpc = rpc.attach(llama, args.rpc.split(","), verbose=args.verbose) if args.rpc else None
        mparams = llama.llama_model_default_params()
        mparams.n_gpu_layers = args.n_gpu_layers
        mparams.main_gpu = args.main_gpu
        mparams.load_mode = llama.LLAMA_LOAD_MODE_MMAP if args.mmap else llama.LLAMA_LOAD_MODE_NONE
        t0 = time.perf_counter()
        self.model = llama.llama_model_load_from_file(args.model.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"unable to load model {args.model}")
        self.vocab = llama.llama_model_get_vocab(self.model)
        self.n_parallel = max(1, min(args.parallel, MAX_PARALLEL))
        n_ctx_slot = max(16, args.ctx)
        # num_batch is the micro-batch llama.cpp computes at once (upstream passes it as -b and -ub);
        # a step may hold several (prompts of clients arriving together), as llama-server's -b 2048
        # -ub 512 does: with one micro-batch per step, 4-8 prompts took 0.72x llama-server's time.
        n_ubatch = max(1, min(args.batch, n_ctx_slot))  # the server clamps too; C ints take no chances
        n_batch = max(n_ubatch, min(STEP_MICRO_BATCHES * n_ubatch, n_ctx_slot * self.n_parallel))
        threads = max(1, min(args.threads, os.cpu_count() or 1))
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = n_ctx_slot * self.n_parallel
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_ubatch
        cparams.n_seq_max = self.n_parallel
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = False
        cparams.no_perf = True
        cparams.flash_attn_type = {"on": 1, "off": 0}.get(args.flash_attention, -1)
        kv = {"f16": 1, "q8_0": 8, "q4_0": 2}.get(args.kv_cache_type)
        if kv is not None:
            cparams.type_k = cparams.type_v = kv
        self.ctx = llama.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("unable to create the llama.cpp context (out of memory?)")
        # A verification puts 1 + k tokens of a sequence in the batch: k stays below the batch size.
        self.draft_max = max(0, min(args.draft_max, MAX_DRAFT_TOKENS, n_batch - 1))
        self.draft: Draft | None = None
        if args.draft and self.draft_max > 0:
            self.draft = Draft(llama, args.draft, self.model, n_ctx_slot=llama.llama_n_ctx_seq(self.ctx),
                               n_parallel=self.n_parallel, n_batch=n_batch, threads=threads,
                               n_gpu_layers=args.n_gpu_layers, use_mmap=args.mmap,
                               flash_attn=cparams.flash_attn_type, kv_type=kv)
        self.vision: Vision | None = None
        if args.mmproj:
            self.vision = _load_vision(self.model, args.mmproj, threads=threads,
                                       use_gpu=args.n_gpu_layers > 0, verbose=args.verbose)
        self.n_ubatch = cparams.n_ubatch
        self._image_turn = 0  # where the search for the next image to evaluate starts (round robin)
        self.adapters = [self._load_adapter(path) for path in args.lora]
        self._apply_adapters(self.ctx)
        self.mem = llama.llama_get_memory(self.ctx)
        self.n_batch = n_batch
        self.n_ctx = llama.llama_n_ctx(self.ctx)
        self.n_ctx_slot = llama.llama_n_ctx_seq(self.ctx)
        self.batch = llama.llama_batch_init(self.n_batch, 0, self.n_parallel)
        self.slots = [Slot(seq_id=i) for i in range(self.n_parallel)]
        self.waiting: list[dict[str, Any]] = []
        self.embed_ctx: Any = None
        self.threads = threads
        self.decode_threads = DecodeThreads(threads, log=_debug, idle_cores=IdleCores(),
                                            other_cores=OtherCores())
        self.n_threads_now = threads
        self.load_duration_ns = int((time.perf_counter() - t0) * 1e9)
        self._piece_buf = ctypes.create_string_buffer(256)
        self.can_shift = bool(llama.llama_memory_can_shift(self.mem))
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        self._candidates: Any = None  # numpy llama_token_data[n_vocab], made on first constrained use
        self.add_bos = bool(llama.llama_vocab_get_add_bos(self.vocab))

    def _load_adapter(self, path: str) -> Any:
        """A LoRA adapter for this model; an adapter that cannot load fails the load (a model must never
        run silently as its base)."""
        adapter = self.llama.llama_adapter_lora_init(ctypes.cast(self.model, ctypes.c_void_p), path.encode())
        if not adapter:
            raise RuntimeError(f"unable to load LoRA adapter {os.path.basename(path)}: not a LoRA GGUF for "
                               "this model (architecture or tensor shapes differ)")
        return adapter

    def _apply_adapters(self, ctx: Any) -> None:
        if not self.adapters:
            return
        n = len(self.adapters)
        setter = self.llama.llama_set_adapters_lora
        handles = (setter.argtypes[1]._type_ * n)(*self.adapters)  # llama_adapter_lora * [n]
        scales = (ctypes.c_float * n)(*([1.0] * n))
        rc = setter(ctx, handles, n, scales)
        if rc != 0:
            raise RuntimeError(f"unable to apply {n} LoRA adapter(s) ({rc})")

    def _silence_logs(self) -> None:
        llama = self.llama

        @llama.llama_log_callback
        def quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
                sys.stderr.write(text.decode("utf-8", "replace"))

        self._log_cb = quiet  # keep a reference: llama.cpp holds the pointer
        llama.llama_log_set(quiet, ctypes.c_void_p(0))

    # -- output ---------------------------------------------------------------------------------

    def send(self, obj: dict[str, Any]) -> None:
        with self.out_lock:
            self.out.write(protocol.encode(obj))
            self.out.flush()

    def send_many(self, objs: list[dict[str, Any]]) -> None:
        if objs:
            with self.out_lock:
                self.out.write(b"".join(protocol.encode(o) for o in objs))
                self.out.flush()

    # -- tokens ---------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 16
        buf = (self.llama.llama_token * n_max)()
        n = self.llama.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, True)
        if n < 0:
            n_max = -n
            buf = (self.llama.llama_token * n_max)()
            n = self.llama.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        buf = self._piece_buf
        n = self.llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    # -- requests -------------------------------------------------------------------------------

    def make_grammar(self, grammar: str) -> Any:
        """A grammar sampler for ``grammar`` (GBNF).  Called on the command-reader thread: ctypes lets
        go of the GIL, so parsing a large grammar never stalls the decode loop."""
        if len(grammar) > MAX_GRAMMAR_CHARS:
            raise BadRequestError(
                f"grammar for structured output is larger than {MAX_GRAMMAR_CHARS} characters")
        g = self.llama.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not g:
            raise BadRequestError("invalid grammar for structured output")
        return g

    def check_tokens(self, tokens: Any) -> list[int]:
        """Token ids from a client, checked against the vocabulary: llama.cpp aborts on a bad one."""
        if not isinstance(tokens, list):
            raise BadRequestError("tokens must be a list of token ids")
        if len(tokens) > MAX_CONTEXT_WINDOWS * self.n_ctx_slot:  # each costs a call in the decode loop
            raise BadRequestError(f"context holds {len(tokens)} tokens, more than {MAX_CONTEXT_WINDOWS} "
                                  f"context windows ({MAX_CONTEXT_WINDOWS * self.n_ctx_slot})")
        for token in tokens:
            if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < self.n_vocab:
                raise BadRequestError(f"invalid token id {token!r}: the vocabulary has {self.n_vocab} tokens")
        return tokens

    def media_prompt(self, cmd: dict[str, Any]) -> list[Item]:
        """A completion's prompt and images as sequence items (text tokens and image chunks).  Called on
        the command-reader thread: preprocessing images never stalls the decode loop."""
        if self.vision is None:
            raise BadRequestError("this model does not support images")
        images = cmd.get("images")
        if not isinstance(images, list):
            raise BadRequestError("images must be a list")
        pictures = [_wire_image(image, i) for i, image in enumerate(images)]
        prompt = self.vision.tokenize(str(cmd.get("prompt", "")), pictures,
                                      add_special=bool(cmd.get("add_special", True)))
        items: list[Item] = []
        try:
            for chunk in prompt.chunks:
                if isinstance(chunk, TextChunk):
                    items.extend(chunk.tokens)
                    continue
                items.append(chunk)
                if self.vision.non_causal and chunk.n_tokens > self.n_ubatch:  # llama.cpp would abort
                    raise ImageInputError(f"an image of {chunk.n_tokens} tokens needs a micro-batch "
                                          f"(num_batch) of at least {chunk.n_tokens}; this model runs with "
                                          f"{self.n_ubatch}")
            if not items or isinstance(items[-1], ImageChunk):  # an image decode gives no logits to sample
                raise BadRequestError("the prompt must end with text after its last image")
        except BaseException:
            prompt.close()
            raise
        return items

    def _make_sampler(self, opts: dict[str, Any]) -> Any:
        llama = self.llama
        params = llama.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = llama.llama_sampler_chain_init(params)
        add = lambda s: llama.llama_sampler_chain_add(chain, s)  # noqa: E731
        repeat_penalty = float(opts.get("repeat_penalty", 1.0))
        presence, frequency = (
            float(opts.get("presence_penalty", 0.0)),
            float(opts.get("frequency_penalty", 0.0)),
        )
        repeat_last_n = opts["repeat_last_n"]  # clamped by predict_limits to [0, n_ctx_slot]
        if repeat_last_n and (repeat_penalty != 1.0 or presence or frequency):
            n_vocab = llama.llama_vocab_n_tokens(self.vocab)
            penalties = llama.llama_sampler_init_penalties(n_vocab, repeat_last_n, repeat_penalty, frequency,
                                                           presence)
            add(penalties)
        temperature = float(opts.get("temperature", 0.8))
        if temperature <= 0:
            add(llama.llama_sampler_init_greedy())
            return chain
        top_k = opts["top_k"]
        if top_k > 0:
            add(llama.llama_sampler_init_top_k(top_k))
        typical_p = float(opts.get("typical_p", 1.0))
        if 0 < typical_p < 1:
            add(llama.llama_sampler_init_typical(typical_p, 1))
        top_p = float(opts.get("top_p", 0.9))
        if 0 < top_p < 1:
            add(llama.llama_sampler_init_top_p(top_p, 1))
        min_p = float(opts.get("min_p", 0.0))
        if min_p > 0:
            add(llama.llama_sampler_init_min_p(min_p, 1))
        add(llama.llama_sampler_init_temp(temperature))
        seed = int(opts.get("seed", -1))
        add(llama.llama_sampler_init_dist(LLAMA_DEFAULT_SEED if seed < 0 else seed & 0xFFFFFFFF))
        return chain

    def _pick_slot(self, keys: list[Key]) -> Slot | None:
        """The idle slot whose cache shares the longest prefix with ``keys`` (LRU on ties)."""
        best, best_len = None, -1
        for slot in self.slots:
            if slot.busy:
                continue
            n = _common_prefix(slot.cached, keys)
            if n > best_len or (n == best_len and best is not None and slot.last_used < best.last_used):
                best, best_len = slot, n
        return best

    def start_completion(self, cmd: dict[str, Any]) -> None:
        try:
            self._start_completion(cmd)
        except BaseException:
            self._free_grammar_of(cmd)
            raise

    def _free_grammar_of(self, cmd: dict[str, Any]) -> None:
        grammar = cmd.pop("grammar_sampler", None)
        if grammar is not None:
            self.llama.llama_sampler_free(grammar)
        close_images(cmd.pop("prompt_items", None) or ())

    def _start_completion(self, cmd: dict[str, Any]) -> None:
        opts = cmd.get("options") or {}
        if not isinstance(opts, dict):
            raise BadRequestError("options must be an object")
        opts = {**opts, **predict_limits(opts, self.n_ctx_slot, self.n_vocab)}
        top_logprobs = _top_logprobs(cmd)
        media: list[Item] | None = cmd.get("prompt_items")
        tokens: list[Item] = media if media is not None else cast("list[Item]", self.tokenize(
            cmd.get("prompt", ""), bool(cmd.get("add_special", True))))
        bos = self.llama.llama_vocab_bos(self.vocab)
        if len(tokens) > 1 and tokens[0] == bos and tokens[1] == bos:  # template wrote BOS itself
            del tokens[0]
        if not tokens:
            tokens = [self.llama.llama_vocab_bos(self.vocab)]
        keys = keys_of(tokens) if media is not None else cast("list[Key]", tokens)
        limit = self.n_ctx_slot - 1
        if media is not None and len(keys) > limit:  # truncating would cut images or the text about them
            raise BadRequestError(f"the prompt and its images take {len(keys)} tokens, more than the "
                                  f"context allows ({limit}); send fewer images or raise num_ctx")
        if len(keys) > limit and cmd.get("truncate") is False:
            raise BadRequestError(INPUT_TOO_LONG)
        if len(keys) > limit and cmd.get("shift") is False:  # as upstream: truncating is a context shift
            raise BadRequestError(PROMPT_TOO_LONG)
        slot = self._pick_slot(keys)
        if slot is None:
            self.waiting.append(cmd)
            return
        cmd.pop("prompt_items", None)
        truncated = False
        if len(tokens) > limit:  # keep num_keep tokens from the start and the most recent rest
            keep = min(opts["num_keep"], limit // 2)
            tokens = tokens[:keep] + tokens[len(tokens) - (limit - keep) :]
            keys = cast("list[Key]", tokens)  # text only: prompts with images are never truncated
            truncated = True
        sampler = self._make_sampler(opts)
        grammar = cmd.pop("grammar_sampler", None)
        n_common = _common_prefix(slot.cached, keys)
        if n_common == len(keys):  # all cached: re-evaluate the last token to get fresh logits
            n_common -= 1
        n_common = cut_before_image(keys, n_common)  # an image is reused whole or not at all
        if n_common < len(slot.cached):
            if not self.llama.llama_memory_seq_rm(self.mem, slot.seq_id, n_common, -1):
                self.llama.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
                n_common = 0
            del slot.cached[n_common:]
        n_last = opts["repeat_last_n"]
        if n_last:  # penalties see the prompt too (the grammar is not in the chain: it sees only output)
            for tok in keys[-n_last:]:
                if isinstance(tok, int):
                    self.llama.llama_sampler_accept(sampler, tok)
        slot.request_id = int(cmd["id"])
        slot.pending = tokens[n_common:] if media is None else items_after(tokens, n_common)
        slot.has_images = media is not None
        slot.sampler = sampler
        slot.grammar = grammar
        slot.options = opts
        slot.stops = tuple(s for s in (opts.get("stop") or []) if s)
        slot.held = ""
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.last_token = None
        slot.n_predicted = 0
        slot.n_prompt = len(keys)  # image tokens count, as upstream reports them
        slot.n_cached = n_common
        slot.t_start = time.perf_counter()
        slot.t_prompt_done = 0.0
        slot.cancelled = False
        slot.truncated = truncated
        slot.shift = cmd.get("shift") is not False
        slot.matched_stop = None
        slot.n_drafted = slot.n_accepted = 0
        slot.top_logprobs, slot.logprobs_held, slot.n_chars, slot.n_sent = top_logprobs, [], 0, 0

    def _finish(self, slot: Slot, reason: str, events: list[dict[str, Any]]) -> None:
        now = time.perf_counter()
        tail = slot.held + slot.decoder.decode(b"", final=True)
        held = [entry for _, entry in slot.logprobs_held]  # a stop sequence's tokens too: count = eval_count
        if (tail or held) and reason != "cancel":
            events.append({"id": slot.request_id, "event": "token", "text": tail})
            if held:
                events[-1]["logprobs"] = held
        slot.logprobs_held = []
        prompt_done = slot.t_prompt_done or now
        events.append(
            {
                "id": slot.request_id,
                "event": "done",
                "done_reason": reason,
                "prompt_eval_count": slot.n_prompt,
                "prompt_eval_duration": int((prompt_done - slot.t_start) * 1e9),
                "eval_count": slot.n_predicted,
                "eval_duration": int((now - prompt_done) * 1e9),
                "prompt_cached": slot.n_cached,
                "truncated": slot.truncated,
                "stop_sequence": slot.matched_stop,
            }
        )
        if self.draft is not None:
            events[-1].update(draft_count=slot.n_drafted, draft_accepted=slot.n_accepted)
        self._free_samplers(slot)
        close_images(slot.pending)
        slot.request_id = None
        slot.pending = []
        slot.last_token = None
        slot.last_used = now

    def cancel(self, request_id: int) -> None:
        for slot in self.slots:
            if slot.request_id == request_id:
                slot.cancelled = True
        for cmd in [c for c in self.waiting if c.get("id") == request_id]:
            self._free_grammar_of(cmd)
        self.waiting = [c for c in self.waiting if c.get("id") != request_id]

    # -- the decode step ------------------------------------------------------------------------

    def _shift_context(self, slot: Slot) -> bool:
        """Free half of the slot's context after num_keep tokens (Ollama's context shift)."""
        n_past = len(slot.cached)
        keep = min(slot.options["num_keep"], n_past // 2)
        discard = (n_past - keep) // 2
        if slot.has_images:  # drop whole images only
            keep = cut_before_image(slot.cached, keep)
            discard = cut_after_image(slot.cached, keep + discard) - keep
        if not self.can_shift or discard <= 0:
            return False
        self.llama.llama_memory_seq_rm(self.mem, slot.seq_id, keep, keep + discard)
        self.llama.llama_memory_seq_add(self.mem, slot.seq_id, keep + discard, n_past, -discard)
        del slot.cached[keep : keep + discard]
        if self.draft is not None:
            self.draft.shift(slot.seq_id, keep, discard)
        return True

    def step(self) -> None:
        """One llama_decode over every active slot, then sampling and output for each."""
        llama, batch = self.llama, self.batch
        events: list[dict[str, Any]] = []
        for slot in self.slots:
            if slot.busy and slot.cancelled:
                self._finish(slot, "cancel", events)
        if self.vision is not None:
            self._evaluate_next_image(events)
        n = 0
        outputs: list[tuple[Slot, int, list[int]]] = []  # slot, row of its first logits, draft tokens
        participants: list[Slot] = []
        generating: list[Slot] = []
        for slot in self.slots:
            if not slot.busy or slot.last_token is None:
                continue
            if len(slot.cached) + 1 >= self.n_ctx_slot and not (slot.shift and self._shift_context(slot)):
                self._finish(slot, "length", events)
                continue
            generating.append(slot)
        guesses = self._draft(generating) if self.draft is not None else {}
        # Generating slots first: one token each (plus the draft's guesses, each with logits for the
        # check), so they never starve behind a long prompt.
        for slot in generating:
            assert slot.last_token is not None
            drafted = guesses.get(slot.seq_id, [])
            outputs.append((slot, n, drafted))
            participants.append(slot)
            for j, tok in enumerate([slot.last_token, *drafted]):
                put_token(self.batch, n, tok, len(slot.cached) + j, slot.seq_id, True)
                n += 1
            slot.cached.append(slot.last_token)
            slot.last_token = None
        for slot in self.slots:
            if not slot.busy or not slot.pending or n >= self.n_batch:
                continue
            take = min(len(slot.pending), self.n_batch - n)
            if slot.has_images:  # text up to the next image, which has its own decode
                take = next((i for i, item in enumerate(slot.pending[:take]) if isinstance(item, ImageChunk)),
                            take)
                if take == 0:
                    continue
            chunk, slot.pending = slot.pending[:take], slot.pending[take:]
            participants.append(slot)
            for j, tok in enumerate(cast("list[int]", chunk)):  # text only: cut before the next image
                last = not slot.pending and j == take - 1
                put_token(self.batch, n, tok, len(slot.cached), slot.seq_id, last)
                slot.cached.append(tok)
                if last:
                    outputs.append((slot, n, []))
                n += 1
        if n == 0:
            self.send_many(events)
            return
        batch.n_tokens = n
        self._set_threads(self.decode_threads.for_step(n))
        t0 = time.perf_counter()
        rc = llama.llama_decode(self.ctx, batch)
        if rc == 0:
            self.decode_threads.observe(time.perf_counter() - t0, n)
        else:
            for slot in participants:
                events.append(
                    {
                        "id": slot.request_id,
                        "event": "error",
                        "error": f"llama_decode failed ({rc}): context full or out of memory",
                    }
                )
                self._reset_slot(slot)
            self.send_many(events)
            return
        now = time.perf_counter()
        for slot, idx, drafted in outputs:
            if slot.t_prompt_done == 0.0:
                slot.t_prompt_done = now
            if drafted:
                self._verify(slot, idx, drafted, events)
                continue
            if slot.grammar is not None:
                token = self._sample_constrained(slot, idx)
            else:
                token = llama.llama_sampler_sample(slot.sampler, self.ctx, idx)
            self._emit(slot, token, events, idx)
        self.send_many(events)

    def _set_threads(self, threads: int) -> None:
        if threads != self.n_threads_now:
            self.llama.llama_set_n_threads(self.ctx, threads, threads)
            if self.draft is not None:
                self.draft.set_threads(threads)
            self.n_threads_now = threads

    def _evaluate_next_image(self, events: list[dict[str, Any]]) -> None:
        """Put one waiting image into its slot's KV cache (slots take turns): its own decode call, outside
        the shared batch; one per step, so that generating slots advance between images."""
        assert self.vision is not None
        n = len(self.slots)
        for k in range(n):
            slot = self.slots[(self._image_turn + k) % n]
            if slot.busy and slot.pending and isinstance(slot.pending[0], ImageChunk):
                break
        else:
            return
        self._image_turn = (slot.seq_id + 1) % n
        image = slot.pending.pop(0)
        assert isinstance(image, ImageChunk)
        try:
            self.vision.evaluate(self.ctx, image, seq_id=slot.seq_id, n_past=len(slot.cached))
        except (ImageInputError, VisionError) as exc:
            status = 400 if isinstance(exc, ImageInputError) else 500
            events.append({"id": slot.request_id, "event": "error", "error": str(exc), "status": status})
            self._reset_slot(slot)  # the image may be in the cache in part
            return
        finally:
            image.close()
        slot.cached.extend(image.cache_keys)

    def _draft(self, generating: list[Slot]) -> dict[int, list[int]]:
        """The draft's guesses for the generating slots that may use them (see speculative.py).

        A slot with a grammar decodes without: the grammar would have to judge every guess, and the
        constrained answers it serves are short.  Guesses never run past the request's num_predict
        or the slot's context, so every one of them can be checked."""
        assert self.draft is not None
        wants = []
        spare = self.n_batch - len(generating)  # the batch holds every generating slot's own token first
        for slot in generating:
            if slot.grammar is not None or slot.last_token is None or slot.has_images:
                continue
            room = self.n_ctx_slot - 2 - len(slot.cached)
            k = min(self.draft_max, room, self._predict_limit(slot) - slot.n_predicted - 1, spare)
            if k > 0:
                spare -= k
                # no image keys in a slot without images: the draft sees token ids only
                wants.append((slot.seq_id, cast("list[int]", slot.cached), slot.last_token, k))
        return self.draft.propose(wants) if wants else {}

    def _verify(self, slot: Slot, idx: int, drafted: list[int], events: list[dict[str, Any]]) -> None:
        """Sample the slot's positions in order with its own chain, keep the guesses the target agrees
        with, and emit each sampled token as the token-by-token path would: the text cannot differ."""
        llama = self.llama
        for j in range(len(drafted) + 1):
            token = llama.llama_sampler_sample(slot.sampler, self.ctx, idx + j)
            agreed = j < len(drafted) and token == drafted[j]
            if j < len(drafted):
                slot.n_drafted += 1
                slot.n_accepted += agreed
            self._emit(slot, token, events, idx + j)  # the target's logits at this position: exact logprobs
            if not agreed or not slot.busy:
                break
            slot.cached.append(token)  # its KV entry came with the check
            slot.last_token = None
        # The entries of guesses after the first disagreement (or after the end) are wrong: drop them.
        llama.llama_memory_seq_rm(self.mem, slot.seq_id, len(slot.cached), -1)
        assert self.draft is not None
        self.draft.truncate(slot.seq_id, len(slot.cached))

    def _reset_slot(self, slot: Slot) -> None:
        self.llama.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
        if self.draft is not None:
            self.draft.reset(slot.seq_id)
        slot.cached = []
        self._free_samplers(slot)
        close_images(slot.pending)
        slot.request_id, slot.pending, slot.last_token = None, [], None

    def _free_samplers(self, slot: Slot) -> None:
        for sampler in (slot.sampler, slot.grammar):
            if sampler is not None:
                self.llama.llama_sampler_free(sampler)
        slot.sampler = slot.grammar = None

    def _sample_constrained(self, slot: Slot, idx: int) -> int:
        """Sample under a grammar the way llama.cpp's own server does: let the chain pick a token from
        all candidates, check just that token against the grammar, and only if the grammar rejects it
        apply the grammar to the whole vocabulary and pick again.  Applying the grammar to every
        candidate at every step (as a chain holding the grammar does) costs milliseconds per token."""
        import numpy as np

        llama = self.llama
        if self._candidates is None:
            self._candidates = np.zeros(self.n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
            self._ids = np.arange(self.n_vocab, dtype=np.int32)
        cand = self._candidates
        logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(self.ctx, idx), shape=(self.n_vocab,))

        def pick(*samplers: Any) -> int:
            cand["id"] = self._ids
            cand["logit"] = logits
            cand["p"] = 0.0
            array = llama.llama_token_data_array(
                data=cand.ctypes.data_as(ctypes.POINTER(llama.llama_token_data)),
                size=self.n_vocab, selected=-1, sorted=False)
            for sampler in samplers:
                llama.llama_sampler_apply(sampler, ctypes.byref(array))
            return int(array.data[array.selected].id)

        token = pick(slot.sampler)
        single = llama.llama_token_data(id=token, logit=1.0, p=0.0)
        check = llama.llama_token_data_array(data=ctypes.pointer(single), size=1, selected=-1, sorted=False)
        llama.llama_sampler_apply(slot.grammar, ctypes.byref(check))
        if single.logit == float("-inf"):
            token = pick(slot.grammar, slot.sampler)
        llama.llama_sampler_accept(slot.grammar, token)
        llama.llama_sampler_accept(slot.sampler, token)
        return token

    def _emit(self, slot: Slot, token: int, events: list[dict[str, Any]], idx: int) -> None:
        """Output for the token sampled from the logits of batch row ``idx``."""
        if self.llama.llama_vocab_is_eog(self.vocab, token):
            self._finish(slot, "stop", events)
            return
        slot.n_predicted += 1
        piece = self.piece(token)
        text = slot.held + slot.decoder.decode(piece)
        if slot.top_logprobs >= 0:
            self._hold_logprob(slot, self._logprob(slot, token, piece, idx), len(text) - len(slot.held))
        if slot.stops:
            for stop in slot.stops:
                at = text.find(stop)
                if at >= 0:
                    slot.held = text[:at]
                    slot.matched_stop = stop
                    self._finish(slot, "stop", events)
                    return
            hold = _partial_stop_suffix(text, slot.stops)
            slot.held, text = text[len(text) - hold :] if hold else "", text[: len(text) - hold]
        else:
            slot.held = ""
        if text:
            events.append({"id": slot.request_id, "event": "token", "text": text})
            if slot.top_logprobs >= 0:
                self._release_logprobs(slot, events[-1])
        limit = self._predict_limit(slot)
        if 0 <= limit <= slot.n_predicted:
            self._finish(slot, "length", events)
            return
        slot.last_token = token

    # -- logprobs (only for requests that ask: the path without them computes nothing) ------------
    #
    # An entry travels with its token's text: in the token event that sends the last character the
    # token helped to write.  Text held back (a possible stop sequence, or the first bytes of a
    # character split over tokens) keeps its entries back too, so a streamed chunk carries the entries
    # of exactly the tokens that wrote it; entries of a matched stop sequence's tokens go with the last
    # event, whose text may be empty, so that a reply has one entry per token of eval_count.

    def _logprob(self, slot: Slot, token: int, piece: bytes, idx: int) -> dict[str, Any]:
        """Upstream's entry for ``token``: log-softmax of the model's raw logits at batch row ``idx`` (the
        distribution before penalties, temperature, truncation or a grammar, as llama-server reports it),
        plus the ``slot.top_logprobs`` most likely tokens, most likely first (lower id first on ties)."""
        import numpy as np

        raw = self.llama.llama_get_logits_ith(self.ctx, idx)
        logits = np.ctypeslib.as_array(raw, shape=(self.n_vocab,)).astype(np.float64)
        peak = logits.max()
        logsum = peak + np.log(np.exp(logits - peak).sum())
        entry = _token_logprob(piece, logits[token] - logsum)
        k = min(slot.top_logprobs, self.n_vocab)
        if k > 0:
            ids = np.argpartition(-logits, k - 1)[:k]
            ids = ids[np.lexsort((ids, -logits[ids]))]
            entry["top_logprobs"] = [_token_logprob(self.piece(int(i)), logits[i] - logsum) for i in ids]
        return entry

    def _hold_logprob(self, slot: Slot, entry: dict[str, Any], n_new_chars: int) -> None:
        slot.n_chars += n_new_chars
        partial = bool(slot.decoder.getstate()[0])  # bytes of a character still to come: it ends later
        slot.logprobs_held.append((slot.n_chars + partial, entry))

    def _release_logprobs(self, slot: Slot, event: dict[str, Any]) -> None:
        slot.n_sent += len(event["text"])
        n_done = sum(1 for end, _ in slot.logprobs_held if end <= slot.n_sent)
        if n_done:
            event["logprobs"] = [entry for _, entry in slot.logprobs_held[:n_done]]
            del slot.logprobs_held[:n_done]

    def _predict_limit(self, slot: Slot) -> int:
        limit = int(slot.options["num_predict"])
        return self.n_ctx_slot - slot.n_prompt if limit == -2 else limit

    # -- embeddings -----------------------------------------------------------------------------

    def embed(self, cmd: dict[str, Any]) -> dict[str, Any]:
        llama = self.llama
        if self.embed_ctx is None:
            cparams = llama.llama_context_default_params()
            cparams.n_ctx = self.n_ctx_slot
            cparams.n_batch = cparams.n_ubatch = self.n_ctx_slot
            cparams.n_seq_max = 1
            cparams.embeddings = True
            cparams.n_threads = cparams.n_threads_batch = self.threads
            cparams.pooling_type = (
                llama.LLAMA_POOLING_TYPE_UNSPECIFIED if self._has_pooling() else llama.LLAMA_POOLING_TYPE_MEAN
            )
            self.embed_ctx = llama.llama_init_from_model(self.model, cparams)
            if not self.embed_ctx:
                raise RuntimeError("unable to create an embedding context")
            self._apply_adapters(self.embed_ctx)
        ctx = self.embed_ctx
        n_embd = llama.llama_model_n_embd_out(self.model) or llama.llama_model_n_embd(self.model)
        limit = llama.llama_n_ctx(ctx)
        vectors, total = [], 0
        for text in cmd.get("inputs", []):
            tokens = self.tokenize(text, True)
            if not tokens:  # "" (without a BOS token): llama_decode refuses an empty batch
                raise BadRequestError("cannot embed an empty input")
            if len(tokens) > limit:
                if not cmd.get("truncate", True):
                    raise BadRequestError(INPUT_TOO_LONG)
                tokens = tokens[:limit]
            total += len(tokens)
            llama.llama_memory_clear(llama.llama_get_memory(ctx), True)
            batch = llama.llama_batch_init(len(tokens), 0, 1)
            try:
                for i, tok in enumerate(tokens):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = True
                batch.n_tokens = len(tokens)
                if llama.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed while embedding")
                ptr = llama.llama_get_embeddings_seq(ctx, 0)
                vec = [float(ptr[i]) for i in range(n_embd)]
            finally:
                llama.llama_batch_free(batch)
            vectors.append(vec)
        return {"embeddings": vectors, "prompt_eval_count": total}

    def _has_pooling(self) -> bool:
        buf = ctypes.create_string_buffer(64)
        arch = ctypes.create_string_buffer(128)
        self.llama.llama_model_meta_val_str(self.model, b"general.architecture", arch, len(arch))
        key = arch.value + b".pooling_type"
        return self.llama.llama_model_meta_val_str(self.model, key, buf, len(buf)) >= 0

    # -- the loop -------------------------------------------------------------------------------

    def handle(self, cmd: dict[str, Any]) -> bool:
        """Act on one command; False means shut down."""
        op = cmd.get("op")
        rid = cmd.get("id")
        try:
            if op == "completion":
                self.start_completion(cmd)
            elif op == "cancel":
                self.cancel(int(cmd["id"]))
            elif op == "tokenize":
                tokens = self.tokenize(str(cmd.get("text", "")), bool(cmd.get("add_special", False)))
                self.send({"id": rid, "event": "result", "tokens": tokens})
            elif op == "detokenize":
                tokens = self.check_tokens(cmd.get("tokens", []))
                text = b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")
                self.send({"id": rid, "event": "result", "text": text})
            elif op == "embed":
                self.send({"id": rid, "event": "result", **self.embed(cmd)})
            elif op == "shutdown":
                return False
            else:
                self.send({"id": rid, "event": "error", "error": f"unknown op {op!r}"})
        except Exception as exc:  # one bad request must not end the runner
            status = 400 if isinstance(exc, BadRequestError) else 500
            self.send(
                {"id": rid, "event": "error", "error": str(exc) or type(exc).__name__, "status": status}
            )
        return True

    def run(self) -> None:
        self.send(
            {
                "event": "ready",
                "n_ctx": self.n_ctx,
                "n_ctx_slot": self.n_ctx_slot,
                "n_parallel": self.n_parallel,
                "n_batch": self.n_batch,
                "n_ctx_train": self.llama.llama_model_n_ctx_train(self.model),
                "n_embd": self.llama.llama_model_n_embd(self.model),
                "model_size": self.llama.llama_model_size(self.model),
                "vision": self.vision is not None,
                "load_duration": self.load_duration_ns,
                "pid": os.getpid(),
                **({"rpc": self.rpc.report()} if self.rpc else {}),
            }
        )
        while True:
            # Queued completions count as work: a slot freed by a cancel must pick them up
            # before the loop blocks waiting for new commands.
            active = any(s.busy for s in self.slots) or bool(self.waiting)
            if not active:
                self.decode_threads.idle()  # a thread-count trial never spans idle time
            try:
                cmd = self.commands.get(block=not active)
            except queue.Empty:
                cmd = False  # type: ignore[assignment]
            while cmd is not False:
                if cmd is None or not self.handle(cmd):
                    return
                try:
                    cmd = self.commands.get_nowait()
                except queue.Empty:
                    cmd = False  # type: ignore[assignment]
            while self.waiting and any(not s.busy for s in self.slots):
                self.start_completion(self.waiting.pop(0))
            if any(s.busy for s in self.slots):
                self.step()

    def close(self) -> None:
        llama = self.llama
        llama.llama_batch_free(self.batch)
        for slot in self.slots:
            if slot.sampler is not None:
                llama.llama_sampler_free(slot.sampler)
        if self.embed_ctx is not None:
            llama.llama_free(self.embed_ctx)
        if self.draft is not None:
            self.draft.close()
        if self.vision is not None:
            self.vision.close()
        llama.llama_free(self.ctx)
        llama.llama_model_free(self.model)


class BadRequestError(ValueError):
    """A request the runner refuses (reported to the client as 400)."""


def _debug(text: str) -> None:
    """A line for the server's debug log (it logs the runner's stderr at debug level)."""
    sys.stderr.write(f"runner: {text}\n")


def _top_logprobs(cmd: dict[str, Any]) -> int:
    """-1 when a completion wants no logprobs, else how many alternatives each token's entry lists."""
    if not cmd.get("logprobs"):
        return -1
    top = cmd.get("top_logprobs") or 0
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= protocol.MAX_TOP_LOGPROBS:
        raise BadRequestError(f"top_logprobs must be between 0 and {protocol.MAX_TOP_LOGPROBS}")
    return top


def _token_logprob(piece: bytes, logprob: float) -> dict[str, Any]:
    """``{"token", "logprob", "bytes"}``: the token's text (U+FFFD for the part of a character it holds)
    and its own bytes, which a client joins to rebuild characters split over tokens."""
    entry: dict[str, Any] = {"token": piece.decode("utf-8", "replace"), "logprob": float(logprob)}
    if piece:
        entry["bytes"] = list(piece)
    return entry


def _partial_stop_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


def _load_vision(model: Any, projector: str, *, threads: int, use_gpu: bool, verbose: bool) -> Vision:
    """The model's projector, or a load error that says why (never a text-only runner)."""
    vision = Vision(model, projector, n_threads=threads, use_gpu=use_gpu, verbose=verbose)
    if vision.mrope:  # positions would have to be tracked apart from cache cells (see vision.py)
        vision.close()
        raise VisionError("this model's projector uses M-RoPE (the Qwen2-VL family and later), which is "
                          "not supported yet")
    return vision


def _wire_image(image: Any, index: int) -> tuple[int, int, bytes]:
    """One image of the protocol (``{"width", "height", "rgb": base64}``) as width, height, pixels."""
    import base64
    import binascii

    if not isinstance(image, dict):
        raise BadRequestError(f"images[{index}] must be an object")
    width, height, rgb = image.get("width"), image.get("height"), image.get("rgb")
    if not isinstance(width, int) or not isinstance(height, int) or not isinstance(rgb, str):
        raise BadRequestError(f"images[{index}] needs integer width and height and base64 rgb")
    try:
        return width, height, base64.b64decode(rgb, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"images[{index}]: rgb is not base64") from exc


def _prepare(runner: Runner, cmd: dict[str, Any]) -> bool:
    """A completion's images and grammar, made ready on the reader thread; False (and an error sent to
    the server) when the request cannot run."""
    try:
        if cmd.get("images"):
            cmd["prompt_items"] = runner.media_prompt(cmd)
            del cmd["images"]  # the pixels are in the chunks now
        if cmd.get("grammar"):
            cmd["grammar_sampler"] = runner.make_grammar(str(cmd["grammar"]))
    except Exception as exc:  # one bad request must not end the runner
        close_images(cmd.pop("prompt_items", None) or ())
        status = 400 if isinstance(exc, BadRequestError | ImageInputError) else 500
        runner.send({"id": cmd.get("id"), "event": "error", "error": str(exc) or type(exc).__name__,
                     "status": status})
        return False
    return True


def _reader(stream: BinaryIO, runner: Runner) -> None:
    """Read commands; a completion's grammar and images are prepared here, off the decode loop's thread."""
    for line in stream:
        if not line.strip():
            continue
        try:
            cmd = protocol.decode(line)
        except ValueError as exc:
            sys.stderr.write(f"runner: bad protocol line: {exc}\n")
            continue
        if cmd.get("op") == "completion" and not _prepare(runner, cmd):
            continue
        runner.commands.put(cmd)
    runner.commands.put(None)  # the server went away: shut down


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ollama runner")
    p.add_argument("--model", required=True)
    p.add_argument("--ctx", type=int, default=4096, help="context tokens per parallel sequence")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--n-gpu-layers", type=int, default=0)
    p.add_argument("--main-gpu", type=int, default=0)
    p.add_argument("--no-mmap", dest="mmap", action="store_false")
    p.add_argument("--flash-attention", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--kv-cache-type", default="")
    p.add_argument("--lora", action="append", default=[], help="a LoRA adapter (GGUF) applied at scale 1")
    p.add_argument("--draft", default="", help="a draft model for speculative decoding")
    p.add_argument("--draft-max", type=int, default=0, help="tokens the draft guesses per step (0: none)")
    p.add_argument("--mmproj", default="", help="the model's vision projector (images in prompts)")
    p.add_argument("--rpc", default="", help="llama.cpp RPC workers host:port,... to spread the layers over")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    """Entry point of ``ollama runner``: protocol on the original stdout, everything else to stderr."""
    args = parse_args(argv)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    os.dup2(2, 1)  # llama.cpp or a stray print must never corrupt the protocol stream
    sys.stdout = sys.stderr
    try:
        runner = Runner(args, proto_out)
    except Exception as exc:
        proto_out.write(protocol.encode({"event": "error", "error": str(exc)}))
        proto_out.flush()
        return 1
    threading.Thread(target=_reader, args=(sys.stdin.buffer, runner), daemon=True).start()
    code = 0
    try:
        runner.run()
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        runner.close()  # explicit: Llama objects freed at interpreter exit crash frozen builds
        proto_out.flush()
        sys.stderr.flush()
        # The stdin reader thread is blocked in read(); a normal interpreter exit would abort on its
        # buffer lock, so leave at once now that everything is freed and flushed.
        os._exit(code)
