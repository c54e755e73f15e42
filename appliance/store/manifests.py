"""Manifests under ``<models>/manifests/<host>/<namespace>/<model>/<tag>``, in Ollama's JSON shape.

A manifest is an OCI/Docker v2 image manifest: a config layer (the model's ConfigV2 JSON) and
ordered layers, each with Ollama's media type.  Its digest (shown by ``ollama list``) is the
sha256 of the file's bytes.  Manifests are written atomically and always after their blobs.
Names compare case-insensitively: looking up ``Foo`` finds ``foo``, and writing ``Foo`` replaces
a differently-cased ``foo`` instead of adding a second entry.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from appliance.api.gojson import go_marshal
from appliance.errors import ApplianceError, BadRequest, InvalidName, ModelNotFound
from appliance.store.blobs import parse_digest, translate_disk_full
from appliance.store.names import Name, name_from_manifest_path

log = logging.getLogger(__name__)

MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_DRAFT = "application/vnd.ollama.image.draft"  # a draft model for speculative decoding
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_PROMPT = "application/vnd.ollama.image.prompt"  # legacy, still found in old stores

#: Manifests are small; anything larger is not one of ours and is refused before parsing.
MAX_MANIFEST_BYTES = 4 << 20


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int
    from_: str | None = None
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Layer:
        if not isinstance(obj, dict):
            raise BadRequest("invalid manifest: layer is not an object")
        media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(media_type, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest("invalid manifest: layer needs mediaType and a non-negative size")
        return cls(
            media_type=media_type,
            digest=parse_digest(digest),
            size=size,
            from_=obj.get("from") if isinstance(obj.get("from"), str) else None,
            name=obj.get("name") if isinstance(obj.get("name"), str) else None,
        )


@dataclass(frozen=True)
class Manifest:
    config: Layer
    layers: tuple[Layer, ...]
    schema_version: int = 2
    media_type: str = MEDIA_MANIFEST

    def to_bytes(self) -> bytes:
        """The manifest file's bytes, encoded the way Ollama (Go) writes them."""
        return go_marshal(
            {
                "schemaVersion": self.schema_version,
                "mediaType": self.media_type,
                "config": self.config.to_json(),
                "layers": [layer.to_json() for layer in self.layers],
            },
            sort_keys=False,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"invalid manifest: {exc}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("layers"), list):
            raise BadRequest("invalid manifest: no layers")
        return cls(
            config=Layer.from_json(obj.get("config")),
            layers=tuple(Layer.from_json(layer) for layer in obj["layers"]),
            schema_version=int(obj.get("schemaVersion", 2)),
            media_type=str(obj.get("mediaType", MEDIA_MANIFEST)),
        )

    @property
    def size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)

    def all_digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    def first(self, media_type: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.media_type == media_type), None)

    def all_of(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]


@dataclass(frozen=True)
class StoredManifest:
    """A manifest as found on disk: its name, parsed content, digest and modification time."""

    name: Name
    manifest: Manifest
    digest: str
    modified_at: datetime
    path: Path = field(repr=False)


def _sha256_hex(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _without_paths(
    method: Callable[Concatenate[Any, Name, _P], _R],
) -> Callable[Concatenate[Any, Name, _P], _R]:
    """Answer an OSError with the model's name and the reason, never the file's path.

    An OSError's text names the file, and so the models folder, which is no client's business;
    a name the filesystem finds too long (ENAMETOOLONG) is the client's mistake, so a 400.
    """

    @functools.wraps(method)
    def checked(store: Any, name: Name, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(store, name, *args, **kwargs)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidName(f"invalid model name {name.display!r}: {reason}") from exc
            raise ApplianceError(f"cannot access the manifest of {name.display}: {reason}") from exc

    return checked


class ManifestStore:
    """The ``manifests`` folder of a models directory."""

    def __init__(self, models_dir: str | os.PathLike[str]) -> None:
        self.root = Path(models_dir) / "manifests"

    def _exact_path(self, name: Name) -> Path:
        return self.root.joinpath(*name.parts())

    @_without_paths
    def find_path(self, name: Name) -> Path | None:
        """The file holding ``name``, matching each path part case-insensitively."""
        exact = self._exact_path(name)
        if exact.is_file():
            return exact
        current = self.root
        for part in name.parts():
            try:
                entries = os.listdir(current)
            except (FileNotFoundError, NotADirectoryError):
                return None
            match = next((e for e in entries if e.casefold() == part.casefold()), None)
            if match is None:
                return None
            current = current / match
        return current if current.is_file() else None

    def _load(self, name: Name, path: Path) -> StoredManifest:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise BadRequest(f"manifest of {name.display} is too large")
        stat = os.stat(path)
        # Report the name as stored on disk, so listings show the case the user created.
        stored_name = name_from_manifest_path(path.relative_to(self.root).parts) or name
        return StoredManifest(
            name=stored_name,
            manifest=Manifest.from_bytes(data),
            digest=_sha256_hex(data),
            modified_at=datetime.fromtimestamp(stat.st_mtime, tz=UTC).astimezone(),
            path=path,
        )

    @_without_paths
    def get(self, name: Name) -> StoredManifest:
        path = self.find_path(name)
        if path is None:
            raise ModelNotFound(name.display)
        return self._load(name, path)

    @_without_paths
    def exists(self, name: Name) -> bool:
        return self.find_path(name) is not None

    def write(self, name: Name, manifest: Manifest) -> Path:
        """Atomically write ``manifest`` for ``name``, replacing any differently-cased twin."""
        return self.write_bytes(name, manifest.to_bytes())

    @_without_paths
    def write_bytes(self, name: Name, data: bytes) -> Path:
        """Atomically write ``data`` byte for byte as ``name``'s manifest (a pull keeps the registry's
        bytes, so its digest stays the registry's), replacing any differently-cased twin.

        Callers hold the store lock (:class:`appliance.store.local.Store` does): the start-up prune
        removes every manifest temp file under that lock."""
        target = self._exact_path(name)
        twin = self.find_path(name)
        tmp = target.parent / f".tmp-{secrets.token_hex(8)}"
        try:
            with translate_disk_full(self.root):
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        if twin is not None and twin != target:
            twin.unlink(missing_ok=True)
            self._prune_empty_dirs(twin.parent)
        return target

    @_without_paths
    def delete(self, name: Name) -> StoredManifest:
        stored = self.get(name)
        stored.path.unlink()
        self._prune_empty_dirs(stored.path.parent)
        return stored

    def _prune_empty_dirs(self, start: Path) -> None:
        current = start
        while current != self.root and self.root in current.parents:
            try:
                current.rmdir()
            except OSError:
                return
            current = current.parent

    def all(self) -> Iterator[StoredManifest]:
        """Every valid manifest in the store; unreadable or foreign files are logged and skipped."""
        if not self.root.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for filename in filenames:
                path = Path(dirpath) / filename
                if filename.startswith(".tmp-"):
                    continue
                name = name_from_manifest_path(path.relative_to(self.root).parts)
                if name is None:
                    log.debug("skipping %s: not a manifest path", path)
                    continue
                try:
                    yield self._load(name, path)
                except (OSError, BadRequest) as exc:
                    log.warning("skipping manifest %s: %s", path, exc)

    def remove_stale_temps(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for dirpath, _dirs, filenames in os.walk(self.root):
                for filename in filenames:
                    if filename.startswith(".tmp-"):
                        (Path(dirpath) / filename).unlink(missing_ok=True)
