"""Speculative decoding: a small draft model, loaded in the runner beside the target, guesses the next
few tokens of every generating sequence, and the target checks all of them in the one decode it runs
anyway (upstream Ollama's Modelfile ``DRAFT``).

Why it can only help: a decode of a few tokens per sequence costs the target about as much as a decode
of one, because it is bound by reading the weights, not by arithmetic.  When the draft guesses right,
one target step yields several tokens.

Why the output stays exactly the target's: the runner samples each checked position with the request's
own sampler chain, in order, and keeps a draft token only when it equals what the target sampled there
(see ``Runner._verify``).  Every emitted token is therefore the target's own choice given the tokens
before it, which makes greedy output identical to decoding without a draft, and sampled output follow
the target's distribution (a seeded request even draws the same random numbers: one per emitted token).
This is what llama.cpp's server does; the rejection scheme of Leviathan et al. would accept more draft
tokens at high temperatures, but needs the draft's probabilities for every proposed token.

The draft keeps its own KV cache, one sequence per slot, each as long as a slot's context, and
remembers which tokens it holds per sequence.  Before drafting it catches up lazily with the tokens the
target has accepted since (the prompt the first time, then the accepted tokens of the previous step), so
the prefix cache, context shifts and rejected guesses need no bookkeeping beyond a common prefix.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

#: draft_num_predict is clamped to this: beyond it a wrong early guess wastes the rest of the batch.
MAX_DRAFT_TOKENS = 32
#: llama.cpp's own limits for a compatible draft (common/speculative.cpp): vocabulary sizes may differ
#: by this many tokens (padding, added tokens), and every token from this id on must read the same.
VOCAB_MAX_SIZE_DIFFERENCE = 128
VOCAB_CHECK_START_TOKEN_ID = 5


class DraftLoadError(RuntimeError):
    """The draft model cannot be used with this target (the load fails with this message)."""


def vocab_mismatch(llama: Any, target: Any, draft: Any) -> str | None:
    """Why the draft vocabulary ``draft`` cannot stand in for ``target``'s, or None when it can."""
    kinds = llama.llama_vocab_type(target), llama.llama_vocab_type(draft)
    if kinds[0] != kinds[1]:
        return f"vocabulary type differs (target {kinds[0]}, draft {kinds[1]})"
    for what, add, token in (("BOS", llama.llama_vocab_get_add_bos, llama.llama_vocab_bos),
                             ("EOS", llama.llama_vocab_get_add_eos, llama.llama_vocab_eos)):
        adds = bool(add(target)), bool(add(draft))
        if adds[0] != adds[1] or (adds[0] and token(target) != token(draft)):
            return (f"{what} token differs (target adds {adds[0]}, id {token(target)}; "
                    f"draft adds {adds[1]}, id {token(draft)})")
    sizes = llama.llama_vocab_n_tokens(target), llama.llama_vocab_n_tokens(draft)
    if abs(sizes[0] - sizes[1]) > VOCAB_MAX_SIZE_DIFFERENCE:
        return f"vocabulary size differs (target {sizes[0]} tokens, draft {sizes[1]})"
    for i in range(VOCAB_CHECK_START_TOKEN_ID, min(sizes)):
        a, b = llama.llama_vocab_get_text(target, i), llama.llama_vocab_get_text(draft, i)
        if a != b:
            return f"token {i} differs (target {a!r}, draft {b!r})"
    return None


class Draft:
    """The draft model of one runner: its context, its cache's contents, and the proposing loop."""

    def __init__(self, llama: Any, path: str, target_model: Any, *, n_ctx_slot: int, n_parallel: int,
                 n_batch: int, threads: int, n_gpu_layers: int, use_mmap: bool, flash_attn: int,
                 kv_type: int | None) -> None:
        self.llama = llama
        mparams = llama.llama_model_default_params()
        # A draft is small: all on the GPU when the target uses one at all.
        mparams.n_gpu_layers = 999 if n_gpu_layers else 0
        mparams.load_mode = llama.LLAMA_LOAD_MODE_MMAP if use_mmap else llama.LLAMA_LOAD_MODE_NONE
        self.model = llama.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise DraftLoadError(f"unable to load draft model {path}")
        self.ctx: Any = None
        self.batch: Any = None
        self.greedy: Any = None
        try:
            self.vocab = llama.llama_model_get_vocab(self.model)
            reason = vocab_mismatch(llama, llama.llama_model_get_vocab(target_model), self.vocab)
            if reason:
                raise DraftLoadError(f"draft model {path} cannot be used with this model: its vocabulary "
                                     f"does not match ({reason})")
            cparams = llama.llama_context_default_params()
            cparams.n_ctx = n_ctx_slot * n_parallel
            cparams.n_batch = n_batch
            cparams.n_ubatch = min(n_batch, 512)
            cparams.n_seq_max = n_parallel
            cparams.n_threads = cparams.n_threads_batch = threads
            cparams.kv_unified = False
            cparams.no_perf = True
            cparams.flash_attn_type = flash_attn
            if kv_type is not None:
                cparams.type_k = cparams.type_v = kv_type
            self.ctx = llama.llama_init_from_model(self.model, cparams)
            if not self.ctx:
                raise DraftLoadError("unable to create the draft model's context (out of memory?)")
        except BaseException:
            self.close()
            raise
        self.mem = llama.llama_get_memory(self.ctx)
        self.can_shift = bool(llama.llama_memory_can_shift(self.mem))
        self.n_batch = n_batch
        self.batch = llama.llama_batch_init(n_batch, 0, n_parallel)
        self.greedy = llama.llama_sampler_init_greedy()
        self.cached: list[list[int]] = [[] for _ in range(n_parallel)]  # tokens in the cache, per seq

    # -- the cache ------------------------------------------------------------------------------

    def truncate(self, seq_id: int, n_keep: int) -> None:
        """Forget everything of ``seq_id`` after its first ``n_keep`` tokens."""
        cached = self.cached[seq_id]
        if n_keep >= len(cached):
            return
        if not self.llama.llama_memory_seq_rm(self.mem, seq_id, n_keep, -1):
            self.llama.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
            n_keep = 0
        del cached[n_keep:]

    def reset(self, seq_id: int) -> None:
        """Forget all of ``seq_id`` (its slot's cache was cleared)."""
        self.truncate(seq_id, 0)

    def shift(self, seq_id: int, keep: int, discard: int) -> None:
        """Follow the target's context shift (drop ``discard`` tokens after ``keep``), if cheaply possible."""
        cached = self.cached[seq_id]
        if not self.can_shift or len(cached) <= keep + discard:
            self.truncate(seq_id, keep)
            return
        self.llama.llama_memory_seq_rm(self.mem, seq_id, keep, keep + discard)
        self.llama.llama_memory_seq_add(self.mem, seq_id, keep + discard, len(cached), -discard)
        del cached[keep : keep + discard]

    def set_threads(self, threads: int) -> None:
        """Decode with as many threads as the target (see threads.py)."""
        self.llama.llama_set_n_threads(self.ctx, threads, threads)

    # -- proposing ------------------------------------------------------------------------------

    def propose(self, wants: list[tuple[int, list[int], int, int]]) -> dict[int, list[int]]:
        """Greedy guesses for each ``(seq_id, tokens in the target's cache, last sampled token, at most
        k)``: up to k tokens per sequence.  One llama_decode per guessed position, over all sequences.

        A sequence whose catch-up does not fit in this step's batch (a fresh prompt) is fed a chunk of it
        and gets no guesses this time."""
        llama, batch = self.llama, self.batch
        n = 0
        rows: dict[int, int] = {}  # seq_id -> batch row holding the logits to guess from
        limits: dict[int, int] = {}
        todo: list[tuple[int, list[int], int]] = []
        for seq_id, history, last, k in wants:
            tokens = [*history, last]
            n_common = common_prefix(self.cached[seq_id], tokens)
            if n_common == len(tokens):  # all in the cache: evaluate the last again for its logits
                n_common -= 1
            self.truncate(seq_id, n_common)
            todo.append((seq_id, tokens[len(self.cached[seq_id]):], k))
        for seq_id, tokens, k in sorted(todo, key=lambda item: len(item[1])):  # the short catch-ups first
            take = min(len(tokens), self.n_batch - n)
            if take <= 0:
                break
            cached = self.cached[seq_id]
            for j, token in enumerate(tokens[:take]):
                put_token(self.batch, n, token, len(cached), seq_id, take == len(tokens) and j == take - 1)
                cached.append(token)
                n += 1
            if take == len(tokens):
                rows[seq_id], limits[seq_id] = n - 1, k
        guesses: dict[int, list[int]] = {seq_id: [] for seq_id in rows}
        while n:
            batch.n_tokens = n
            rc = llama.llama_decode(self.ctx, batch)
            if rc != 0:  # the target decodes without guesses; the draft starts afresh for these
                sys.stderr.write(f"runner: draft llama_decode failed ({rc})\n")
                for seq_id, *_rest in wants:
                    self.reset(seq_id)
                return {}
            n = 0
            for seq_id, row in list(rows.items()):
                token = llama.llama_sampler_sample(self.greedy, self.ctx, row)
                guesses[seq_id].append(token)
                del rows[seq_id]
                if len(guesses[seq_id]) < limits[seq_id] and not llama.llama_vocab_is_eog(self.vocab, token):
                    cached = self.cached[seq_id]
                    put_token(self.batch, n, token, len(cached), seq_id, True)
                    cached.append(token)
                    rows[seq_id] = n
                    n += 1
        return guesses

    def close(self) -> None:
        """Free the draft's sampler, batch, context and model (also after a failed load)."""
        llama = self.llama
        if self.greedy is not None:
            llama.llama_sampler_free(self.greedy)
            self.greedy = None
        if self.batch is not None:
            llama.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            llama.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama.llama_model_free(self.model)
            self.model = None


def common_prefix(a: Sequence[object], b: Sequence[object]) -> int:
    """How many leading items ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def put_token(batch: Any, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
    """Row ``i`` of a llama_batch: ``token`` of sequence ``seq_id`` at ``pos``, with logits or not."""
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits
