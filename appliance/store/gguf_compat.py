"""Ollama-published GGUFs that stock llama.cpp rejects: recognised, translated where renames suffice,
refused with a clear reason where they do not.

Models in Ollama's library were written for Ollama's own Go engine, and some carry names and layouts
that llama.cpp (our engine) does not load: another architecture name (``gptoss`` for ``gpt-oss``), other
metadata keys, other tensor names, or a vision/audio tower (``v.``, ``mm.``, ``a.``, ``s.``, ``mtp.``
tensors) embedded in the text model's GGUF, which llama.cpp refuses ("wrong number of tensors").
Upstream Ollama patches llama.cpp's loader to translate them in memory (its ``llama/compat/``); we run
the stock loader, so:

* :func:`assess` reads only a header (``read_gguf(max_array=0)`` is enough) and says what a GGUF
  needs: ``load`` as it is, ``translate`` (the table below knows a rename that fixes it), or ``refuse``
  (the reason is in the message).  Create refuses with 400, pull warns in its progress stream (the
  model is still stored, as upstream stores it: the models folder is shared with real Ollama, and a
  later version may run it), load refuses with 400 before a runner is spawned.
* :func:`translated_copy` writes the translation once: a copy of the GGUF whose header is rewritten
  and whose tensor data is copied unchanged (``copy_file_range``, so a file system that can share
  extents does), at ``<models>/cache/compat/sha256-<source hex>-v<RULES_VERSION>.gguf``, atomically
  (temp file, fsync, rename).  The content-addressed blob is never touched, so digests, pushes and
  real Ollama see the published file.  llama.cpp's ``kv_overrides`` cannot do this job: they cannot
  rename an architecture's key prefix, write arrays, or rename and drop tensors.

What a translation keeps: the text model.  Embedded vision and audio towers are dropped from the copy
(upstream hands the same blob to its patched clip loader; stock mtmd cannot read them), so such a model
answers text, and images need a separate projector layer.

The rules follow upstream's ``llama/compat/llama-ollama-compat.cpp`` (which families, which markers,
which renames); anything that needs tensor *data* changed (fused FFN halves, shifted norms, merged
MTP experts) is refused.  ``LLAMA_CPP_ARCHITECTURES`` is the architecture list of the llama.cpp
vendored in llama-cpp-python 0.3.36 (``src/llama-arch.cpp``); update it with the wheel.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import InsufficientStorage, InvalidGGUF, UnsupportedModel
from appliance.store.gguf import MAGIC, GGUFInfo, SkippedArray, TensorInfo, read_gguf

log = logging.getLogger(__name__)

#: Bumped whenever a rule changes what it writes: cached copies of older rules are then rewritten.
RULES_VERSION = 1
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

#: Tensor name prefixes of towers Ollama embeds in a text GGUF (upstream's create.go list).
EMBEDDED_PREFIXES = ("a.", "mm.", "mtp.", "s.", "v.")

# fmt: off
LLAMA_CPP_ARCHITECTURES = frozenset("""
clip llama llama4 deci falcon grok gpt2 gptj gptneox mpt baichuan starcoder refact bert modern-bert
nomic-bert nomic-bert-moe neo-bert jina-bert-v2 jina-bert-v3 eurobert bloom stablelm qwen qwen2 qwen2moe
qwen2vl qwen3 qwen3moe qwen3next qwen3vl qwen3vlmoe qwen35 qwen35moe qwen4exp phi2 phi3 phimoe plamo
plamo2 plamo3 codeshell orion internlm2 minicpm minicpm3 gemma gemma2 gemma3 gemma3n gemma4
gemma4-assistant gemma-embedding starcoder2 mamba mamba2 maple jamba falcon-h1 xverse command-r cohere2
cohere2moe dbrx olmo olmo2 olmoe muse-glimmer openelm arctic deepseek deepseek2 deepseek2-ocr deepseek32
deepseek4 chatglm glm4 glm4moe glm-dsa bitnet t5 t5encoder jais jais2 nemotron nemotron_h nemotron_h_moe
exaone exaone4 exaone-moe rwkv6 rwkv6qwen2 rwkv7 arwkv7 granite granitemoe granitehybrid graniteswitch
granite_swa chameleon wavtokenizer-dec plm bailingmoe bailingmoe2 bailingmoe3 dots1 dots3note arcee afmoe
laguna ernie4_5 ernie4_5-moe hunyuan-moe hunyuan-dense hunyuan_vl hy_v3 hy_v4 smollm3 gpt-oss lfm2
lfm2moe dream smallthinker llada llada-moe seed_oss grovemoe apertus minimax-01 hrm_text minimax-m2
minimax-m3 cogvlm rnd1 pangu-embedded mistral3 eagle3 dflash mistral4 paddleocr mimo2 step35 spark2_5
llama-embed maincoder kimi-linear kimi-k3 glm5-next talkie mellum nanbeige qwen3tts pockettts
""".split())
# fmt: on

_GGUF_U8, _GGUF_I32, _GGUF_U32, _GGUF_F32, _GGUF_STR, _GGUF_ARR = 0, 5, 4, 6, 8, 9
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_COPY_CHUNK = 64 << 20


# --- verdicts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What a GGUF needs before llama.cpp can load it."""

    action: str  # "load", "translate" or "refuse"
    architecture: str
    family: str = ""
    reason: str = ""
    rule: Rule | None = None

    @property
    def message(self) -> str:
        if self.action == "refuse" and not self.family:
            return (f"model architecture '{self.architecture}' is not supported by llama.cpp here "
                    f"(llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}): {self.reason}")
        if self.action == "refuse":
            return (f"model family '{self.family}' (architecture '{self.architecture}') was published for "
                    f"Ollama's own engine and cannot run on llama.cpp here: {self.reason}")
        if self.action == "translate":
            return (f"model family '{self.family}' (architecture '{self.architecture}') was published for "
                    f"Ollama's own engine; llama.cpp loads a translated copy: {self.reason}")
        return ""

    def check(self) -> None:
        """Raise :class:`UnsupportedModel` (400) for a refusal."""
        if self.action == "refuse":
            raise UnsupportedModel(self.message)


@dataclass(frozen=True)
class Rule:
    """One known Ollama-library layout: its architecture, its markers and what to do with it."""

    architecture: str
    family: str
    detect: Callable[[GGUFInfo], bool]
    #: Rewrites the header (None: refused, with ``reason``).
    translate: Callable[[_Header], None] | None
    reason: str


def assess(info: GGUFInfo) -> Verdict:
    """The verdict for a model GGUF's header (``max_array=0`` reads are enough)."""
    arch = info.architecture
    for rule in RULES:
        if rule.architecture == arch and rule.detect(info):
            action = "translate" if rule.translate is not None else "refuse"
            return Verdict(action, arch, rule.family, rule.reason, rule)
    if arch not in LLAMA_CPP_ARCHITECTURES:
        return Verdict("refuse", arch, reason="llama.cpp has no architecture of that name")
    if arch != "clip" and _embedded(info):
        return Verdict("translate", arch, arch, _TEXT_ONLY, _GENERIC_EMBEDDED)
    return Verdict("load", arch)


def llama_cpp_note(path: Path) -> str | None:
    """A progress line for a pulled model llama.cpp cannot load as it is (None when it can, or when
    the file is no GGUF: loading reports that)."""
    try:
        verdict = assess(read_gguf(path, max_array=0))
    except (OSError, InvalidGGUF):
        return None
    if verdict.action == "refuse":
        return f"warning: {verdict.message} (the model is stored, but will not load here)"
    if verdict.action == "translate":
        return f"note: {verdict.message}"
    return None


# --- the header being rewritten ---------------------------------------------------------------------


class _Header:
    """A GGUF header as raw typed key/values plus tensor descriptions, edited by the rules."""

    def __init__(self, info: GGUFInfo, kvs: dict[str, tuple[int, bytes]]) -> None:
        self.info = info
        self.kvs = kvs
        self.tensors: list[TensorInfo] = list(info.tensors)

    # keys
    def has(self, key: str) -> bool:
        return key in self.kvs

    def value(self, key: str) -> Any:
        """The key's current value (scalars, strings and flat arrays), or None."""
        entry = self.kvs.get(key)
        return None if entry is None else _decode(*entry)

    def set_str(self, key: str, value: str) -> None:
        self.kvs[key] = (_GGUF_STR, _enc_str(value))

    def set_u32(self, key: str, value: int) -> None:
        self.kvs[key] = (_GGUF_U32, _U32.pack(value))

    def set_f32(self, key: str, value: float) -> None:
        self.kvs[key] = (_GGUF_F32, struct.pack("<f", value))

    def set_array(self, key: str, element_type: int, fmt: str, values: list[int]) -> None:
        raw = _U32.pack(element_type) + _U64.pack(len(values)) + struct.pack(f"<{len(values)}{fmt}", *values)
        self.kvs[key] = (_GGUF_ARR, raw)

    def u32_if_missing(self, key: str, value: int) -> None:
        if key not in self.kvs:
            self.set_u32(key, value)

    def f32_if_missing(self, key: str, value: float) -> None:
        if key not in self.kvs:
            self.set_f32(key, value)

    def str_if_missing(self, key: str, value: str) -> None:
        if key not in self.kvs:
            self.set_str(key, value)

    def copy(self, src: str, dst: str) -> None:
        if src in self.kvs and dst not in self.kvs:
            self.kvs[dst] = self.kvs[src]

    def remove(self, key: str) -> None:
        self.kvs.pop(key, None)

    def move_prefix(self, old: str, new: str, *, keep: Callable[[str], bool] = lambda _: True) -> None:
        """``old.*`` keys become ``new.*`` (where the new name is free), in place, order kept."""
        moved: dict[str, tuple[int, bytes]] = {}
        for key, value in self.kvs.items():
            if key.startswith(old) and keep(key[len(old):]):
                target = new + key[len(old):]
                if target not in self.kvs:
                    moved[target] = value
                    continue
            moved.setdefault(key, value)
        self.kvs = moved

    def set_arch(self, arch: str) -> None:
        old = self.value("general.architecture")
        self.set_str("general.architecture", arch)
        if isinstance(old, str):
            self.move_prefix(old + ".", arch + ".")

    def collapse_to_max(self, key: str, fallback: int) -> None:
        """A per-layer u32/i32 array becomes one u32: its largest value (``fallback`` when all 0)."""
        values = self.value(key)
        if isinstance(values, list):
            self.set_u32(key, max([v for v in values if isinstance(v, int)] + [0]) or fallback)

    def truncate_array(self, key: str, n: int) -> None:
        entry = self.kvs.get(key)
        if entry is None or entry[0] != _GGUF_ARR:
            return
        raw = entry[1]
        element_type, count = _U32.unpack_from(raw, 0)[0], _U64.unpack_from(raw, 4)[0]
        if count <= n:
            return
        if element_type == _GGUF_STR:
            end = 12
            for _ in range(n):
                end += 8 + _U64.unpack_from(raw, end)[0]
        elif element_type in _FIXED_SIZES:
            end = 12 + n * _FIXED_SIZES[element_type]
        else:
            return
        self.kvs[key] = (_GGUF_ARR, raw[:4] + _U64.pack(n) + raw[12:end])

    # tensors
    def tensor(self, name: str) -> TensorInfo | None:
        return next((t for t in self.tensors if t.name == name), None)

    def rename_tensors(self, old: str, new: str) -> None:
        """Replace the first ``old`` in every tensor name that has it and not yet ``new``."""
        self.tensors = [_renamed(t, t.name.replace(old, new, 1)) if old in t.name and new not in t.name else t
                        for t in self.tensors]

    def rename_suffix(self, old: str, new: str) -> None:
        self.tensors = [_renamed(t, t.name[: -len(old)] + new) if t.name.endswith(old) else t
                        for t in self.tensors]

    def drop_tensors(self, *prefixes: str) -> None:
        self.tensors = [t for t in self.tensors if not t.name.startswith(prefixes)]

    def shrink_rows(self, name: str, rows: int) -> None:
        """Keep the first ``rows`` of a 2-D tensor (a prefix of its bytes)."""
        t = self.tensor(name)
        if t is None or len(t.shape) != 2 or rows >= t.shape[1]:
            return
        shrunk = TensorInfo(t.name, (t.shape[0], rows), t.ggml_type, t.offset, t.n_bytes // t.shape[1] * rows)
        self.tensors = [shrunk if x is t else x for x in self.tensors]


_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _decode(value_type: int, raw: bytes) -> Any:
    if value_type in _FORMATS:
        return struct.unpack_from("<" + _FORMATS[value_type], raw)[0]
    if value_type == _GGUF_STR:
        return raw[8:].decode("utf-8", "replace")
    element_type, count = _U32.unpack_from(raw, 0)[0], _U64.unpack_from(raw, 4)[0]
    if element_type in _FORMATS:
        return list(struct.unpack_from(f"<{count}{_FORMATS[element_type]}", raw, 12))
    if element_type != _GGUF_STR:
        return None
    out, pos = [], 12
    for _ in range(count):
        n = _U64.unpack_from(raw, pos)[0]
        out.append(raw[pos + 8 : pos + 8 + n].decode("utf-8", "replace"))
        pos += 8 + n
    return out


def _renamed(t: TensorInfo, name: str) -> TensorInfo:
    return TensorInfo(name, t.shape, t.ggml_type, t.offset, t.n_bytes)


def _enc_str(s: str) -> bytes:
    raw = s.encode()
    return _U64.pack(len(raw)) + raw


# --- detection helpers ------------------------------------------------------------------------------


def _names(info: GGUFInfo) -> set[str]:
    return {t.name for t in info.tensors}


def _embedded(info: GGUFInfo) -> bool:
    return any(t.name.startswith(EMBEDDED_PREFIXES) for t in info.tensors)


def _has_prefix(info: GGUFInfo, *prefixes: str) -> bool:
    return any(t.name.startswith(prefixes) for t in info.tensors)


def _always(info: GGUFInfo) -> bool:
    return True


def _keys(*keys: str) -> Callable[[GGUFInfo], bool]:
    return lambda info: any(k in info.metadata for k in keys)


def _shape(info: GGUFInfo, name: str) -> tuple[int, ...] | None:
    return next((t.shape for t in info.tensors if t.name == name), None)


# --- the rules --------------------------------------------------------------------------------------

_TEXT_ONLY = "its embedded vision/audio tensors are left out, so it runs as a text model"


def _drop_embedded(h: _Header) -> None:
    h.drop_tensors(*EMBEDDED_PREFIXES)


_GENERIC_EMBEDDED = Rule("", "", _embedded, _drop_embedded, _TEXT_ONLY)


def _gptoss(h: _Header) -> None:
    h.set_arch("gpt-oss")
    gate = h.tensor("blk.0.ffn_gate_exps.weight")
    if gate is not None and len(gate.shape) >= 2:
        h.u32_if_missing("gpt-oss.expert_feed_forward_length", gate.shape[1])
    h.str_if_missing("gpt-oss.rope.scaling.type", "yarn")
    h.set_str("tokenizer.ggml.pre", "gpt-4o")  # the published value tokenizes Harmony headers wrongly
    h.rename_tensors(".attn_out", ".attn_output")
    h.rename_suffix(".attn_sinks", ".attn_sinks.weight")
    h.rename_tensors(".ffn_norm", ".post_attention_norm")


def _olmo3(h: _Header) -> None:
    h.set_arch("olmo2")  # llama.cpp's olmo2 loader carries OLMo 3's sliding-window RoPE


def _pad_sections(h: _Header, src: str, dst: str) -> None:
    sections = h.value(src)
    if isinstance(sections, list) and len(sections) >= 3:
        h.set_array(dst, _GGUF_I32, "i", [int(v) for v in sections[:3]] + [0])


def _qwen25vl(h: _Header) -> None:
    h.set_arch("qwen2vl")
    _pad_sections(h, "qwen2vl.rope.mrope_section", "qwen2vl.rope.dimension_sections")  # keys moved above
    h.drop_tensors("v.", "mm.")


def _qwen3vl(h: _Header) -> None:
    arch = str(h.value("general.architecture"))
    # Upstream's value for the Qwen3-VL family (head_dim 128); the published files do not carry it.
    h.set_array(f"{arch}.rope.dimension_sections", _GGUF_I32, "i", [24, 20, 20, 0])
    indexes = h.value(f"{arch}.vision.deepstack_visual_indexes")
    h.u32_if_missing(f"{arch}.n_deepstack_layers", len(indexes) if isinstance(indexes, list) else 0)
    h.drop_tensors("v.", "mm.")


def _gemma3(h: _Header) -> None:
    h.copy("gemma3.rope.global.freq_base", "gemma3.rope.freq_base")
    h.copy("gemma3.rope.local.freq_base", "gemma3.rope.freq_base_swa")
    h.f32_if_missing("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
    h.f32_if_missing("gemma3.rope.freq_base", 1_000_000.0)
    h.f32_if_missing("gemma3.rope.freq_base_swa", 10_000.0)
    context = h.value("gemma3.context_length")
    if isinstance(context, int) and context >= 131072:  # 4B-27B: linear x8 RoPE scaling to 128k
        h.str_if_missing("gemma3.rope.scaling.type", "linear")
        h.f32_if_missing("gemma3.rope.scaling.factor", 8.0)
    embd = h.tensor("token_embd.weight")
    if embd is not None and len(embd.shape) == 2:  # image tokens past the embedding rows
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            h.truncate_array(key, embd.shape[1])
    h.drop_tensors("v.", "mm.")


def _gemma3_detect(info: GGUFInfo) -> bool:
    md = info.metadata
    return ("gemma3.mm.tokens_per_image" in md or _has_prefix(info, "v.", "mm.")
            or any(k in md for k in ("gemma3.rope.global.freq_base", "gemma3.rope.local.freq_base",
                                     "tokenizer.ggml.add_padding_token", "tokenizer.ggml.add_unknown_token"))
            or "gemma3.attention.layer_norm_rms_epsilon" not in md)


def _embeddinggemma(h: _Header) -> None:
    h.set_arch("gemma-embedding")
    h.remove("gemma-embedding.attention.causal")
    h.remove("gemma-embedding.attention.sliding_window_pattern")
    h.f32_if_missing("gemma-embedding.rope.freq_base_swa", 10_000.0)
    d0, d1 = h.tensor("dense.0.weight"), h.tensor("dense.1.weight")
    if d0 is not None and d1 is not None and len(d0.shape) == len(d1.shape) == 2:
        h.set_u32("gemma-embedding.dense_2_feat_in", d0.shape[0])
        h.set_u32("gemma-embedding.dense_2_feat_out", d0.shape[1])
        h.set_u32("gemma-embedding.dense_3_feat_in", d1.shape[0])
        h.set_u32("gemma-embedding.dense_3_feat_out", d1.shape[1])
    h.rename_tensors("dense.0.weight", "dense_2.weight")
    h.rename_tensors("dense.1.weight", "dense_3.weight")
    h.tensors = [_renamed(t, "output_norm.weight") if t.name == "norm.weight" else t for t in h.tensors]


def _gemma3n_detect(info: GGUFInfo) -> bool:
    embd, per_layer = _shape(info, "token_embd.weight"), _shape(info, "per_layer_token_embd.weight")
    return bool(embd and per_layer and len(embd) == len(per_layer) == 2 and embd[1] != per_layer[1])


def _gemma3n(h: _Header) -> None:
    per_layer = h.tensor("per_layer_token_embd.weight")
    assert per_layer is not None
    vocab = per_layer.shape[1]
    h.set_str("tokenizer.ggml.model", "llama")
    h.shrink_rows("token_embd.weight", vocab)  # the dropped rows are image/audio marker tokens
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        h.truncate_array(key, vocab)
    tokens, types = h.value("tokenizer.ggml.tokens"), h.value("tokenizer.ggml.token_type")
    if isinstance(tokens, list) and isinstance(types, list):
        fixed = list(types[:vocab])
        for i, tok in enumerate(tokens[: len(fixed)]):
            if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", tok):
                fixed[i] = 6  # byte token
            elif tok.startswith("<unused"):
                fixed[i] = 1  # normal
        h.set_array("tokenizer.ggml.token_type", _GGUF_I32, "i", fixed)
    eos = h.value("tokenizer.ggml.eos_token_ids")
    ids = [int(v) for v in eos] if isinstance(eos, list) else [1]
    h.set_array("tokenizer.ggml.eos_token_ids", _GGUF_I32, "i", ids if 106 in ids else [*ids, 106])


def _gemma4(h: _Header) -> None:
    if h.value("tokenizer.ggml.model") == "llama":
        h.set_str("tokenizer.ggml.model", "gemma4")  # Gemma 4 is BPE; "llama" splits its control tokens
    h.drop_tensors("a.", "v.", "mm.", "model.vision_tower.")


def _gemma4_moe(info: GGUFInfo) -> bool:
    return any(t.name.endswith("ffn_gate_exps.weight") for t in info.tensors)


def _mistral3(h: _Header) -> None:
    h.copy("mistral3.rope.scaling.beta_fast", "mistral3.rope.scaling.yarn_beta_fast")
    h.copy("mistral3.rope.scaling.beta_slow", "mistral3.rope.scaling.yarn_beta_slow")
    h.copy("mistral3.rope.scaling.mscale_all_dim", "mistral3.rope.scaling.yarn_log_multiplier")
    h.copy("mistral3.rope.scaling_beta", "mistral3.attention.temperature_scale")
    if h.value("tokenizer.ggml.pre") in (None, "", "default"):
        h.set_str("tokenizer.ggml.pre", "tekken")
    h.drop_tensors("v.", "mm.")


def _llama4(h: _Header) -> None:
    h.drop_tensors("v.", "mm.")


def _qwen3next(h: _Header) -> None:
    h.collapse_to_max("qwen3next.attention.head_count_kv", 0)
    h.rename_suffix(".ssm_dt", ".ssm_dt.bias")


def _lfm2(h: _Header) -> None:
    h.tensors = [_renamed(t, "token_embd_norm.weight") if t.name == "output_norm.weight" else t
                 for t in h.tensors]
    h.set_str("tokenizer.ggml.pre", "lfm2")
    gate = h.tensor("blk.0.ffn_gate.weight")
    if gate is not None and len(gate.shape) == 2:  # some files state a feed-forward length that is wrong
        h.set_u32("lfm2.feed_forward_length", gate.shape[1])


def _laguna(h: _Header) -> None:
    h.copy("laguna.rope.swa.dimension_count", "laguna.rope.dimension_count_swa")
    h.copy("laguna.rope.swa.freq_base", "laguna.rope.freq_base_swa")
    h.rename_suffix(".attn_g.weight", ".attn_gate.weight")


def _deepseekocr(h: _Header) -> None:
    h.set_arch("deepseek2-ocr")
    h.f32_if_missing("deepseek2-ocr.attention.layer_norm_rms_epsilon", 1e-6)
    down = h.tensor("blk.1.ffn_down_exps.weight")
    if down is not None and not h.has("deepseek2-ocr.expert_feed_forward_length"):
        h.set_u32("deepseek2-ocr.expert_feed_forward_length", down.shape[0])
    shared, ff = h.tensor("blk.1.ffn_down_shexp.weight"), h.value("deepseek2-ocr.expert_feed_forward_length")
    if shared is not None and isinstance(ff, int) and ff > 0:
        h.u32_if_missing("deepseek2-ocr.expert_shared_count", shared.shape[0] // ff)
    elif shared is not None and down is not None and down.shape[0] > 0:
        h.u32_if_missing("deepseek2-ocr.expert_shared_count", shared.shape[0] // down.shape[0])
    h.drop_tensors("s.", "v.", "mm.")


def _glm4moelite(h: _Header) -> None:
    head_dim = h.value("glm4moelite.attention.key_length")
    h.set_arch("deepseek2")
    h.set_u32("deepseek2.attention.head_count_kv", 1)  # MLA absorbs the KV heads
    kv_lora, rope = h.value("deepseek2.attention.kv_lora_rank"), h.value("deepseek2.rope.dimension_count")
    if isinstance(kv_lora, int) and isinstance(rope, int):
        h.set_u32("deepseek2.attention.key_length", kv_lora + rope)
        h.set_u32("deepseek2.attention.value_length", kv_lora)
    if isinstance(head_dim, int):
        h.set_u32("deepseek2.attention.key_length_mla", head_dim)
        h.set_u32("deepseek2.attention.value_length_mla", head_dim)
    h.u32_if_missing("deepseek2.expert_group_count", 1)
    h.u32_if_missing("deepseek2.expert_group_used_count", 1)
    h.set_str("tokenizer.ggml.pre", "glm4")
    eos = h.value("tokenizer.ggml.eos_token_ids")
    if isinstance(eos, list):
        ids = [v for v in eos if isinstance(v, int) and v >= 0]
        if len(ids) >= 2:
            h.u32_if_missing("tokenizer.ggml.eot_token_id", ids[1])
        if len(ids) >= 3:
            h.u32_if_missing("tokenizer.ggml.eom_token_id", ids[2])


def _nemotron_h_moe(h: _Header) -> None:
    arch = str(h.value("general.architecture"))
    if not h.has(f"{arch}.moe_latent_size"):
        pattern = re.compile(r"blk\.\d+\.ffn_latent_in\.weight")
        latent = next((t for t in h.tensors if pattern.fullmatch(t.name)), None)
        if latent is not None and len(latent.shape) == 2:
            h.set_u32(f"{arch}.moe_latent_size", latent.shape[1])
    h.rename_tensors(".ffn_latent_in", ".ffn_latent_down")
    h.rename_tensors(".ffn_latent_out", ".ffn_latent_up")
    h.drop_tensors("mtp.")


def _nemotron_h_omni(h: _Header) -> None:
    experts = h.value("nemotron_h_omni.expert_count") or h.value("nemotron_h_omni.expert_used_count")
    text_arch = "nemotron_h_moe" if isinstance(experts, int) and experts > 0 else "nemotron_h"
    h.set_str("general.architecture", text_arch)
    h.move_prefix("nemotron_h_omni.", text_arch + ".",
                  keep=lambda rest: not rest.startswith(("vision.", "audio.")))
    h.drop_tensors("a.", "v.", "mm.")
    if text_arch == "nemotron_h_moe":
        _nemotron_h_moe(h)


def _snowflake_detect(info: GGUFInfo) -> bool:
    charsmap = info.metadata.get("tokenizer.ggml.precompiled_charsmap")
    if info.metadata.get("tokenizer.ggml.model") != "t5":
        return False
    if isinstance(charsmap, SkippedArray):
        return charsmap.element_type == _GGUF_STR
    return isinstance(charsmap, list) and bool(charsmap) and isinstance(charsmap[0], str)


def _snowflake(h: _Header) -> None:
    chars = h.value("tokenizer.ggml.precompiled_charsmap")
    if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
        raise UnsupportedModel("snowflake-arctic-embed2: its precompiled_charsmap is not one base64 "
                               "character per entry")
    text = "".join(chars).split("=")[0]
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError as exc:
        raise UnsupportedModel(f"snowflake-arctic-embed2: its precompiled_charsmap is not base64: {exc}") \
            from exc
    h.set_array("tokenizer.ggml.precompiled_charsmap", _GGUF_U8, "B", list(decoded))


_DATA_CHANGE = "loading it needs tensor data rewritten ({}), which this version does not do"
_TOWERS = ("a.", "v.", "mm.", "model.vision_tower.")


def _vision(info: GGUFInfo) -> bool:
    return _has_prefix(info, "v.", "mm.")


def _gemma4_detect(info: GGUFInfo) -> bool:
    return _has_prefix(info, *_TOWERS) or info.metadata.get("tokenizer.ggml.model") == "llama"


def _qwen35_detect(arch: str, *extra: str) -> Callable[[GGUFInfo], bool]:
    keys = _keys(*(f"{arch}.{k}" for k in ("vision.block_count", "image_token_id", "ssm.v_head_reordered",
                                           "rope.mrope_interleaved", *extra)))
    return lambda info: _has_prefix(info, "mtp.", "v.") or keys(info)


def _lacks(key: str) -> Callable[[GGUFInfo], bool]:
    return lambda info: key not in info.metadata


def _lfm2_detect(info: GGUFInfo) -> bool:
    names = _names(info)
    return "output_norm.weight" in names and "token_embd_norm.weight" not in names


def _laguna_detect(info: GGUFInfo) -> bool:
    return ("blk.0.attn_g.weight" in _names(info)
            or _keys("laguna.rope.swa.dimension_count", "laguna.rope.swa.freq_base")(info))


def _qwen3next_detect(info: GGUFInfo) -> bool:
    return any(t.name.endswith(".ssm_dt") for t in info.tensors)


def _mistral3_detect(info: GGUFInfo) -> bool:
    return _vision(info) or _keys("mistral3.rope.scaling.beta_fast", "mistral3.rope.scaling.mscale_all_dim",
                                  "mistral3.rope.scaling_beta")(info)


RULES: tuple[Rule, ...] = (
    Rule("gptoss", "gpt-oss", _always, _gptoss,
         "architecture and keys renamed to gpt-oss, three tensor names renamed"),
    Rule("olmo3", "olmo-3", _always, _olmo3, "loaded by llama.cpp's olmo2 architecture"),
    Rule("qwen25vl", "qwen2.5vl", _always, _qwen25vl, "architecture renamed to qwen2vl; " + _TEXT_ONLY),
    Rule("qwen3vl", "qwen3-vl", _lacks("qwen3vl.rope.dimension_sections"), _qwen3vl,
         "M-RoPE sections added; " + _TEXT_ONLY),
    Rule("qwen3vlmoe", "qwen3-vl", _lacks("qwen3vlmoe.rope.dimension_sections"), _qwen3vl,
         "M-RoPE sections added; " + _TEXT_ONLY),
    Rule("gemma3", "embeddinggemma", lambda i: "dense.0.weight" in _names(i), _embeddinggemma,
         "loaded by llama.cpp's gemma-embedding architecture"),
    Rule("gemma3", "gemma3", _gemma3_detect, _gemma3,
         "RoPE and norm keys completed, vocabulary cut to the embedding rows; " + _TEXT_ONLY),
    Rule("gemma3n", "gemma3n", _gemma3n_detect, _gemma3n,
         "vocabulary cut to the text tokens, token types and end tokens fixed"),
    Rule("gemma4", "gemma4", lambda i: _gemma4_moe(i) and _has_prefix(i, *_TOWERS), None,
         _DATA_CHANGE.format("expert gate and up halves fused")),
    Rule("gemma4", "gemma4", _gemma4_detect, _gemma4, "tokenizer type fixed; " + _TEXT_ONLY),
    Rule("mistral3", "mistral-small3", _mistral3_detect, _mistral3, "YaRN keys renamed; " + _TEXT_ONLY),
    Rule("llama4", "llama4", _vision, _llama4, _TEXT_ONLY),
    Rule("qwen35", "qwen3.5", _qwen35_detect("qwen35"), None,
         _DATA_CHANGE.format("norm weights shifted, MTP layers moved")),
    Rule("qwen35moe", "qwen3.5", _qwen35_detect("qwen35moe", "feed_forward_length"), None,
         _DATA_CHANGE.format("norm weights shifted, MTP experts merged")),
    Rule("qwen3next", "qwen3-next", _qwen3next_detect, _qwen3next,
         "per-layer KV head counts collapsed, ssm_dt tensors renamed"),
    Rule("lfm2", "lfm2", _lfm2_detect, _lfm2,
         "norm tensor renamed, feed-forward length taken from the weights"),
    Rule("laguna", "laguna", _laguna_detect, _laguna, "SWA RoPE keys and attention-gate tensors renamed"),
    Rule("deepseekocr", "deepseek-ocr", _always, _deepseekocr,
         "loaded by llama.cpp's deepseek2-ocr architecture; " + _TEXT_ONLY),
    Rule("glmocr", "glm-ocr", _always, None, _DATA_CHANGE.format("gate and up FFN halves fused")),
    Rule("glm4moelite", "glm-4.7-flash", _always, _glm4moelite,
         "loaded by llama.cpp's deepseek2 architecture with MLA head sizes"),
    Rule("nemotron_h_moe", "nemotron-3", lambda i: _has_prefix(i, "mtp.", "blk.0.ffn_latent_in",
                                                               "blk.1.ffn_latent_in"),
         _nemotron_h_moe, "latent FFN tensors renamed, MTP tensors left out"),
    Rule("nemotron_h_omni", "nemotron3", lambda i: _has_prefix(i, "a.", "v.", "mm."), _nemotron_h_omni,
         "loaded by llama.cpp's nemotron_h architecture; " + _TEXT_ONLY),
    Rule("bert", "snowflake-arctic-embed2", _snowflake_detect, _snowflake,
         "tokenizer charsmap decoded to bytes"),
    Rule("mllama", "llama3.2-vision", _always, None,
         "llama.cpp has no mllama (cross-attention vision) architecture"),
)


# --- the translated copy ----------------------------------------------------------------------------


def cache_dir(models_dir: Path) -> Path:
    """Where translated copies live, beside the store's blobs."""
    return models_dir / "cache" / "compat"


def translated_copy(source: Path, models_dir: Path, *,
                    check_cancelled: Callable[[], None] = lambda: None) -> Path:
    """The path llama.cpp should load for the blob at ``source``: the blob itself, or its translation
    (written once, atomically).  Raises :class:`UnsupportedModel` for a refused layout."""
    info = read_gguf(source)
    verdict = assess(info)
    verdict.check()
    if verdict.action == "load" or verdict.rule is None or verdict.rule.translate is None:
        return source
    folder = cache_dir(models_dir)
    final = folder / f"{source.name}-v{RULES_VERSION}.gguf"
    if final.is_file():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder, models_dir / "blobs")
    header = _Header(info, _raw_kvs(source, info))
    verdict.rule.translate(header)
    log.info("%s: writing a translated copy for llama.cpp (%s)", source.name, verdict.reason)
    _write(source, info, header, final, check_cancelled)
    return final


def _raw_kvs(path: Path, info: GGUFInfo) -> dict[str, tuple[int, bytes]]:
    """Each key's GGUF type and encoded value, in file order (the file was checked by read_gguf)."""
    with open(path, "rb") as f:
        buf = f.read(info.data_offset)
    if buf[:4] != MAGIC:
        raise InvalidGGUF("the file changed while it was being translated")
    n_kv = _U64.unpack_from(buf, 16)[0]
    pos, out = 24, {}
    for _ in range(n_kv):
        n = _U64.unpack_from(buf, pos)[0]
        key = buf[pos + 8 : pos + 8 + n].decode("utf-8", "replace")
        pos += 8 + n
        value_type = _U32.unpack_from(buf, pos)[0]
        end = _value_end(buf, pos + 4, value_type)
        out[key] = (value_type, bytes(buf[pos + 4 : end]))
        pos = end
    return out


def _value_end(buf: bytes, pos: int, value_type: int) -> int:
    if value_type in _FIXED_SIZES:
        return pos + _FIXED_SIZES[value_type]
    if value_type == _GGUF_STR:
        return pos + 8 + _U64.unpack_from(buf, pos)[0]
    element_type, count = _U32.unpack_from(buf, pos)[0], _U64.unpack_from(buf, pos + 4)[0]
    pos += 12
    if element_type in _FIXED_SIZES:
        return pos + count * _FIXED_SIZES[element_type]
    for _ in range(count):
        pos = _value_end(buf, pos, element_type)
    return pos


def _encode_header(info: GGUFInfo, header: _Header) -> tuple[bytes, list[tuple[TensorInfo, int]]]:
    """The new header (padded to the alignment) and each tensor with its new data offset."""
    align = info.alignment
    parts = [MAGIC, _U32.pack(3), _U64.pack(len(header.tensors)), _U64.pack(len(header.kvs))]
    for key, (value_type, raw) in header.kvs.items():
        parts += [_enc_str(key), _U32.pack(value_type), raw]
    placed, offset = [], 0
    for t in header.tensors:
        parts += [_enc_str(t.name), _U32.pack(len(t.shape)), *(_U64.pack(d) for d in t.shape),
                  _U32.pack(t.ggml_type), _U64.pack(offset)]
        placed.append((t, offset))
        offset += -(-t.n_bytes // align) * align
    head = b"".join(parts)
    return head + b"\0" * (-len(head) % align), placed


def _write(source: Path, info: GGUFInfo, header: _Header, final: Path,
           check_cancelled: Callable[[], None]) -> None:
    head, placed = _encode_header(info, header)
    total = len(head) + sum(-(-t.n_bytes // info.alignment) * info.alignment for t, _ in placed)
    stat = os.statvfs(final.parent)
    if stat.f_bavail * stat.f_frsize < total + (64 << 20):
        raise InsufficientStorage(f"no room for the translated copy llama.cpp needs ({total >> 20} MiB) "
                                  f"in {final.parent}")
    temp = final.parent / f".tmp-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        with open(source, "rb") as src, open(temp, "wb") as dst:
            dst.write(head)
            dst.flush()
            for t, offset in placed:
                check_cancelled()
                _copy_range(src.fileno(), dst.fileno(), info.data_offset + t.offset,
                            len(head) + offset, t.n_bytes, check_cancelled)
            dst.truncate(total)
            os.fsync(dst.fileno())
        read_gguf(temp, max_array=0)  # what we wrote must pass the same checks as any GGUF
        os.replace(temp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage(f"no room for the translated copy llama.cpp needs in {final.parent}") \
                from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _copy_range(src: int, dst: int, src_at: int, dst_at: int, n: int,
                check_cancelled: Callable[[], None]) -> None:
    while n > 0:
        step = min(n, _COPY_CHUNK)
        try:
            done = os.copy_file_range(src, dst, step, src_at, dst_at)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            done = os.pwrite(dst, os.pread(src, step, src_at), dst_at)
        if done <= 0:
            raise InvalidGGUF("the source GGUF ended early while it was being translated")
        src_at, dst_at, n = src_at + done, dst_at + done, n - done
        check_cancelled()


def _remove_stale(folder: Path, blobs: Path) -> None:
    """Copies whose blob is gone or whose rules are older, and temp files a crash left behind."""
    for entry in folder.iterdir():
        name = entry.name
        match = re.fullmatch(r"(sha256-[0-9a-f]{64})-v(\d+)\.gguf", name)
        if match is not None:
            stale = int(match[2]) != RULES_VERSION or not (blobs / match[1]).exists()
        else:
            stale = name.startswith(".tmp-") and time.time() - entry.stat().st_mtime > 86400
        if stale:
            with contextlib.suppress(OSError):
                entry.unlink()
                log.info("removed stale translated copy %s", name)
