"""Content-addressed blobs under ``<models>/blobs/sha256-<hex>``, written atomically.

Every write goes to a temporary file in the same folder, is hashed while it is written, fsynced,
checked against the digest it claims, and only then renamed into place: a reader never sees a
half-written or wrong blob.  A writer holds an ``flock`` on its temp file for the file's whole life
(taken under the store lock, so a prune never sees the file unlocked); a temp file nobody holds a lock
on belongs to a writer that died, and the start-up prune removes it at once, whatever its age.
A full disk (ENOSPC/EDQUOT) becomes InsufficientStorage (507), and leaves nothing behind.
A digest is validated (``sha256:`` or ``sha256-`` + exactly 64 hex digits) before it becomes a path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from appliance.errors import BlobNotFound, DigestMismatch, InsufficientStorage, InvalidDigest
from appliance.store.lock import StoreLock
from appliance.store.readonly import StoreReadOnly

_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_BLOB_FILE_RE = re.compile(r"sha256-[0-9a-f]{64}")
_PARTIAL_RE = re.compile(r"(sha256-[0-9a-f]{64}-partial)(-[0-9]{1,6})?")
TEMP_PREFIX = ".tmp-"
CHUNK = 1 << 20
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

log = logging.getLogger(__name__)


#: What a client is told; the folder's path goes to the log only (no path of ours reaches a client).
DISK_FULL_MESSAGE = "no space left on device: the disk holding the models folder is full"


@contextlib.contextmanager
def translate_disk_full(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an out-of-space OSError raised inside into InsufficientStorage (507); log ``folder``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            log.warning("no space left on device writing to %s", folder)
            raise InsufficientStorage(DISK_FULL_MESSAGE) from exc
        raise


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
        if store.read_only_reason:
            raise StoreReadOnly(store.read_only_reason)
        with translate_disk_full(store.blobs_dir), store.lock:
            store.blobs_dir.mkdir(parents=True, exist_ok=True)
            self.temp_path = store.blobs_dir / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            self._file: BinaryIO | None = open(self.temp_path, "x+b")
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)  # a new file: never contended

    def fileno(self) -> int:
        """The temp file's descriptor: a child process that writes the file inherits it (and the lock)."""
        assert self._file is not None, "fileno after commit/abort"
        return self._file.fileno()

    def write(self, data: bytes) -> None:
        assert self._file is not None, "write after commit/abort"
        with translate_disk_full(self._store.blobs_dir):
            self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def flush(self) -> None:
        """Hand what was written to the OS, so that a reader of :attr:`temp_path` sees it."""
        assert self._file is not None, "flush after commit/abort"
        with translate_disk_full(self._store.blobs_dir):
            self._file.flush()

    @property
    def digest(self) -> str:
        """The ``sha256:`` digest of the bytes written so far (checked before a commit is even tried)."""
        return "sha256:" + self._hash.hexdigest()

    def adopt_contents(self) -> None:
        """Hash what another process wrote into :attr:`temp_path` (a quantizer), instead of writes."""
        assert self._file is not None and self.size == 0, "adopt before any write"
        self._file.seek(0)
        while chunk := self._file.read(CHUNK):
            self._hash.update(chunk)
            self.size += len(chunk)

    def commit(self) -> tuple[str, bool]:
        """Verify, fsync and rename into place; return (digest, created). Removes the temp on failure."""
        assert self._file is not None, "commit twice"
        try:
            with translate_disk_full(self._store.blobs_dir):
                self._file.flush()
                os.fsync(self._file.fileno())
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
            self._file.close()  # only now: the lock keeps a prune away until the rename
            self._file = None
            return digest, created
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # closing flushes, and on a full disk that fails too
                file.close()
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self._file is not None:
            self.abort()


class BlobStore:
    """The ``blobs`` folder of a models directory."""

    def __init__(self, models_dir: str | os.PathLike[str], lock: StoreLock | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.blobs_dir = self.models_dir / "blobs"
        self.lock = lock or StoreLock(self.models_dir)
        self.read_only_reason = ""  # set by Store.decide_read_only: no writer may open

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
        """Remove blobs not in ``keep`` and what dead writers left behind; call it under the store lock.

        * a temp file nobody holds a lock on goes at once (its writer died: see the module doc);
        * an unreferenced blob, a partial download and any other file go once older than ``grace_s``.
          The grace period protects blobs that a concurrent pull wrote but whose manifest is not
          written yet, and keeps a partial download to resume for an hour (as Ollama does); a
          partial that a live download holds locked is never removed.
        """
        removed: list[str] = []
        now = time.time()
        try:
            entries = [entry for entry in os.scandir(self.blobs_dir) if entry.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return removed
        for entry in entries:
            name = entry.name
            if name.startswith(TEMP_PREFIX):
                if _remove_unless_locked(Path(entry.path)):
                    removed.append(name)
                continue
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < grace_s:
                continue
            if _BLOB_FILE_RE.fullmatch(name) and "sha256:" + name[7:] in keep:
                continue
            partial = _PARTIAL_RE.fullmatch(name)
            if partial is not None:
                if partial.group(2) and _is_locked(self.blobs_dir / partial.group(1)):
                    continue  # the state of a download in progress
                if _remove_unless_locked(Path(entry.path)):
                    removed.append(name)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(name)
        return removed


def _remove_unless_locked(path: Path) -> bool:
    """Unlink ``path`` if no process holds an flock on it (checked and removed while we hold it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def _is_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
