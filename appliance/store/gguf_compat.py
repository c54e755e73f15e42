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
  and whose tensor data is copied unchanged (:mod:`appliance.store.gguf_rewrite`), at
  ``<models>/cache/compat/sha256-<source hex>-v<RULES_VERSION>.gguf``, atomically (temp file, fsync,
  rename).  The content-addressed blob is never touched, so digests, pushes and
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
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import InvalidGGUF, UnsupportedModel
from appliance.store.gguf import GGUFInfo, SkippedArray, read_gguf
from appliance.store.gguf_rewrite import (
    TYPE_I32,
    TYPE_STR,
    TYPE_U8,
    EditableHeader,
    read_editable,
    renamed,
    write_copy,
)
from appliance.store.readonly import READ_ONLY_ERRNOS, TranslationNeedsWriter

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
    translate: Callable[[EditableHeader], None] | None
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


def _drop_embedded(h: EditableHeader) -> None:
    h.drop_tensors(*EMBEDDED_PREFIXES)


_GENERIC_EMBEDDED = Rule("", "", _embedded, _drop_embedded, _TEXT_ONLY)


def _gptoss(h: EditableHeader) -> None:
    h.set_arch("gpt-oss")
    gate = h.tensor("blk.0.ffn_gate_exps.weight")
    if gate is not None and len(gate.shape) >= 2:
        h.u32_if_missing("gpt-oss.expert_feed_forward_length", gate.shape[1])
    h.str_if_missing("gpt-oss.rope.scaling.type", "yarn")
    h.set_str("tokenizer.ggml.pre", "gpt-4o")  # the published value tokenizes Harmony headers wrongly
    h.rename_tensors(".attn_out", ".attn_output")
    h.rename_suffix(".attn_sinks", ".attn_sinks.weight")
    h.rename_tensors(".ffn_norm", ".post_attention_norm")


def _olmo3(h: EditableHeader) -> None:
    h.set_arch("olmo2")  # llama.cpp's olmo2 loader carries OLMo 3's sliding-window RoPE


def _pad_sections(h: EditableHeader, src: str, dst: str) -> None:
    sections = h.value(src)
    if isinstance(sections, list) and len(sections) >= 3:
        h.set_array(dst, TYPE_I32, "i", [int(v) for v in sections[:3]] + [0])


def _qwen25vl(h: EditableHeader) -> None:
    h.set_arch("qwen2vl")
    _pad_sections(h, "qwen2vl.rope.mrope_section", "qwen2vl.rope.dimension_sections")  # keys moved above
    h.drop_tensors("v.", "mm.")


def _qwen3vl(h: EditableHeader) -> None:
    arch = str(h.value("general.architecture"))
    # Upstream's value for the Qwen3-VL family (head_dim 128); the published files do not carry it.
    h.set_array(f"{arch}.rope.dimension_sections", TYPE_I32, "i", [24, 20, 20, 0])
    indexes = h.value(f"{arch}.vision.deepstack_visual_indexes")
    h.u32_if_missing(f"{arch}.n_deepstack_layers", len(indexes) if isinstance(indexes, list) else 0)
    h.drop_tensors("v.", "mm.")


def _gemma3(h: EditableHeader) -> None:
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


def _embeddinggemma(h: EditableHeader) -> None:
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
    h.tensors = [renamed(t, "output_norm.weight") if t.name == "norm.weight" else t for t in h.tensors]


def _gemma3n_detect(info: GGUFInfo) -> bool:
    embd, per_layer = _shape(info, "token_embd.weight"), _shape(info, "per_layer_token_embd.weight")
    return bool(embd and per_layer and len(embd) == len(per_layer) == 2 and embd[1] != per_layer[1])


def _gemma3n(h: EditableHeader) -> None:
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
        h.set_array("tokenizer.ggml.token_type", TYPE_I32, "i", fixed)
    eos = h.value("tokenizer.ggml.eos_token_ids")
    ids = [int(v) for v in eos] if isinstance(eos, list) else [1]
    h.set_array("tokenizer.ggml.eos_token_ids", TYPE_I32, "i", ids if 106 in ids else [*ids, 106])


def _gemma4(h: EditableHeader) -> None:
    if h.value("tokenizer.ggml.model") == "llama":
        h.set_str("tokenizer.ggml.model", "gemma4")  # Gemma 4 is BPE; "llama" splits its control tokens
    h.drop_tensors("a.", "v.", "mm.", "model.vision_tower.")


def _gemma4_moe(info: GGUFInfo) -> bool:
    return any(t.name.endswith("ffn_gate_exps.weight") for t in info.tensors)


def _mistral3(h: EditableHeader) -> None:
    h.copy("mistral3.rope.scaling.beta_fast", "mistral3.rope.scaling.yarn_beta_fast")
    h.copy("mistral3.rope.scaling.beta_slow", "mistral3.rope.scaling.yarn_beta_slow")
    h.copy("mistral3.rope.scaling.mscale_all_dim", "mistral3.rope.scaling.yarn_log_multiplier")
    h.copy("mistral3.rope.scaling_beta", "mistral3.attention.temperature_scale")
    if h.value("tokenizer.ggml.pre") in (None, "", "default"):
        h.set_str("tokenizer.ggml.pre", "tekken")
    h.drop_tensors("v.", "mm.")


def _llama4(h: EditableHeader) -> None:
    h.drop_tensors("v.", "mm.")


def _qwen3next(h: EditableHeader) -> None:
    h.collapse_to_max("qwen3next.attention.head_count_kv", 0)
    h.rename_suffix(".ssm_dt", ".ssm_dt.bias")


def _lfm2(h: EditableHeader) -> None:
    h.tensors = [renamed(t, "token_embd_norm.weight") if t.name == "output_norm.weight" else t
                 for t in h.tensors]
    h.set_str("tokenizer.ggml.pre", "lfm2")
    gate = h.tensor("blk.0.ffn_gate.weight")
    if gate is not None and len(gate.shape) == 2:  # some files state a feed-forward length that is wrong
        h.set_u32("lfm2.feed_forward_length", gate.shape[1])


def _laguna(h: EditableHeader) -> None:
    h.copy("laguna.rope.swa.dimension_count", "laguna.rope.dimension_count_swa")
    h.copy("laguna.rope.swa.freq_base", "laguna.rope.freq_base_swa")
    h.rename_suffix(".attn_g.weight", ".attn_gate.weight")


def _deepseekocr(h: EditableHeader) -> None:
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


def _glm4moelite(h: EditableHeader) -> None:
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


def _nemotron_h_moe(h: EditableHeader) -> None:
    arch = str(h.value("general.architecture"))
    if not h.has(f"{arch}.moe_latent_size"):
        pattern = re.compile(r"blk\.\d+\.ffn_latent_in\.weight")
        latent = next((t for t in h.tensors if pattern.fullmatch(t.name)), None)
        if latent is not None and len(latent.shape) == 2:
            h.set_u32(f"{arch}.moe_latent_size", latent.shape[1])
    h.rename_tensors(".ffn_latent_in", ".ffn_latent_down")
    h.rename_tensors(".ffn_latent_out", ".ffn_latent_up")
    h.drop_tensors("mtp.")


def _nemotron_h_omni(h: EditableHeader) -> None:
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
        return charsmap.element_type == TYPE_STR
    return isinstance(charsmap, list) and bool(charsmap) and isinstance(charsmap[0], str)


def _snowflake(h: EditableHeader) -> None:
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
    h.set_array("tokenizer.ggml.precompiled_charsmap", TYPE_U8, "B", list(decoded))


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
    header = read_editable(source, info)
    verdict.rule.translate(header)
    log.info("%s: writing a translated copy for llama.cpp (%s)", source.name, verdict.reason)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale(folder, models_dir / "blobs")
        write_copy(source, header, final, check_cancelled)
    except OSError as exc:
        if exc.errno in READ_ONLY_ERRNOS:  # one of several servers on a folder it may only read
            raise TranslationNeedsWriter() from exc
        raise
    return final

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
