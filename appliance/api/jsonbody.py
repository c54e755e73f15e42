"""Decoding JSON request bodies without stalling the event loop or growing the server.

``json.loads`` is C code that holds the GIL for as long as it runs, so a worker thread does not
keep the event loop responsive for a large body: 60 MB decode in 150-350 ms on these machines, and
60 MB of ``[{},{},…]`` becomes 1.6 GiB of Python objects that the allocator never hands back.  So:

* up to :data:`INLINE_BYTES`, decode in place (well under a millisecond);
* up to :data:`THREAD_BYTES`, and when a cheap upper bound on the number of values is small, decode in
  a worker thread (a few milliseconds of GIL at most);
* anything larger is decoded by a short-lived child process (``ollama json-decode``), which counts
  the values exactly, refuses more than :data:`MAX_VALUES`, and hands back a ``marshal`` image: for
  the large strings that make up real large bodies (images, long prompts) reading it back is little
  more than a copy, and a body that would have grown the server by gigabytes grows the child instead,
  whose memory goes back to the system when it exits.

JSON is read as Go reads it: ``NaN`` and ``Infinity`` are not JSON.
"""

from __future__ import annotations

import json
import marshal
import os
import sys
from typing import Any

from appliance.errors import BadRequest

INLINE_BYTES = 64 << 10
THREAD_BYTES = 1 << 20
#: Values (objects, arrays, strings, numbers, literals) a body may hold.
MAX_VALUES = 500_000
#: Bodies whose rough count is below this decode in a thread; beyond it the child counts exactly.
THREAD_MAX_VALUES = 50_000
#: Child decodes at once; more large bodies wait for one.
CHILD_DECODERS = 2
#: The address space a child decoder may use (a legitimate 64 MiB body needs a fraction of it).
CHILD_MEMORY_BYTES = 1 << 30

_CHUNK = 1 << 20


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(data: bytes | str) -> Any:
    """Strict ``json.loads``: BadRequest naming what is wrong (no NaN/Infinity, as in Go)."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"invalid request body: {exc}") from exc
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise BadRequest(f"invalid JSON in request body: {exc.msg} at {where}") from exc
    except RecursionError as exc:
        raise BadRequest("invalid JSON in request body: nested too deeply") from exc
    except ValueError as exc:  # NaN, or an integer past Python's 4300-digit conversion limit
        raise BadRequest(f"invalid JSON in request body: {exc}") from exc


def rough_values(data: bytes) -> int:
    """An upper bound on the values in ``data`` (commas and brackets, strings not told apart), counted
    a megabyte at a time so that a worker thread hands the GIL back between chunks."""
    total = 1
    for start in range(0, len(data), _CHUNK):
        chunk = data[start : start + _CHUNK]
        total += chunk.count(b",") + chunk.count(b"[") + chunk.count(b"{")
    return total


def count_values(obj: Any, limit: int) -> int:
    """Values in a decoded document, stopping as soon as there are more than ``limit``."""
    stack, n = [obj], 0
    while stack:
        value = stack.pop()
        n += 1
        if n > limit:
            return n
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return n


async def decode(data: bytes) -> Any:
    """``data`` decoded by the cheapest way that keeps the event loop free (see the module docstring)."""
    import trio

    if len(data) <= INLINE_BYTES:
        return loads(data)
    if len(data) <= THREAD_BYTES and await trio.to_thread.run_sync(rough_values, data) <= THREAD_MAX_VALUES:
        return await trio.to_thread.run_sync(loads, data)
    return await _decode_in_child(data)


_child_limiter: Any = None


async def _decode_in_child(data: bytes) -> Any:
    global _child_limiter

    import trio

    from appliance.store.create import self_command

    if _child_limiter is None:
        _child_limiter = trio.CapacityLimiter(CHILD_DECODERS)
    # The answer goes to an in-memory file, not a pipe: trio would join a pipe's chunks on the event
    # loop, one copy of the whole answer (~1 ms per MB here) during which nothing else is served.
    out_fd = os.memfd_create("json-decode", os.MFD_CLOEXEC)
    try:
        async with _child_limiter:
            done = await trio.run_process([*self_command(), "json-decode"], stdin=data, stdout=out_fd,
                                          capture_stderr=True, check=False)
        out = await trio.to_thread.run_sync(_read_all, out_fd)
    finally:
        os.close(out_fd)
    if done.returncode != 0 or out[:2] not in (b"OK", b"ER"):
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise BadRequest(f"invalid request body: the JSON decoder failed ({tail[0][:200]})")
    if out[:2] == b"ER":
        raise BadRequest(out[2:].decode("utf-8", "replace"))
    # Building each string holds the GIL for one copy of it: the one stall left (see README limits).
    return await trio.to_thread.run_sync(marshal.loads, memoryview(out)[2:])


def _read_all(fd: int) -> bytes:
    """The whole of a file by descriptor (os.read releases the GIL while it copies)."""
    size = os.fstat(fd).st_size
    parts, offset = [], 0
    while offset < size:
        part = os.pread(fd, size - offset, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def child_main() -> int:
    """``ollama json-decode``: JSON on stdin, ``OK`` + a marshal image or ``ER`` + a message on stdout."""
    import resource

    # The child exists to take the hit of a hostile body: cap it so that it cannot take the machine.
    resource.setrlimit(resource.RLIMIT_DATA, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    data = sys.stdin.buffer.read()
    try:
        obj = loads(data)
        if count_values(obj, MAX_VALUES) > MAX_VALUES:
            raise BadRequest(f"request body holds more than {MAX_VALUES} JSON values")
        out = b"OK" + marshal.dumps(obj)
    except BadRequest as exc:
        out = b"ER" + str(exc).encode()
    except MemoryError:
        out = b"ER" + f"request body holds more than {MAX_VALUES} JSON values".encode()
    except ValueError as exc:  # marshal's own depth limit
        out = b"ER" + f"invalid JSON in request body: {exc}".encode()
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    return 0
