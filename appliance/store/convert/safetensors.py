"""Reading safetensors files with numpy memory maps, so that a hostile header can only raise.

The format is an 8-byte little-endian header length, a JSON header, then raw little-endian tensor
data.  Nothing in the header is trusted: its length is capped and must fit in the file; every entry
must name a known dtype, a shape of non-negative integers whose byte size equals its
``data_offsets`` span, and spans must tile the data section exactly (sorted, no overlap, no hole, no
trailing byte), as the reference implementation requires.  Shapes are checked against the bytes
that really are in the file before any array is made, and arrays are views of a read-only map of the
file: reading a tensor allocates nothing however large the header says it is.

A sharded checkpoint names its files in ``model.safetensors.index.json``; the names must be plain
file names inside the folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.store.convert import ConversionError

#: The reference implementation's own cap is 100 MB; real headers are well under 1 MiB per file.
MAX_HEADER_BYTES = 16 << 20
MAX_TENSORS_PER_FILE = 65_536
MAX_DIMS = 8
MAX_INDEX_BYTES = 16 << 20
INDEX_FILE = "model.safetensors.index.json"

#: safetensors dtype -> (numpy dtype of the stored words, bytes per element).  BF16 is read as its raw
#: 16-bit words; :func:`to_float32` widens it.
DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}
#: dtypes that are valid safetensors but mean a quantized or non-float checkpoint to us.
KNOWN_OTHER_DTYPES = frozenset({"F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
                                "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"})


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: its place in the file, checked against the file's size."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    start: int  # absolute offset in the file
    nbytes: int


def _fail(path: Path, reason: str) -> ConversionError:
    return ConversionError(f"{path.name}: not a valid safetensors file: {reason}")


def read_header(path: Path) -> list[TensorEntry]:
    """The tensors of one safetensors file, validated as the module docstring says."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _fail(path, "shorter than its 8-byte header length")
            header_len = int.from_bytes(prefix, "little")
            if header_len > MAX_HEADER_BYTES:
                raise _fail(path, f"header of {header_len} bytes exceeds the {MAX_HEADER_BYTES} byte limit")
            if header_len > size - 8:
                raise _fail(path, "header length runs past the end of the file")
            raw = f.read(header_len)
    except OSError as exc:
        raise ConversionError(f"{path.name}: cannot read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _fail(path, f"header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS_PER_FILE:
        raise _fail(path, f"more than {MAX_TENSORS_PER_FILE} tensors")
    data_start = 8 + header_len
    entries = [_entry(path, name, value, data_start) for name, value in header.items()]
    _check_tiling(path, entries, data_start, size)
    return entries


def _entry(path: Path, name: str, value: Any, data_start: int) -> TensorEntry:
    if not isinstance(value, dict):
        raise _fail(path, f"tensor {name!r} is not an object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if not isinstance(dtype, str):
        raise _fail(path, f"tensor {name!r} has no dtype")
    if dtype not in DTYPES:
        if dtype in KNOWN_OTHER_DTYPES:
            raise ConversionError(f"tensor {name!r} in {path.name} is {dtype}: only F32, F16 and BF16 "
                                  "safetensors can be converted (quantized checkpoints are not supported)")
        raise _fail(path, f"tensor {name!r} has unknown dtype {dtype[:40]!r}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d < 1 << 48 for d in shape)):
        raise _fail(path, f"tensor {name!r} has an invalid shape")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and 0 <= o < 1 << 62 for o in offsets) or offsets[0] > offsets[1]):
        raise _fail(path, f"tensor {name!r} has invalid data_offsets")
    nbytes = offsets[1] - offsets[0]
    if math.prod(shape) * DTYPES[dtype].itemsize != nbytes:
        raise _fail(path, f"tensor {name!r}: shape {shape} of {dtype} does not match its {nbytes} bytes")
    return TensorEntry(name, dtype, tuple(shape), path, data_start + offsets[0], nbytes)


def _check_tiling(path: Path, entries: list[TensorEntry], data_start: int, size: int) -> None:
    expected = data_start
    for entry in sorted(entries, key=lambda e: (e.start, e.nbytes)):
        if entry.start < expected:
            raise _fail(path, f"tensor {entry.name!r} overlaps another tensor")
        if entry.start > expected:
            raise _fail(path, f"a gap of unused bytes before tensor {entry.name!r}")
        expected = entry.start + entry.nbytes
    if expected > size:
        raise _fail(path, "tensor data runs past the end of the file (truncated?)")
    if expected < size:
        raise _fail(path, f"{size - expected} bytes after the last tensor")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder: those its index names, or every ``*.safetensors``."""
    index = folder / INDEX_FILE
    if index.is_file():
        data = read_json(index, MAX_INDEX_BYTES)
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{INDEX_FILE}: no weight_map")
        names = sorted(set(weight_map.values()), key=str)
        for name in names:
            if (not isinstance(name, str) or not name.endswith(".safetensors") or "/" in name
                    or "\\" in name or name.startswith(".") or "\x00" in name):
                raise ConversionError(f"{INDEX_FILE} names an invalid weight file: {str(name)[:100]!r}")
            if not (folder / name).is_file():
                raise ConversionError(f"{INDEX_FILE} names {name}, which was not provided")
        return [folder / name for name in names]
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        raise ConversionError("no *.safetensors files in the model folder")
    return files


def read_tensors(folder: Path) -> dict[str, TensorEntry]:
    """Every tensor of the folder's checkpoint by name; a name in two files is an error."""
    tensors: dict[str, TensorEntry] = {}
    for path in weight_files(folder):
        for entry in read_header(path):
            if entry.name in tensors:
                raise ConversionError(f"tensor {entry.name!r} appears twice ({path.name})")
            tensors[entry.name] = entry
    return tensors


def read_json(path: Path, limit: int) -> dict[str, Any]:
    """A JSON object from a file of at most ``limit`` bytes."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise ConversionError(f"{path.name}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > limit:
        raise ConversionError(f"{path.name} is larger than {limit >> 20} MiB")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConversionError(f"{path.name} is not valid JSON: {exc}") from exc
    except ValueError as exc:  # an integer past Python's digit limit
        raise ConversionError(f"{path.name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConversionError(f"{path.name} is not a JSON object")
    return value


class TensorData:
    """Read-only memory maps of a checkpoint's files, opened once each."""

    def __init__(self) -> None:
        self._maps: dict[Path, np.memmap[Any, np.dtype[np.uint8]]] = {}

    def array(self, entry: TensorEntry) -> np.ndarray[Any, Any]:
        """The tensor as a read-only array over the file (BF16 as raw uint16 words)."""
        data = self._maps.get(entry.path)
        if data is None:
            data = self._maps[entry.path] = np.memmap(entry.path, dtype=np.uint8, mode="r")
        dtype = DTYPES[entry.dtype]
        raw = data[entry.start : entry.start + entry.nbytes]
        return raw.view(dtype).reshape(entry.shape)

    def close(self) -> None:
        """Drop the maps (each goes once the last array over it is gone)."""
        self._maps.clear()


def to_float32(values: np.ndarray[Any, Any], dtype: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A block of tensor values as float32 (BF16 words widened by a shift)."""
    if dtype == "BF16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def row_blocks(rows: int, row_bytes: int, block_bytes: int = 64 << 20) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges of about ``block_bytes`` each."""
    step = max(1, block_bytes // max(1, row_bytes))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)
