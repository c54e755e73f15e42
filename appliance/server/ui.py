"""The built-in chat page, served at ``GET /`` to browsers only.

Clients probe ``GET /`` and ``HEAD /`` for Ollama's ``Ollama is running`` (curl and the ollama
libraries send ``Accept: */*`` or ``application/json``, health checks send nothing), so the page
is chosen by content negotiation: only a request whose ``Accept`` prefers ``text/html`` over
``text/plain`` (a browser navigating) gets it; everything else, and every ``HEAD``, falls through
to the plain-text answer of :func:`appliance.server.models.root`.

The page's files (``ui/index.html``, ``ui/app.js``, ``ui/style.css``) are package data, read with
:mod:`importlib.resources` (so they are inside the wheel and the one-file binary) and joined into
one self-contained response: no other route serves them, so optional API keys need to leave only
``GET /`` open for the page to load, and nothing is fetched from anywhere, so it works offline.
The script and style sheet are inline and allowed by their hashes in the Content-Security-Policy,
which forbids every other script, style, frame and connection to another origin.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from quart import Response, request

#: The page's files, under appliance/server/ui/ (package data).
PAGE_FILES = ("index.html", "app.js", "style.css")
_STYLE_SLOT = "<!-- style.css -->"
_SCRIPT_SLOT = "<!-- app.js -->"


@dataclass(frozen=True)
class Page:
    """The assembled page and the Content-Security-Policy that allows exactly its inline parts."""

    html: bytes
    csp: str


def _read(name: str) -> str:
    return resources.files("appliance.server").joinpath("ui", name).read_text(encoding="utf-8")


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def page() -> Page:
    """The page, built once from the package data."""
    html, script, style = (_read(name) for name in PAGE_FILES)
    # Inline text ends at the first closing tag: a file that contained one would cut itself short.
    if "</script" in script.lower() or "</style" in style.lower():
        raise RuntimeError("ui/app.js or ui/style.css contains a closing tag and cannot be inlined")
    if html.count(_STYLE_SLOT) != 1 or html.count(_SCRIPT_SLOT) != 1:
        raise RuntimeError(f"ui/index.html must hold {_STYLE_SLOT} and {_SCRIPT_SLOT} once each")
    html = html.replace(_STYLE_SLOT, f"<style>{style}</style>")
    html = html.replace(_SCRIPT_SLOT, f"<script>{script}</script>")
    csp = "; ".join((
        "default-src 'self'",
        f"script-src {_sha256_source(script)}",
        f"style-src {_sha256_source(style)}",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ))
    return Page(html.encode(), csp)


def wants_page() -> bool:
    """A browser navigating to ``/``: ``Accept`` ranks text/html above text/plain (``*/*`` ties, so no)."""
    if request.method != "GET" or request.path != "/":
        return False
    return request.accept_mimetypes.best_match(["text/plain", "text/html"]) == "text/html"


async def serve_page_to_browsers() -> Response | None:
    """A ``before_request`` hook (after the Host/Origin guard): the page for browsers, else nothing."""
    if not wants_page():
        return None
    built = page()
    response = Response(built.html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = built.csp
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


def vary_on_accept(response: Response) -> Response:
    """``GET /`` answers differently by ``Accept``: caches must key on it."""
    if request.path == "/":
        response.vary.add("Accept")
    return response
