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

import httpx

from appliance.api import client as api
from appliance.api.client import Client, ConnectError

CHUNK = 1 << 20


def _write_to(stream: BinaryIO, response: httpx.Response) -> int:
    written = 0
    for data in response.iter_bytes(CHUNK):
        stream.write(data)
        written += len(data)
    return written


def _export_into(client: Client, name: str, stream: BinaryIO) -> int:
    try:
        # The client's own connection (OLLAMA_HOST, proxy rules, headers); its helpers stream JSON only.
        with client._http.stream("GET", "/api/export", params={"model": name}) as response:
            api._raise_for(response)
            return _write_to(stream, response)
    except httpx.ConnectError as exc:
        raise ConnectError(str(exc)) from exc


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
    params = {"model": name} if name else {}
    with contextlib.ExitStack() as stack:
        headers = {"Content-Type": "application/x-tar"}
        if path == "-":
            stream: BinaryIO = sys.stdin.buffer
        else:
            try:
                stream = stack.enter_context(open(path, "rb"))
            except OSError as exc:
                sys.stderr.write(f"Error: cannot read {path}: {exc.strerror or exc}\n")
                return 1
            headers["Content-Length"] = str(os.fstat(stream.fileno()).st_size)
        client = stack.enter_context(Client())
        reply = client._request("POST", "/api/import", params=params, content=_file_chunks(stream),
                                headers=headers)
    sys.stdout.write(f"imported {reply.json().get('model', name or '')}\n")
    return 0
