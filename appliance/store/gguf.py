"""GGUF metadata, read so that a hostile file can only ever raise ``InvalidGGUF``.

Only the header is read: key/value metadata and tensor descriptions, never tensor data.  No length
in the file is trusted.  Every count and length is checked against the bytes left in the file
*before* anything is allocated, and against these caps:

    MAX_NAME_BYTES      64 KiB   a metadata key or a tensor name
    MAX_STRING_BYTES    16 MiB   a string value (Ollama's limit)
    MAX_ARRAY_ELEMENTS   8 Mi    array elements in the whole file (~8x the tokens, types, scores
                                 and merges of a 262k vocabulary)
    MAX_ARRAY_DEPTH      2       an array may hold arrays, but those may not hold arrays
    MAX_KV_COUNT        65,536   metadata pairs (real models carry ~20-60)
    MAX_TENSOR_COUNT   262,144   tensors (the largest MoE models carry a few thousand)
    MAX_TENSOR_DIMS      4       ggml's GGML_MAX_DIMS
    MAX_HEADER_BYTES   256 MiB   metadata plus tensor descriptions (a 49k vocabulary takes ~2 MiB)
    MAX_ALIGNMENT        1 MiB   ``general.alignment``; it must also be a power of two

Tensors must have a known ggml type, a first dimension that is a whole number of blocks, an
offset aligned to ``general.alignment``, and data that ends inside the file.  Like llama.cpp, and
unlike Ollama's Go reader, duplicate keys and duplicate tensor names are rejected.  Only
little-endian GGUF version 2 and 3 files are accepted.

Callers that need only the header's scalars (``/api/show`` without verbose, ``create``) pass
``max_array``: longer arrays (the vocabulary, merges and scores: ~100k-500k elements) are still
checked but not built; they read as a :class:`SkippedArray` that knows its element type and length.
Building a vocabulary costs ~30 ms and ~10 MiB of short-lived strings a read, which a busy server
pays on every show and every create FROM, and which fragments its heap.

Tensor shapes are in GGUF order: ``shape[0]`` is the innermost (row) dimension, as in Ollama.
Strings are decoded as UTF-8 with invalid bytes replaced.  A float32 scalar becomes the float its
shortest decimal names (1e-05, as Ollama's JSON shows it); float32 array elements stay exact.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeGuard

from appliance.errors import InvalidGGUF

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

MAX_NAME_BYTES = 64 << 10
MAX_STRING_BYTES = 16 << 20
MAX_ARRAY_ELEMENTS = 8 << 20
MAX_ARRAY_DEPTH = 2
MAX_KV_COUNT = 1 << 16
MAX_TENSOR_COUNT = 1 << 18
MAX_TENSOR_DIMS = 4
MAX_HEADER_BYTES = 256 << 20
MAX_ALIGNMENT = 1 << 20

_CHUNK = 256 << 10
_INT64_MAX = (1 << 63) - 1

# GGUF value types: id -> struct format of one element (string and array are read apart).
_TYPE_STRING = 8
_TYPE_ARRAY = 9
_TYPE_UINT32 = 4
_TYPE_FLOAT32 = 6
_FIXED_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_FIXED_STRUCTS = {t: struct.Struct("<" + f) for t, f in _FIXED_FORMATS.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims 0, type, offset

# ggml tensor types: id -> (name, elements per block, bytes per block), as ggml defines them today.
# Ids missing here were removed from ggml (Q4_2, Q4_0_4_4, ...) and are rejected.
# fmt: off
_GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}

# llama_ftype ids (general.file_type) -> the quantization name Ollama shows; gaps are retired ids.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4",
    40: "Q1_0",
}
# fmt: on

# Ollama's /api/show leaves these out of model_info: they are shown elsewhere in the response.
_HIDDEN_FROM_MODEL_INFO = frozenset({"general.name", "tokenizer.chat_template"})


@dataclass(frozen=True)
class SkippedArray:
    """An array that ``read_gguf(..., max_array=N)`` checked but did not build (longer than N)."""

    element_type: int
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's description; ``offset`` is relative to the start of the data section."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)


@dataclass(frozen=True)
class GGUFInfo:
    """Everything in a GGUF file but the tensor data.  Array values are plain lists."""

    version: int
    alignment: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_size: int

    @property
    def architecture(self) -> str:
        """``general.architecture``, or ``"unknown"`` as Ollama reports a missing one."""
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) and arch else "unknown"

    @property
    def parameter_count(self) -> int:
        """Total tensor elements, which Ollama reports in place of the file's own claim."""
        if self.tensors:
            return sum(t.n_elements for t in self.tensors)
        claimed = self.metadata.get("general.parameter_count")
        return claimed if _is_int(claimed) and claimed >= 0 else 0

    @property
    def file_type(self) -> str:
        """Quantization level as Ollama names it ("Q4_K_M"); from the dominant tensor type if unset."""
        file_type = self.metadata.get("general.file_type")
        if _is_int(file_type):
            return file_type_name(file_type)
        return self._dominant_tensor_type()

    @property
    def context_length(self) -> int | None:
        return self._arch_int("context_length")

    @property
    def embedding_length(self) -> int | None:
        return self._arch_int("embedding_length")

    @property
    def head_count(self) -> int | None:
        """``attention.head_count``; the largest value when it is given per layer."""
        return self._arch_int("attention.head_count")

    @property
    def block_count(self) -> int | None:
        return self._arch_int("block_count")

    @property
    def chat_template(self) -> str | None:
        template = self.metadata.get("tokenizer.chat_template")
        return template if isinstance(template, str) else None

    @property
    def is_embedding_model(self) -> bool:
        """Ollama treats a model with ``<arch>.pooling_type`` (any value) as embedding-only."""
        return f"{self.architecture}.pooling_type" in self.metadata

    def _arch_int(self, suffix: str) -> int | None:
        value = self.metadata.get(f"{self.architecture}.{suffix}")
        if _is_int(value):
            return value
        if isinstance(value, list) and value and all(_is_int(v) for v in value):
            return max(value)
        return None

    def _dominant_tensor_type(self) -> str:
        # Matrices decide: 1-D norms and biases stay F32 whatever the quantization.
        candidates = [t for t in self.tensors if len(t.shape) >= 2] or self.tensors
        elements: dict[int, int] = {}
        for tensor in candidates:
            elements[tensor.ggml_type] = elements.get(tensor.ggml_type, 0) + tensor.n_elements
        if not elements:
            return "unknown"
        return ggml_type_name(max(elements, key=elements.__getitem__))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def ggml_type_name(t: int) -> str:
    """The ggml tensor type's name ("Q4_K", "F32"), or "unknown"."""
    entry = _GGML_TYPES.get(t)
    return entry[0] if entry else "unknown"


def file_type_name(file_type: int) -> str:
    """Ollama's name for a ``general.file_type`` value ("Q4_K_M", "F16"), or "unknown"."""
    return _FILE_TYPES.get(file_type, "unknown")


def parameter_size_label(n: int) -> str:
    """Ollama's human parameter count: "135M", "134.52M", "8.0B", "1B", "7K"."""
    if n < 0:
        raise ValueError(f"parameter count must not be negative: {n}")
    # float(n) first, like Go's float64(b) / Billion, so huge counts round identically.
    if n >= 1_000_000_000:
        number = float(n) / 1e9
        return f"{number:.0f}B" if number == math.floor(number) else f"{number:.1f}B"
    if n >= 1_000_000:
        number = float(n) / 1e6
        return f"{number:.0f}M" if number == math.floor(number) else f"{number:.2f}M"
    if n >= 1_000:
        return f"{float(n) / 1e3:.0f}K"
    return str(n)


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """True if the file starts with the GGUF magic; nothing else is checked."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_gguf(path: str | os.PathLike[str], *, max_array: int | None = None) -> GGUFInfo:
    """Read and check a GGUF file's header.  ``OSError`` passes through; bad content is InvalidGGUF.

    With ``max_array``, arrays longer than that are checked but not built (see :class:`SkippedArray`).
    """
    with open(path, "rb", buffering=0) as f:
        return read_gguf_stream(f, max_array=max_array)


def read_gguf_stream(stream: BinaryIO, *, max_array: int | None = None) -> GGUFInfo:
    """Like ``read_gguf`` for an open, seekable binary stream holding a GGUF from offset 0."""
    file_size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    return _Parser(stream, file_size, max_array).parse()


def model_info(info: GGUFInfo, verbose: bool) -> dict[str, Any]:
    """The ``model_info`` object of Ollama's /api/show, keys sorted as Go's JSON encoder sorts them.

    ``general.parameter_count`` is the tensor total; ``general.name`` and the chat template are
    left out.  Unless verbose, Ollama does not load array values at all, so every non-empty array
    is ``None`` (JSON null) and an empty one stays ``[]``.
    """
    out: dict[str, Any] = {}
    for key, value in info.metadata.items():
        if key in _HIDDEN_FROM_MODEL_INFO:
            continue
        if isinstance(value, SkippedArray):
            if verbose:
                raise ValueError(f"{key} was not read: read the file without max_array for verbose output")
            value = [] if not value.count else None
        elif isinstance(value, list):
            value = list(value) if verbose or not value else None
        out[key] = value
    out["general.parameter_count"] = info.parameter_count
    return dict(sorted(out.items()))


def _shortest_float32(value: float) -> float:
    """The float whose repr is the shortest decimal naming this float32, as Go's JSON prints it.

    So a scalar such as ``layer_norm_rms_epsilon`` reads back as 1e-05, not 9.999999747378752e-06.
    """
    # Below 2**24 a float32 integer is already its own shortest decimal.
    if (value.is_integer() and abs(value) < 1 << 24) or not math.isfinite(value):
        return value
    packed = _FIXED_STRUCTS[_TYPE_FLOAT32].pack(value)
    # With 6 digits or fewer, nearest == shortest: float32 spacing is finer than the decimal grid.
    for digits in (6, 7, 8):
        candidate = float(f"{value:.{digits}g}")
        if _FIXED_STRUCTS[_TYPE_FLOAT32].pack(candidate) == packed:
            return candidate
    return float(f"{value:.9g}")


class _Parser:
    """A forward-only cursor over the file with its own buffer, and the GGUF grammar on top."""

    def __init__(self, stream: BinaryIO, file_size: int, max_array: int | None = None) -> None:
        self._max_array = max_array
        self._stream = stream
        self._file_size = file_size
        self._buf = b""
        self._pos = 0  # read position inside _buf
        self._base = 0  # file offset of _buf[0]
        self._elements_left = MAX_ARRAY_ELEMENTS

    # -- bytes ---------------------------------------------------------------------------------

    @property
    def _offset(self) -> int:
        return self._base + self._pos

    def _remaining(self) -> int:
        return self._file_size - self._offset

    def _ensure(self, n: int, what: str) -> None:
        """Make ``n`` bytes readable at ``_pos``."""
        if len(self._buf) - self._pos >= n:
            return
        if n > self._remaining():
            raise InvalidGGUF(
                f"truncated: {what} needs {n} bytes at offset {self._offset}, "
                f"but the file ends at {self._file_size}"
            )
        if self._offset + n > MAX_HEADER_BYTES:
            raise InvalidGGUF(f"GGUF header is larger than {MAX_HEADER_BYTES} bytes (at {what})")
        kept = self._buf[self._pos :]
        # Never buffer past the cap, so that every read beyond it comes through the check above.
        readable = min(self._file_size, MAX_HEADER_BYTES) - self._offset - len(kept)
        wanted = min(max(n - len(kept), _CHUNK), readable)
        self._base += self._pos
        self._buf = kept + self._stream.read(wanted)
        self._pos = 0
        if len(self._buf) < n:
            raise InvalidGGUF(f"truncated: the file shrank while reading {what} at offset {self._offset}")

    def _fixed(self, st: struct.Struct, what: str) -> Any:
        self._ensure(st.size, what)
        (value,) = st.unpack_from(self._buf, self._pos)
        self._pos += st.size
        return value

    def _take(self, n: int, what: str) -> bytes:
        self._ensure(n, what)
        raw = self._buf[self._pos : self._pos + n]
        self._pos += n
        return raw

    def _string(self, cap: int, what: str) -> str:
        n = self._fixed(_U64, f"{what} length")
        if n > cap:
            raise InvalidGGUF(f"{what} length {n} exceeds the {cap}-byte limit (offset {self._offset})")
        return self._take(n, what).decode("utf-8", "replace")

    # -- grammar -------------------------------------------------------------------------------

    def parse(self) -> GGUFInfo:
        magic = self._take(4, "magic")
        if magic != MAGIC:
            raise InvalidGGUF(f"not a GGUF file: magic {magic!r}, expected {MAGIC!r}")
        version = self._fixed(_U32, "version")
        if version not in SUPPORTED_VERSIONS:
            if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
                raise InvalidGGUF("big-endian GGUF files are not supported")
            raise InvalidGGUF(f"unsupported GGUF version {version} (supported: 2, 3)")
        n_tensors = self._fixed(_U64, "tensor count")
        n_kv = self._fixed(_U64, "metadata count")
        if n_kv > MAX_KV_COUNT:
            raise InvalidGGUF(f"metadata count {n_kv} exceeds the limit of {MAX_KV_COUNT}")
        if n_tensors > MAX_TENSOR_COUNT:
            raise InvalidGGUF(f"tensor count {n_tensors} exceeds the limit of {MAX_TENSOR_COUNT}")
        if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > self._remaining():
            raise InvalidGGUF(
                f"truncated: {n_kv} metadata pairs and {n_tensors} tensors cannot fit "
                f"in the {self._remaining()} bytes left"
            )

        metadata = self._metadata(n_kv)
        alignment = _alignment(metadata)
        raw_tensors = [self._tensor_info(i) for i in range(n_tensors)]
        seen: set[str] = set()
        for name, *_ in raw_tensors:
            if name in seen:
                raise InvalidGGUF(f"duplicate tensor name {name!r}")
            seen.add(name)
        data_offset = -(-self._offset // alignment) * alignment
        tensors = tuple(self._check_tensor(*raw, alignment, data_offset) for raw in raw_tensors)
        return GGUFInfo(version, alignment, metadata, tensors, data_offset, self._file_size)

    def _metadata(self, n_kv: int) -> dict[str, Any]:
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string(MAX_NAME_BYTES, "metadata key")
            if key in metadata:
                raise InvalidGGUF(f"duplicate metadata key {key!r}")
            value_type = self._fixed(_U32, f"type of {key!r}")
            if key == "general.alignment" and value_type != _TYPE_UINT32:
                raise InvalidGGUF(f"general.alignment must be a uint32, not value type {value_type}")
            metadata[key] = self._value(value_type, key)
        return metadata

    def _value(self, value_type: int, key: str) -> Any:
        st = _FIXED_STRUCTS.get(value_type)
        if st is not None:
            value = self._fixed(st, f"value of {key!r}")
            return _shortest_float32(value) if value_type == _TYPE_FLOAT32 else value
        if value_type == _TYPE_STRING:
            return self._string(MAX_STRING_BYTES, f"string value of {key!r}")
        if value_type == _TYPE_ARRAY:
            return self._array(key, depth=1)
        raise InvalidGGUF(f"unknown value type {value_type} for {key!r}")

    def _array(self, key: str, depth: int) -> list[Any] | SkippedArray:
        element_type = self._fixed(_U32, f"element type of {key!r}")
        count = self._fixed(_U64, f"length of {key!r}")
        fmt = _FIXED_FORMATS.get(element_type)
        if fmt is not None:
            min_size = _FIXED_STRUCTS[element_type].size
        elif element_type == _TYPE_STRING:
            min_size = 8
        elif element_type == _TYPE_ARRAY:
            min_size = 12
        else:
            raise InvalidGGUF(f"unknown element type {element_type} in array {key!r}")
        if count * min_size > self._remaining():
            raise InvalidGGUF(
                f"truncated: array {key!r} claims {count} elements, more than the "
                f"{self._remaining()} bytes left can hold"
            )
        self._elements_left -= count
        if self._elements_left < 0:
            raise InvalidGGUF(f"array {key!r} takes the file over {MAX_ARRAY_ELEMENTS} array elements")

        skip = self._max_array is not None and count > self._max_array
        if fmt is not None:
            n_bytes = count * min_size
            if skip:
                self._skip(n_bytes, f"array {key!r}")
                return SkippedArray(element_type, count)
            self._ensure(n_bytes, f"array {key!r}")
            values = list(struct.unpack_from(f"<{count}{fmt}", self._buf, self._pos))
            self._pos += n_bytes
            # float32 elements keep their exact value: the shortest-decimal rewrite of scalars
            # costs ~1 us a value, seconds for a hostile 8 Mi array.
            return values
        if element_type == _TYPE_STRING:
            strings = self._strings(count, key, keep=not skip)
            return SkippedArray(element_type, count) if skip else strings
        if depth >= MAX_ARRAY_DEPTH:
            raise InvalidGGUF(f"{key!r} nests arrays deeper than {MAX_ARRAY_DEPTH} levels")
        inner = [self._array(key, depth + 1) for _ in range(count)]
        return SkippedArray(element_type, count) if skip else inner

    def _skip(self, n: int, what: str) -> None:
        """Step over ``n`` bytes, checked as :meth:`_ensure` checks them, in chunks (never one buffer)."""
        while n > 0:
            step = min(n, _CHUNK)
            self._ensure(step, what)
            self._pos += step
            n -= step

    def _strings(self, count: int, key: str, keep: bool = True) -> list[str]:
        # The hot loop of every read (a vocabulary is ~100k strings): locals only, no method calls
        # unless the buffer runs dry.  With ``keep`` false the strings are checked, not decoded.
        out: list[str] = []
        append = out.append
        unpack_u64: Callable[[bytes, int], tuple[int]] = _U64.unpack_from
        buf, pos, end = self._buf, self._pos, len(self._buf)
        for _ in range(count):
            if end - pos < 8:
                buf, pos, end = self._refill(pos, 8, f"string length in {key!r}")
            n = unpack_u64(buf, pos)[0]
            pos += 8
            if n > MAX_STRING_BYTES:
                raise InvalidGGUF(f"string in {key!r} has length {n}, over {MAX_STRING_BYTES} bytes")
            if end - pos < n:
                buf, pos, end = self._refill(pos, n, f"string in {key!r}")
            stop = pos + n
            if keep:
                append(buf[pos:stop].decode("utf-8", "replace"))
            pos = stop
        self._pos = pos
        return out

    def _refill(self, pos: int, n: int, what: str) -> tuple[bytes, int, int]:
        self._pos = pos
        self._ensure(n, what)
        return self._buf, self._pos, len(self._buf)

    def _tensor_info(self, index: int) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string(MAX_NAME_BYTES, f"name of tensor {index}")
        n_dims = self._fixed(_U32, f"dimension count of {name!r}")
        if n_dims > MAX_TENSOR_DIMS:
            raise InvalidGGUF(f"tensor {name!r} has {n_dims} dimensions, more than {MAX_TENSOR_DIMS}")
        shape = struct.unpack_from(f"<{n_dims}Q", self._take(8 * n_dims, f"shape of {name!r}"))
        ggml_type = self._fixed(_U32, f"type of {name!r}")
        offset = self._fixed(_U64, f"offset of {name!r}")
        return name, shape, ggml_type, offset

    def _check_tensor(
        self, name: str, shape: tuple[int, ...], ggml_type: int, offset: int, alignment: int, data_offset: int
    ) -> TensorInfo:
        if ggml_type not in _GGML_TYPES:
            raise InvalidGGUF(f"tensor {name!r} has unknown ggml type {ggml_type}")
        _, block_size, type_size = _GGML_TYPES[ggml_type]
        n_elements = 1
        for dim in shape:
            n_elements *= dim
            if n_elements > _INT64_MAX or dim > _INT64_MAX:
                raise InvalidGGUF(f"tensor {name!r} shape {shape} overflows 64-bit element counts")
        row = shape[0] if shape else 1
        if row % block_size:
            raise InvalidGGUF(
                f"tensor {name!r} row of {row} elements is not a multiple of "
                f"the {ggml_type_name(ggml_type)} block size {block_size}"
            )
        if offset % alignment:
            raise InvalidGGUF(f"tensor {name!r} offset {offset} is not aligned to {alignment} bytes")
        n_bytes = n_elements // block_size * type_size
        end = data_offset + offset + n_bytes
        if end > self._file_size:
            raise InvalidGGUF(
                f"tensor {name!r} data ends at byte {end}, past the end of the file ({self._file_size})"
            )
        return TensorInfo(name, shape, ggml_type, offset, n_bytes)


def _alignment(metadata: dict[str, Any]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if alignment == 0 or alignment & (alignment - 1):
        raise InvalidGGUF(f"general.alignment {alignment} is not a power of two")
    if alignment > MAX_ALIGNMENT:
        raise InvalidGGUF(f"general.alignment {alignment} is over the {MAX_ALIGNMENT}-byte limit")
    return int(alignment)
