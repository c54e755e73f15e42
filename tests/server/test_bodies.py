"""Request bodies that push back: an iterating consumer never has more than the high-water mark
buffered, and a body awaited whole is never held back (that would deadlock)."""

from __future__ import annotations

import trio

from appliance.server.bodies import HIGH_WATER_BYTES, StreamedBody

CHUNK = 1 << 20
CHUNKS = 64


async def produce(body: StreamedBody, buffered: list[int]) -> None:
    """What the ASGI connection does: append each chunk, then wait for room."""
    for _ in range(CHUNKS):
        body.append(b"x" * CHUNK)
        buffered.append(len(body._data))
        await body.wait_for_room()
    body.set_complete()


async def test_an_iterating_consumer_bounds_the_buffer():
    body = StreamedBody(None, None)
    buffered: list[int] = []
    received = 0
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            chunks = aiter(body)
            nursery.start_soon(produce, body, buffered)
            async for data in chunks:
                received += len(data)
                await trio.sleep(0)  # a slow consumer: the producer runs ahead as far as it may
    assert received == CHUNK * CHUNKS
    assert max(buffered) <= HIGH_WATER_BYTES + CHUNK


async def test_a_body_awaited_whole_is_not_held_back():
    body = StreamedBody(None, None)
    buffered: list[int] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, body, buffered)
            data = await body
    assert len(data) == CHUNK * CHUNKS
    assert max(buffered) == CHUNK * CHUNKS
