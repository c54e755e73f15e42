"""``ollama export`` and ``ollama import``: a model to and from an OCI image layout tarball, offline.

Both go through the server (``GET /api/export``, ``POST /api/import``; see
:mod:`appliance.server.archive` for why), streaming: neither holds a model in memory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from appliance.api.client import Client

CHUNK = 1 << 20


def _export_into(client: Client, name: str, stream: BinaryIO) -> int:
    written = 0
    for data in client.export_archive(name, CHUNK):
        stream.write(data)
        written += len(data)
    return written


def run_export(name: str, output: str) -> int:
    """Write ``name``'s archive to ``output`` (``-``: stdout); a file appears whole or not at all."""
    try:
        return _export(name, output)
    except OSError as exc:
        sys.stderr.write(f"Error: cannot write {output}: {exc.strerror or exc}\n")
        return 1


def _export(name: str, output: str) -> int:
    with Client() as client:
        if output == "-":
            _export_into(client, name, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return 0
        target = Path(output)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        try:
            with open(temp, "xb") as f:
                size = _export_into(client, name, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
    sys.stderr.write(f"exported {name} to {output} ({size} bytes)\n")
    return 0


def _file_chunks(stream: BinaryIO) -> Iterator[bytes]:
    while data := stream.read(CHUNK):
        yield data


def run_import(path: str, name: str | None = None) -> int:
    """Send the archive at ``path`` (``-``: stdin) to the server, to be stored as ``name`` (by default
    the name inside the archive)."""
    with contextlib.ExitStack() as stack:
        size = None
        if path == "-":
            stream: BinaryIO = sys.stdin.buffer
        else:
            try:
                stream = stack.enter_context(open(path, "rb"))
            except OSError as exc:
                sys.stderr.write(f"Error: cannot read {path}: {exc.strerror or exc}\n")
                return 1
            size = os.fstat(stream.fileno()).st_size
        client = stack.enter_context(Client())
        reply = client.import_archive(_file_chunks(stream), name, size)
    sys.stdout.write(f"imported {reply.get('model', name or '')}\n")
    return 0
