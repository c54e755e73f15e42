"""The app's middleware in-process: Host-header check, CORS, error shapes, body cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import envconfig
from appliance.server.app import create_app


def _app(tmp_path: Path, **env: str):
    cfg = envconfig.Config.from_env({"HOME": str(tmp_path), "OLLAMA_MODELS": str(tmp_path / "models"), **env})
    return create_app(cfg)


@pytest.fixture
async def client(tmp_path):
    app = _app(tmp_path, OLLAMA_MAX_BODY_BYTES="1024")
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def test_root_and_version(client):
    r = await client.get("/")
    assert r.status_code == 200 and await r.get_data(as_text=True) == "Ollama is running"
    assert (await client.head("/")).status_code == 200
    body = await (await client.get("/api/version")).get_json()
    assert body["version"].count(".") == 2


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:11434", "1.2.3.4.nip.io"])
async def test_foreign_host_header_is_refused_on_loopback(client, host):
    r = await client.get("/api/version", headers={"Host": host})
    assert r.status_code == 403 and (await r.get_json()) == {"error": "host not allowed"}


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:11434", "[::1]:11434", "app.localhost"])
async def test_local_host_headers_pass(client, host):
    assert (await client.get("/api/version", headers={"Host": host})).status_code == 200


async def test_cors(client):
    ok = await client.get("/api/version", headers={"Origin": "http://localhost:3000"})
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    bad = await client.get("/api/version", headers={"Origin": "http://evil.example.com"})
    assert bad.status_code == 403
    pre = await client.options("/api/chat", headers={"Origin": "http://127.0.0.1:8080",
                                                     "Access-Control-Request-Method": "POST",
                                                     "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 204 and "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in pre.headers["Access-Control-Allow-Headers"]


async def test_cors_headers_only_for_allowed_origins(client):
    """Regression (issue 11, item 11): a refused origin got its 403 with an Allow-Origin echoing it, and
    a preflight echoed whatever request headers it asked for."""
    for method in (client.get, client.options):
        bad = await method("/api/version", headers={"Origin": "http://evil.example.com",
                                                   "Access-Control-Request-Method": "POST"})
        assert bad.status_code == 403 and (await bad.get_json()) == {"error": "origin not allowed"}
        assert not [k for k in bad.headers.keys() if k.lower().startswith("access-control-")]
    pre = await client.options("/v1/chat/completions", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-evil-header, authorization, x-stainless-os"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os", "x-stainless-retry-count", "x-api-key",
            "anthropic-version"} <= allowed
    assert "x-evil-header" not in allowed
    assert "Origin" in pre.headers["Vary"]


async def test_extra_origins_from_env(tmp_path):
    app = _app(tmp_path, OLLAMA_ORIGINS="https://webui.example.org")
    async with app.test_app() as test_app:
        r = await test_app.test_client().get("/api/tags", headers={"Origin": "https://webui.example.org"})
        assert r.status_code == 200


async def test_errors_have_ollama_shape(client):
    r = await client.get("/api/nope")
    assert r.status_code == 404 and (await r.get_json()) == {"error": "404 page not found"}
    r = await client.post("/api/show", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "invalid JSON" in (await r.get_json())["error"]
    r = await client.post("/api/show", data="x" * 2000)
    assert r.status_code == 413 and "larger than 1024 bytes" in (await r.get_json())["error"]
    r = await client.get("/api/show")
    assert r.status_code == 405 and "error" in (await r.get_json())


def test_unexpected_errors_never_show_server_paths():
    from appliance.errors import BadRequest, public_message

    err = PermissionError(13, "Permission denied", "/usr/share/ollama/.ollama/models/blobs/sha256-abc")
    assert public_message(err) == "internal error: Permission denied"
    assert "/usr/share" not in public_message(FileNotFoundError(2, "No such file", "/srv/models/x"))
    assert public_message(BadRequest("model is required")) == "model is required"
    assert public_message(ValueError("boom")) == "internal error: boom"
