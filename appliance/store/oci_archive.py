"""A model as an OCI image layout tarball: ``ollama export`` writes one, ``ollama import`` reads one.

The archive holds the layout the OCI image-layout spec describes, and nothing else::

    oci-layout                       {"imageLayoutVersion": "1.0.0"}
    index.json                       one manifest descriptor, the model's full name as its
                                     org.opencontainers.image.ref.name annotation
    blobs/sha256/<hex>               the manifest, the config and every layer: the store's own bytes

so the manifest's digest is the model's ID in ``ollama list``, and tools such as ``skopeo`` read the
archive as they read any image.

An archive to import is hostile input, read as a stream (never buffered whole, never seeked): each
member is checked from its header before a byte of it is written (a path that leaves the archive, a
link, device or other special file, a name twice, an unexpected file, a blob larger than the manifest
says or than the disk can hold), each blob goes to a locked temp file of the blob store and must hash
to its name, and only when the whole archive has been read and its manifest found complete do the
blobs move into place (a rename each) and the manifest is written, last.  Whatever fails, the store
is left as it was: the temp files go, and no manifest is written.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

from appliance.errors import BadRequest, DigestMismatch, InsufficientStorage, InvalidName
from appliance.store.blobs import CHUNK, BlobWriter, digest_of_bytes, parse_digest
from appliance.store.local import Store
from appliance.store.manifests import MAX_MANIFEST_BYTES, Manifest
from appliance.store.names import Name, parse_name

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"

#: index.json and oci-layout are read into memory: anything larger is not ours.
MAX_JSON_BYTES = 1 << 20
#: What tarfile may read for one member's headers (pax and GNU long-name records are read whole).
MAX_HEADER_BYTES = 1 << 20
#: Members in one archive: tarfile keeps every header it read, and each blob holds a temp file open.
MAX_MEMBERS = 1024

_BLOB_NAME = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_DIRECTORIES = frozenset({"blobs", "blobs/sha256"})
_RECORD = tarfile.RECORDSIZE


def _refused(reason: str) -> BadRequest:
    return BadRequest(f"invalid OCI archive: {reason}")


# --- export -----------------------------------------------------------------------------------


def _tar_header(name: str, size: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name + "/" if directory else name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = 0  # the same model always exports to the same bytes
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int) -> int:
    return -size % tarfile.BLOCKSIZE


@dataclass
class Export:
    """A model's archive, ready to stream: every blob file is open already, so a delete of the model
    while it streams changes nothing.  Iterate :meth:`chunks` (blocking reads), then :meth:`close`."""

    name: Name
    size: int
    _parts: list[tuple[str, bytes | BinaryIO, int]] = field(repr=False)

    def chunks(self) -> Iterator[bytes]:
        """The tarball's bytes, :data:`CHUNK` at most at a time."""
        written = 0
        for tar_name, source, size in self._parts:
            header = _tar_header(tar_name, max(size, 0), directory=size < 0)
            yield header
            written += len(header)
            if size <= 0:
                continue
            if isinstance(source, bytes):
                yield source
            else:
                left = size
                while left:
                    data = source.read(min(CHUNK, left))
                    if not data:
                        raise OSError(f"blob for {tar_name} shrank while it was exported")
                    left -= len(data)
                    yield data
            written += size
            if pad := _padding(size):
                yield bytes(pad)
                written += pad
        # Two zero blocks end the archive; then whole records, as tar writes them.
        yield bytes(self.size - written)

    def close(self) -> None:
        for _name, source, _size in self._parts:
            if not isinstance(source, bytes):
                source.close()


def open_export(store: Store, name: Name) -> Export:
    """Open the archive of ``name`` (ModelNotFound, or BadRequest for a model with a missing blob)."""
    files: list[BinaryIO] = []
    with store.lock:  # no delete or prune between reading the manifest and opening its blobs
        stored = store.manifests.get(name)
        with open(stored.path, "rb") as f:
            manifest_bytes = f.read(MAX_MANIFEST_BYTES + 1)
        manifest = Manifest.from_bytes(manifest_bytes)
        store.check_blobs(manifest)
        try:
            blobs: list[tuple[str, bytes | BinaryIO, int]] = []
            seen: set[str] = set()
            for layer in (manifest.config, *manifest.layers):
                if layer.digest in seen:
                    continue
                seen.add(layer.digest)
                blob: BinaryIO = open(store.blobs.path(layer.digest), "rb")
                files.append(blob)
                blobs.append((_blob_name(layer.digest), blob, layer.size))
        except BaseException:
            for handle in files:
                handle.close()
            raise
    manifest_digest = digest_of_bytes(manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": manifest.media_type,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "annotations": {REF_NAME: str(stored.name)},
        }],
    }
    index_bytes = json.dumps(index, separators=(",", ":")).encode()
    layout_bytes = json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()
    parts: list[tuple[str, bytes | BinaryIO, int]] = [
        ("oci-layout", layout_bytes, len(layout_bytes)),
        ("index.json", index_bytes, len(index_bytes)),
        ("blobs", b"", -1),
        ("blobs/sha256", b"", -1),
        (_blob_name(manifest_digest), manifest_bytes, len(manifest_bytes)),
        *blobs,
    ]
    body = sum(tarfile.BLOCKSIZE + max(size, 0) + _padding(max(size, 0)) for _n, _s, size in parts)
    total = body + 2 * tarfile.BLOCKSIZE
    total += -total % _RECORD
    return Export(name=stored.name, size=total, _parts=parts)


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + parse_digest(digest).removeprefix("sha256:")


# --- import -----------------------------------------------------------------------------------


class _Source:
    """The request body as the file object tarfile reads, with a byte budget for headers."""

    def __init__(self, read_chunk: Callable[[], bytes]) -> None:
        self._read_chunk = read_chunk
        self._buffer = b""
        self._offset = 0  # into _buffer: tarfile reads in 10 KiB steps, and slicing off each would copy
        self._ended = False
        self.header_budget: int | None = None

    def read(self, size: int = -1) -> bytes:
        if self._offset >= len(self._buffer) and not self._ended:
            self._buffer, self._offset = self._read_chunk(), 0
            self._ended = not self._buffer
        end = len(self._buffer) if size < 0 else min(len(self._buffer), self._offset + size)
        data = self._buffer[self._offset:end]
        self._offset = end
        if self.header_budget is not None:
            self.header_budget -= len(data)
            if self.header_budget < 0:
                raise _refused(f"a member's tar headers are larger than {MAX_HEADER_BYTES} bytes")
        return data


@dataclass
class _Received:
    """What the archive held so far: small JSON files in memory, blobs in verified temp files."""

    files: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, BlobWriter] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    manifest_digest: str | None = None
    manifest_bytes: bytes | None = None
    manifest: Manifest | None = None
    expected: dict[str, int] = field(default_factory=dict)  # digest -> size, once the manifest is known

    def close(self) -> None:
        for writer in self.blobs.values():
            writer.abort()


def _member_path(member: tarfile.TarInfo) -> str:
    """The member's path inside the layout, or a refusal naming why it cannot be one."""
    raw = member.name
    if "\x00" in raw or "\\" in raw or raw.startswith("/"):
        raise _refused(f"member {raw[:200]!r} has an absolute or unsafe path")
    parts = raw.split("/")
    while parts and parts[0] == ".":
        parts.pop(0)
    if member.isdir() and parts and parts[-1] == "":
        parts.pop()
    if ".." in parts:
        raise _refused(f"member {raw[:200]!r} leaves the archive")
    if any(part in ("", ".") for part in parts):
        raise _refused(f"member {raw[:200]!r} has an unsafe path")
    return "/".join(parts)


def _check_member(member: tarfile.TarInfo, received: _Received) -> str:
    """Refuse a member from its header alone; return its path."""
    path = _member_path(member)
    if member.issym() or member.islnk():
        raise _refused(f"member {path!r} is a link")
    if member.isdir():
        if path and path not in _DIRECTORIES:
            raise _refused(f"unexpected folder {path!r}")
    elif member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.sparse is not None:
        raise _refused(f"member {path!r} is not a regular file")
    if path in received.names:
        raise _refused(f"member {path!r} appears twice")
    received.names.add(path)
    if len(received.names) > MAX_MEMBERS:
        raise _refused(f"more than {MAX_MEMBERS} members")
    if member.isdir():
        return path
    if path in ("oci-layout", "index.json"):
        if member.size > MAX_JSON_BYTES:
            raise _refused(f"{path} is larger than {MAX_JSON_BYTES} bytes")
        return path
    match = _BLOB_NAME.fullmatch(path)
    if match is None:
        raise _refused(f"unexpected member {path!r} (an OCI layout holds oci-layout, index.json and "
                       "blobs/sha256/<digest>)")
    digest = "sha256:" + match.group(1)
    if digest == received.manifest_digest and member.size > MAX_MANIFEST_BYTES:
        raise _refused(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    if received.manifest is not None and digest != received.manifest_digest:
        if digest not in received.expected:
            raise _refused(f"blob {digest} is not part of the model")
        if member.size != received.expected[digest]:
            raise _refused(f"blob {digest} has {member.size} bytes, the manifest says "
                           f"{received.expected[digest]}")
    return path


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, store: Store,
                 received: _Received) -> None:
    source = tar.extractfile(member)
    if source is None:
        return
    if path in ("oci-layout", "index.json"):
        data = _read_exactly(source, member.size, path)
        received.files[path] = data
        if path == "index.json":
            received.manifest_digest = _manifest_descriptor(data)[0]
        return
    digest = "sha256:" + path.rsplit("/", 1)[1]
    if digest == received.manifest_digest:
        data = _read_exactly(source, member.size, path)
        if digest_of_bytes(data) != digest:
            raise DigestMismatch(f"invalid OCI archive: the manifest does not match its digest {digest}")
        _learn_manifest(received, data)
        return
    _check_room(store, member.size, path)
    writer = store.blobs.open_writer()
    received.blobs[digest] = writer
    left = member.size
    while left:
        chunk = source.read(min(CHUNK, left))
        if not chunk:
            raise _refused(f"the archive ends inside {path!r}")
        writer.write(chunk)
        left -= len(chunk)
    if writer.digest != digest:
        raise DigestMismatch(f"invalid OCI archive: blob {digest} does not match its digest "
                             f"(its bytes hash to {writer.digest})")


def _read_exactly(source: IO[bytes], size: int, path: str) -> bytes:
    data = source.read(size)
    if len(data) != size:
        raise _refused(f"the archive ends inside {path!r}")
    return data


def _check_room(store: Store, size: int, path: str) -> None:
    """A member larger than the free space is refused before a byte of it is written."""
    store.ensure_dirs()
    stat = os.statvfs(store.blobs.blobs_dir)
    free = stat.f_bavail * stat.f_frsize
    if size > free:
        raise InsufficientStorage(f"no space left on device: {path} is {size} bytes, {free} are free")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refused(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _refused(f"{what} is not a JSON object")
    return obj


def _manifest_descriptor(index_bytes: bytes) -> tuple[str, int, str | None]:
    """The one manifest index.json names: digest, size and its ref.name annotation."""
    index = _json_object(index_bytes, "index.json")
    if index.get("schemaVersion") != 2:
        raise _refused("index.json: schemaVersion is not 2")
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise _refused("index.json names no manifest")
    if len(manifests) > 1:
        raise _refused(f"index.json names {len(manifests)} manifests; an import takes one model")
    descriptor = manifests[0]
    if not isinstance(descriptor, dict):
        raise _refused("index.json: the manifest descriptor is not an object")
    try:
        digest = parse_digest(descriptor.get("digest"))
    except BadRequest:
        raise _refused("index.json: the manifest's digest is not sha256:<64 hex>") from None
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_MANIFEST_BYTES:
        raise _refused("index.json: the manifest's size is missing or out of range")
    annotations = descriptor.get("annotations")
    ref = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return digest, size, ref if isinstance(ref, str) else None


def _learn_manifest(received: _Received, data: bytes) -> None:
    """Parse the manifest, and check the blobs that came before it against it."""
    assert received.manifest_digest is not None
    _digest, size, _ref = _manifest_descriptor(received.files["index.json"])
    if len(data) != size:
        raise _refused(f"the manifest has {len(data)} bytes, index.json says {size}")
    try:
        manifest = Manifest.from_bytes(data)
    except BadRequest as exc:
        raise _refused(str(exc)) from None
    received.manifest_bytes, received.manifest = data, manifest
    received.expected = {layer.digest: layer.size for layer in (manifest.config, *manifest.layers)}
    for digest, writer in received.blobs.items():
        if digest not in received.expected:
            raise _refused(f"blob {digest} is not part of the model")
        if writer.size != received.expected[digest]:
            raise _refused(f"blob {digest} has {writer.size} bytes, the manifest says "
                           f"{received.expected[digest]}")


def _read_archive(source: _Source, store: Store, received: _Received) -> None:
    tar = _next_header(lambda: tarfile.open(fileobj=source, mode="r|"), source)  # type: ignore[call-overload]
    while (member := _next_header(tar.next, source)) is not None:
        path = _check_member(member, received)
        try:
            _read_member(tar, member, path, store, received)
        except tarfile.TarError:  # tarfile's "unexpected end of data"
            raise _refused(f"the archive ends inside {path!r}") from None


def _next_header(read: Callable[[], Any], source: _Source) -> Any:
    """Run a tarfile call that reads headers, within the header budget, its failures made refusals."""
    source.header_budget = MAX_HEADER_BYTES
    try:
        return read()
    except tarfile.TarError as exc:
        raise _refused(f"not a tar archive ({exc})") from None
    except (UnicodeError, ValueError, EOFError) as exc:
        raise _refused(f"a member's tar header is malformed ({exc})") from None
    finally:
        source.header_budget = None


def _complete(received: _Received, store: Store) -> tuple[Manifest, bytes, str | None]:
    """The manifest, once everything the archive must hold is there (checked after its end)."""
    layout = received.files.get("oci-layout")
    if layout is None:
        raise _refused("no oci-layout file (not an OCI image layout)")
    if not isinstance(_json_object(layout, "oci-layout").get("imageLayoutVersion"), str):
        raise _refused("oci-layout has no imageLayoutVersion")
    if "index.json" not in received.files:
        raise _refused("no index.json")
    digest, _size, ref = _manifest_descriptor(received.files["index.json"])
    if received.manifest is None or received.manifest_bytes is None:
        writer = received.blobs.pop(digest, None)
        if writer is None:
            raise _refused(f"the manifest {digest} that index.json names is not in the archive")
        if writer.size > MAX_MANIFEST_BYTES:
            writer.abort()
            raise _refused(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        writer.flush()
        with open(writer.temp_path, "rb") as f:
            data = f.read()
        writer.abort()
        _learn_manifest(received, data)
    assert received.manifest is not None and received.manifest_bytes is not None
    for layer in (received.manifest.config, *received.manifest.layers):
        if layer.digest not in received.blobs:
            raise _refused(f"the manifest references blob {layer.digest}, which the archive does not hold")
    return received.manifest, received.manifest_bytes, ref


def _target_name(name: Name | None, ref: str | None) -> Name:
    if name is not None:
        return name
    if not ref:
        raise BadRequest("the archive does not name its model: give a name to import it as")
    try:
        return parse_name(ref)
    except InvalidName:
        raise BadRequest(f"the archive names its model {ref[:200]!r}, which is not a valid model name: "
                         "give a name to import it as") from None


def _publish(store: Store, name: Name, manifest: Manifest, data: bytes, received: _Received,
             prune: bool) -> None:
    """Move the blobs into place and write the manifest, last; on failure remove what was added."""
    previous = store.digests_of(name)
    created: set[str] = set()
    with store.lock:
        try:
            for digest in manifest.all_digests():
                writer = received.blobs.pop(digest)
                _digest, new = writer.commit()
                if new:
                    created.add(digest)
            store.write_manifest(name, manifest, data)
        except BaseException:
            store.remove_unused(created)
            raise
    if prune:
        store.remove_unused(previous - manifest.all_digests())


def import_archive(store: Store, read_chunk: Callable[[], bytes], name: Name | None = None,
                   prune: bool = True) -> Name:
    """Import the OCI archive that ``read_chunk`` returns piece by piece (``b""`` at its end) as
    ``name`` (by default the name the archive gives); return the name it was stored as.

    Blocking: run it in a worker thread.  Any refusal is a BadRequest naming the reason (a full disk
    InsufficientStorage), and leaves the store as it was.
    """
    received = _Received()
    try:
        _read_archive(_Source(read_chunk), store, received)
        manifest, data, ref = _complete(received, store)
        target = _target_name(name, ref)
        _publish(store, target, manifest, data, received, prune)
        return target
    finally:
        received.close()
