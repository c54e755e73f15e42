"""The models folder's write lock: who may change which blobs are referenced, one at a time.

Creating, copying, pulling (its last step), deleting and pruning all decide from the folder's
current state which blobs exist and which are referenced; each does its check and its change while
holding this lock, so a delete or prune can never remove a blob between another writer's check and
its manifest write.

Two layers, because two kinds of concurrency share a models folder:

* a ``threading.RLock`` for the worker threads of one server (every store call runs in
  ``trio.to_thread``); re-entrant, so a locked operation can call another (create -> put_bytes);
* an ``fcntl.flock`` on ``<models>/.store.lock`` for other processes on the same folder (a second
  server, ``ollama`` tools run by hand).  An flock, not a lock file that is created and removed: the
  kernel drops it when its holder dies, so a ``kill -9`` never leaves the store locked.

The flock is taken only by the outermost holder in this process (flock locks belong to an open
file, so a nested flock in the same process would not exclude anything anyway).  Taking it needs
no write access: where this server may only read (a read-only mount of a folder that another server
writes), an existing lock file is opened read-only, which flock accepts, so a locking reader (an
export) still excludes that writer's delete.  Where the lock file neither exists nor can be created,
the thread lock alone is used: no process writes there, so there is nothing to race.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

LOCK_FILE = ".store.lock"


class StoreLock:
    """An exclusive, re-entrant lock on one models folder, across threads and processes."""

    def __init__(self, models_dir: str | os.PathLike[str]) -> None:
        self.path = Path(models_dir) / LOCK_FILE
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                self._fd = self._lock_file()
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                os.close(self._fd)  # releases the flock
        finally:
            if self._depth == 0:
                self._fd = None
            self._thread_lock.release()

    def _lock_file(self) -> int | None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                log.debug("store lock %s unavailable (%s); locking this process only", self.path, exc)
                return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while another process holds it (always briefly)
        except BaseException:
            os.close(fd)
            raise
        return fd
