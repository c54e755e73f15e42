"""The OpenAPI document: in sync with docs/openapi.yaml, served as is, and the pin of the route surface."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import schemathesis
import yaml

from appliance import OLLAMA_COMPAT_VERSION, envconfig
from appliance.server.app import create_app
from appliance.server.openapi import read_document

ROOT = Path(__file__).resolve().parents[2]

#: The /v1 routes (OpenAI and Anthropic styles, docs/openai-anthropic.md); the native ones are the
#: OpenAPI document's paths.  Adding or removing a route means changing one of the two.
V1_ROUTES = {
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{name}"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
}
HTTP_METHODS = {"get", "head", "post", "put", "patch", "delete"}


def spec() -> dict:
    return json.loads(read_document())


def test_packaged_json_is_the_yaml_document():
    source = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
    assert spec() == source, "appliance/assets/openapi.json is stale: run .venv/bin/python scripts/openapi-json.py"


def test_document_names_this_api_version():
    doc = spec()
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["version"] == OLLAMA_COMPAT_VERSION


def test_document_is_valid_openapi_3_1():
    schemathesis.openapi.from_dict(spec()).validate()  # raises naming the first violation


def test_every_reference_resolves():
    doc = spec()
    refs = re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(doc))
    assert refs
    for ref in refs:
        node = doc
        for part in ref.split("/"):
            assert part in node, f"unresolved $ref #/{ref}"
            node = node[part]


def _app_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.defaults:  # "/api/blobs/" is the empty-digest alias
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        explicit = set(rule.methods) - {"OPTIONS"}
        if "GET" in explicit:
            explicit.discard("HEAD")  # Werkzeug adds HEAD to every GET rule
        routes |= {(method, path) for method in explicit}
    return routes


def _spec_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec()["paths"].items()
            for method in item if method in HTTP_METHODS}


def test_route_surface_is_pinned(tmp_path):
    cfg = envconfig.Config.from_env({"HOME": str(tmp_path), "OLLAMA_MODELS": str(tmp_path / "models")})
    served = _app_routes(create_app(cfg))
    documented = _spec_routes() - {("HEAD", "/")}  # served by the GET / rule, like every HEAD of a GET
    assert {r for r in served if not r[1].startswith("/v1/")} == documented
    assert {r for r in served if r[1].startswith("/v1/")} == V1_ROUTES


@pytest.fixture
async def client(tmp_path):
    cfg = envconfig.Config.from_env({"HOME": str(tmp_path), "OLLAMA_MODELS": str(tmp_path / "models")})
    async with create_app(cfg).test_app() as test_app:
        yield test_app.test_client()


async def test_served_as_json(client):
    for _ in range(2):  # the second answer comes from the cache
        r = await client.get("/api/openapi.json")
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
        assert await r.get_data() == read_document()
    assert (await client.post("/api/openapi.json")).status_code == 405
