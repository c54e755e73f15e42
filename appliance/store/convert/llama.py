"""Converting a Hugging Face llama-family checkpoint (safetensors) to a GGUF that llama.cpp loads.

``LlamaForCausalLM`` and ``MistralForCausalLM`` share llama.cpp's ``llama`` layout, as in llama.cpp's
own converter: tensors are renamed, the query and key projections are permuted from Hugging Face's
rotary layout (two halves per head) to llama.cpp's (interleaved pairs), 2-D weights are written as
F16 (F32 and BF16 sources narrowed; values past F16's range are clamped and reported) and 1-D ones
(norms, biases) as F32.  Llama 3.1+ ``llama3`` RoPE scaling becomes llama.cpp's ``rope_freqs`` tensor.

Memory stays bounded: the header (metadata and tensor descriptions) is written first, then one tensor
at a time is read from the memory-mapped safetensors in blocks and written out, so at most one output
tensor is held at once, never the model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from appliance.store.convert import ConversionError
from appliance.store.convert.safetensors import (
    DTYPES,
    TensorData,
    TensorEntry,
    read_json,
    read_tensors,
    row_blocks,
    to_float32,
)
from appliance.store.convert.tokenizer import (
    MAX_CONFIG_BYTES,
    MAX_VOCAB,
    Vocabulary,
    read_vocabulary,
    write_vocabulary,
)

Progress = Callable[[dict[str, Any]], None]

#: Hugging Face architectures that are llama.cpp's ``llama`` with no more than a rename.
ARCHITECTURES = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM")
F16_MAX = float(np.finfo(np.float16).max)
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 20

T = gguf.MODEL_TENSOR
#: Hugging Face tensor name (inside a block) -> GGUF tensor kind.
BLOCK_TENSORS: dict[str, gguf.MODEL_TENSOR] = {
    "input_layernorm": T.ATTN_NORM,
    "self_attn.q_proj": T.ATTN_Q,
    "self_attn.k_proj": T.ATTN_K,
    "self_attn.v_proj": T.ATTN_V,
    "self_attn.o_proj": T.ATTN_OUT,
    "post_attention_layernorm": T.FFN_NORM,
    "mlp.gate_proj": T.FFN_GATE,
    "mlp.up_proj": T.FFN_UP,
    "mlp.down_proj": T.FFN_DOWN,
}
#: The projections llama.cpp's llama layout takes an optional bias for.
BIASED = frozenset({T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.FFN_GATE, T.FFN_UP, T.FFN_DOWN})
TOP_TENSORS: dict[str, gguf.MODEL_TENSOR] = {
    "model.embed_tokens": T.TOKEN_EMBD,
    "model.norm": T.OUTPUT_NORM,
    "lm_head": T.OUTPUT,
}
_BLOCK_RE = re.compile(r"model\.layers\.(\d{1,6})\.(.+)\.(weight|bias)")
_TOP_RE = re.compile(r"(.+)\.(weight|bias)")


@dataclass(frozen=True)
class LlamaParams:
    """The hyper-parameters of config.json that the llama layout needs, validated."""

    architecture: str
    n_layers: int
    hidden: int
    n_ff: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_ctx: int | None
    rms_eps: float
    rope_theta: float | None
    rope_scaling: dict[str, Any]
    tied_embeddings: bool
    vocab_size: int | None
    name: str | None


def _int(config: dict[str, Any], key: str, limit: int, default: int | None = None) -> int:
    value = config.get(key, default)
    if type(value) is not int or not 0 < value <= limit:
        raise ConversionError(f"config.json: {key} must be a positive integer up to {limit}, "
                              f"not {str(value)[:40]}")
    return value


def _float(config: dict[str, Any], key: str, default: float | None) -> float | None:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConversionError(f"config.json: {key} must be a positive number, not {str(value)[:40]}")
    return float(value)


def read_params(config: dict[str, Any]) -> LlamaParams:
    """Validate config.json for the llama layout; refuse clearly what this converter cannot do."""
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if arch is None:
        raise ConversionError("config.json names no architecture ('architectures' is missing)")
    if arch not in ARCHITECTURES:
        raise ConversionError(f"unsupported architecture {arch[:100]!r}: safetensors import supports "
                              f"{', '.join(ARCHITECTURES)}; convert other models to GGUF first")
    quant = config.get("quantization_config")
    if quant is not None:
        method = quant.get("quant_method") if isinstance(quant, dict) else None
        raise ConversionError(f"{arch}: quantized checkpoints ({str(method or 'unknown')[:40]}) cannot be "
                              "converted; import the F16/BF16/F32 weights")
    if config.get("num_local_experts"):
        raise ConversionError(f"{arch}: mixture-of-experts checkpoints are not supported")
    hidden = _int(config, "hidden_size", MAX_WIDTH)
    n_head = _int(config, "num_attention_heads", 4096)
    n_kv_head = _int(config, "num_key_value_heads", 4096, default=n_head)
    head_dim = config.get("head_dim") or hidden // n_head
    if type(head_dim) is not int or head_dim <= 0 or head_dim % 2 or n_head % n_kv_head:
        raise ConversionError(f"config.json: {n_head} heads, {n_kv_head} key/value heads and head size "
                              f"{str(head_dim)[:20]} do not fit the llama layout")
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ConversionError("config.json: rope_scaling must be an object")
    rope_theta = _float(config, "rope_theta", rope.get("rope_theta"))
    name = config.get("_name_or_path")
    n_ctx = _int(config, "max_position_embeddings", 1 << 24) if "max_position_embeddings" in config else None
    return LlamaParams(
        architecture=arch,
        n_layers=_int(config, "num_hidden_layers", MAX_LAYERS),
        hidden=hidden,
        n_ff=_int(config, "intermediate_size", MAX_WIDTH * 4),
        n_head=n_head,
        n_kv_head=n_kv_head,
        head_dim=head_dim,
        n_ctx=n_ctx,
        rms_eps=_float(config, "rms_norm_eps", 1e-6) or 1e-6,
        rope_theta=rope_theta,
        rope_scaling=rope,
        tied_embeddings=config.get("tie_word_embeddings") is True,
        vocab_size=_int(config, "vocab_size", 1 << 24) if "vocab_size" in config else None,
        name=name.rstrip("/").rsplit("/", 1)[-1][:200] or None if isinstance(name, str) else None,
    )


@dataclass
class TensorPlan:
    """One output tensor: where it comes from, how it is reshaped and what it becomes."""

    gguf_name: str
    shape: tuple[int, ...]
    out_dtype: type[np.floating[Any]]
    entry: TensorEntry | None = None
    permute_heads: int = 0  # rotary rows regrouped per head (q/k projections), 0 for none
    values: np.ndarray[Any, Any] | None = None  # a tensor computed here (rope_freqs)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.out_dtype).itemsize


def _expected_shape(p: LlamaParams, kind: gguf.MODEL_TENSOR, suffix: str, n_vocab: int) -> tuple[int, ...]:
    q, kv = p.n_head * p.head_dim, p.n_kv_head * p.head_dim
    weights: dict[gguf.MODEL_TENSOR, tuple[int, ...]] = {
        T.TOKEN_EMBD: (n_vocab, p.hidden), T.OUTPUT: (n_vocab, p.hidden), T.OUTPUT_NORM: (p.hidden,),
        T.ATTN_NORM: (p.hidden,), T.FFN_NORM: (p.hidden,),
        T.ATTN_Q: (q, p.hidden), T.ATTN_K: (kv, p.hidden), T.ATTN_V: (kv, p.hidden),
        T.ATTN_OUT: (p.hidden, q),
        T.FFN_GATE: (p.n_ff, p.hidden), T.FFN_UP: (p.n_ff, p.hidden), T.FFN_DOWN: (p.hidden, p.n_ff),
    }
    shape = weights[kind]
    if suffix == "bias":
        if kind not in BIASED:
            raise ConversionError(f"{p.architecture}: unexpected bias tensor for {gguf.TENSOR_NAMES[kind]}")
        return shape[:1]
    return shape


def plan_tensors(p: LlamaParams, tensors: dict[str, TensorEntry]) -> tuple[list[TensorPlan], int]:
    """The output tensors in llama.cpp's order, and the vocabulary size (embedding rows)."""
    embed = tensors.get("model.embed_tokens.weight")
    if embed is None or len(embed.shape) != 2:
        raise ConversionError(f"{p.architecture}: model.embed_tokens.weight is missing or not 2-D")
    n_vocab = embed.shape[0]
    if n_vocab > MAX_VOCAB:
        raise ConversionError(f"{p.architecture}: a vocabulary of {n_vocab} tokens is beyond the {MAX_VOCAB} "
                              "this converter accepts")
    if p.vocab_size is not None and p.vocab_size != n_vocab:
        raise ConversionError(f"config.json: vocab_size {p.vocab_size}, but the embeddings have "
                              f"{n_vocab} rows")
    plans: dict[str, TensorPlan] = {}
    for hf_name, entry in tensors.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp from the RoPE parameters
        if hf_name == "lm_head.weight" and p.tied_embeddings:
            continue  # llama.cpp uses token_embd when output is absent
        kind, suffix, bid = _classify(p, hf_name)
        shape = _expected_shape(p, kind, suffix, n_vocab)
        if entry.shape != shape:
            raise ConversionError(f"tensor {hf_name}: shape {list(entry.shape)}, expected {list(shape)} "
                                  "from config.json")
        name = gguf.TENSOR_NAMES[kind].format(bid=bid) + "." + suffix
        heads = {T.ATTN_Q: p.n_head, T.ATTN_K: p.n_kv_head}.get(kind, 0)
        plans[name] = TensorPlan(name, shape, np.float16 if len(shape) == 2 else np.float32, entry, heads)
    required = [gguf.TENSOR_NAMES[k] + ".weight" for k in (T.TOKEN_EMBD, T.OUTPUT_NORM)]
    required += [gguf.TENSOR_NAMES[k].format(bid=b) + ".weight" for b in range(p.n_layers)
                 for k in BLOCK_TENSORS.values()]
    missing = [name for name in required if name not in plans]
    if missing:
        raise ConversionError(f"{p.architecture}: {len(missing)} tensors missing from the safetensors "
                              f"files (the first is {missing[0]}); are all shards there?")
    rope_freqs = _llama3_rope_factors(p)
    if rope_freqs is not None:
        name = gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight"
        plans[name] = TensorPlan(name, rope_freqs.shape, np.float32, values=rope_freqs)
    return sorted(plans.values(), key=_order), n_vocab


def _classify(p: LlamaParams, hf_name: str) -> tuple[gguf.MODEL_TENSOR, str, int | None]:
    match = _BLOCK_RE.fullmatch(hf_name)
    if match is not None:
        bid, kind = int(match[1]), BLOCK_TENSORS.get(match[2])
        if kind is not None and bid < p.n_layers:
            return kind, match[3], bid
    else:
        match = _TOP_RE.fullmatch(hf_name)
        kind = TOP_TENSORS.get(match[1]) if match else None
        if match is not None and kind is not None:
            return kind, match[2], None
    raise ConversionError(f"{p.architecture}: unexpected tensor {hf_name[:200]!r} (not part of the llama "
                          "layout this converter writes)")


def _order(plan: TensorPlan) -> tuple[int, int, str]:
    if plan.gguf_name.startswith("blk."):
        return 1, int(plan.gguf_name.split(".")[1]), plan.gguf_name
    return (0 if plan.gguf_name.startswith(("token_embd", "rope_freqs")) else 2), 0, plan.gguf_name


def _llama3_rope_factors(p: LlamaParams) -> np.ndarray[Any, np.dtype[np.float32]] | None:
    if _rope_kind(p) != "llama3":
        return None
    base = p.rope_theta or 10000.0
    factor = float(p.rope_scaling.get("factor", 8.0))
    low = float(p.rope_scaling.get("low_freq_factor", 1.0))
    high = float(p.rope_scaling.get("high_freq_factor", 4.0))
    old_ctx = float(p.rope_scaling.get("original_max_position_embeddings", 8192))
    if not (factor > 0 and high > low > 0 and old_ctx > 0):
        raise ConversionError("config.json: invalid llama3 rope_scaling")
    freqs = 1.0 / (base ** (np.arange(0, p.head_dim, 2, dtype=np.float64) / p.head_dim))
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    factors = np.where(wavelen < old_ctx / high, 1.0,
                       np.where(wavelen > old_ctx / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


def _rope_kind(p: LlamaParams) -> str:
    return str(p.rope_scaling.get("rope_type", p.rope_scaling.get("type")) or "default").lower()


def _check_rope_scaling(p: LlamaParams) -> None:
    if _rope_kind(p) not in ("default", "linear", "yarn", "llama3"):
        raise ConversionError(f"{p.architecture}: RoPE scaling {_rope_kind(p)[:40]!r} is not supported")


def _write_params(writer: gguf.GGUFWriter, p: LlamaParams, n_vocab: int) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    if p.name:
        writer.add_name(p.name)
    writer.add_vocab_size(n_vocab)
    if p.n_ctx is not None:
        writer.add_context_length(p.n_ctx)
    writer.add_embedding_length(p.hidden)
    writer.add_block_count(p.n_layers)
    writer.add_feed_forward_length(p.n_ff)
    writer.add_rope_dimension_count(p.head_dim)
    writer.add_head_count(p.n_head)
    writer.add_head_count_kv(p.n_kv_head)
    writer.add_layer_norm_rms_eps(p.rms_eps)
    if p.head_dim != p.hidden // p.n_head:
        writer.add_key_length(p.head_dim)
        writer.add_value_length(p.head_dim)
    if p.rope_theta is not None:
        writer.add_rope_freq_base(p.rope_theta)
    kind = _rope_kind(p)
    factor = p.rope_scaling.get("factor")
    if kind == "linear" and isinstance(factor, int | float):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    elif kind == "yarn" and isinstance(factor, int | float):
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        orig = p.rope_scaling.get("original_max_position_embeddings")
        if type(orig) is int and orig > 0:
            writer.add_rope_scaling_orig_ctx_len(orig)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tensor_values(data: TensorData, plan: TensorPlan) -> tuple[np.ndarray[Any, Any], int]:
    """The output array of one tensor, and how many values had to be clamped to F16's range."""
    if plan.values is not None:
        return plan.values, 0
    assert plan.entry is not None
    source = data.array(plan.entry)
    if not plan.permute_heads and np.dtype(plan.out_dtype) == DTYPES[plan.entry.dtype]:
        return source.reshape(plan.shape), 0  # written straight from the file's pages
    rows = source.reshape(source.shape[0], -1) if source.ndim > 1 else source.reshape(-1, 1)
    order = None
    if plan.permute_heads:
        n = plan.permute_heads
        order = np.arange(rows.shape[0]).reshape(n, 2, rows.shape[0] // n // 2).swapaxes(1, 2).reshape(-1)
    out = np.empty(rows.shape, dtype=plan.out_dtype)
    clamped = 0
    for start, stop in row_blocks(rows.shape[0], rows.shape[1] * 4):
        block = rows[order[start:stop]] if order is not None else rows[start:stop]
        if np.dtype(plan.out_dtype) == DTYPES[plan.entry.dtype]:
            out[start:stop] = block
            continue
        values = to_float32(block, plan.entry.dtype)
        if plan.out_dtype is np.float16:
            over = np.abs(values) > F16_MAX
            if over.any():
                clamped += int(np.count_nonzero(over))
                values = np.clip(values, -F16_MAX, F16_MAX)
        out[start:stop] = values
    return out.reshape(plan.shape), clamped


@dataclass
class Conversion:
    """A checked model folder: everything but the tensor data is read and validated."""

    params: LlamaParams
    plans: list[TensorPlan]
    n_vocab: int
    vocab: Vocabulary


def check_safetensors(folder: Path) -> Conversion:
    """Read and validate the folder's config, safetensors headers and tokenizer (no tensor data);
    raise ConversionError naming what is unsupported or malformed."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError("config.json is missing from the model folder")
    params = read_params(read_json(config_path, MAX_CONFIG_BYTES))
    plans, n_vocab = plan_tensors(params, read_tensors(folder))
    _check_rope_scaling(params)
    return Conversion(params, plans, n_vocab, read_vocabulary(folder, n_vocab))


def convert_safetensors(folder: Path, out: Path, progress: Progress | None = None) -> list[str]:
    """Convert the llama-family checkpoint in ``folder`` to the GGUF file ``out``.

    Raises ConversionError (a BadRequest) naming what is unsupported or malformed; returns warnings
    (an unknown pre-tokenizer, values clamped to F16).
    """
    report: Progress = progress or (lambda _: None)
    checked = check_safetensors(folder)
    params, plans, n_vocab, vocab = checked.params, checked.plans, checked.n_vocab, checked.vocab
    warnings = list(vocab.warnings)
    writer = gguf.GGUFWriter(out, "llama")
    _write_params(writer, params, n_vocab)
    write_vocabulary(writer, vocab)
    for plan in plans:
        writer.add_tensor_info(plan.gguf_name, plan.shape, np.dtype(plan.out_dtype), plan.nbytes)
    total = sum(plan.nbytes for plan in plans)
    done, clamped = 0, 0
    data = TensorData()
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        report({"status": "converting model", "total": total, "completed": 0})
        for plan in plans:
            values, n_clamped = _tensor_values(data, plan)
            clamped += n_clamped
            writer.write_tensor_data(values)
            del values
            done += plan.nbytes
            report({"status": "converting model", "total": total, "completed": done})
    finally:
        data.close()
        writer.close()
    if clamped:
        warnings.append(f"{clamped} weights beyond F16's range were clamped to ±{F16_MAX:g}")
    return warnings
