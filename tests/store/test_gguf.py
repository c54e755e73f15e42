"""GGUF header reading: real files round-trip, hostile ones raise InvalidGGUF and nothing else."""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np
import pytest

from appliance.errors import InvalidGGUF
from appliance.store import gguf as gguf_module
from appliance.store.gguf import (
    GGUFInfo,
    file_type_name,
    ggml_type_name,
    is_gguf,
    model_info,
    parameter_size_label,
    read_gguf,
    read_gguf_stream,
)

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"

# GGUF value type ids
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
GGML_F32, GGML_Q8_0 = 0, 8


# -- a tiny valid model, written by the reference writer ----------------------------------------


def write_model(path: Path, *, file_type: int | None = 7, pooling: bool = False) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny")
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_head_count(4)
    writer.add_layer_norm_rms_eps(1e-5)
    if file_type is not None:
        writer.add_file_type(file_type)
    if pooling:
        writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<s>", "</s>", "hé", "Ġworld", "x", "y"])
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_tensor("token_embd.weight", np.ones((6, 64), dtype=np.float32))
    # Two rows of 64 Q8_0 elements: 2 blocks of 34 bytes per row.
    q8 = np.zeros((2, 68), dtype=np.uint8)
    writer.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return write_model(tmp_path / "tiny.gguf")


def parse(data: bytes, max_array: int | None = None) -> GGUFInfo:
    return read_gguf_stream(io.BytesIO(data), max_array=max_array)


# -- raw builders for files the reference writer refuses to produce ------------------------------


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return u64(len(raw)) + raw


def kv(key: str, value_type: int, payload: bytes) -> bytes:
    return string(key) + u32(value_type) + payload


def tensor(name: str, shape: tuple[int, ...], ggml_type: int = GGML_F32, offset: int = 0) -> bytes:
    return string(name) + u32(len(shape)) + b"".join(u64(d) for d in shape) + u32(ggml_type) + u64(offset)


def build(
    kvs: Sequence[bytes] = (),
    tensors: Sequence[bytes] = (),
    *,
    data: bytes = b"",
    version: int = 3,
    alignment: int = 32,
    magic: bytes = b"GGUF",
) -> bytes:
    all_kvs = [kv("general.architecture", STRING, string("llama")), *kvs]
    counts = u64(len(tensors)) + u64(len(all_kvs))
    head = magic + u32(version) + counts + b"".join(all_kvs) + b"".join(tensors)
    return head + b"\0" * (-len(head) % alignment) + data


def f32_tensor_file(shape: tuple[int, ...] = (4,), offset: int = 0, data_len: int = 16) -> bytes:
    return build(tensors=[tensor("w", shape, GGML_F32, offset)], data=b"\0" * data_len)


# -- round trip --------------------------------------------------------------------------------


def test_reads_what_the_reference_writer_wrote(model_path: Path) -> None:
    info = read_gguf(model_path)

    assert info.version == 3
    assert info.alignment == 32
    assert info.file_size == model_path.stat().st_size
    assert info.data_offset % 32 == 0
    assert info.architecture == "llama"
    assert info.context_length == 2048
    assert info.embedding_length == 64
    assert info.head_count == 4
    assert info.block_count == 1
    assert info.file_type == "Q8_0"
    assert info.chat_template == CHAT_TEMPLATE
    assert not info.is_embedding_model
    md = info.metadata
    assert md["general.name"] == "tiny"
    assert md["tokenizer.ggml.tokens"] == ["<s>", "</s>", "hé", "Ġworld", "x", "y"]
    assert md["tokenizer.ggml.add_bos_token"] is True
    assert md["llama.attention.layer_norm_rms_epsilon"] == 1e-05  # float32, shown as Go shows it
    assert md["test.nested"] == [[1, 2], [3]]

    embd, q = info.tensors
    assert (embd.name, embd.shape, embd.ggml_type) == ("token_embd.weight", (64, 6), GGML_F32)
    assert embd.n_bytes == 6 * 64 * 4
    assert (q.name, q.shape, q.ggml_type) == ("blk.0.attn_q.weight", (64, 2), GGML_Q8_0)
    assert q.n_bytes == 2 * 68
    assert q.type_name == "Q8_0"
    assert q.offset % 32 == 0
    assert info.parameter_count == 6 * 64 + 2 * 64
    assert read_gguf(str(model_path)) == info


def test_embedding_model_is_recognised_by_pooling_type(tmp_path: Path) -> None:
    assert read_gguf(write_model(tmp_path / "e.gguf", pooling=True)).is_embedding_model


def test_file_type_falls_back_to_the_dominant_matrix_type(tmp_path: Path) -> None:
    info = read_gguf(write_model(tmp_path / "m.gguf", file_type=None))
    assert "general.file_type" not in info.metadata
    # token_embd (F32) has 384 elements, attn_q (Q8_0) only 128.
    assert info.file_type == "F32"


def test_float32_scalars_read_back_as_their_shortest_decimal(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    values = (rng.standard_normal(500) * 10.0 ** rng.uniform(-30, 30, 500)).astype(np.float32)
    writer = gguf.GGUFWriter(tmp_path / "f.gguf", "llama")
    for i, value in enumerate(values):
        writer.add_float32(f"test.f{i}", float(value))
    writer.add_array("test.array", [0.1, 2.5])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    md = read_gguf(tmp_path / "f.gguf").metadata
    # numpy's float32 str is the shortest round-tripping decimal, as Go's JSON encoder prints it.
    assert [md[f"test.f{i}"] for i in range(len(values))] == [float(str(v)) for v in values]
    assert md["test.array"] == [float(np.float32(0.1)), 2.5]


def test_is_gguf(model_path: Path, tmp_path: Path) -> None:
    (tmp_path / "other").write_bytes(b"GGML....")
    assert is_gguf(model_path)
    assert not is_gguf(tmp_path / "other")
    assert not is_gguf(tmp_path / "missing")


# -- naming ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "label"),
    [
        # format/format_test.go
        (0, "0"),
        (999, "999"),
        (1000, "1K"),
        (1001, "1K"),
        (1_000_000, "1M"),
        (125_000_000, "125M"),
        (500_500_000, "500.50M"),
        (500_550_000, "500.55M"),
        (1_000_000_000, "1B"),
        (2_800_000_000, "2.8B"),
        (2_850_000_000, "2.9B"),
        (1_000_000_000_000, "1000B"),
        # real models as Ollama lists them
        (134_515_008, "134.52M"),  # smollm2:135m
        (268_098_176, "268.10M"),  # gemma3:270m
        (270_000_000, "270M"),
        (1_235_814_400, "1.2B"),  # llama3.2:1b
        (8_030_261_248, "8.0B"),  # llama3.1:8b
    ],
)
def test_parameter_size_label_matches_ollama(n: int, label: str) -> None:
    assert parameter_size_label(n) == label


def test_type_names() -> None:
    assert [file_type_name(t) for t in (0, 1, 2, 3, 7, 15, 18, 32)] == [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q8_0",
        "Q4_K_M",
        "Q6_K",
        "BF16",
    ]
    assert file_type_name(4) == file_type_name(1024) == "unknown"
    assert [ggml_type_name(t) for t in (0, 8, 12, 30)] == ["F32", "Q8_0", "Q4_K", "BF16"]
    assert ggml_type_name(4) == ggml_type_name(999) == "unknown"


def test_block_sizes_agree_with_the_gguf_package() -> None:
    for t, (name, block, size) in gguf_module._GGML_TYPES.items():
        if name == "Q8_1":  # gguf-py still has the pre-2024 layout; ggml's block_q8_1 is 36 bytes
            continue
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t)] == (block, size), name


# -- model_info --------------------------------------------------------------------------------


def test_model_info_hides_arrays_unless_verbose(model_path: Path) -> None:
    info = read_gguf(model_path)

    brief = model_info(info, verbose=False)
    assert list(brief) == sorted(brief)
    assert brief["tokenizer.ggml.tokens"] is None
    assert brief["test.nested"] is None
    assert brief["general.parameter_count"] == info.parameter_count
    assert "general.name" not in brief and "tokenizer.chat_template" not in brief
    assert brief["llama.context_length"] == 2048

    full = model_info(info, verbose=True)
    assert full["tokenizer.ggml.tokens"] == info.metadata["tokenizer.ggml.tokens"]
    assert full.keys() == brief.keys()


@pytest.mark.parametrize("max_array", [0, 2])
def test_a_header_only_read_steps_over_long_arrays(model_path: Path, max_array: int) -> None:
    full = read_gguf(model_path)
    brief = read_gguf(model_path, max_array=max_array)
    assert brief.tensors == full.tensors and brief.data_offset == full.data_offset
    for key, value in full.metadata.items():
        if isinstance(value, list) and len(value) > max_array:
            skipped = brief.metadata[key]
            assert isinstance(skipped, gguf_module.SkippedArray) and len(skipped) == len(value)
        else:
            assert brief.metadata[key] == value
    assert model_info(brief, verbose=False) == model_info(full, verbose=False)
    with pytest.raises(ValueError, match="not read"):
        model_info(brief, verbose=True)


def test_a_header_only_read_checks_what_it_skips(model_path: Path) -> None:
    data = model_path.read_bytes()
    header_end = read_gguf(model_path).data_offset
    for end in range(0, header_end, 7):
        with pytest.raises(InvalidGGUF):
            parse(data[:end], max_array=0)
    for bad in (build([kv("a", ARRAY, u32(STRING) + u64(2) + u64(1) + b"x" + u64(1 << 40))]),
                build([kv("a", ARRAY, u32(I32) + u64(1 << 40))])):
        with pytest.raises(InvalidGGUF):
            parse(bad, max_array=0)


def test_model_info_keeps_empty_arrays_as_empty_lists() -> None:
    info = parse(build([kv("test.empty", ARRAY, u32(I32) + u64(0))]))
    assert model_info(info, verbose=False)["test.empty"] == []
    assert model_info(info, verbose=False)["general.parameter_count"] == 0


# -- hostile input -----------------------------------------------------------------------------


def test_every_prefix_parses_or_raises_invalid_gguf(model_path: Path) -> None:
    data = model_path.read_bytes()
    header_end = read_gguf(model_path).data_offset
    for end in range(len(data)):
        try:
            parse(data[:end])
        except InvalidGGUF:
            continue
        # Only the tensor data's trailing padding may go missing without harm.
        assert end > header_end


def test_corrupted_bytes_parse_or_raise_invalid_gguf(model_path: Path) -> None:
    data = model_path.read_bytes()
    header_end = read_gguf(model_path).data_offset
    for pos in range(header_end):
        for byte in (0x00, 0x07, 0x80, 0xFF):
            corrupt = data[:pos] + bytes([byte]) + data[pos + 1 :]
            try:
                parse(corrupt)
            except InvalidGGUF:
                pass


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"GGU", "truncated"),
        (build(magic=b"GGML"), "not a GGUF file"),
        (build(version=1), "unsupported GGUF version 1"),
        (build(version=99), "unsupported GGUF version 99"),
        (build(version=3 << 24), "big-endian"),
        (b"GGUF" + u32(3) + u64(0) + u64(2**40), "metadata count"),
        (b"GGUF" + u32(3) + u64(2**40) + u64(0), "tensor count"),
        (b"GGUF" + u32(3) + u64(1000) + u64(1000), "cannot fit"),
    ],
)
def test_rejects_bad_preamble(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidGGUF, match=reason):
        parse(data)


@pytest.mark.parametrize(
    ("alignment_kv", "reason"),
    [
        (kv("general.alignment", U32, u32(0)), "not a power of two"),
        (kv("general.alignment", U32, u32(7)), "not a power of two"),
        (kv("general.alignment", U32, u32(1 << 30)), "limit"),
        (kv("general.alignment", U64, u64(32)), "must be a uint32"),
    ],
)
def test_rejects_bad_alignment(alignment_kv: bytes, reason: str) -> None:
    with pytest.raises(InvalidGGUF, match=reason):
        parse(build([alignment_kv]))


def test_accepts_a_custom_power_of_two_alignment() -> None:
    data = build([kv("general.alignment", U32, u32(64))], [tensor("w", (4,))], alignment=64, data=b"\0" * 16)
    info = parse(data)
    assert info.alignment == 64 and info.data_offset % 64 == 0


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([u64(2**63) + b"key"], "key length"),
        ([string("k" * (64 * 1024 + 1)) + u32(U8) + b"\0"], "key length"),
        ([string("k") + u32(STRING) + u64(2**63)], "string value of 'k' length"),
        ([string("k") + u32(STRING) + u64(100) + b"short"], "truncated"),
        ([string("k") + u32(ARRAY) + u32(I32) + u64(2**40)], "claims"),
        ([string("k") + u32(ARRAY) + u32(STRING) + u64(2**40)], "claims"),
        ([string("k") + u32(ARRAY) + u32(STRING) + u64(1) + u64(2**63)], "string in 'k'"),
        ([string("k") + u32(ARRAY) + u32(ARRAY) + u64(2**40)], "claims"),
        ([string("k") + u32(13) + b"\0" * 8], "unknown value type 13"),
        ([string("k") + u32(ARRAY) + u32(13) + u64(1)], "unknown element type 13"),
        ([kv("k", U8, b"\1"), kv("k", U8, b"\2")], "duplicate metadata key"),
    ],
)
def test_rejects_bad_metadata(entries: list[bytes], reason: str) -> None:
    data = b"GGUF" + u32(3) + u64(0) + u64(len(entries)) + b"".join(entries) + b"\0" * 64
    with pytest.raises(InvalidGGUF, match=reason):
        parse(data)


def test_nested_arrays_are_allowed_two_levels_deep_only() -> None:
    inner = u32(U8) + u64(2) + b"\1\2"
    two_levels = kv("k", ARRAY, u32(ARRAY) + u64(1) + inner)
    assert parse(build([two_levels])).metadata["k"] == [[1, 2]]
    three_levels = kv("k", ARRAY, u32(ARRAY) + u64(1) + u32(ARRAY) + u64(1) + inner)
    with pytest.raises(InvalidGGUF, match="nests arrays"):
        parse(build([three_levels]))


def test_rejects_arrays_over_the_element_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_module, "MAX_ARRAY_ELEMENTS", 10)
    small = kv("a", ARRAY, u32(U8) + u64(6) + b"\0" * 6)
    assert parse(build([small])).metadata["a"] == [0] * 6
    with pytest.raises(InvalidGGUF, match="array elements"):
        parse(build([small, kv("b", ARRAY, u32(U8) + u64(6) + b"\0" * 6)]))


def test_rejects_a_header_over_the_size_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_module, "MAX_HEADER_BYTES", 64)
    with pytest.raises(InvalidGGUF, match="header is larger"):
        parse(build([kv("general.description", STRING, string("x" * 100))]))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (f32_tensor_file((4,), data_len=15), "past the end of the file"),
        (f32_tensor_file((4,), offset=32, data_len=16), "past the end of the file"),
        (f32_tensor_file((4,), offset=2**64 - 32), "past the end of the file"),
        (f32_tensor_file((4,), offset=4, data_len=32), "not aligned"),
        (build(tensors=[tensor("w", (4,), 4)], data=b"\0" * 64), "unknown ggml type 4"),
        (build(tensors=[tensor("w", (4,), 200)], data=b"\0" * 64), "unknown ggml type 200"),
        (build(tensors=[tensor("w", (1,) * 5)], data=b"\0" * 64), "5 dimensions"),
        (build(tensors=[tensor("w", (1,) * 9)], data=b"\0" * 64), "9 dimensions"),
        (build(tensors=[tensor("w", (2**40, 2**40))]), "overflows"),
        (build(tensors=[tensor("w", (2**64 - 1,))]), "overflows"),
        (build(tensors=[tensor("w", (10,), GGML_Q8_0)], data=b"\0" * 64), "not a multiple"),
        (build(tensors=[tensor("w", (4,)), tensor("w", (4,), offset=32)], data=b"\0" * 64), "duplicate"),
        (build(tensors=[u64(2**63)]), "tensor 0 length"),
    ],
)
def test_rejects_bad_tensors(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidGGUF, match=reason):
        parse(data)


def test_accepts_tensor_data_that_ends_exactly_at_the_end_of_the_file() -> None:
    info = parse(f32_tensor_file((4,), data_len=16))
    assert info.tensors[0].n_bytes == 16
    assert info.data_offset + 16 == info.file_size


def test_zero_sized_tensor_is_fine() -> None:
    assert parse(build(tensors=[tensor("w", (0, 8))])).tensors[0].n_bytes == 0


# -- a real model ------------------------------------------------------------------------------


def test_real_smollm2_model(smollm2_gguf: Path) -> None:
    info = read_gguf(smollm2_gguf)
    assert info.architecture == "llama"
    assert info.file_type == "Q4_1"
    assert info.context_length == 8192
    assert info.embedding_length == 576
    assert info.block_count == 30
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert len(info.metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(info.tensors) == 272
    # Ollama counts tensor elements (134,515,008) and HumanNumber gives two decimals under 1B:
    # `ollama show smollm2:135m` says 134.52M; "135M" is only the file's own general.size_label.
    assert info.parameter_count == 134_515_008
    assert parameter_size_label(info.parameter_count) == "134.52M"
    assert info.metadata["general.size_label"] == "135M"
    assert model_info(info, verbose=False)["tokenizer.ggml.merges"] is None
