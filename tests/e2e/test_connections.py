"""Slow and numerous clients against a real server (issue 11): OLLAMA_READ_TIMEOUT and
OLLAMA_MAX_CONNECTIONS.  Deadlines are asserted with generous slack: a wedged connection would never
close, which is what these tests catch."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server

READ_TIMEOUT_S = 1.5
MAX_CONNECTIONS = 4


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("connections"), OLLAMA_READ_TIMEOUT=f"{READ_TIMEOUT_S}s",
                    OLLAMA_MAX_CONNECTIONS=str(MAX_CONNECTIONS)).start()
    try:
        server.import_smollm2(smollm2_gguf)
        yield server
    finally:
        server.stop()


def connect(srv: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True once the server closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionError:
            return True
    return False


def test_trickled_headers_are_cut_off(srv: Server) -> None:
    with connect(srv) as sock:
        sock.sendall(b"POST /api/show HTTP/1.1\r\nHost: localhost\r\n")
        deadline = time.monotonic() + 30
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"X")  # one more header byte every 0.3 s, for ever
            except OSError:
                closed = True
                break
            closed = closed_within(sock, 0.3)
        assert closed, "a client trickling its headers kept the connection"


def test_a_stalled_body_is_cut_off(srv: Server) -> None:
    with connect(srv) as sock:
        sock.sendall(b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\":")
        assert closed_within(sock, 20 * READ_TIMEOUT_S)


def test_a_reply_may_stream_longer_than_the_read_timeout(srv: Server) -> None:
    """The client sends nothing while its reply streams; pausing reading for longer than the read
    timeout (the reply then waits on TCP) must not get the connection closed."""
    with srv.http(timeout=300) as http:
        with http.stream("POST", "/api/generate", json={
                "model": "smollm2:135m", "prompt": "Write a long story about a lighthouse.",
                "options": {"num_predict": 64, "temperature": 0.8, "seed": 1}}) as r:
            lines = []
            for line in r.iter_lines():
                if line:
                    lines.append(json.loads(line))
                if len(lines) == 2:
                    time.sleep(3 * READ_TIMEOUT_S)
        assert lines[-1]["done"] is True, lines[-1]


def test_connections_beyond_the_cap_get_503_and_a_freed_place_is_reused(srv: Server) -> None:
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = connect(srv)
            sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert b"200" in sock.recv(65536).split(b"\r\n", 1)[0]
            held.append(sock)  # kept open (keep-alive): each holds a place
        with connect(srv) as extra:
            extra.sendall(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = b""
            while b"}" not in answer:
                chunk = extra.recv(65536)
                if not chunk:
                    break
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer
        assert json.loads(body) == {"error": "server busy: too many connections"}
        held.pop().close()
        deadline = time.monotonic() + 30
        while True:  # the place comes back once the server has seen the close
            r = httpx.get(f"{srv.url}/api/version", timeout=10)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200
    finally:
        for sock in held:
            sock.close()
