"""Model names too long to be a path in the store, sent to a real server on every route that takes one.

Reproduces failure #9: a host part over 255 characters passed the name rules (Ollama allows 350), became
a folder name under ``manifests/`` and came back as HTTP 500 ``[Errno 36] File name too long:
'<models>/manifests/...'``, the server's models path included.  Each answer must be a 4xx in Ollama's
``{"error": "..."}`` shape that names neither the models folder nor the server's home.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx

from tests.conftest import Server
from tests.fixtures.tiny_gguf import write_tiny_llama

BASE = "tiny:base"

LONG_NAMES = [
    "h" * 256 + "/library/m:latest",  # one byte over what a file name may hold
    "h" * 350 + "/me/m:t",  # Ollama's own limit for a host
    ("a" * 63 + ".") * 4 + "com/library/m",  # a DNS-shaped host of 259 characters
    "http://" + "h" * 300 + ":5000/me/m:t",
]


def requests_for(name: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, JSON body) for every route that takes a model name, with ``name`` in each slot."""
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": False}
    return [
        ("POST", "/api/show", {"model": name}),
        ("POST", "/api/pull", {"model": name, "insecure": True}),
        ("POST", "/api/pull", {"model": name, "insecure": True, "stream": False}),
        ("POST", "/api/push", {"model": name, "insecure": True, "stream": False}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/api/copy", {"source": name, "destination": "copy:new"}),
        ("POST", "/api/copy", {"source": BASE, "destination": name}),
        ("POST", "/api/create", {"model": name, "from": BASE}),
        ("POST", "/api/create", {"model": name, "from": BASE, "stream": False}),
        ("POST", "/api/create", {"model": "created:new", "from": name, "stream": False}),
        ("POST", "/api/chat", {"model": name, **chat}),
        ("POST", "/api/generate", {"model": name, "prompt": "hi", "stream": False}),
    ]


def create_base(server: Server, http: httpx.Client) -> None:
    gguf = write_tiny_llama(server.home / "tiny.gguf").read_bytes()
    digest = "sha256:" + hashlib.sha256(gguf).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=gguf).status_code in (200, 201)
    created = http.post("/api/create", json={"model": BASE, "files": {"tiny.gguf": digest}, "stream": False})
    assert created.status_code == 200, created.text


def problem(server: Server, response: httpx.Response) -> str | None:
    """What is wrong with the answer to a name the store cannot hold, or None."""
    if str(server.home) in response.text or "Errno" in response.text:
        return f"leaks a path or an OS error: {response.text[:300]}"
    if not 400 <= response.status_code < 500:
        return f"status {response.status_code}: {response.text[:300]}"
    if not response.headers.get("content-type", "").startswith("application/json"):
        return f"content type {response.headers.get('content-type')!r}"
    doc = json.loads(response.content)
    if not (isinstance(doc, dict) and list(doc) == ["error"] and isinstance(doc["error"], str) and doc["error"]):
        return f"not Ollama's error shape: {doc!r}"
    return None


def test_names_too_long_for_the_store_are_refused_without_a_path(make_server) -> None:
    server = make_server()
    failures = []
    with server.http(timeout=60) as http:
        create_base(server, http)
        for name in LONG_NAMES:
            for method, path, body in requests_for(name):
                response = http.request(method, path, json=body)
                wrong = problem(server, response)
                if wrong:
                    failures.append(f"{method} {path} {json.dumps(body)[:60]}...: {wrong}")
        assert http.get("/").status_code == 200
        listed = [m["name"] for m in http.get("/api/tags").json()["models"]]
    assert not failures, "\n".join(failures)
    assert listed == [BASE]
