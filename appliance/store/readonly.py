"""A models folder this server only reads: why it is so, and the error every change to it raises.

Several servers may serve one models folder (replicas behind a load balancer, on one machine or over
a shared mount).  At most one of them may change it: a second writer's start-up prune would delete the
first one's fresh, not yet referenced blobs and its resumable partial downloads, and two writers
racing on one manifest leave whichever wrote last.  So a server runs read-only when

* ``OLLAMA_MODELS_READONLY`` says so (a writable shared folder, written by one server only), or
* the folder cannot be written: a read-only mount (``statvfs`` says ``ST_RDONLY``, which a bind mount
  remounted ``ro`` reports even to root, who ignores file modes) or a folder this user may not write
  (found by creating and removing a probe file: ``os.access`` answers from file modes, which neither
  a read-only mount nor root's privileges follow).

A read-only server prunes nothing, creates no folders, and refuses create, pull, copy, delete, import
and blob uploads with :class:`StoreReadOnly` (403) before reading their bodies.  Reads take no lock
that needs write access (:mod:`appliance.store.lock`).

Why 403: the request is understood and well formed, and this server will not do it however often it
is retried; 503 would invite clients and proxies to retry (and a load balancer to mark the server
down), 409 speaks of the model's state, which is not the problem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from appliance.errors import Forbidden

#: errno values that mean "this folder cannot be written here", as opposed to a transient failure.
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})

#: The probe's name starts like every temp file of the store, so a prune removes one a crash left.
PROBE_PREFIX = ".tmp-probe-"

REASON_SETTING = "OLLAMA_MODELS_READONLY is set"
REASON_MOUNT = "the models folder is on a read-only mount"
REASON_PERMISSION = "this server's user may not write the models folder"


class StoreReadOnly(Forbidden):
    """A change to a models folder this server only reads."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the models folder is read-only on this server ({reason}): models cannot be created, "
            "pulled, copied, imported or deleted here; send changes to the server that writes it")


class TranslationNeedsWriter(Forbidden):
    """A model llama.cpp loads only from a translated copy (store/gguf_compat.py) that is not there yet."""

    def __init__(self) -> None:
        super().__init__(
            "this model needs a translated copy for llama.cpp, and the models folder is read-only on "
            "this server: load the model once on the server that writes the folder, which leaves the "
            "copy there for every server")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def is_read_only_mount(path: Path) -> bool:
    """True when ``path`` (or, while it does not exist, its nearest existing parent) is mounted ``ro``."""
    try:
        return bool(os.statvfs(_nearest_existing(path)).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def can_create_files_in(folder: Path) -> bool:
    """Create and remove a probe file in ``folder``; False when that is refused as read-only/denied."""
    probe = folder / f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in READ_ONLY_ERRNOS:
            return False
        raise
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(probe)
    return True


def read_only_reason(root: Path, folders: tuple[Path, ...], requested: bool) -> str:
    """Why the store at ``root`` must not be written ("" when it may): the setting, the mount, or a
    probe file refused in one of ``folders`` (which are created first when missing and allowed)."""
    if requested:
        return REASON_SETTING
    if is_read_only_mount(root):
        return REASON_MOUNT
    try:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            if not can_create_files_in(folder):
                return REASON_PERMISSION
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return REASON_MOUNT
        if exc.errno in READ_ONLY_ERRNOS:
            return REASON_PERMISSION
        raise
    return ""
