"""Moving blobs between the store and a registry: resumable ranged downloads and chunked uploads.

Downloads keep Ollama's on-disk state (:mod:`appliance.store.partial`), so either program resumes
the other's partial pulls.  A blob over ``min_part_bytes`` is split into ranged parts fetched in
parallel (at most ``max_streams`` connections per pull, handed out in part order).  Part state is
saved about once a second, after an fdatasync, and when a transfer stops, so a killed server loses
at most a second of data.  A part that errs, stalls or gets a 5xx is retried with exponential
backoff from where it stopped.  The sha256 is computed while the bytes arrive: the contiguous prefix
is hashed in memory as it is written, later parts are read back once the prefix reaches them, so at
the end only the digest comparison is left.  A blob whose bytes do not match is deleted with its
state; a matching one is fsynced and renamed into place.

Concurrent pulls of one blob in this process share one download (:class:`Downloads`): the first
holds the blob's lock and downloads, the others show its progress while waiting for the lock; if
the downloading pull is cancelled (its client went away) a waiter takes over from the saved state.
Another process downloading the same blob into the same folder is kept out by an ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpcore
import httpx
import trio

from appliance.errors import ApplianceError, DigestMismatch, InsufficientStorage
from appliance.store.blobs import parse_digest, translate_disk_full
from appliance.store.distribution import (
    BLOB_READ_BYTES,
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
    TransferSettings,
)
from appliance.store.local import Store
from appliance.store.partial import Part, PartialFiles, PrefixHasher, contiguous_end, plan_parts

log = logging.getLogger(__name__)

#: Bytes gathered in memory before one write (and one thread hop).
WRITE_BYTES = 4 << 20
#: A flush happens at least this often, so progress and saved state keep moving on slow links.
FLUSH_INTERVAL_S = 0.25
SAVE_INTERVAL_S = 1.0
HASH_INTERVAL_S = 0.25
#: An attempt that moved at least this much does not count against the part's attempts.
PROGRESS_RESETS_ATTEMPTS = 1 << 20
EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()

Report = Callable[[int, int], None]  # (total, completed)


class _RangesUnsupported(Exception):
    """The registry answered a ranged GET with the whole blob."""


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[trio.Nursery]:
    """A nursery that raises its first real error itself, not wrapped in an ExceptionGroup."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaf = _first_error(group)
        if leaf is None:
            raise
        raise leaf from None


def _first_error(group: BaseExceptionGroup) -> BaseException | None:
    for exc in group.exceptions:
        found = _first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if found is not None and not isinstance(found, trio.Cancelled):
            return found
    return None


# --- one download ----------------------------------------------------------------------------------


@dataclass
class _Shared:
    """One blob's download, as every pull waiting for it sees it."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    total: int = 0
    completed: int = 0
    users: int = 0
    error: BaseException | None = None


class Downloads:
    """The downloads in flight in this process, keyed by blob path."""

    def __init__(self) -> None:
        self._active: dict[Path, _Shared] = {}

    def active(self) -> int:
        return len(self._active)

    async def fetch(self, client: RegistryClient, store: Store, digest: str, size: int,
                    report: Report) -> None:
        """Make blob ``digest`` (``size`` bytes) present and verified, reporting progress meanwhile."""
        final = store.blobs.path(digest)
        shared = self._active.setdefault(final, _Shared(total=size))
        shared.users += 1
        try:
            async with task_group() as nursery:
                nursery.start_soon(_report_every, shared, client.settings.progress_interval_s, report)
                await self._fetch(client, store, digest, size, final, shared)
                nursery.cancel_scope.cancel()
            report(size, size)
        finally:
            shared.users -= 1
            if shared.users == 0:
                del self._active[final]

    async def _fetch(self, client: RegistryClient, store: Store, digest: str, size: int, final: Path,
                     shared: _Shared) -> None:
        async with shared.lock:
            if shared.error is not None:
                raise shared.error
            present = await trio.to_thread.run_sync(_size_or_none, final)
            if present is not None:
                if present != size:
                    raise RegistryError(f"blob {digest} is {present} bytes here, the manifest says {size}")
                shared.completed = size
                return
            try:
                await download_blob(client, store, digest, size, shared)
            except (ApplianceError, OSError) as exc:
                shared.error = exc
                raise


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


async def _report_every(shared: _Shared, interval: float, report: Report) -> None:
    last = -1
    while True:
        if shared.completed != last:
            last = shared.completed
            report(shared.total, last)
        await trio.sleep(interval)


async def download_blob(client: RegistryClient, store: Store, digest: str, size: int,
                        shared: _Shared) -> None:
    """Download, verify and rename one blob into place, resuming saved state (see module doc)."""
    digest = parse_digest(digest)
    final = store.blobs.path(digest)
    if size == 0:
        if digest != EMPTY_DIGEST:
            raise DigestMismatch(f"digest mismatch, file must be downloaded again: want {digest}, "
                                 f"got {EMPTY_DIGEST}")
        await trio.to_thread.run_sync(store.blobs.put_bytes, b"", digest)
        return
    files = PartialFiles(final)
    # A full disk fails the pull with a 507 and keeps the partial (and its saved state) to resume.
    with translate_disk_full(final.parent):
        await _download_into(client, files, digest, size, shared)


async def _download_into(client: RegistryClient, files: PartialFiles, digest: str, size: int,
                         shared: _Shared) -> None:
    fd, parts = await trio.to_thread.run_sync(_open_partial, files, size, client.settings)
    try:
        hasher = PrefixHasher(fd)
        try:
            await _download_parts(client, digest, files, parts, hasher, shared)
        except _RangesUnsupported:
            log.info("%s: the registry ignores ranges; downloading in one piece", digest[7:19])
            parts[:] = [Part(0, 0, size)]
            await trio.to_thread.run_sync(_reset_state, files, parts)
            hasher = PrefixHasher(fd)
            shared.completed = 0
            await _download_parts(client, digest, files, parts, hasher, shared)
        await trio.to_thread.run_sync(_commit, files, fd, hasher, digest, size)
    finally:
        os.close(fd)  # also releases the flock


def _open_partial(files: PartialFiles, size: int, settings: TransferSettings) -> tuple[int, list[Part]]:
    files.final.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(files.data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RegistryError(f"blob {files.final.name} is being downloaded by another process") from None
        parts = files.load(size)
        if parts is None:
            files.remove_state()
            parts = plan_parts(size, settings)
            os.ftruncate(fd, 0)
            for part in parts:
                files.save(part)
        else:
            log.info("resuming %s: %d of %d bytes already here", files.final.name,
                     sum(p.completed for p in parts), size)
        os.ftruncate(fd, size)
        return fd, parts
    except BaseException:
        os.close(fd)
        raise


def _reset_state(files: PartialFiles, parts: list[Part]) -> None:
    files.remove_state()
    for part in parts:
        files.save(part)


def _commit(files: PartialFiles, fd: int, hasher: PrefixHasher, digest: str, size: int) -> None:
    hasher.catch_up(size)
    got = hasher.digest()
    if hasher.hashed != size or got != digest:
        files.remove()
        raise DigestMismatch(f"digest mismatch, file must be downloaded again: want {digest}, got {got}")
    os.fsync(fd)
    os.replace(files.data, files.final)
    dir_fd = os.open(files.final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    files.remove_state()


async def _download_parts(client: RegistryClient, digest: str, files: PartialFiles, parts: list[Part],
                          hasher: PrefixHasher, shared: _Shared) -> None:
    shared.total = sum(p.size for p in parts)
    shared.completed = sum(p.completed for p in parts)
    if len(parts) > 1:
        log.info("downloading %s in %d parts of up to %d bytes", digest[7:19], len(parts), parts[0].size)
    try:
        async with task_group() as keeper:
            keeper.start_soon(_keep_state, files, parts, hasher)
            async with task_group() as workers:
                for part in parts:
                    if not part.done:
                        # Streams are handed out in part order, so the hashed prefix keeps up.
                        borrower = object()
                        await client.streams.acquire_on_behalf_of(borrower)
                        workers.start_soon(_download_part, client, digest, part, parts, hasher, shared,
                                           borrower)
            keeper.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_save_all, files, parts)


def _save_all(files: PartialFiles, parts: list[Part], fd: int | None = None) -> None:
    """Save every part's state; with ``fd``, only what an fdatasync has made durable first."""
    done = [part.completed for part in parts]
    if fd is not None:
        os.fdatasync(fd)  # also spreads the final fsync's work over the download
    with contextlib.suppress(FileNotFoundError):  # a mismatch may already have removed everything
        for part, completed in zip(parts, done, strict=True):
            files.save(Part(part.n, part.offset, part.size, completed))


async def _keep_state(files: PartialFiles, parts: list[Part], hasher: PrefixHasher) -> None:
    """Save part state about once a second; hash what the contiguous prefix has gained meanwhile."""
    saved, saved_at = [p.completed for p in parts], trio.current_time()
    while True:
        await trio.sleep(HASH_INTERVAL_S)
        now = [p.completed for p in parts]
        if now != saved and trio.current_time() - saved_at >= SAVE_INTERVAL_S:
            await trio.to_thread.run_sync(_save_all, files, parts, hasher.fd)
            saved, saved_at = now, trio.current_time()
        frontier = contiguous_end(parts)
        if frontier > hasher.hashed:
            await trio.to_thread.run_sync(hasher.catch_up, frontier)


async def _download_part(client: RegistryClient, digest: str, part: Part, parts: list[Part],
                         hasher: PrefixHasher, shared: _Shared, borrower: object) -> None:
    """Fetch one part, retrying from where it stopped; holds its stream (``borrower``) until done."""
    settings = client.settings
    attempt, last_error = 0, None
    try:
        while attempt < settings.max_attempts:
            before = part.completed
            try:
                await _fetch_range(client, digest, part, len(parts) == 1, hasher, shared)
                return
            except RegistryUnavailable as exc:
                last_error = exc
            moved = part.completed - before
            attempt = 0 if moved >= PROGRESS_RESETS_ATTEMPTS else attempt + 1
            if attempt >= settings.max_attempts:
                break
            delay = settings.backoff(attempt)
            log.info("%s part %d: %s; retrying in %.1fs", digest[7:19], part.n, last_error, delay)
            await trio.sleep(delay)
    finally:
        client.streams.release_on_behalf_of(borrower)
    raise RegistryUnavailable(f"pulling {digest[7:19]}: {last_error} (gave up after {settings.max_attempts} "
                              "attempts; pull again to resume)")


def _check_range(response: httpx.Response, part: Part, whole: bool) -> None:
    status = response.status_code
    if status == 200:
        if not (whole and part.start == 0):
            raise _RangesUnsupported
        return
    expected = f"bytes {part.start}-{part.end - 1}/"
    content_range = response.headers.get("content-range", "")
    if not content_range.startswith(expected):
        raise RegistryError(f"unexpected Content-Range {content_range[:80]!r}, asked for {expected}…")


async def _fetch_range(client: RegistryClient, digest: str, part: Part, whole: bool, hasher: PrefixHasher,
                       shared: _Shared) -> None:
    """One attempt at the rest of ``part``: the socket is read while earlier bytes are written."""
    async with client.open_blob(digest, part.start, part.end) as response:
        if response.status_code not in (200, 206):
            raise await client.fail(response, f"pulling {digest[7:19]}")
        if response.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
            raise RegistryError(f"pulling {digest[7:19]}: unexpected content encoding")
        _check_range(response, part, whole)
        send, receive = trio.open_memory_channel[list[bytes]](2)
        async with task_group() as nursery:
            nursery.start_soon(_write_queued, receive, hasher, part, shared)
            async with send:
                failure = await _receive_body(response, send, part.end - part.start, client.settings)
        if failure is not None:
            raise failure
    if not part.done:
        raise RegistryUnavailable(f"connection closed after {part.completed} of {part.size} bytes")


async def body_chunks(response: httpx.Response, stall_timeout_s: float) -> AsyncIterator[bytes]:
    """A blob body's bytes as they arrive, never past its Content-Length.

    After the first chunk, a plain HTTP/1.1 body with a Content-Length is read straight from the
    connection (httpcore's documented ``network_stream``): going through h11 copies every byte twice
    more, which costs about as much CPU as the sha256 (bench/bench_pull.py).  The response is left
    unfinished as far as httpcore knows, so closing it closes the connection instead of reusing it.
    """
    left = int(response.headers.get("content-length", "-1") or -1)
    stream = response.extensions.get("network_stream")
    direct = (left >= 0 and stream is not None and response.http_version == "HTTP/1.1"
              and "transfer-encoding" not in response.headers)
    chunks = cast(AsyncGenerator[bytes, None], response.aiter_raw())
    try:
        async for chunk in chunks:
            left -= len(chunk)
            yield chunk
            if direct:
                break
        while direct and stream is not None and left > 0:
            data = await stream.read(min(BLOB_READ_BYTES, left), timeout=stall_timeout_s)
            if not data:
                raise httpcore.ReadError("connection closed before the end of the body")
            left -= len(data)
            yield data
    finally:
        await chunks.aclose()


async def _receive_body(response: httpx.Response, send: trio.MemorySendChannel[list[bytes]], wanted: int,
                        settings: TransferSettings) -> RegistryUnavailable | None:
    """Queue up to ``wanted`` body bytes in write-sized batches; a network failure is returned, not raised,
    so that what arrived before it is still written."""
    batch: list[bytes] = []
    batched = queued = 0
    last = trio.current_time()
    failure = None
    try:
        async for chunk in body_chunks(response, settings.stall_timeout_s):
            room = wanted - queued - batched
            if len(chunk) > room:
                chunk = chunk[:room]
            if settings.on_received is not None:
                settings.on_received(len(chunk))
            batch.append(chunk)
            batched += len(chunk)
            if batched >= WRITE_BYTES or trio.current_time() - last >= FLUSH_INTERVAL_S:
                await send.send(batch)
                batch, queued, batched = [], queued + batched, 0
                last = trio.current_time()
            if queued + batched >= wanted:
                break
    except (httpx.TimeoutException, httpcore.TimeoutException) as exc:
        failure = RegistryUnavailable(f"stalled, no data for {settings.stall_timeout_s:g}s")
        failure.__cause__ = exc
    except (httpx.TransportError, httpcore.NetworkError, httpcore.ProtocolError) as exc:
        failure = RegistryUnavailable(f"connection failed: {exc or type(exc).__name__}")
        failure.__cause__ = exc
    if batch:
        await send.send(batch)
    return failure


async def _write_queued(receive: trio.MemoryReceiveChannel[list[bytes]], hasher: PrefixHasher, part: Part,
                        shared: _Shared) -> None:
    async with receive:
        async for batch in receive:
            await trio.to_thread.run_sync(hasher.write, batch, part.start)
            size = sum(map(len, batch))
            part.completed += size
            shared.completed += size


def check_free_space(store: Store, needed: int) -> None:
    """Refuse a pull that cannot fit (partials already on disk count as space already taken)."""
    store.blobs.blobs_dir.mkdir(parents=True, exist_ok=True)
    stat = os.statvfs(store.blobs.blobs_dir)
    free = stat.f_bavail * stat.f_frsize
    if needed > free:
        raise InsufficientStorage(f"not enough disk space: the pull needs {needed} more bytes, "
                                  f"{free} are free")


def bytes_still_needed(store: Store, blobs: dict[str, int]) -> int:
    needed = 0
    for digest, size in blobs.items():
        final = store.blobs.path(digest)
        if final.exists():
            continue
        parts = PartialFiles(final).load(size)
        needed += size - sum(p.completed for p in parts or ())  # the partial file is sparse
    return needed


# --- uploads ---------------------------------------------------------------------------------------


def _file_body(path: Path, offset: int, length: int, sent: Callable[[int], None]) -> \
        Callable[[], AsyncIterator[bytes]]:
    async def body() -> AsyncIterator[bytes]:
        async with await trio.open_file(path, "rb") as f:
            await f.seek(offset)
            remaining = length
            while remaining:
                data = await f.read(min(1 << 20, remaining))
                if not data:
                    raise RegistryError(f"{path.name} shrank while it was being uploaded")
                remaining -= len(data)
                sent(len(data))
                yield data

    return body


async def upload_blob(client: RegistryClient, store: Store, digest: str, size: int, mount_from: str | None,
                      report: Report) -> None:
    """Make the registry hold blob ``digest``: skip, mount, or upload it (retried with backoff)."""
    settings = client.settings
    report(size, 0)
    if await client.has_blob(digest):
        report(size, size)
        return
    attempt = 0
    while True:
        sent = 0

        def count(n: int) -> None:
            nonlocal sent
            sent += n
            report(size, min(sent, size))

        try:
            async with client.streams:
                await _upload_once(client, store, digest, size, mount_from, count)
            report(size, size)
            return
        except RegistryUnavailable as exc:
            attempt += 1
            report(size, 0)
            if attempt >= settings.max_attempts:
                message = f"pushing {digest[7:19]}: {exc} (gave up after {attempt} attempts)"
                raise RegistryUnavailable(message) from exc
            delay = settings.backoff(attempt - 1)
            log.info("pushing %s: %s; retrying in %.1fs", digest[7:19], exc, delay)
            await trio.sleep(delay)
            mount_from = None


async def _upload_once(client: RegistryClient, store: Store, digest: str, size: int, mount_from: str | None,
                       count: Callable[[int], None]) -> None:
    what = f"pushing {digest[7:19]}"
    url = httpx.URL(client.url("blobs", "uploads") + "/")
    if mount_from:
        url = url.copy_merge_params({"mount": digest, "from": mount_from})
    async with client.open("POST", str(url), headers={"Content-Length": "0"}) as response:
        if response.status_code == 201 and mount_from:
            log.info("%s: mounted from %s", what, mount_from)
            count(size)
            return
        if response.status_code != 202:
            raise await client.fail(response, what)
        location = await client.location(response, what)
    path = store.blobs.path(digest)
    octets = {"Content-Type": "application/octet-stream"}
    if size <= client.settings.upload_chunk_bytes:
        final_url = location.copy_merge_params({"digest": digest})
        headers = {**octets, "Content-Length": str(size)}
        async with client.open("PUT", str(final_url), headers=headers,
                               body=_file_body(path, 0, size, count)) as response:
            if response.status_code not in (201, 204):
                raise await client.fail(response, what)
        return
    offset = 0
    while offset < size:
        length = min(client.settings.upload_chunk_bytes, size - offset)
        headers = {**octets, "Content-Length": str(length),
                   "Content-Range": f"{offset}-{offset + length - 1}"}
        async with client.open("PATCH", str(location), headers=headers,
                               body=_file_body(path, offset, length, count)) as response:
            if response.status_code != 202:
                raise await client.fail(response, what)
            location = await client.location(response, what)
        offset += length
    final_url = location.copy_merge_params({"digest": digest})
    async with client.open("PUT", str(final_url), headers={**octets, "Content-Length": "0"}) as response:
        if response.status_code not in (201, 204):
            raise await client.fail(response, what)

