"""Client connections, bounded: how many may be open, and how slowly a client may send a request.

Hypercorn's own ``read_timeout`` applies to every read of a connection, including the long wait while a
generation streams back (the client has nothing to send then), so it would cut streaming replies off.
What a slow or hostile client must not do is different: hold a connection by trickling its request
headers (slowloris) or its body, or open connections without end.  So each connection here

* takes a place among OLLAMA_MAX_CONNECTIONS, or is answered ``503`` at once and closed;
* must send its request line and headers within OLLAMA_READ_TIMEOUT of their first byte;
* while it sends a body, must send some bytes at least every OLLAMA_READ_TIMEOUT;
* waits for nothing while the server answers (a reply may stream for as long as it takes), and an
  idle keep-alive connection is closed by Hypercorn after its ``keep_alive_timeout``.

Writes take a shorter way too (:meth:`BoundedTCPServer.protocol_send`): a streamed token is one
small write, and Hypercorn's way of making it costs three trips through trio's scheduler.

:func:`install` puts :class:`BoundedTCPServer` in place of Hypercorn's TCP server for the Trio worker.
"""

from __future__ import annotations

import math
import os
from typing import Any

import h11
import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer

_BUSY_BODY = b'{"error":"server busy: too many connections"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json; charset=utf-8\r\n"
         b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class BoundedTCPServer(TCPServer):
    """Hypercorn's TCP server with a connection cap and request-read deadlines (module docstring)."""

    limiter: trio.CapacityLimiter = trio.CapacityLimiter(512)
    read_timeout_s: float = 60.0

    async def run(self) -> None:
        try:
            self.limiter.acquire_on_behalf_of_nowait(self)
        except trio.WouldBlock:
            await self._refuse()
            return
        try:
            await super().run()
        finally:
            self.limiter.release_on_behalf_of(self)

    async def _refuse(self) -> None:
        with trio.move_on_after(1):
            try:
                await self.stream.send_all(_BUSY)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await self.stream.aclose()

    async def protocol_send(self, event: Event) -> None:
        """Hypercorn's, but bytes go straight to the socket while no other write is under way.

        Hypercorn takes a lock, opens a shielded cancel scope and lets trio checkpoint for every write,
        three trips through trio's scheduler for each streamed token.  Going around them took the
        server's CPU per streamed token from 254 to 207 µs with 8 clients streaming (bench/RESULTS.md).
        When the lock is free and the kernel takes the whole chunk (a socket buffer holds many tokens),
        one non-blocking write does the same.  Anything else goes Hypercorn's way: a full buffer, a
        closed connection (it reports ``Closed``), a write already waiting.  The rest of a chunk the
        kernel took in part follows at once, shielded as Hypercorn shields its writes, so a cancel can
        never leave half a chunk on the wire; nothing checkpoints between the two, so no other write
        can come between them.
        """
        plain = isinstance(self.stream, trio.SocketStream)  # not TLS
        if type(event) is RawData and plain and not self.send_lock.locked():
            data = event.data
            try:
                sent = os.write(self.stream.socket.fileno(), data)
            except OSError:  # full (BlockingIOError), reset, or closed (fd -1): Hypercorn's way says which
                sent = 0
            if sent == len(data):
                return
            if sent:
                with trio.CancelScope(shield=True):
                    await super().protocol_send(RawData(data=data[sent:]))
                return
        await super().protocol_send(event)

    def _their_state(self) -> Any:
        connection = getattr(getattr(self.protocol, "protocol", None), "connection", None)
        return getattr(connection, "their_state", None)

    async def _read_data(self) -> None:
        headers_deadline = math.inf
        while True:
            state = self._their_state()
            if state is h11.SEND_BODY:
                deadline = trio.current_time() + self.read_timeout_s
            elif state is h11.IDLE:
                deadline = headers_deadline  # idle between requests: Hypercorn's keep-alive timer
            else:
                deadline = math.inf  # the request is in; the reply may take as long as it takes
            try:
                with trio.fail_at(deadline):
                    data = await self.stream.receive_some(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            except trio.TooSlowError:
                # Close now: the keep-alive timer would otherwise hold the connection open for its
                # whole period after this loop ends.
                await self.idle_task.stop()
                await self.stream.aclose()
                break
            await self.protocol.handle(RawData(bytes(data)))
            if self._their_state() is not h11.IDLE:
                headers_deadline = math.inf
            elif data and headers_deadline == math.inf:  # part of a request's head: the clock starts
                headers_deadline = trio.current_time() + self.read_timeout_s
            if data == b"":
                break
        await self.protocol.handle(Closed())


def install(max_connections: int, read_timeout_s: float) -> None:
    """Serve every connection of Hypercorn's Trio worker through :class:`BoundedTCPServer`."""
    BoundedTCPServer.limiter = trio.CapacityLimiter(max_connections)
    BoundedTCPServer.read_timeout_s = read_timeout_s
    hypercorn_run.TCPServer = BoundedTCPServer  # type: ignore[misc]
