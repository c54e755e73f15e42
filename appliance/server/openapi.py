"""``GET /api/openapi.json``: the OpenAPI 3.1 description of the native API.

The document is written as docs/openapi.yaml and carried as JSON in the package
(``appliance/assets/openapi.json``, made by scripts/openapi-json.py), so the server needs no YAML
parser and parses nothing: it reads the bytes once, in a worker thread, and serves them as they are.
"""

from __future__ import annotations

from importlib import resources

import trio
from quart import Blueprint, Response, current_app

bp = Blueprint("openapi", __name__)

_CACHE_KEY = "appliance.openapi"


def read_document() -> bytes:
    """The JSON text of the OpenAPI document shipped in the package (blocking file I/O)."""
    return resources.files("appliance.assets").joinpath("openapi.json").read_bytes()


@bp.get("/api/openapi.json")
async def openapi_json() -> Response:
    document: bytes | None = current_app.extensions.get(_CACHE_KEY)
    if document is None:
        document = await trio.to_thread.run_sync(read_document)
        current_app.extensions[_CACHE_KEY] = document
    return Response(document, content_type="application/json")
