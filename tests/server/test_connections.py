"""BoundedTCPServer.protocol_send's direct write, on a real loopback TCP connection: whatever way each
chunk takes (straight to the socket, or Hypercorn's way once the buffer is full or another write is
waiting), the peer reads every byte, in order, and a connection the peer dropped is reported."""

from __future__ import annotations

import socket

import pytest
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer

from appliance.server.connections import BoundedTCPServer


class Recorder:
    """Stands in for Hypercorn's protocol: what the server reports back to it."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def handle(self, event: Event) -> None:
        self.events.append(event)


async def connected_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    # A small send buffer fills soon: the writes then take Hypercorn's way as well.  (A writer whose
    # writes all go straight through never yields, so the reader cannot empty the buffers meanwhile.)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    await listeners[0].aclose()
    return server, client


def make_server(stream: trio.SocketStream) -> tuple[BoundedTCPServer, Recorder]:
    server = BoundedTCPServer(app=None, config=Config(), context=None, state=None,  # type: ignore[arg-type]
                              stream=stream)  # type: ignore[arg-type]
    recorder = Recorder()
    server.protocol = recorder  # type: ignore[assignment]
    return server, recorder


@pytest.fixture
def hypercorn_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The writes that went Hypercorn's way (their sizes); the rest went straight to the socket."""
    sizes: list[int] = []
    original = TCPServer.protocol_send

    async def counted(self: TCPServer, event: Event) -> None:
        if isinstance(event, RawData):
            sizes.append(len(event.data))
        await original(self, event)

    monkeypatch.setattr(TCPServer, "protocol_send", counted)
    return sizes


def chunk(writer: int, i: int) -> bytes:
    head = b"<%d:%d>" % (writer, i)
    return head + bytes([65 + (i + writer) % 26]) * (1 + (i * 7919) % 3000) + head


async def read_all(stream: trio.SocketStream, total: int, slow: bool) -> bytes:
    got = bytearray()
    while len(got) < total:
        data = await stream.receive_some(4096 if slow else 65536)
        assert data, "the connection ended early"
        got += data
        if slow:
            await trio.sleep(0.0005)  # a client that reads slower than the server writes
    return bytes(got)


async def test_chunks_arrive_whole_and_in_order_while_the_buffer_fills(hypercorn_writes: list[int]) -> None:
    server_stream, client = await connected_pair()
    server, recorder = make_server(server_stream)
    chunks = [chunk(0, i) for i in range(400)]
    received: list[bytes] = []

    async def reader() -> None:
        received.append(await read_all(client, sum(map(len, chunks)), slow=True))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for c in chunks:
            await server.protocol_send(RawData(data=c))
    assert received == [b"".join(chunks)]
    assert recorder.events == []
    assert 0 < len(hypercorn_writes) < len(chunks), "both ways were taken"
    await client.aclose()
    await server_stream.aclose()


async def test_writers_sharing_a_connection_never_interleave_within_a_chunk(hypercorn_writes: list[int]) -> None:
    """Three tasks write at once: each chunk arrives whole, and each task's chunks in its own order,
    though some writes go straight to the socket and others wait behind Hypercorn's lock."""
    server_stream, client = await connected_pair()
    server, _ = make_server(server_stream)
    # Every fifth chunk is far bigger than the socket's buffer: the kernel takes it in part.
    per_writer = {w: [chunk(w, i) * (40 if i % 5 == 0 else 1) for i in range(150)] for w in range(3)}
    total = sum(len(c) for cs in per_writer.values() for c in cs)
    received: list[bytes] = []

    async def writer(w: int) -> None:
        for i, c in enumerate(per_writer[w]):
            await server.protocol_send(RawData(data=c))
            await trio.sleep(0.0002 * (i % 3))  # streamed replies pause between tokens

    async def reader() -> None:
        received.append(await read_all(client, total, slow=False))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for w in per_writer:
            nursery.start_soon(writer, w)
    data = received[0]
    seen: dict[int, list[bytes]] = {w: [] for w in per_writer}
    pos = 0
    while pos < len(data):
        for w, cs in per_writer.items():
            nxt = cs[len(seen[w])] if len(seen[w]) < len(cs) else None
            if nxt is not None and data.startswith(nxt, pos):
                seen[w].append(nxt)
                pos += len(nxt)
                break
        else:
            raise AssertionError(f"bytes at {pos} are not the next chunk of any writer: {data[pos:pos + 40]!r}")
    assert seen == per_writer
    assert 0 < len(hypercorn_writes) < 450, "both ways were taken"
    await client.aclose()
    await server_stream.aclose()


async def test_a_dropped_peer_is_reported_closed() -> None:
    server_stream, client = await connected_pair()
    server, recorder = make_server(server_stream)
    await client.aclose()
    with trio.fail_after(10):
        for _ in range(10_000):  # the first writes may still be taken before the reset comes back
            await server.protocol_send(RawData(data=b"x" * 1024))
            if any(isinstance(e, Closed) for e in recorder.events):
                break
            await trio.sleep(0.001)
    assert any(isinstance(e, Closed) for e in recorder.events)
    await server_stream.aclose()


async def test_a_closed_socket_is_reported_closed_not_raised() -> None:
    server_stream, client = await connected_pair()
    server, recorder = make_server(server_stream)
    await server_stream.aclose()  # fileno() is -1 now
    await server.protocol_send(RawData(data=b"late"))
    assert [type(e) for e in recorder.events] == [Closed]
    await client.aclose()
