"""The local model store: blobs + manifests under OLLAMA_MODELS, and the operations on whole models.

Every method here is blocking file I/O; the server calls them through ``trio.to_thread``.  A lock
(one per store) serialises the operations that change which blobs are referenced (create, copy,
delete, prune) so a prune never removes a blob that a concurrent create is about to reference.
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
from pathlib import Path

from appliance.errors import BadRequest, ModelNotFound
from appliance.store.blobs import BlobStore
from appliance.store.manifests import Manifest, ManifestStore, StoredManifest
from appliance.store.model import Model, load_model
from appliance.store.names import Name

log = logging.getLogger(__name__)


class Store:
    """A models directory laid out exactly like Ollama's."""

    def __init__(self, models_dir: str | os.PathLike[str]) -> None:
        self.root = Path(models_dir).expanduser()
        self.blobs = BlobStore(self.root)
        self.manifests = ManifestStore(self.root)
        self.lock = threading.RLock()

    def ensure_dirs(self) -> None:
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

    def write_manifest(self, name: Name, manifest: Manifest) -> None:
        """Write a manifest after checking every blob it names is present with the right size."""
        for layer in (manifest.config, *manifest.layers):
            size = self.blobs.size(layer.digest)
            if size != layer.size:
                raise BadRequest(f"layer {layer.digest} has {size} bytes, manifest says {layer.size}")
        with self.lock:
            self.manifests.write(name, manifest)

    def copy(self, source: Name, destination: Name) -> None:
        with self.lock:
            stored = self.manifests.get(source)
            self.manifests.write(destination, stored.manifest)

    def delete(self, name: Name) -> None:
        """Remove a model's manifest and every blob no other manifest still uses."""
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

    def prune(self, grace_s: float = 3600.0) -> builtins.list[str]:
        """Remove blobs no manifest references (older than ``grace_s``) and stale temp files."""
        with self.lock:
            self.manifests.remove_stale_temps()
            removed = self.blobs.prune(self.referenced_digests(), grace_s=grace_s)
        if removed:
            log.info("pruned %d unused blob(s)", len(removed))
        return removed
