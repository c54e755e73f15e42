"""Rewriting a GGUF's header while its tensor data is copied unchanged: the raw key/values (each with
its GGUF type, so whatever a rule does not touch is written back byte for byte) and the tensor list,
edited in memory, then written as a new file beside the source.

Only files that :func:`appliance.store.gguf.read_gguf` has already checked are read here, so the raw
scan below trusts the lengths it meets.  The copy is written to a temp file, checked with
``read_gguf``, fsynced and renamed: a reader never sees a half-written file.  Tensor data moves with
``copy_file_range`` (a file system that can share extents does so; others copy in the kernel).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.errors import InsufficientStorage, InvalidGGUF
from appliance.store.gguf import MAGIC, GGUFInfo, TensorInfo, read_gguf

TYPE_U8, TYPE_I32, TYPE_U32, TYPE_F32, TYPE_STR, TYPE_ARR = 0, 5, 4, 6, 8, 9
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_COPY_CHUNK = 64 << 20


class EditableHeader:
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
        self.kvs[key] = (TYPE_STR, _enc_str(value))

    def set_u32(self, key: str, value: int) -> None:
        self.kvs[key] = (TYPE_U32, _U32.pack(value))

    def set_f32(self, key: str, value: float) -> None:
        self.kvs[key] = (TYPE_F32, struct.pack("<f", value))

    def set_array(self, key: str, element_type: int, fmt: str, values: list[int]) -> None:
        raw = _U32.pack(element_type) + _U64.pack(len(values)) + struct.pack(f"<{len(values)}{fmt}", *values)
        self.kvs[key] = (TYPE_ARR, raw)

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
        if entry is None or entry[0] != TYPE_ARR:
            return
        raw = entry[1]
        element_type, count = _U32.unpack_from(raw, 0)[0], _U64.unpack_from(raw, 4)[0]
        if count <= n:
            return
        if element_type == TYPE_STR:
            end = 12
            for _ in range(n):
                end += 8 + _U64.unpack_from(raw, end)[0]
        elif element_type in _FIXED_SIZES:
            end = 12 + n * _FIXED_SIZES[element_type]
        else:
            return
        self.kvs[key] = (TYPE_ARR, raw[:4] + _U64.pack(n) + raw[12:end])

    # tensors
    def tensor(self, name: str) -> TensorInfo | None:
        return next((t for t in self.tensors if t.name == name), None)

    def rename_tensors(self, old: str, new: str) -> None:
        """Replace the first ``old`` in every tensor name that has it and not yet ``new``."""
        self.tensors = [renamed(t, t.name.replace(old, new, 1)) if old in t.name and new not in t.name else t
                        for t in self.tensors]

    def rename_suffix(self, old: str, new: str) -> None:
        self.tensors = [renamed(t, t.name[: -len(old)] + new) if t.name.endswith(old) else t
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
    if value_type == TYPE_STR:
        return raw[8:].decode("utf-8", "replace")
    element_type, count = _U32.unpack_from(raw, 0)[0], _U64.unpack_from(raw, 4)[0]
    if element_type in _FORMATS:
        return list(struct.unpack_from(f"<{count}{_FORMATS[element_type]}", raw, 12))
    if element_type != TYPE_STR:
        return None
    out, pos = [], 12
    for _ in range(count):
        n = _U64.unpack_from(raw, pos)[0]
        out.append(raw[pos + 8 : pos + 8 + n].decode("utf-8", "replace"))
        pos += 8 + n
    return out


def renamed(t: TensorInfo, name: str) -> TensorInfo:
    return TensorInfo(name, t.shape, t.ggml_type, t.offset, t.n_bytes)


def _enc_str(s: str) -> bytes:
    raw = s.encode()
    return _U64.pack(len(raw)) + raw


def read_editable(path: Path, info: GGUFInfo) -> EditableHeader:
    """The header of ``path`` (already checked: ``info`` is its ``read_gguf``), ready to edit."""
    return EditableHeader(info, _raw_kvs(path, info))


def write_copy(source: Path, header: EditableHeader, final: Path,
               check_cancelled: Callable[[], None] = lambda: None) -> None:
    """Write ``header`` and ``source``'s data for its tensors to ``final``, atomically."""
    _write(source, header.info, header, final, check_cancelled)


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
    if value_type == TYPE_STR:
        return pos + 8 + _U64.unpack_from(buf, pos)[0]
    element_type, count = _U32.unpack_from(buf, pos)[0], _U64.unpack_from(buf, pos + 4)[0]
    pos += 12
    if element_type in _FIXED_SIZES:
        return pos + count * _FIXED_SIZES[element_type]
    for _ in range(count):
        pos = _value_end(buf, pos, element_type)
    return pos


def _encode_header(info: GGUFInfo, header: EditableHeader) -> tuple[bytes, list[tuple[TensorInfo, int]]]:
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


def _write(source: Path, info: GGUFInfo, header: EditableHeader, final: Path,
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
