"""The Ollama-library layout table: each rule on a small GGUF written the way Ollama publishes it, and
the translated copy (header rewritten, tensor data byte for byte, blob untouched, written once)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.errors import UnsupportedModel
from appliance.store.gguf import GGUFInfo, read_gguf
from appliance.store.gguf_compat import (
    LLAMA_CPP_ARCHITECTURES,
    RULES_VERSION,
    assess,
    cache_dir,
    llama_cpp_note,
    translated_copy,
)
from tests.fixtures.ollama_layouts import with_embedded_tower, write_header_only, write_ollama_gptoss
from tests.fixtures.tiny_gguf import write_tiny_llama


def _blob(models: Path, source: Path) -> Path:
    """``source`` placed in a models folder as a content-addressed blob."""
    data = source.read_bytes()
    blob = models / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    return blob


def _tensor_bytes(path: Path, info: GGUFInfo, name: str) -> bytes:
    tensor = next(t for t in info.tensors if t.name == name)
    with open(path, "rb") as f:
        f.seek(info.data_offset + tensor.offset)
        return f.read(tensor.n_bytes)


def test_a_llama_cpp_gguf_loads_as_it_is(tmp_path: Path) -> None:
    blob = _blob(tmp_path / "models", write_tiny_llama(tmp_path / "tiny.gguf"))
    assert assess(read_gguf(blob, max_array=0)).action == "load"
    assert translated_copy(blob, tmp_path / "models") == blob
    assert not cache_dir(tmp_path / "models").exists()
    assert llama_cpp_note(blob) is None


def test_gptoss_is_translated_to_gpt_oss_with_its_tensor_data_unchanged(tmp_path: Path) -> None:
    models = tmp_path / "models"
    blob = _blob(models, write_ollama_gptoss(tmp_path / "gptoss.gguf"))
    before = hashlib.sha256(blob.read_bytes()).hexdigest()
    verdict = assess(read_gguf(blob, max_array=0))
    assert verdict.action == "translate"
    assert "model family 'gpt-oss' (architecture 'gptoss')" in verdict.message

    copy = translated_copy(blob, models)
    assert copy == cache_dir(models) / f"{blob.name}-v{RULES_VERSION}.gguf"
    src, out = read_gguf(blob), read_gguf(copy)
    assert out.architecture == "gpt-oss"
    assert not [k for k in out.metadata if k.startswith("gptoss.")]
    assert out.metadata["gpt-oss.block_count"] == 2
    assert out.metadata["gpt-oss.attention.sliding_window"] == 64
    assert out.metadata["gpt-oss.expert_feed_forward_length"] == 32  # from ffn_gate_exps' shape
    assert out.metadata["gpt-oss.rope.scaling.type"] == "yarn"
    assert out.metadata["tokenizer.ggml.pre"] == "gpt-4o"
    assert out.metadata["tokenizer.ggml.tokens"] == src.metadata["tokenizer.ggml.tokens"]
    names = {t.name for t in out.tensors}
    assert {"blk.0.attn_output.weight", "blk.0.attn_output.bias", "blk.0.attn_sinks.weight",
            "blk.1.post_attention_norm.weight"} <= names
    assert not {"blk.0.attn_out.weight", "blk.0.attn_sinks", "blk.0.ffn_norm.weight"} & names
    renamed = {"blk.1.attn_out.weight": "blk.1.attn_output.weight", "blk.0.attn_sinks": "blk.0.attn_sinks.weight",
               "blk.0.ffn_gate_exps.weight": "blk.0.ffn_gate_exps.weight", "token_embd.weight": "token_embd.weight"}
    for old, new in renamed.items():
        assert _tensor_bytes(copy, out, new) == _tensor_bytes(blob, src, old)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == before  # the blob itself is never rewritten

    written = copy.stat().st_mtime_ns
    assert translated_copy(blob, models) == copy
    assert copy.stat().st_mtime_ns == written  # written once, then reused
    assert not [p for p in cache_dir(models).iterdir() if p.name.startswith(".tmp-")]


def test_an_embedded_vision_tower_is_left_out_of_the_text_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    blob = _blob(models, with_embedded_tower(write_tiny_llama(tmp_path / "tiny.gguf"), tmp_path / "v.gguf"))
    verdict = assess(read_gguf(blob, max_array=0))
    assert verdict.action == "translate"
    assert "runs as a text model" in verdict.message
    copy = translated_copy(blob, models)
    src, out = read_gguf(blob), read_gguf(copy)
    assert {t.name for t in out.tensors} == {t.name for t in src.tensors if not t.name.startswith(("v.", "mm."))}
    assert len(out.tensors) == len(src.tensors) - 4
    for tensor in out.tensors:
        assert _tensor_bytes(copy, out, tensor.name) == _tensor_bytes(blob, src, tensor.name)


def test_an_unknown_architecture_is_refused_by_name(tmp_path: Path) -> None:
    blob = _blob(tmp_path / "models", write_header_only(tmp_path / "x.gguf", "ollamaonly"))
    verdict = assess(read_gguf(blob, max_array=0))
    assert verdict.action == "refuse"
    assert "model architecture 'ollamaonly' is not supported by llama.cpp here" in verdict.message
    with pytest.raises(UnsupportedModel) as caught:
        translated_copy(blob, tmp_path / "models")
    assert caught.value.status == 400
    assert "'ollamaonly'" in str(caught.value)
    note = llama_cpp_note(blob)
    assert note is not None and note.startswith("warning: ") and "will not load here" in note


def test_mllama_is_refused_naming_the_family(tmp_path: Path) -> None:
    path = write_header_only(tmp_path / "mllama.gguf", "mllama",
                             {"mllama.attention.cross_attention_layers": [3, 8]})
    verdict = assess(read_gguf(path, max_array=0))
    assert verdict.action == "refuse"
    assert verdict.message.startswith("model family 'llama3.2-vision' (architecture 'mllama') was published "
                                      "for Ollama's own engine and cannot run on llama.cpp here: ")


def test_a_layout_that_needs_tensor_data_changed_is_refused(tmp_path: Path) -> None:
    path = write_header_only(tmp_path / "qwen35.gguf", "qwen35", {"qwen35.ssm.v_head_reordered": True},
                             {"token_embd.weight": (16, 8), "mtp.0.eh_proj.weight": (8, 16)})
    verdict = assess(read_gguf(path, max_array=0))
    assert verdict.action == "refuse"
    assert "model family 'qwen3.5'" in verdict.message and "tensor data rewritten" in verdict.message
    # the same architecture converted by llama.cpp (no Ollama markers) loads as it is
    plain = write_header_only(tmp_path / "plain.gguf", "qwen35")
    assert assess(read_gguf(plain, max_array=0)).action == "load"


def test_qwen3next_per_layer_kv_heads_collapse_and_ssm_dt_is_renamed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    blob = _blob(models, write_header_only(
        tmp_path / "next.gguf", "qwen3next", {"qwen3next.attention.head_count_kv": [0, 0, 2, 0]},
        {"token_embd.weight": (16, 8), "blk.0.ssm_dt": (8,), "blk.0.ssm_a": (8,)}))
    copy = translated_copy(blob, models)
    out = read_gguf(copy)
    assert out.metadata["qwen3next.attention.head_count_kv"] == 2
    assert {t.name for t in out.tensors} == {"token_embd.weight", "blk.0.ssm_dt.bias", "blk.0.ssm_a"}


def test_gemma3_vocabulary_is_cut_to_the_embedding_rows_and_keys_completed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    tokens = [f"t{i}" for i in range(20)]  # 4 more than token_embd's 16 rows (image tokens)
    blob = _blob(models, write_header_only(
        tmp_path / "gemma3.gguf", "gemma3",
        {"tokenizer.ggml.tokens": tokens, "gemma3.rope.global.freq_base": 500000.0,
         "gemma3.context_length": 131072, "gemma3.mm.tokens_per_image": 256},
        {"token_embd.weight": (16, 8), "v.blk.0.attn_q.weight": (8, 8), "mm.mm_input_projection.weight": (8, 8)}))
    assert assess(read_gguf(blob, max_array=0)).family == "gemma3"
    out = read_gguf(translated_copy(blob, models))
    assert out.metadata["tokenizer.ggml.tokens"] == tokens[:16]
    assert out.metadata["gemma3.rope.freq_base"] == 500000.0
    assert out.metadata["gemma3.rope.freq_base_swa"] == 10000.0
    assert out.metadata["gemma3.attention.layer_norm_rms_epsilon"] == 1e-06
    assert out.metadata["gemma3.rope.scaling.type"] == "linear"
    assert [t.name for t in out.tensors] == ["token_embd.weight"]


def test_a_translated_copy_whose_blob_is_gone_is_removed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = _blob(models, write_ollama_gptoss(tmp_path / "a.gguf", seed=1))
    old_copy = translated_copy(first, models)
    first.unlink()  # the model was deleted and its blob pruned
    second = _blob(models, write_ollama_gptoss(tmp_path / "b.gguf", seed=2))
    translated_copy(second, models)
    assert not old_copy.exists()
    assert len(list(cache_dir(models).iterdir())) == 1


def test_create_refuses_a_refused_layout_and_a_quantize_llama_cpp_cannot_do(tmp_path: Path) -> None:
    from appliance.store import create as creating
    from appliance.store.local import Store

    store = Store(tmp_path / "models")
    unknown, _, _ = store.blobs.put_file(write_header_only(tmp_path / "x.gguf", "ollamaonly"))
    with pytest.raises(UnsupportedModel, match="model architecture 'ollamaonly' is not supported"):
        creating.plan_create(store, {"model": "x", "files": {"x.gguf": unknown}})
    gptoss, _, _ = store.blobs.put_file(write_ollama_gptoss(tmp_path / "gptoss.gguf"))
    request = {"model": "g", "files": {"gptoss.gguf": gptoss}}
    assert creating.plan_create(store, request).model_info is not None  # translated when it loads
    with pytest.raises(UnsupportedModel, match="cannot quantize architecture 'gptoss' here; model family 'gpt-oss'"):
        creating.plan_create(store, {**request, "quantize": "q8_0"})


# Each translating rule on a header written with the markers Ollama's files carry: (arch, keys, numpy
# tensor shapes, what the translation must hold).  GGUF shapes are the numpy shapes reversed.
LAYOUTS: dict[str, tuple[str, dict, dict, Callable[[GGUFInfo], None]]] = {}


def _layout(name: str, arch: str, keys: dict, tensors: dict) -> Callable[[Callable[[GGUFInfo], None]], None]:
    def register(check: Callable[[GGUFInfo], None]) -> None:
        LAYOUTS[name] = (arch, keys, tensors, check)
    return register


@_layout("olmo3", "olmo3", {"olmo3.attention.sliding_window": 4096}, {"token_embd.weight": (16, 8)})
def _olmo3(out: GGUFInfo) -> None:
    assert out.architecture == "olmo2"
    assert out.metadata["olmo2.attention.sliding_window"] == 4096 and "olmo3.block_count" not in out.metadata


@_layout("qwen25vl", "qwen25vl", {"qwen25vl.rope.mrope_section": [16, 24, 24]},
         {"token_embd.weight": (16, 8), "v.patch_embd.weight": (8, 8), "mm.0.weight": (8, 8)})
def _qwen25vl(out: GGUFInfo) -> None:
    assert out.architecture == "qwen2vl"
    assert out.metadata["qwen2vl.rope.dimension_sections"] == [16, 24, 24, 0]
    assert [t.name for t in out.tensors] == ["token_embd.weight"]


@_layout("qwen3vl", "qwen3vl", {"qwen3vl.vision.deepstack_visual_indexes": [8, 16, 24]},
         {"token_embd.weight": (16, 8), "v.blk.0.attn_qkv.weight": (24, 8)})
def _qwen3vl(out: GGUFInfo) -> None:
    assert out.metadata["qwen3vl.rope.dimension_sections"] == [24, 20, 20, 0]
    assert out.metadata["qwen3vl.n_deepstack_layers"] == 3
    assert [t.name for t in out.tensors] == ["token_embd.weight"]


@_layout("embeddinggemma", "gemma3", {"gemma3.attention.causal": False},
         {"token_embd.weight": (16, 8), "norm.weight": (8,), "dense.0.weight": (24, 8), "dense.1.weight": (8, 24)})
def _embeddinggemma(out: GGUFInfo) -> None:
    assert out.architecture == "gemma-embedding"
    assert "gemma-embedding.attention.causal" not in out.metadata
    assert (out.metadata["gemma-embedding.dense_2_feat_in"], out.metadata["gemma-embedding.dense_2_feat_out"]) == (8, 24)
    assert (out.metadata["gemma-embedding.dense_3_feat_in"], out.metadata["gemma-embedding.dense_3_feat_out"]) == (24, 8)
    assert {t.name for t in out.tensors} == {"token_embd.weight", "output_norm.weight", "dense_2.weight", "dense_3.weight"}


@_layout("gemma3n", "gemma3n", {"tokenizer.ggml.tokens": ["<0x0A>", "<unused0>", *(f"t{i}" for i in range(18))],
                                "tokenizer.ggml.token_type": [1] * 20, "tokenizer.ggml.eos_token_ids": [1]},
         {"token_embd.weight": (20, 8), "per_layer_token_embd.weight": (16, 8)})
def _gemma3n(out: GGUFInfo) -> None:
    assert next(t for t in out.tensors if t.name == "token_embd.weight").shape == (8, 16)
    assert len(out.metadata["tokenizer.ggml.tokens"]) == 16
    assert out.metadata["tokenizer.ggml.token_type"][:3] == [6, 1, 1]  # <0x0A> is a byte token
    assert out.metadata["tokenizer.ggml.eos_token_ids"] == [1, 106]
    assert out.metadata["tokenizer.ggml.model"] == "llama"


@_layout("gemma4", "gemma4", {"tokenizer.ggml.model": "llama"},
         {"token_embd.weight": (16, 8), "a.conv1d.0.weight": (8, 8), "v.patch_embd.weight": (8, 8)})
def _gemma4(out: GGUFInfo) -> None:
    assert out.metadata["tokenizer.ggml.model"] == "gemma4"
    assert [t.name for t in out.tensors] == ["token_embd.weight"]


@_layout("mistral3", "mistral3", {"mistral3.rope.scaling.beta_fast": 32.0, "mistral3.rope.scaling_beta": 0.1,
                                  "tokenizer.ggml.pre": "default"},
         {"token_embd.weight": (16, 8), "v.patch_conv.weight": (8, 8)})
def _mistral3(out: GGUFInfo) -> None:
    assert out.metadata["mistral3.rope.scaling.yarn_beta_fast"] == 32.0
    assert out.metadata["mistral3.attention.temperature_scale"] == 0.1
    assert out.metadata["tokenizer.ggml.pre"] == "tekken"
    assert [t.name for t in out.tensors] == ["token_embd.weight"]


@_layout("llama4", "llama4", {}, {"token_embd.weight": (16, 8), "v.patch_embedding.weight": (8, 8)})
def _llama4(out: GGUFInfo) -> None:
    assert out.architecture == "llama4" and [t.name for t in out.tensors] == ["token_embd.weight"]


@_layout("lfm2", "lfm2", {"lfm2.feed_forward_length": 12288},
         {"token_embd.weight": (16, 8), "output_norm.weight": (8,), "blk.0.ffn_gate.weight": (12, 8)})
def _lfm2(out: GGUFInfo) -> None:
    assert {t.name for t in out.tensors} == {"token_embd.weight", "token_embd_norm.weight", "blk.0.ffn_gate.weight"}
    assert out.metadata["lfm2.feed_forward_length"] == 12
    assert out.metadata["tokenizer.ggml.pre"] == "lfm2"


@_layout("laguna", "laguna", {"laguna.rope.swa.dimension_count": 64},
         {"token_embd.weight": (16, 8), "blk.0.attn_g.weight": (8, 8)})
def _laguna(out: GGUFInfo) -> None:
    assert out.metadata["laguna.rope.dimension_count_swa"] == 64
    assert {t.name for t in out.tensors} == {"token_embd.weight", "blk.0.attn_gate.weight"}


@_layout("deepseekocr", "deepseekocr", {},
         {"token_embd.weight": (16, 8), "blk.1.ffn_down_exps.weight": (2, 8, 4), "blk.1.ffn_down_shexp.weight": (8, 8),
          "s.blk.0.attn.weight": (8, 8), "v.blk.0.attn.weight": (8, 8), "mm.layers.weight": (8, 8)})
def _deepseekocr(out: GGUFInfo) -> None:
    assert out.architecture == "deepseek2-ocr"
    assert out.metadata["deepseek2-ocr.expert_feed_forward_length"] == 4
    assert out.metadata["deepseek2-ocr.expert_shared_count"] == 2
    assert out.metadata["deepseek2-ocr.attention.layer_norm_rms_epsilon"] == 1e-06
    assert not [t for t in out.tensors if t.name.startswith(("s.", "v.", "mm."))]


@_layout("glm4moelite", "glm4moelite", {"glm4moelite.attention.key_length": 256, "glm4moelite.attention.head_count_kv": 20,
                                        "glm4moelite.attention.kv_lora_rank": 512, "glm4moelite.rope.dimension_count": 64,
                                        "tokenizer.ggml.eos_token_ids": [1, 5, 7]},
         {"token_embd.weight": (16, 8)})
def _glm4moelite(out: GGUFInfo) -> None:
    md = out.metadata
    assert out.architecture == "deepseek2" and md["deepseek2.attention.head_count_kv"] == 1
    assert (md["deepseek2.attention.key_length"], md["deepseek2.attention.value_length"]) == (576, 512)
    assert (md["deepseek2.attention.key_length_mla"], md["deepseek2.attention.value_length_mla"]) == (256, 256)
    assert (md["tokenizer.ggml.eot_token_id"], md["tokenizer.ggml.eom_token_id"]) == (5, 7)
    assert md["deepseek2.expert_group_count"] == 1


@_layout("nemotron_h_omni", "nemotron_h_omni", {"nemotron_h_omni.expert_count": 8, "nemotron_h_omni.vision.block_count": 4},
         {"token_embd.weight": (16, 8), "blk.1.ffn_latent_in.weight": (4, 8), "a.blk.0.w.weight": (8, 8),
          "v.blk.0.w.weight": (8, 8), "mtp.0.w.weight": (8, 8)})
def _nemotron_h_omni(out: GGUFInfo) -> None:
    assert out.architecture == "nemotron_h_moe"
    assert out.metadata["nemotron_h_moe.expert_count"] == 8 and "nemotron_h_moe.vision.block_count" not in out.metadata
    assert out.metadata["nemotron_h_moe.moe_latent_size"] == 4
    assert {t.name for t in out.tensors} == {"token_embd.weight", "blk.1.ffn_latent_down.weight"}


@_layout("snowflake-arctic-embed2", "bert", {"tokenizer.ggml.model": "t5",
                                             "tokenizer.ggml.precompiled_charsmap": list("AQL/")},
         {"token_embd.weight": (16, 8)})
def _snowflake(out: GGUFInfo) -> None:
    assert out.metadata["tokenizer.ggml.precompiled_charsmap"] == [1, 2, 255]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_translating_rule_writes_what_llama_cpp_expects(layout: str, tmp_path: Path) -> None:
    arch, keys, tensors, check = LAYOUTS[layout]
    models = tmp_path / "models"
    blob = _blob(models, write_header_only(tmp_path / f"{layout}.gguf", arch, keys, tensors))
    verdict = assess(read_gguf(blob, max_array=0))
    assert verdict.action == "translate", verdict
    src, out = read_gguf(blob), read_gguf(translated_copy(blob, models))
    check(out)
    assert out.architecture in LLAMA_CPP_ARCHITECTURES
    assert _tensor_bytes(translated_copy(blob, models), out, "token_embd.weight")[:64] == \
        _tensor_bytes(blob, src, "token_embd.weight")[:64]


@pytest.mark.parametrize(("arch", "keys", "tensors", "family"), [
    ("glmocr", {}, {"token_embd.weight": (16, 8)}, "glm-ocr"),
    ("gemma4", {}, {"token_embd.weight": (16, 8), "blk.0.ffn_gate_exps.weight": (2, 8, 8), "v.patch_embd.weight": (8, 8)},
     "gemma4"),
    ("qwen35moe", {}, {"token_embd.weight": (16, 8), "mtp.0.w.weight": (8, 8)}, "qwen3.5"),
])
def test_layouts_that_need_tensor_data_rewritten_are_refused(arch: str, keys: dict, tensors: dict, family: str,
                                                             tmp_path: Path) -> None:
    verdict = assess(read_gguf(write_header_only(tmp_path / "m.gguf", arch, keys, tensors), max_array=0))
    assert verdict.action == "refuse"
    assert verdict.message.startswith(f"model family '{family}' (architecture '{arch}')")
    assert "tensor data rewritten" in verdict.message
