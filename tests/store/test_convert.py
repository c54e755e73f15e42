"""Safetensors import: a real round trip of the bundled SmolLM2 through Hugging Face layout, and
hostile checkpoints.

The round trip dequantizes the bundled GGUF into a sharded BF16/F16/F32 safetensors folder
(tests/fixtures/hf_safetensors.py), converts it back in the ``ollama convert-safetensors`` child, and
compares with a reference GGUF written from the same dequantized values: tensors bit for bit, the
metadata llama.cpp reads, and greedy output through llama.cpp.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.store.convert import ConversionError
from appliance.store.convert.child import convert_in_child, link_files
from appliance.store.convert.importer import SafetensorsImport, is_safetensors_import
from appliance.store.convert.llama import check_safetensors, convert_safetensors
from appliance.store.convert.safetensors import read_header
from appliance.store.convert.tokenizer import parse_sentencepiece
from appliance.store.create import self_command
from appliance.store.gguf import GGUFInfo, read_gguf
from appliance.store.local import Store
from tests.fixtures.hf_safetensors import (
    byte_level_tokenizer,
    dequantize_to_hf,
    header_bytes,
    sentencepiece_model,
    tiny_tensors,
    write_safetensors,
    write_tiny_hf_llama,
)

#: What llama.cpp reads from a llama GGUF: hyper-parameters and the whole tokenizer.
LLAMA_CPP_KEYS = [
    "general.architecture", "general.file_type", "llama.block_count", "llama.context_length",
    "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
    "llama.attention.head_count_kv", "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon",
    "llama.vocab_size", "llama.rope.dimension_count", "tokenizer.ggml.model", "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
]


class RoundTrip:
    def __init__(self, original: Path, reference: Path, converted: Path,
                 progress: list[dict[str, Any]], warnings: list[str]) -> None:
        self.original, self.reference, self.converted = original, reference, converted
        self.progress, self.warnings = progress, warnings


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> RoundTrip:
    work = tmp_path_factory.mktemp("convert")
    hf, reference = work / "hf", work / "reference.gguf"
    dequantize_to_hf(smollm2_gguf, hf, reference)
    # As the server will: the uploaded files are blobs, linked into a folder under their names.
    blobs = work / "blobs"
    blobs.mkdir()
    files = {}
    for path in sorted(hf.iterdir()):
        digest = f"sha256:{len(files):064x}"
        path.rename(blobs / digest.replace(":", "-"))
        files[path.name] = digest
    folder = work / "linked"
    folder.mkdir()
    link_files(folder, files, lambda digest: blobs / digest.replace(":", "-"))
    progress: list[dict[str, Any]] = []
    converted = work / "converted.gguf"
    warnings = convert_in_child(self_command(), folder, converted, progress.append)
    return RoundTrip(smollm2_gguf, reference, converted, progress, warnings)


def _tensor_bytes(path: Path, info: GGUFInfo) -> dict[str, bytes]:
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=info.data_offset)
    return {t.name: data[t.offset : t.offset + t.n_bytes].tobytes() for t in info.tensors}


def test_round_trip_tensors_match_the_original(round_trip: RoundTrip) -> None:
    original, reference = read_gguf(round_trip.original), read_gguf(round_trip.reference)
    converted = read_gguf(round_trip.converted)
    assert {t.name: t.shape for t in converted.tensors} == {t.name: t.shape for t in original.tensors}
    types = {t.name: t.type_name for t in converted.tensors}
    assert types == {t.name: "F32" if len(t.shape) == 1 else "F16" for t in original.tensors}
    # The q/k permutation and the BF16/F16 paths are exact: every tensor equals the reference's.
    got, want = _tensor_bytes(round_trip.converted, converted), _tensor_bytes(round_trip.reference, reference)
    assert [name for name in want if got[name] != want[name]] == []


def test_round_trip_metadata(round_trip: RoundTrip) -> None:
    converted = read_gguf(round_trip.converted).metadata
    original = read_gguf(round_trip.original).metadata
    for key in LLAMA_CPP_KEYS:
        expected = 1 if key == "general.file_type" else original[key]  # MOSTLY_F16
        assert converted.get(key) == expected, key
    assert converted["tokenizer.ggml.pre"] == "smollm"
    assert converted["general.name"] == "SmolLM2-135M-Instruct"
    assert round_trip.warnings == []


def test_round_trip_progress(round_trip: RoundTrip) -> None:
    done = [p["completed"] for p in round_trip.progress]
    assert {p["status"] for p in round_trip.progress} == {"converting model"}
    assert done == sorted(done) and done[0] == 0
    assert done[-1] == round_trip.progress[-1]["total"] == Path(round_trip.converted).stat().st_size - \
        read_gguf(round_trip.converted).data_offset


def _greedy(path: Path, prompts: list[str]) -> list[tuple[list[int], list[int]]]:
    import llama_cpp

    # One thread: on a busy machine every step of a multi-threaded decode waits for its slowest thread.
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    try:
        out = []
        for prompt in prompts:
            tokens = llm.tokenize(prompt.encode(), special=True)
            llm.reset()
            generated: list[int] = []
            for token in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
                generated.append(token)
                if len(generated) == 20:
                    break
            out.append((tokens, generated))
        return out
    finally:
        llm.close()


def test_round_trip_greedy_output_equals_the_reference(round_trip: RoundTrip) -> None:
    prompts = ["The capital of France is", "<|im_start|>user\nWrite a haiku about rivers.<|im_end|>\n"
               "<|im_start|>assistant\n"]
    converted = _greedy(round_trip.converted, prompts)
    assert converted == _greedy(round_trip.reference, prompts)
    assert all(len(generated) == 20 for _, generated in converted)
    assert converted[1][0][:1] == [1]  # <|im_start|> is one control token, as in the original


# -- a tiny random llama: the SentencePiece path, BF16 weights, tied embeddings --------------------

def test_sentencepiece_vocabulary_loads_in_llama_cpp(tmp_path: Path) -> None:
    import llama_cpp

    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    words = [w for word in ("hello", "world") for w in ("\u2581" + word[:n] for n in range(1, 6))]
    pieces += [("\u2581", -1.0, 1)] + [(w, -float(i), 1) for i, w in enumerate(words)]
    pieces += [(c, -100.0, 1) for c in "helowrd"]
    n_vocab = len(pieces) + 3  # padded with unused tokens up to the embeddings
    folder = write_tiny_hf_llama(tmp_path / "spm", with_tokenizer=False, n_vocab=n_vocab, dtype="BF16",
                                 config={"bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": True})
    (folder / "tokenizer.model").write_bytes(sentencepiece_model(pieces))
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "chat_template": "{{x}}"}))
    out = tmp_path / "spm.gguf"
    assert convert_safetensors(folder, out) == []
    info = read_gguf(out)
    meta = info.metadata
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    assert meta["tokenizer.ggml.tokens"][-1] == f"[PAD{n_vocab - 1}]"
    assert meta["tokenizer.ggml.token_type"][3] == 6 and meta["tokenizer.ggml.token_type"][-1] == 5
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.chat_template"] == "{{x}}"
    assert "output.weight" not in {t.name for t in info.tensors}  # tied: llama.cpp reuses token_embd

    llm = llama_cpp.Llama(model_path=str(out), n_ctx=32, n_threads=1, verbose=False)
    try:
        ids = llm.tokenize(b"hello world")
        assert [meta["tokenizer.ggml.tokens"][i] for i in ids] == ["<s>", "\u2581hello", "\u2581world"]
        assert len(list(zip(range(3), llm.generate(ids, top_k=1), strict=False))) == 3
    finally:
        llm.close()


def test_parse_sentencepiece_refuses_a_truncated_protobuf() -> None:
    data = sentencepiece_model([("a", 0.0, 1)])
    with pytest.raises(ConversionError, match=r"tokenizer\.model"):
        parse_sentencepiece(data[:5])


def test_llama3_rope_scaling_writes_rope_freqs(tmp_path: Path) -> None:
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}
    folder = write_tiny_hf_llama(tmp_path / "l3", config={"rope_scaling": rope})
    convert_safetensors(folder, tmp_path / "l3.gguf")
    [freqs] = [t for t in read_gguf(tmp_path / "l3.gguf").tensors if t.name == "rope_freqs.weight"]
    assert freqs.shape == (2,) and freqs.type_name == "F32"  # head size 4: two rotary pairs


def test_attention_biases_are_permuted_like_their_weights(tmp_path: Path) -> None:
    import llama_cpp

    folder = write_tiny_hf_llama(tmp_path / "b")
    q_bias, k_bias = np.arange(8, dtype=np.float32), np.arange(4, dtype=np.float32)
    write_safetensors(folder / "bias.safetensors", {
        "model.layers.0.self_attn.q_proj.bias": ("F32", q_bias),
        "model.layers.0.self_attn.k_proj.bias": ("F32", k_bias),
        "model.layers.0.self_attn.v_proj.bias": ("F32", np.zeros(4, np.float32))})
    out = tmp_path / "b.gguf"
    convert_safetensors(folder, out)
    info = read_gguf(out)
    got = {name: np.frombuffer(raw, np.float32) for name, raw in _tensor_bytes(out, info).items()
           if name.endswith(".bias")}
    # Two heads of size 4 for q, one for k: each head's halves [0 1 | 2 3] become pairs [0 2 1 3].
    assert got["blk.0.attn_q.bias"].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert got["blk.0.attn_k.bias"].tolist() == [0, 2, 1, 3]
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=32, n_threads=1, verbose=False)
    try:
        assert len(list(zip(range(2), llm.generate([1, 2, 3], top_k=1), strict=False))) == 2
    finally:
        llm.close()


def test_mistral_with_a_wider_head_than_hidden_over_heads(tmp_path: Path) -> None:
    import llama_cpp

    config = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "head_dim": 8,
              "sliding_window": None}
    folder = write_tiny_hf_llama(tmp_path / "m", config=config, dtype="F32")
    out = tmp_path / "m.gguf"
    convert_safetensors(folder, out)
    meta = read_gguf(out).metadata
    assert meta["general.architecture"] == "llama"
    assert meta["llama.attention.key_length"] == meta["llama.attention.value_length"] == 8
    assert meta["llama.rope.dimension_count"] == 8
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=32, n_threads=1, verbose=False)
    try:
        assert len(list(zip(range(2), llm.generate([1, 2, 3], top_k=1), strict=False))) == 2
    finally:
        llm.close()


def test_values_beyond_f16_are_clamped_and_reported(tmp_path: Path) -> None:
    folder = write_tiny_hf_llama(tmp_path / "m", dtype="F32")
    tensors = tiny_tensors(259, dtype="F32")
    tensors["model.layers.0.mlp.up_proj.weight"][1][0, :2] = [1e6, -np.inf]
    write_safetensors(folder / "model.safetensors", tensors)
    out = tmp_path / "m.gguf"
    assert convert_safetensors(folder, out) == ["2 weights beyond F16's range were clamped to ±65504"]
    up = np.frombuffer(_tensor_bytes(out, read_gguf(out))["blk.0.ffn_up.weight"], np.float16)
    assert up[:2].tolist() == [65504, -65504]


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.mark.parametrize(("pre_tokenizer", "expected"), [
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
     "llama-bpe"),
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "use_regex": True}]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "x+"}},
                                            {"type": "ByteLevel", "use_regex": False}]}, "default"),
])
def test_pre_tokenizer_is_recognised(tmp_path: Path, pre_tokenizer: dict[str, Any], expected: str) -> None:
    tokenizer = {**byte_level_tokenizer(), "pre_tokenizer": pre_tokenizer}
    checked = check_safetensors(write_tiny_hf_llama(tmp_path / "m", tokenizer=tokenizer))
    assert checked.vocab.pre == expected
    assert bool(checked.vocab.warnings) == (expected == "default")


# -- hostile and unsupported input ------------------------------------------------------------------

def _raw_file(path: Path, header: dict[str, Any] | bytes | None, data: bytes = b"",
              length: int | None = None) -> Path:
    """A safetensors file: length prefix, header, data (``header`` None: the file is ``data`` alone)."""
    if header is None:
        path.write_bytes(data)
        return path
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _entry(dtype: str, shape: list[int], start: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


@pytest.mark.parametrize(("header", "data", "length", "message"), [
    (None, b"\1\2\3", None, "shorter than its 8-byte header length"),
    ({"a": _entry("F32", [2], 0, 8)}, b"", 1 << 62, "exceeds the"),
    ({"a": _entry("F32", [2], 0, 8)}, b"", 4096, "runs past the end of the file"),
    (b"{not json", b"", None, "not JSON"),
    (b"[1, 2]", b"", None, "not a JSON object"),
    ({"a": _entry("F32", [2], 0, 8)}, b"\0" * 4, None, "truncated"),
    ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}, b"\0" * 12, None, "overlaps"),
    ({"a": _entry("F32", [2], 8, 16)}, b"\0" * 16, None, "gap"),
    ({"a": _entry("F32", [2], 0, 8)}, b"\0" * 12, None, "bytes after the last tensor"),
    ({"a": _entry("F32", [3], 0, 8)}, b"\0" * 8, None, "does not match"),
    ({"a": _entry("F16", [1 << 40, 1 << 40], 0, 8)}, b"\0" * 8, None, "does not match"),
    ({"a": _entry("F32", [-2], 0, 8)}, b"\0" * 8, None, "invalid shape"),
    ({"a": _entry("F32", [2], 8, 0)}, b"\0" * 8, None, "invalid data_offsets"),
    ({"a": _entry("Q4", [2], 0, 8)}, b"\0" * 8, None, "unknown dtype"),
    ({"a": _entry("I8", [8], 0, 8)}, b"\0" * 8, None, "quantized checkpoints are not supported"),
    ({"a": [1, 2]}, b"", None, "is not an object"),
])
def test_hostile_safetensors_headers(tmp_path: Path, header: Any, data: bytes, length: int | None,
                                     message: str) -> None:
    path = _raw_file(tmp_path / "model.safetensors", header, data, length)
    with pytest.raises(ConversionError, match=message):
        read_header(path)


def test_a_valid_header_reads(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"b": ("F16", np.ones((2, 3), np.float16)), "a": ("F32", np.zeros(2, np.float32))})
    entries = {e.name: e for e in read_header(path)}
    assert entries["b"].shape == (2, 3) and entries["a"].dtype == "F32"


@pytest.mark.parametrize(("config", "message"), [
    ({"architectures": ["Qwen2ForCausalLM"]}, "unsupported architecture 'Qwen2ForCausalLM'"),
    ({"architectures": None}, "names no architecture"),
    ({"quantization_config": {"quant_method": "awq"}}, "LlamaForCausalLM: quantized checkpoints \\(awq\\)"),
    ({"num_local_experts": 8}, "mixture-of-experts"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    ({"num_key_value_heads": 3}, "do not fit the llama layout"),
    ({"hidden_size": 16}, "shape \\[259, 8\\], expected \\[259, 16\\]"),
    ({"num_hidden_layers": 2}, "tensors missing"),
    ({"vocab_size": 300}, "vocab_size 300, but the embeddings have 259 rows"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "RoPE scaling 'longrope' is not supported"),
])
def test_unsupported_models_are_refused_by_name(tmp_path: Path, config: dict[str, Any], message: str) -> None:
    folder = write_tiny_hf_llama(tmp_path / "m", config=config)
    with pytest.raises(ConversionError, match=message):
        convert_safetensors(folder, tmp_path / "out.gguf")


def test_missing_pieces_are_refused(tmp_path: Path) -> None:
    folder = write_tiny_hf_llama(tmp_path / "m", with_tokenizer=False)
    with pytest.raises(ConversionError, match="no tokenizer"):
        convert_safetensors(folder, tmp_path / "out.gguf")

    folder = write_tiny_hf_llama(tmp_path / "n")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(ConversionError, match=r"names model-00001-of-00002\.safetensors, which was not provided"):
        convert_safetensors(folder, tmp_path / "out.gguf")

    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../model.safetensors"}}))
    with pytest.raises(ConversionError, match="invalid weight file"):
        convert_safetensors(folder, tmp_path / "out.gguf")

    folder = write_tiny_hf_llama(tmp_path / "o")
    (folder / "config.json").unlink()
    with pytest.raises(ConversionError, match=r"config\.json is missing"):
        convert_safetensors(folder, tmp_path / "out.gguf")


def test_unexpected_tensors_and_tokenizers_are_refused(tmp_path: Path) -> None:
    folder = write_tiny_hf_llama(tmp_path / "m")
    (folder / "extra.safetensors").write_bytes(header_bytes([("model.vision_tower.weight", "F16", (0,))]))
    with pytest.raises(ConversionError, match=r"unexpected tensor 'model\.vision_tower\.weight'"):
        convert_safetensors(folder, tmp_path / "out.gguf")

    folder = write_tiny_hf_llama(tmp_path / "nb")
    write_safetensors(folder / "extra.safetensors", {"model.norm.bias": ("F32", np.zeros(8, np.float32))})
    with pytest.raises(ConversionError, match="unexpected bias tensor for output_norm"):
        convert_safetensors(folder, tmp_path / "out.gguf")

    folder = write_tiny_hf_llama(tmp_path / "n", tokenizer={"model": {"type": "Unigram", "vocab": []}})
    with pytest.raises(ConversionError, match="a Unigram tokenizer model is not supported"):
        convert_safetensors(folder, tmp_path / "out.gguf")

    tokenizer = {"model": {"type": "BPE", "vocab": {"a": 5000}, "merges": ["a a"]}}
    folder = write_tiny_hf_llama(tmp_path / "o", tokenizer=tokenizer)
    with pytest.raises(ConversionError, match="outside the model's 259 embeddings"):
        convert_safetensors(folder, tmp_path / "out.gguf")


def test_the_child_reports_a_refusal_as_a_conversion_error(tmp_path: Path) -> None:
    folder = write_tiny_hf_llama(tmp_path / "m", config={"architectures": ["GemmaForCausalLM"]})
    with pytest.raises(ConversionError, match="unsupported architecture 'GemmaForCausalLM'"):
        convert_in_child(self_command(), folder, tmp_path / "out.gguf", lambda _: None)


def test_import_from_uploaded_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    store.ensure_dirs()
    folder = write_tiny_hf_llama(tmp_path / "upload")
    files = {path.name: store.blobs.put_file(path)[0] for path in folder.iterdir()}
    assert is_safetensors_import(files) and not is_safetensors_import({"model.gguf": "sha256:" + "0" * 64})
    progress: list[dict[str, Any]] = []
    with SafetensorsImport(store.blobs, files, self_command()) as job:
        assert job.folder.parent == store.root
        assert job.check() == []
        layer, info, warnings = job.convert(progress.append)
    assert not job.folder.exists()
    assert layer.media_type == "application/vnd.ollama.image.model" and store.blobs.size(layer.digest) == layer.size
    assert info.architecture == "llama" and info.metadata["general.file_type"] == 1 and warnings == []
    assert progress[-1]["completed"] == progress[-1]["total"] > 0
    assert [p.name for p in store.blobs.blobs_dir.iterdir() if p.name.startswith(".")] == []

    bad = write_tiny_hf_llama(tmp_path / "bad", config={"architectures": ["Phi3ForCausalLM"]})
    files = {path.name: store.blobs.put_file(path)[0] for path in bad.iterdir()}
    with SafetensorsImport(store.blobs, files, self_command()) as job, \
            pytest.raises(ConversionError, match="unsupported architecture 'Phi3ForCausalLM'"):
        job.check()


def test_link_files_refuses_a_missing_blob(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="not found; upload it first"):
        link_files(tmp_path, {"config.json": "sha256:" + "0" * 64}, lambda d: tmp_path / d)
