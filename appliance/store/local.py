"""The local model store: blobs + manifests under OLLAMA_MODELS, and the operations on whole models.

Every method here is blocking file I/O; the server calls them through ``trio.to_thread``.  The
store lock (:mod:`appliance.store.lock`, across threads and processes) serialises every operation
that changes which blobs are referenced: a manifest is written only after checking, under the lock,
that every blob it names is present with its size, and delete and prune decide what to remove under
the same lock.  So no interleaving of create, copy, pull, delete and prune can leave a manifest that
points at a missing blob.

A store may be read-only for this server (:mod:`appliance.store.readonly`): then every change raises
StoreReadOnly (403) before touching a file, and a prune removes nothing.
"""

from __future__ import annotations

import builtins
import logging
import os
from pathlib import Path

from appliance.errors import ApplianceError, BadRequest, ModelNotFound
from appliance.store.blobs import BlobStore
from appliance.store.lock import StoreLock
from appliance.store.manifests import Manifest, ManifestStore, StoredManifest
from appliance.store.model import Model, load_model
from appliance.store.names import Name
from appliance.store.readonly import StoreReadOnly, read_only_reason

log = logging.getLogger(__name__)


class Store:
    """A models directory laid out exactly like Ollama's."""

    def __init__(self, models_dir: str | os.PathLike[str]) -> None:
        self.root = Path(models_dir).expanduser()
        self.lock = StoreLock(self.root)
        self.blobs = BlobStore(self.root, self.lock)
        self.manifests = ManifestStore(self.root)
        #: Why this server must not write here ("" when it may); see :meth:`decide_read_only`.
        self.read_only_reason = ""

    @property
    def read_only(self) -> bool:
        return bool(self.read_only_reason)

    def decide_read_only(self, requested: bool = False) -> str:
        """Find out (once, at start-up) whether this server may write here; returns the reason it may not."""
        folders = (self.blobs.blobs_dir, self.manifests.root)
        self.read_only_reason = read_only_reason(self.root, folders, requested)
        self.blobs.read_only_reason = self.read_only_reason
        return self.read_only_reason

    def refuse_if_read_only(self) -> None:
        if self.read_only_reason:
            raise StoreReadOnly(self.read_only_reason)

    def ensure_dirs(self) -> None:
        self.refuse_if_read_only()
        self.blobs.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.manifests.root.mkdir(parents=True, exist_ok=True)

    def list(self) -> list[StoredManifest]:
        """Every model, newest first (as ``ollama list`` shows them)."""
        return sorted(self.manifests.all(), key=lambda m: m.modified_at, reverse=True)

    def get(self, name: Name, as_typed: str | None = None) -> Model:
        """The model called ``name``; a not-found error quotes ``as_typed`` (what the user wrote)."""
        try:
            return load_model(self.blobs, self.manifests, name)
        except ModelNotFound:
            if as_typed is None:
                raise
            raise ModelNotFound(as_typed) from None

    def check_blobs(self, manifest: Manifest) -> None:
        """Raise BlobNotFound / BadRequest unless every blob ``manifest`` names is here, size and all."""
        for layer in (manifest.config, *manifest.layers):
            size = self.blobs.size(layer.digest)
            if size != layer.size:
                raise BadRequest(f"layer {layer.digest} has {size} bytes, manifest says {layer.size}")

    def write_manifest(self, name: Name, manifest: Manifest, data: bytes | None = None) -> None:
        """Write ``manifest`` (as ``data`` byte for byte, when given) once its blobs are checked.

        Check and write happen under the store lock, so a concurrent delete or prune cannot remove a
        blob in between.
        """
        self.refuse_if_read_only()
        with self.lock:
            self.check_blobs(manifest)
            if data is None:
                self.manifests.write(name, manifest)
            else:
                self.manifests.write_bytes(name, data)

    def copy(self, source: Name, destination: Name) -> None:
        """Copy a manifest; a source with a missing blob is refused rather than copied broken."""
        self.refuse_if_read_only()
        with self.lock:
            stored = self.manifests.get(source)
            self.check_blobs(stored.manifest)
            self.manifests.write(destination, stored.manifest)

    def delete(self, name: Name) -> None:
        """Remove a model's manifest and every blob no other manifest still uses."""
        self.refuse_if_read_only()
        with self.lock:
            removed = self.manifests.delete(name)
            in_use: set[str] = set()
            for other in self.manifests.all():
                in_use |= other.manifest.all_digests()
            for digest in removed.manifest.all_digests() - in_use:
                self.blobs.remove(digest)

    def referenced_digests(self) -> set[str]:
        digests: set[str] = set()
        for stored in self.manifests.all():
            digests |= stored.manifest.all_digests()
        return digests

    def digests_of(self, name: Name) -> set[str]:
        """The blobs ``name``'s manifest uses; none when there is no manifest or it cannot be read."""
        try:
            return self.manifests.get(name).manifest.all_digests()
        except ModelNotFound:
            return set()
        except (OSError, ApplianceError) as exc:  # a broken old manifest must not stop its replacement
            log.warning("ignoring unreadable manifest of %s: %s", name.display, exc)
            return set()

    def remove_unused(self, digests: set[str]) -> None:
        """Remove those of ``digests`` that no manifest uses any more (after a manifest was replaced)."""
        self.refuse_if_read_only()
        with self.lock:
            for digest in digests - self.referenced_digests():
                self.blobs.remove(digest)

    def _remove_stale_link_folders(self, grace_s: float) -> None:
        """Folders of links a safetensors import left behind when its server was killed."""
        import shutil
        import time

        from appliance.store.convert.importer import LINK_DIR_PREFIX

        for folder in self.blobs.models_dir.glob(LINK_DIR_PREFIX + "*"):
            try:
                stale = time.time() - folder.stat().st_mtime > grace_s
                if stale and folder.is_dir() and not folder.is_symlink():
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass

    def prune(self, grace_s: float = 3600.0) -> builtins.list[str]:
        """Remove blobs no manifest references (older than ``grace_s``) and stale temp files.

        Nothing on a read-only store: the temp files and partial downloads there may be another
        server's work in progress."""
        if self.read_only_reason:
            return []
        with self.lock:
            self.manifests.remove_stale_temps()
            self._remove_stale_link_folders(grace_s)
            removed = self.blobs.prune(self.referenced_digests(), grace_s=grace_s)
        if removed:
            log.info("pruned %d unused blob(s)", len(removed))
        return removed
