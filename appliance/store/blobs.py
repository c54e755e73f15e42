"""Content-addressed blobs under ``<models>/blobs/sha256-<hex>``, written atomically.

Every write goes to a temporary file in the same folder, is hashed while it is written, fsynced,
checked against the digest it claims, and only then renamed into place: a reader never sees a
half-written or wrong blob, and a crash leaves at most a temp file that the start-up prune removes.
A digest is validated (``sha256:`` or ``sha256-`` + exactly 64 hex digits) before it becomes a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from appliance.errors import BlobNotFound, DigestMismatch, InvalidDigest

_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_BLOB_FILE_RE = re.compile(r"sha256-[0-9a-f]{64}")
TEMP_PREFIX = ".tmp-"
CHUNK = 1 << 20


def parse_digest(digest: object) -> str:
    """Return the canonical ``sha256:<lowercase hex>`` form of ``digest`` or raise InvalidDigest."""
    match = _DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise InvalidDigest(f"invalid digest format: {str(digest)[:100]!r}")
    return "sha256:" + match.group(1).lower()


def digest_of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Hash a file in chunks: its digest and size."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """An open temp file that becomes a blob on :meth:`commit` if its bytes match the digest."""

    def __init__(self, store: BlobStore, expected: str | None) -> None:
        self._store = store
        self.expected = parse_digest(expected) if expected is not None else None
        self._hash = hashlib.sha256()
        self.size = 0
        store.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.temp_path = store.blobs_dir / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        self._file: BinaryIO | None = open(self.temp_path, "xb")

    def write(self, data: bytes) -> None:
        assert self._file is not None, "write after commit/abort"
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def commit(self) -> tuple[str, bool]:
        """Verify, fsync and rename into place; return (digest, created). Removes the temp on failure."""
        assert self._file is not None, "commit twice"
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            digest = "sha256:" + self._hash.hexdigest()
            if self.expected is not None and digest != self.expected:
                raise DigestMismatch(f"digest mismatch, expected {self.expected!r}, got {digest!r}")
            final = self._store.path(digest)
            created = not final.exists()
            if created:
                os.chmod(self.temp_path, 0o644)
                os.replace(self.temp_path, final)
                _fsync_dir(final.parent)
            else:
                self.temp_path.unlink(missing_ok=True)
                os.utime(final)  # a fresh mtime protects a re-used blob from the prune grace check
            return digest, created
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self._file is not None:
            self.abort()


class BlobStore:
    """The ``blobs`` folder of a models directory."""

    def __init__(self, models_dir: str | os.PathLike[str]) -> None:
        self.models_dir = Path(models_dir)
        self.blobs_dir = self.models_dir / "blobs"

    def path(self, digest: str) -> Path:
        """The file a digest lives in (validated; never outside ``blobs/``)."""
        return self.blobs_dir / parse_digest(digest).replace(":", "-")

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None

    def open_writer(self, expected: str | None = None) -> BlobWriter:
        return BlobWriter(self, expected)

    def put_bytes(self, data: bytes, expected: str | None = None) -> tuple[str, bool]:
        with self.open_writer(expected) as w:
            w.write(data)
            return w.commit()

    def put_stream(self, chunks: Iterable[bytes], expected: str | None = None) -> tuple[str, int, bool]:
        with self.open_writer(expected) as w:
            for chunk in chunks:
                w.write(chunk)
            digest, created = w.commit()
            return digest, w.size, created

    def put_file(self, src: str | os.PathLike[str], expected: str | None = None) -> tuple[str, int, bool]:
        with open(src, "rb") as f:
            return self.put_stream(iter(lambda: f.read(CHUNK), b""), expected)

    def read_bytes(self, digest: str, limit: int) -> bytes:
        """Read a small blob (config, template, params) whole; refuse anything over ``limit`` bytes."""
        path = self.path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None
        if len(data) > limit:
            raise InvalidDigest(f"blob {digest} is larger than {limit} bytes")
        return data

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest."""
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.blobs_dir):
                if entry.is_file() and _BLOB_FILE_RE.fullmatch(entry.name):
                    yield "sha256:" + entry.name[7:]

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def prune(self, keep: set[str], grace_s: float = 3600.0) -> list[str]:
        """Remove blobs not in ``keep`` and stale temp/partial files older than ``grace_s``.

        The grace period protects blobs that a concurrent create or pull wrote but whose manifest is
        not written yet (Ollama uses one hour too).
        """
        removed: list[str] = []
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.blobs_dir):
                if not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    age = now - entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < grace_s:
                    continue
                if _BLOB_FILE_RE.fullmatch(entry.name):
                    digest = "sha256:" + entry.name[7:]
                    if digest in keep:
                        continue
                os.unlink(entry.path)
                removed.append(entry.name)
        return removed
