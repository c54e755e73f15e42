"""A blob's partial download on disk, in Ollama's own format, and the hash of its written prefix.

* ``blobs/sha256-<hex>-partial`` holds the bytes at their offsets (a sparse file of the full size);
* ``blobs/sha256-<hex>-partial-<N>`` is part N's state, ``{"N", "Offset", "Size", "Completed"}``, where
  ``Completed`` counts the bytes from ``Offset`` that are on disk.

Ollama and this program can each resume the other's partial pulls.  The start-up prune removes these
files only once they are an hour old (like Ollama), so a restart in between resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from appliance.store.distribution import TransferSettings


@dataclass
class Part:
    n: int
    offset: int
    size: int
    completed: int = 0

    @property
    def start(self) -> int:
        return self.offset + self.completed

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def done(self) -> bool:
        return self.completed >= self.size

    def to_json(self) -> bytes:
        # Ollama's jsonBlobDownloadPart, one object and a newline as Go's json.Encoder writes it.
        obj = {"N": self.n, "Offset": self.offset, "Size": self.size, "Completed": self.completed}
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def plan_parts(total: int, settings: TransferSettings) -> list[Part]:
    """Ollama's split: ``parts`` pieces, each clamped to [min_part_bytes, max_part_bytes]."""
    size = min(max(total // max(settings.parts, 1), settings.min_part_bytes), settings.max_part_bytes)
    size = max(size, 1)
    return [Part(n, offset, min(size, total - offset)) for n, offset in enumerate(range(0, total, size))]


class PartialFiles:
    """The ``-partial`` data file and ``-partial-<N>`` state files of one blob."""

    _PART_RE = re.compile(r"-partial-([0-9]{1,6})")

    def __init__(self, final: Path) -> None:
        self.final = final
        self.data = final.with_name(final.name + "-partial")

    def part_path(self, n: int) -> Path:
        return self.final.with_name(f"{self.final.name}-partial-{n}")

    def _state_files(self) -> list[Path]:
        prefix = self.final.name
        with contextlib.suppress(FileNotFoundError):
            return [self.final.parent / entry.name for entry in os.scandir(self.final.parent)
                    if entry.name.startswith(prefix) and self._PART_RE.fullmatch(entry.name[len(prefix):])]
        return []

    def load(self, total: int) -> list[Part] | None:
        """Saved parts that exactly cover ``total`` bytes of an existing data file, else None."""
        try:
            if self.data.stat().st_size != total:
                return None
            parts = []
            for path in self._state_files():
                with open(path, "rb") as f:
                    obj = json.loads(f.read(4096))
                values = [obj.get(key) for key in ("N", "Offset", "Size", "Completed")]
                if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
                    return None
                parts.append(Part(*values))
        except (OSError, ValueError, AttributeError):
            return None
        parts.sort(key=lambda p: p.offset)
        position = 0
        for part in parts:
            if part.offset != position or part.size <= 0 or part.completed > part.size:
                return None
            position = part.end
        if position != total or sorted(p.n for p in parts) != list(range(len(parts))):
            return None
        return parts

    def save(self, part: Part) -> None:
        target = self.part_path(part.n)
        # Not ".tmp-": the prune removes unlocked ".tmp-" files at once, and this one is not locked.
        tmp = target.with_name(f".state-{secrets.token_hex(8)}")
        try:
            with open(tmp, "xb") as f:
                f.write(part.to_json())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self) -> None:
        for path in self._state_files():
            path.unlink(missing_ok=True)
        self.data.unlink(missing_ok=True)

    def remove_state(self) -> None:
        for path in self._state_files():
            path.unlink(missing_ok=True)


# --- hashing while writing -------------------------------------------------------------------------


class PrefixHasher:
    """Writes at offsets and hashes the contiguous prefix: in memory when it can, from disk otherwise.

    Its methods run in worker threads; a lock keeps the hash state consistent between them.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.hashed = 0
        self._sha = hashlib.sha256()
        self._lock = threading.Lock()

    def write(self, chunks: list[bytes], offset: int) -> None:
        """Write ``chunks`` back to back at ``offset`` (one pwritev, no joining copy)."""
        size = sum(map(len, chunks))
        written = os.pwritev(self.fd, chunks, offset)
        if written < size:  # rare: finish what one pwritev did not take
            rest = b"".join(chunks)[written:]
            while rest:
                n = os.pwrite(self.fd, rest, offset + size - len(rest))
                rest = rest[n:]
        if offset == self.hashed:  # hashed only grows, so a stale read just skips the fast path
            with self._lock:
                if offset == self.hashed:
                    for chunk in chunks:
                        self._sha.update(chunk)
                    self.hashed += size

    def catch_up(self, frontier: int) -> None:
        """Hash what is on disk between the hashed prefix and ``frontier`` (all of it written)."""
        while self.hashed < frontier:
            with self._lock:  # taken per chunk, so writers at the frontier are not held up for long
                chunk = os.pread(self.fd, min(8 << 20, frontier - self.hashed), self.hashed)
                if not chunk:
                    break
                self._sha.update(chunk)
                self.hashed += len(chunk)

    def digest(self) -> str:
        with self._lock:
            return "sha256:" + self._sha.hexdigest()


def contiguous_end(parts: list[Part]) -> int:
    """The end of the written prefix: every byte before it is on disk."""
    end = 0
    for part in sorted(parts, key=lambda p: p.offset):
        end = part.start
        if not part.done:
            break
    return end
