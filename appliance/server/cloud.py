"""Ollama's cloud and account features, answered as a server that has none of them.

Upstream Ollama forwards some requests to ollama.com: signing in and out, web search and fetch, and
models named ``NAME:cloud`` (or a tag ending in ``-cloud``) that run remotely. This server runs local
models only and never calls out, so each of these answers 403 in the words upstream uses when its
cloud is switched off (``ollama cloud is disabled: ...``, which its clients already recognise), with
the reason added, instead of a bare 404.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from appliance.errors import Forbidden
from appliance.server.requests import read_json

bp = Blueprint("cloud", __name__)

DISABLED = "ollama cloud is disabled"
REASON = "this server runs local models only and has no ollama.com account features"

#: POST routes whose body names a model that upstream would run (or pull, or build on) in its cloud,
#: and the body field that names it.
MODEL_FIELDS = {
    "/api/generate": ("model", "name"),
    "/api/chat": ("model", "name"),
    "/api/embed": ("model", "name"),
    "/api/embeddings": ("model", "name"),
    "/api/show": ("model", "name"),
    "/api/pull": ("model", "name"),
    "/api/create": ("from",),
    "/v1/chat/completions": ("model",),
    "/v1/completions": ("model",),
    "/v1/embeddings": ("model",),
    "/v1/responses": ("model",),
    "/v1/messages": ("model",),
}
MODEL_DETAILS_ROUTES = {"/api/show"}
MODEL_PATH_PREFIX = "/v1/models/"


class CloudUnavailable(Forbidden):
    """A cloud or account feature was asked for (403)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{DISABLED}: {what} ({REASON})")


def is_cloud_model(name: str) -> bool:
    """True for a name upstream sends to its cloud: tag ``cloud``, or a tag ending in ``-cloud``."""
    _, colon, tag = name.strip().rpartition(":")
    tag = tag.strip().lower()
    return bool(colon) and (tag == "cloud" or ("/" not in tag and tag.endswith("-cloud")))


async def refuse_cloud_models() -> None:
    """A ``before_request`` hook: a request naming a cloud model gets its 403 before any handler runs.

    The body is read as the handler would read it (read_json caches it, and a body that is not JSON
    gets the same 400 the handler would give).
    """
    if request.method == "GET" and request.path.startswith(MODEL_PATH_PREFIX):
        if is_cloud_model(request.path.removeprefix(MODEL_PATH_PREFIX)):
            raise CloudUnavailable("remote model details are unavailable")
        return
    fields = MODEL_FIELDS.get(request.path) if request.method == "POST" else None
    if fields is None:
        return
    body = await read_json()
    name = next((body[key] for key in fields if body.get(key)), None)
    if isinstance(name, str) and is_cloud_model(name):
        what = "remote model details are unavailable" if request.path in MODEL_DETAILS_ROUTES \
            else "remote model is unavailable"
        raise CloudUnavailable(what)


@bp.post("/api/me")
async def whoami() -> Response:
    raise CloudUnavailable("account details are unavailable")


@bp.post("/api/signout")
@bp.delete("/api/user/keys/<path:encoded_key>")
async def signout(encoded_key: str = "") -> Response:
    raise CloudUnavailable("there is no ollama.com account to sign out of")


@bp.post("/api/experimental/web_search")
async def web_search() -> Response:
    raise CloudUnavailable("web search is unavailable")


@bp.post("/api/experimental/web_fetch")
async def web_fetch() -> Response:
    raise CloudUnavailable("web fetch is unavailable")


@bp.get("/api/status")
async def status() -> dict[str, Any]:
    """Upstream's server status: here the cloud is always off, by how the server is built."""
    return {"cloud": {"disabled": True, "source": "config"}}
