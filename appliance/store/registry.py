"""``pull`` and ``push``: moving whole models between the store and an OCI distribution registry.

The steps and the progress objects are Ollama's (``server/images.go``):

* pull: ``pulling manifest``; ``pulling <digest12>`` with digest/total/completed for each blob;
  ``verifying sha256 digest``; ``writing manifest``; ``removing unused layers`` (when an update
  left some behind); ``success``.  Blobs already here are not fetched again, so pulling an
  up-to-date model transfers only the manifest.  The manifest is written last, byte for byte as
  the registry sent it (so its digest, the ID ``ollama list`` shows, matches the registry's), and
  only after every blob it names is present and verified.
* push: ``retrieving manifest``; ``pushing <digest12>`` with digest/total/completed; ``pushing
  manifest``; ``success``.  The local manifest file's bytes are sent unchanged, after every blob.

The HTTP side lives in :mod:`appliance.store.distribution`, the blob movers in
:mod:`appliance.store.transfer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from appliance import envconfig
from appliance.errors import BadRequest, InsufficientStorage, NotFound
from appliance.store.distribution import (
    MANIFEST_LISTS,
    MAX_MANIFEST_BYTES,
    MEDIA_MANIFEST_V2,
    InsecureProtocol,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryUnauthorized,
    RegistryUnavailable,
    TransferSettings,
    UnsafeRedirect,
    check_protocol,
    load_credentials,
)
from appliance.store.gguf_compat import llama_cpp_note
from appliance.store.local import Store
from appliance.store.manifests import MEDIA_MODEL, Manifest, StoredManifest
from appliance.store.names import Name
from appliance.store.transfer import (
    Downloads,
    bytes_still_needed,
    check_free_space,
    task_group,
    upload_blob,
)

Progress = Callable[[dict[str, Any]], None]
MAX_LAYERS = 1024

#: Every pull in this process shares downloads through this registry of in-flight blobs.
DOWNLOADS = Downloads()

__all__ = [
    "DOWNLOADS",
    "InsecureProtocol",
    "InsufficientStorage",
    "RegistryError",
    "RegistryNotFound",
    "RegistryUnauthorized",
    "RegistryUnavailable",
    "TransferSettings",
    "UnsafeRedirect",
    "check_protocol",
    "pull",
    "push",
    "settings_from_config",
]


def settings_from_config(cfg: envconfig.Config | None = None) -> TransferSettings:
    """Transfer settings for this server: OLLAMA_MAX_TRANSFER_STREAMS and ~/.ollama/registry.json."""
    cfg = cfg or envconfig.load()
    return TransferSettings(max_streams=max(1, cfg.max_transfer_streams or 4), credentials=load_credentials())


def _blob_progress(verb: str, digest: str, total: int, completed: int) -> dict[str, Any]:
    # Ollama's ProgressResponse omits zero totals and completions (``omitempty``).
    out: dict[str, Any] = {"status": f"{verb} {digest[7:19]}", "digest": digest}
    if total:
        out["total"] = total
    if completed:
        out["completed"] = completed
    return out


def _unique_blobs(manifest: Manifest) -> dict[str, int]:
    """Digest -> size, layers first and the config last (Ollama's order); sizes must agree."""
    blobs: dict[str, int] = {}
    for layer in (*manifest.layers, manifest.config):
        if blobs.setdefault(layer.digest, layer.size) != layer.size:
            raise RegistryError(f"invalid manifest: {layer.digest} is listed with two different sizes")
    return blobs


def parse_pulled_manifest(data: bytes, media_type: str) -> Manifest:
    """A registry's manifest, checked before any of it is used (digests validated by the parser)."""
    if media_type in MANIFEST_LISTS:
        raise RegistryError("pull model manifest: manifest lists are not supported")
    try:
        manifest = Manifest.from_bytes(data)
    except BadRequest as exc:
        raise RegistryError(f"pull model manifest: {exc}") from exc
    if len(manifest.layers) > MAX_LAYERS:
        raise RegistryError(f"pull model manifest: more than {MAX_LAYERS} layers")
    return manifest


# --- pull ------------------------------------------------------------------------------------------


async def pull(store: Store, name: Name, insecure: bool, progress: Progress, *,
               settings: TransferSettings | None = None, downloads: Downloads | None = None,
               prune: bool = True) -> None:
    """Pull ``name`` from its registry into ``store``, reporting Ollama's progress objects."""
    settings = settings or settings_from_config()
    downloads = downloads or DOWNLOADS
    check_protocol(name, insecure)
    old = await trio.to_thread.run_sync(store.digests_of, name)
    progress({"status": "pulling manifest"})
    async with RegistryClient(name, insecure=insecure, settings=settings) as client:
        data, media_type = await client.get_manifest()
        manifest = parse_pulled_manifest(data, media_type)
        blobs = _unique_blobs(manifest)
        needed = await trio.to_thread.run_sync(bytes_still_needed, store, blobs)
        await trio.to_thread.run_sync(check_free_space, store, needed)
        for digest, size in blobs.items():
            progress(_blob_progress("pulling", digest, size, 0))

        def reporter(digest: str) -> Callable[[int, int], None]:
            return lambda total, completed: progress(_blob_progress("pulling", digest, total, completed))

        async with task_group() as nursery:
            for digest, size in blobs.items():
                nursery.start_soon(downloads.fetch, client, store, digest, size, reporter(digest))
    # Stored even when llama.cpp cannot run it here, as upstream stores it: the folder is shared with
    # real Ollama and a later version may run it.  The warning says so now, not at the first chat.
    weights = manifest.first(MEDIA_MODEL)
    if weights is not None:
        note = await trio.to_thread.run_sync(llama_cpp_note, store.blobs.path(weights.digest))
        if note:
            progress({"status": note})
    progress({"status": "verifying sha256 digest"})
    # Every blob was hashed as it arrived and renamed only when it matched; what is left to check is
    # that nothing removed, replaced or truncated one since: write_manifest_bytes checks that under
    # the store lock, together with the write.
    progress({"status": "writing manifest"})
    await trio.to_thread.run_sync(write_manifest_bytes, store, name, data, manifest)
    unused = old - set(blobs)
    if prune and unused:
        progress({"status": "removing unused layers"})
        await trio.to_thread.run_sync(store.remove_unused, unused)
    progress({"status": "success"})


def write_manifest_bytes(store: Store, name: Name, data: bytes, manifest: Manifest | None = None) -> None:
    """Write ``data`` as ``name``'s manifest, atomically and byte for byte (as Ollama does), once every
    blob it names is checked present (under the store lock, with the write)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise RegistryError("manifest too large")
    manifest = manifest or parse_pulled_manifest(data, MEDIA_MANIFEST_V2)
    try:
        store.write_manifest(name, manifest, data)
    except (NotFound, BadRequest) as exc:
        raise RegistryError(f"{exc}: a blob changed on disk during the pull; pull again") from exc


# --- push ------------------------------------------------------------------------------------------


def read_local_manifest(store: Store, name: Name) -> tuple[StoredManifest, bytes]:
    """The stored manifest of ``name`` and its file's exact bytes (raises ModelNotFound)."""
    stored = store.manifests.get(name)
    with open(stored.path, "rb") as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise BadRequest(f"manifest of {name.display} is too large")
    return stored, data


def mount_sources(store: Store, name: Name, digests: set[str]) -> dict[str, str]:
    """For each digest, another repository on the same registry that already holds it (if we know one)."""
    sources: dict[str, str] = {}
    own = (name.namespace.casefold(), name.model.casefold())
    for stored in store.manifests.all():
        other = stored.name
        if other.host.casefold() != name.host.casefold() or (other.namespace.casefold(),
                                                              other.model.casefold()) == own:
            continue
        for digest in stored.manifest.all_digests() & digests:
            sources.setdefault(digest, f"{other.namespace}/{other.model}")
    return sources


async def push(store: Store, name: Name, insecure: bool, progress: Progress, *,
               settings: TransferSettings | None = None) -> None:
    """Push ``name`` from ``store`` to its registry: blobs first, the manifest last."""
    settings = settings or settings_from_config()
    check_protocol(name, insecure)
    progress({"status": "retrieving manifest"})
    stored, data = await trio.to_thread.run_sync(read_local_manifest, store, name)
    manifest = stored.manifest
    blobs = _unique_blobs(manifest)
    sources = await trio.to_thread.run_sync(mount_sources, store, name, set(blobs))
    target = Name(host=name.host, namespace=stored.name.namespace, model=stored.name.model,
                  tag=stored.name.tag, scheme=name.scheme)
    async with RegistryClient(target, insecure=insecure, settings=settings) as client:

        def reporter(digest: str) -> Callable[[int, int], None]:
            return lambda total, completed: progress(_blob_progress("pushing", digest, total, completed))

        async with task_group() as nursery:
            for digest, size in blobs.items():
                nursery.start_soon(upload_blob, client, store, digest, size, sources.get(digest),
                                   reporter(digest))
        progress({"status": "pushing manifest"})
        headers = {"Content-Type": manifest.media_type or MEDIA_MANIFEST_V2}
        async with client.open("PUT", client.url("manifests", target.tag), headers=headers,
                               body=data) as response:
            if response.status_code not in (200, 201, 202):
                raise await client.fail(response, "pushing manifest")
    progress({"status": "success"})

