"""Properties of the GGUF header reader (appliance.store.gguf) on random, mutated and generated files.

Whatever the bytes, reading ends in a GGUFInfo or InvalidGGUF, and everything the server derives from a
GGUFInfo (model_info, the details of /api/show) works on whatever was accepted; metadata written with
the reference ``gguf`` package reads back as written.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.errors import InvalidGGUF
from appliance.store.gguf import GGUFInfo, model_info, parameter_size_label, read_gguf, read_gguf_stream
from tests.fixtures.tiny_gguf import write_tiny_llama

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INTERESTING_U64 = [0, 1, 2, 3, 4, 9, 12, 31, 32, 255, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


@functools.cache
def tiny_model() -> bytes:
    """A small real model, as the reference writer lays it out."""
    with tempfile.TemporaryDirectory() as folder:
        return write_tiny_llama(Path(folder) / "t.gguf", n_embd=32, n_ff=32, n_vocab=8).read_bytes()


@functools.cache
def varied_model() -> bytes:
    """Every value type, nested arrays, a quantized tensor and a non-default alignment."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.gguf"
        w = gguf.GGUFWriter(path, "llama")
        w.add_uint32("general.alignment", 64)
        w.add_string("s", "hé\x00llo")
        w.add_int8("i8", -5)
        w.add_uint16("u16", 7)
        w.add_int64("i64", -(2**40))
        w.add_float32("f32", 0.1)
        w.add_float64("f64", 1e300)
        w.add_bool("b", True)
        w.add_array("strings", ["a", "", "ü"])
        w.add_array("nested", [[1, 2], [3]])
        w.add_array("llama.context_length", [512, 1024])
        w.add_tensor("f32", np.ones((3, 4), dtype=np.float32))
        w.add_tensor("q8", np.zeros((2, 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path.read_bytes()


def read(data: bytes) -> GGUFInfo | None:
    """The file's info, or None for InvalidGGUF; anything else the reader raises fails the test."""
    try:
        info = read_gguf_stream(io.BytesIO(data))
    except InvalidGGUF:
        return None
    check_consistent(info, len(data))
    return info


def check_consistent(info: GGUFInfo, size: int) -> None:
    """What an accepted file promises, and everything derived from it works."""
    assert info.file_size == size and info.data_offset % info.alignment == 0
    for t in info.tensors:
        assert t.offset % info.alignment == 0
        assert info.data_offset + t.offset + t.n_bytes <= size
    for verbose in (False, True):
        model_info(info, verbose)
    parameter_size_label(info.parameter_count)
    for value in (info.architecture, info.file_type, info.context_length, info.embedding_length,
                  info.head_count, info.block_count, info.chat_template, info.is_embedding_model):
        assert value is None or isinstance(value, str | int | bool)


MUTATIONS = ("byte", "u64", "u32", "cut", "insert", "truncate")


@st.composite
def mutated(draw: st.DrawFn, base: bytes, kinds: tuple[str, ...] = MUTATIONS, most: int = 4) -> bytes:
    """``base`` with a few bytes replaced, a u64 overwritten, a slice cut out or bytes inserted."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, most))):
        kind = draw(st.sampled_from(kinds))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "byte":
            data[at : at + 1] = bytes([draw(st.integers(0, 255))])
        elif kind in ("u64", "u32"):
            value = draw(st.sampled_from(INTERESTING_U64) | st.integers(0, 2**64 - 1))
            fmt = "<Q" if kind == "u64" else "<I"
            data[at : at + struct.calcsize(fmt)] = struct.pack(fmt, value % (2 ** (8 * struct.calcsize(fmt))))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


@SETTINGS
@given(st.binary(max_size=512) | st.binary(max_size=64).map(lambda b: b"GGUF\x03\x00\x00\x00" + b))
def test_random_bytes_are_read_or_refused_as_invalid(data: bytes) -> None:
    read(data)


@SETTINGS
@given(st.one_of(st.builds(lambda: tiny_model()).flatmap(mutated),
                 st.builds(lambda: varied_model()).flatmap(mutated)))
def test_mutated_real_files_are_read_or_refused_as_invalid(data: bytes) -> None:
    read(data)


def test_the_unmutated_files_are_read() -> None:
    assert read(tiny_model()) is not None
    info = read(varied_model())
    assert info is not None and info.alignment == 64 and info.context_length == 1024


# -- metadata written by the reference writer reads back ------------------------------------------

SCALARS: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "uint8": (gguf.GGUFValueType.UINT8, st.integers(0, 2**8 - 1)),
    "int16": (gguf.GGUFValueType.INT16, st.integers(-(2**15), 2**15 - 1)),
    "uint32": (gguf.GGUFValueType.UINT32, st.integers(0, 2**32 - 1)),
    "int64": (gguf.GGUFValueType.INT64, st.integers(-(2**63), 2**63 - 1)),
    "uint64": (gguf.GGUFValueType.UINT64, st.integers(0, 2**64 - 1)),
    "float32": (gguf.GGUFValueType.FLOAT32, st.floats(width=32)),
    "float64": (gguf.GGUFValueType.FLOAT64, st.floats()),
    "bool": (gguf.GGUFValueType.BOOL, st.booleans()),
    "string": (gguf.GGUFValueType.STRING, st.text(st.characters(exclude_categories=["Cs"]), max_size=20)),
}
entries = st.sampled_from(sorted(SCALARS)).flatmap(
    lambda kind: st.tuples(st.just(kind), SCALARS[kind][1] | st.lists(SCALARS[kind][1], min_size=1, max_size=5))
)


def same(read_back: Any, written: Any, kind: str) -> bool:
    if isinstance(written, list):
        return isinstance(read_back, list) and len(read_back) == len(written) and all(
            same(r, w, kind) for r, w in zip(read_back, written, strict=True))
    if kind == "float32":  # the reader names a float32 by its shortest decimal: the same float32
        return struct.pack("<f", read_back) == struct.pack("<f", written) or (
            math.isnan(read_back) and math.isnan(written))
    if kind == "float64" and math.isnan(written):
        return math.isnan(read_back)
    return bool(read_back == written) and type(read_back) is type(written)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12).filter(
    lambda k: k not in ("general.alignment", "general.architecture")), entries, max_size=6))
def test_metadata_written_by_the_reference_writer_reads_back(kvs: dict[str, tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.gguf"
        w = gguf.GGUFWriter(path, "llama")
        for key, (kind, value) in kvs.items():
            value_type = SCALARS[kind][0]
            if isinstance(value, list):
                w.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=value_type)
            else:
                w.add_key_value(key, value, value_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        info = read_gguf(path)
        check_consistent(info, path.stat().st_size)
    for key, (kind, value) in kvs.items():
        assert same(info.metadata[key], value, kind), (key, info.metadata[key], value)


# -- the reference reader agrees on what both accept ------------------------------------------------


def reference(path: Path) -> Any:
    """The ``gguf`` package's reading of ``path``, or None where it refuses the file."""
    try:
        return gguf.GGUFReader(path)
    except Exception:  # the reference reader raises whatever it meets; only agreement is checked
        return None


def in_place(base: bytes) -> st.SearchStrategy[bytes]:
    return mutated(base, kinds=("byte", "u32"), most=1)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.builds(lambda: tiny_model()).flatmap(in_place),
                 st.builds(lambda: varied_model()).flatmap(in_place)))
def test_the_reference_reader_agrees_on_files_both_accept(data: bytes) -> None:
    info = read(data)
    if info is None:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.gguf"
        path.write_bytes(data)
        ref = reference(path)
        if ref is None:
            return
        assert sorted(k for k in ref.fields if not k.startswith("GGUF.")) == sorted(info.metadata)
        theirs = [(t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset))
                  for t in ref.tensors]
        ours = [(t.name, t.shape, t.ggml_type, info.data_offset + t.offset) for t in info.tensors]
        assert ours == theirs
        for key, field in ref.fields.items():
            if key.startswith("GGUF.") or len(field.types) != 1:
                continue
            if field.types[0] in (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING):
                continue  # shortest-decimal floats and replaced UTF-8 are ours on purpose
            assert info.metadata[key] == field.contents(), key
