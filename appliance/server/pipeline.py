"""What happens to every HTTP request around the app: an id, a log line, metrics.

:class:`RequestPipeline` wraps the app's ASGI callable.  Each request gets an id (the client's own
``X-Request-Id`` when it is a short token of safe characters, else 12 random hex digits), kept in
the ASGI scope for the app (request control lists generations by it) and returned in the
response's ``X-Request-Id`` header.  When the response body has been sent (a stream included), or
the client went away, the request is counted in the metrics by route template and status, and
logged with its id, status and duration.  API keys are checked inside the app (a ``before_request``
hook in :mod:`appliance.server.auth`), after the Host/Origin guard, so that their 401 carries CORS
headers like every other answer.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

from hypercorn.typing import ASGIFramework
from quart import request

from appliance.server.metrics import Metrics
from appliance.server.requests_control import REQUEST_ID_KEY

log = logging.getLogger("appliance.server.requests")

HEADER = b"x-request-id"
#: A client-sent id is honoured when it is 1-64 characters of these (nothing a log or header could
#: be confused by).
_SANE_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: Where the app leaves the matched rule's template for the metrics' route label.
ROUTE_KEY = "appliance.route"


def new_request_id() -> str:
    return secrets.token_hex(6)


def _client_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == HEADER:
            return value.decode("ascii") if _SANE_ID.fullmatch(value) else None
    return None


async def note_route() -> None:
    """A ``before_request`` hook, registered first: the route template, for the metrics' label."""
    if request.url_rule is not None:
        scope: dict[str, Any] = request.scope  # type: ignore[assignment]  # a TypedDict, extensible
        scope[ROUTE_KEY] = request.url_rule.rule


class RequestPipeline:
    """The ASGI wrapper described in the module docstring."""

    def __init__(self, app: ASGIFramework, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[REQUEST_ID_KEY] = _client_id(scope.get("headers") or []) or new_request_id()
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers") or () if k.lower() != HEADER]
                headers.append((HEADER, str(scope[REQUEST_ID_KEY]).encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # 499 (nginx's word): the client went away before an answer started.
            self._done(scope, status or 499, time.perf_counter() - started)

    def _done(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        method = str(scope.get("method", ""))
        self.metrics.observe_request(method, scope.get(ROUTE_KEY), status, seconds)
        client = scope.get("client") or ("", 0)
        path = str(scope.get("path", ""))
        if not path.isprintable():  # a log line must not be forged by a path with newlines in it
            path = repr(path)
        log.info("request %s: %s %s %d %.3fs client %s", scope[REQUEST_ID_KEY], method, path, status, seconds,
                 client[0])
