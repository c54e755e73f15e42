"""A small synchronous client of the appliance's HTTP API, used by the CLI.

It speaks exactly the public API (so it works against real Ollama too) and turns
``{"error": ...}`` answers into :class:`ResponseError` with the status code.
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from appliance import envconfig


class ResponseError(Exception):
    """The server answered with an error status (or an error line inside a stream)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ConnectError(Exception):
    """No server is listening where OLLAMA_HOST points."""


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    response.read()
    try:
        message = response.json().get("error") or response.text
    except ValueError:
        message = response.text or response.reason_phrase
    raise ResponseError(str(message), response.status_code)


class Client:
    def __init__(self, base_url: str | None = None, timeout: float | None = None,
                 api_key: str | None = None) -> None:
        cfg = envconfig.load()
        self.base_url = (base_url or cfg.host.url).rstrip("/")
        url = httpx.URL(self.base_url)
        local: dict[str, Any] = {}
        if url.scheme == "http" and envconfig.is_loopback_literal(url.host):
            # A local server over plain http: never through HTTP(S)_PROXY (Go's ProxyFromEnvironment,
            # which Ollama's CLI uses, skips loopback too), and no TLS, so no CA bundle to load (~50 ms).
            local = {"trust_env": False, "verify": False}
        headers = {"User-Agent": "ollama-appliance-cli"}
        key = cfg.api_key if api_key is None else api_key
        if key:  # OLLAMA_API_KEY, for a server with OLLAMA_API_KEYS set
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=10.0),
                                  headers=headers, **local)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ConnectError(str(exc)) from exc
        _raise_for(response)
        return response

    def stream(self, method: str, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST ``body`` and yield each NDJSON object; an ``error`` line raises ResponseError."""
        try:
            with self._http.stream(method, path, json=body) as response:
                _raise_for(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    obj = json.loads(line)
                    if isinstance(obj, dict) and obj.get("error"):
                        raise ResponseError(str(obj["error"]), response.status_code)
                    yield obj
        except httpx.ConnectError as exc:
            raise ConnectError(str(exc)) from exc

    def heartbeat(self) -> None:
        self._request("HEAD", "/")

    def version(self) -> str:
        return str(self._request("GET", "/api/version").json().get("version", ""))

    def list(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/tags").json().get("models") or [])

    def show(self, model: str, verbose: bool = False) -> dict[str, Any]:
        return dict(self._request("POST", "/api/show", json={"model": model, "verbose": verbose}).json())

    def copy(self, source: str, destination: str) -> None:
        self._request("POST", "/api/copy", json={"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        self._request("DELETE", "/api/delete", json={"model": model})

    def has_blob(self, digest: str) -> bool:
        try:
            self._request("HEAD", f"/api/blobs/{digest}")
        except ResponseError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def push_blob(self, digest: str, path: str | os.PathLike[str], chunk: int = 1 << 20) -> None:
        """Upload a local file as a blob, streaming it from disk."""
        def body() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while data := f.read(chunk):
                    yield data

        size = Path(path).stat().st_size
        self._request("POST", f"/api/blobs/{digest}", content=body(),
                      headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})

    def export_archive(self, model: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        """``model`` as an OCI image layout tarball (``GET /api/export``), streamed."""
        try:
            with self._http.stream("GET", "/api/export", params={"model": model}) as response:
                _raise_for(response)
                yield from response.iter_bytes(chunk)
        except httpx.ConnectError as exc:
            raise ConnectError(str(exc)) from exc

    def import_archive(self, chunks: Iterator[bytes], name: str | None = None,
                       size: int | None = None) -> dict[str, Any]:
        """Send a tarball (``POST /api/import``) to be stored as ``name`` (default: its own name)."""
        headers = {"Content-Type": "application/x-tar"}
        if size is not None:
            headers["Content-Length"] = str(size)
        params = {"model": name} if name else {}
        return self._request("POST", "/api/import", params=params, content=chunks,  # type: ignore[no-any-return]
                             headers=headers).json()

    def create(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self.stream("POST", "/api/create", body)

    def generate(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST /api/generate; a streamed reply, closed early by closing the iterator."""
        return self.stream("POST", "/api/generate", body)

    def chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST /api/chat; a streamed reply, closed early by closing the iterator."""
        return self.stream("POST", "/api/chat", body)

    def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /api/embed."""
        return dict(self._request("POST", "/api/embed", json=body).json())

    def ps(self) -> builtins.list[dict[str, Any]]:  # plain `list` here would mean Client.list
        return list(self._request("GET", "/api/ps").json().get("models") or [])

    def requests(self) -> builtins.list[dict[str, Any]]:
        """GET /api/requests: the generations queued and running (this server's, not Ollama's)."""
        return list(self._request("GET", "/api/requests").json().get("requests") or [])

    def cancel_request(self, request_id: str) -> dict[str, Any]:
        """DELETE /api/requests/<id>."""
        return dict(self._request("DELETE", f"/api/requests/{quote(request_id, safe='')}").json())
