"""Request bodies that push back: a handler that reads a body in a loop holds at most a few MiB of it.

Quart's ASGI connection appends every chunk the server receives to the request's body buffer without
waiting for the handler, so a blob upload arriving faster than it is hashed and written piles up in
memory (measured: +140 MiB of server RSS for a 1 GiB upload next to one busy process).  Here the
connection waits, once the handler has started iterating the body, until the buffer is below
:data:`HIGH_WATER_BYTES`; Hypercorn's bounded queue to the app then fills, Hypercorn stops reading the
socket, and TCP flow control slows the client down.

A body awaited whole (``await request.get_data()``) is never held back: it has to be buffered whole
anyway, and blocking there would deadlock.  :func:`install` puts both classes into an app.
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest

#: Bytes buffered ahead of a handler that reads the body in a loop.
HIGH_WATER_BYTES = 8 << 20


class StreamedBody(TrioBody):
    """A body whose producer waits for room while a consumer iterates it."""

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._iterated = False
        self._room = trio.Event()

    def __aiter__(self) -> StreamedBody:
        self._iterated = True
        return self

    async def __anext__(self) -> bytes:
        try:
            return await super().__anext__()
        finally:
            self._room.set()

    def _full(self) -> bool:
        return (self._iterated and len(self._data) >= HIGH_WATER_BYTES and self._must_raise is None
                and not self._complete.is_set())

    async def wait_for_room(self) -> None:
        """Return once the consumer has taken enough that more may be appended."""
        while self._full():
            self._room = trio.Event()
            await self._room.wait()


class StreamedRequest(TrioRequest):
    body_class = StreamedBody


class BackpressureConnection(TrioASGIHTTPConnection):
    """Quart-Trio's HTTP connection, waiting for room in the body before receiving more of it."""

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Any, receive: ASGIReceiveCallable
    ) -> None:
        body = request.body
        while True:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
                elif isinstance(body, StreamedBody):
                    await body.wait_for_room()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()


def install(app: Any) -> None:
    """Make ``app`` (a QuartTrio app, as a blueprint's setup state hands it over) build its requests
    with bodies that push back."""
    app.request_class = StreamedRequest
    app.asgi_http_class = BackpressureConnection
