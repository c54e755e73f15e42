"""The readiness check and the read-only guard, in-process: every route that changes the store is
known, and on a read-only store each one is a 403 in Ollama's shape before its body is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import envconfig
from appliance.server.app import create_app
from appliance.server.replicas import WRITE_ENDPOINTS

#: Non-GET routes that leave the store alone (inference, push, request cancel, cloud stubs).
READING_ENDPOINTS = {
    "models.show", "native.generate", "native.chat", "native.embed", "native.embeddings_legacy",
    "openai.chat_completions", "openai.completions", "openai.embeddings", "openai.create_response",
    "anthropic.messages", "anthropic.count_tokens",
    "transfer.push", "requests_control.cancel_request",
    "cloud.whoami", "cloud.signout", "cloud.web_search", "cloud.web_fetch",
}

#: One request per write route, each with a body the route would otherwise accept.
WRITES = [
    ("POST", "/api/create", {"model": "new", "from": "base"}),
    ("POST", "/api/copy", {"source": "base", "destination": "other"}),
    ("DELETE", "/api/delete", {"model": "base"}),
    ("POST", "/api/pull", {"model": "base", "stream": False}),
    ("POST", "/api/blobs/sha256:" + "0" * 64, None),
    ("POST", "/api/import?model=imported", None),
]


def _app(tmp_path: Path, **env: str):
    cfg = envconfig.Config.from_env({"HOME": str(tmp_path), "OLLAMA_MODELS": str(tmp_path / "models"), **env})
    return create_app(cfg)


def test_every_route_that_is_not_a_read_is_a_known_writer(tmp_path):
    endpoints = {rule.endpoint for rule in _app(tmp_path).url_map.iter_rules()
                 if set(rule.methods or ()) - {"GET", "HEAD", "OPTIONS"}}
    assert WRITE_ENDPOINTS <= endpoints
    assert endpoints - WRITE_ENDPOINTS == READING_ENDPOINTS, "classify the new route in replicas.py"


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_a_read_only_store_refuses_each_change_with_403(tmp_path, method, path, body):
    app = _app(tmp_path, OLLAMA_MODELS_READONLY="1")
    async with app.test_app() as test_app:
        client = test_app.test_client()
        kwargs = {"json": body} if body is not None else {"data": b"x" * 1024}
        r = await client.open(path, method=method, **kwargs)
        assert r.status_code == 403
        error = (await r.get_json())["error"]
        assert "read-only" in error and "OLLAMA_MODELS_READONLY" in error
        assert str(tmp_path) not in error
        # Nothing was created, not even the folders a writable store makes at start-up.
        assert not (tmp_path / "models").exists()
        assert (await client.get("/api/tags")).status_code == 200


async def test_health_is_ready_on_a_read_only_store_and_says_so(tmp_path):
    (tmp_path / "models" / "blobs").mkdir(parents=True)
    (tmp_path / "models" / "manifests").mkdir()
    async with _app(tmp_path, OLLAMA_MODELS_READONLY="true").test_app() as test_app:
        client = test_app.test_client()
        r = await client.get("/api/health")
        assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
        body = await r.get_json()
        assert body["status"] == "ok" and "problems" not in body
        assert body["store"] == {"readable": True, "read_only": True}
        assert body["scheduler"]["running"] is True and body["scheduler"]["loaded"] == 0
        assert (await client.head("/api/health")).status_code == 200  # the real server sends no body


async def test_health_is_503_when_the_store_cannot_be_read(tmp_path):
    # Read-only and never created: the server starts and serves nothing, and says it is not ready.
    async with _app(tmp_path, OLLAMA_MODELS_READONLY="1").test_app() as test_app:
        r = await test_app.test_client().get("/api/health")
        assert r.status_code == 503
        body = await r.get_json()
        assert body["status"] == "unavailable"
        assert body["problems"] == ["the models folder cannot be read"]


async def test_health_on_a_writable_store(tmp_path):
    async with _app(tmp_path).test_app() as test_app:
        body = await (await test_app.test_client().get("/api/health")).get_json()
        assert body["status"] == "ok" and body["store"] == {"readable": True, "read_only": False}


async def test_health_answers_the_host_check_like_every_route(tmp_path):
    async with _app(tmp_path).test_app() as test_app:
        r = await test_app.test_client().get("/api/health", headers={"Host": "evil.example.com"})
        assert r.status_code == 403 and "error" in await r.get_json()


async def test_health_needs_no_api_key_where_every_other_route_does(tmp_path):
    async with _app(tmp_path, OLLAMA_API_KEYS="a-key-long-enough-to-pass-0123").test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/api/health")).status_code == 200
        assert (await client.head("/api/health")).status_code == 200
        assert (await client.get("/api/tags")).status_code == 401
