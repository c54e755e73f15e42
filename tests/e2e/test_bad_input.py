"""Bad input to the model-management API, against one real server process.

Every case checks the same four things: the right HTTP status, Ollama's error shape
``{"error": "..."}``, that nothing was written (the file list of the server's home, models folder
included, is the same before and after), and that the server still answers ``GET /``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.fixtures.tiny_gguf import write_tiny_llama

MAX_BODY_BYTES = 8192
BASE = "tiny:base"  # the only model this module creates on purpose


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("bad-input"), OLLAMA_MAX_BODY_BYTES=str(MAX_BODY_BYTES)).start()
    try:
        with server.http() as http:
            digest = upload(http, tiny_gguf_bytes(server))
            created = http.post("/api/create", json={"model": BASE, "files": {"tiny.gguf": digest}, "stream": False})
            assert created.status_code == 200, created.text
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http(srv: Server) -> Iterator[httpx.Client]:
    with srv.http(timeout=30) as client:
        yield client


# -- helpers -------------------------------------------------------------------------------------


def tiny_gguf_bytes(srv: Server) -> bytes:
    path = srv.home / "fixtures" / "tiny.gguf"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        write_tiny_llama(path)
    return path.read_bytes()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload(http: httpx.Client, data: bytes) -> str:
    digest = sha256(data)
    response = http.post(f"/api/blobs/{digest}", content=data)
    assert response.status_code in (200, 201), response.text
    return digest


def snapshot(srv: Server) -> dict[str, int]:
    """Every file and folder under the server's home (its log aside), with file sizes (-1: a folder)."""
    out = {}
    for path in srv.home.rglob("*"):
        rel = str(path.relative_to(srv.home))
        if rel != srv.log_path.name:
            out[rel] = -1 if path.is_dir() else path.stat().st_size
    return out


def assert_alive(srv: Server) -> None:
    response = httpx.get(srv.url + "/", timeout=10)
    assert response.status_code == 200 and response.text == "Ollama is running"


@contextlib.contextmanager
def writes_nothing(srv: Server) -> Iterator[None]:
    before = snapshot(srv)
    yield
    assert snapshot(srv) == before
    assert_alive(srv)


def assert_error(status: int, content_type: str, body: bytes, expected: int, *fragments: str) -> str:
    """An Ollama-shaped error: ``expected`` status, a JSON object with one string ``error``."""
    assert status == expected, body
    assert content_type.startswith("application/json"), content_type
    doc = json.loads(body)
    assert list(doc) == ["error"] and isinstance(doc["error"], str) and doc["error"], doc
    for fragment in fragments:
        assert fragment in doc["error"], doc["error"]
    return str(doc["error"])


def check(response: httpx.Response, expected: int, *fragments: str) -> str:
    return assert_error(response.status_code, response.headers.get("content-type", ""), response.content,
                        expected, *fragments)


def raw(srv: Server, method: str, target: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """Send ``target`` byte for byte (httpx would normalise ``..`` and percent-escapes away)."""
    conn = HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, target, body=body)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def server_children(srv: Server) -> list[int]:
    """Processes whose parent is the server (a llama.cpp runner or quantizer would be one)."""
    assert srv.proc is not None
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == srv.proc.pid:
                children.append(int(stat.parent.name))
    return children


# -- blobs ---------------------------------------------------------------------------------------

BAD_DIGESTS = [
    "sha256:../../x",
    "sha256-..%2F..%2Fetc",
    "..%2F..%2F..%2Ftmp%2Fx",
    "%2e%2e%2f%2e%2e%2fx",
    "sha256:" + "a" * 64 + "/../../x",
    "sha256-" + "a" * 64 + "%2F..%2F..%2Fx",
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "g" * 64,
    "sha256:" + "a" * 63 + "%00",
    "sha256" + "a" * 64,
    "md5:" + "a" * 32,
    "",
]


@pytest.mark.parametrize("target", [f"/api/blobs/{digest}" for digest in BAD_DIGESTS] + ["/api/blobs"])
def test_invalid_digest_is_400(srv: Server, target: str) -> None:
    with writes_nothing(srv):
        status, _, body = raw(srv, "HEAD", target)
        assert status == 400 and body == b""
        assert_error(*raw(srv, "POST", target, b"payload"), 400, "invalid digest")


def test_head_of_a_missing_blob_is_404(srv: Server, http: httpx.Client) -> None:
    with writes_nothing(srv):
        assert http.head(f"/api/blobs/{sha256(b'never uploaded')}").status_code == 404


def test_body_that_does_not_hash_to_the_digest_is_400(srv: Server, http: httpx.Client) -> None:
    with writes_nothing(srv):
        claimed = sha256(b"the bytes I promised")
        check(http.post(f"/api/blobs/{claimed}", content=b"other bytes"), 400, "digest mismatch")
        assert http.head(f"/api/blobs/{claimed}").status_code == 404


def test_upload_new_then_existing_blob(srv: Server, http: httpx.Client) -> None:
    data = b"a blob uploaded on purpose\n" * 1000
    digest = sha256(data)
    response = http.post(f"/api/blobs/{digest}", content=data)
    assert response.status_code == 201, response.text
    path = srv.models / "blobs" / digest.replace(":", "-")
    assert path.read_bytes() == data
    with writes_nothing(srv):
        again = http.post(f"/api/blobs/{digest}", content=data)
        # Answered without reading the body, so the connection must not be reused.
        assert again.status_code == 200 and again.headers["connection"] == "close"
        assert http.head(f"/api/blobs/{digest}").status_code == 200
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def _wait_for(condition: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def test_client_disconnecting_mid_upload_leaves_no_partial_file(srv: Server) -> None:
    blobs = srv.models / "blobs"

    def temp_files() -> list[str]:
        return [p.name for p in blobs.iterdir() if not p.name.startswith("sha256-")]

    with writes_nothing(srv):
        digest = sha256(b"never finished")
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
                         "Content-Length: 10000000\r\n\r\n".encode() + b"x" * 65536)
            assert _wait_for(temp_files), "the upload never started writing"
        assert _wait_for(lambda: not temp_files()), f"partial upload left behind: {temp_files()}"


# -- names ---------------------------------------------------------------------------------------

BAD_NAMES: list[Any] = ["..", "../x", "a/../../b", "/abs/path", "a//b", "m" * 81, "n" * 81 + "/m",
                        "x:" + "t" * 81, "model:ta/g", "", "   ", 42, None, ["tiny"], {"model": "tiny"}]


def _name_requests(bad: Any, tiny_digest: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("POST", "/api/create", {"model": bad, "files": {"tiny.gguf": tiny_digest}}),
        ("POST", "/api/show", {"model": bad}),
        ("POST", "/api/copy", {"source": bad, "destination": "copy-target"}),
        ("POST", "/api/copy", {"source": BASE, "destination": bad}),
        ("DELETE", "/api/delete", {"model": bad}),
    ]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_invalid_model_name_is_400(srv: Server, http: httpx.Client, bad: Any) -> None:
    tiny_digest = sha256(tiny_gguf_bytes(srv))
    with writes_nothing(srv):
        for method, path, body in _name_requests(bad, tiny_digest):
            response = http.request(method, path, json=body)
            assert response.status_code == 400, (method, path, body, response.text)
            check(response, 400)


@pytest.mark.parametrize(("method", "path", "body", "missing"), [
    ("POST", "/api/show", {"model": "nope"}, "nope"),
    ("POST", "/api/show", {"name": "me/nope:v1"}, "me/nope:v1"),
    ("DELETE", "/api/delete", {"model": "nope"}, "nope"),
    ("POST", "/api/copy", {"source": "nope", "destination": "copy-target"}, "nope"),
])
def test_unknown_model_is_404(srv: Server, http: httpx.Client, method: str, path: str,
                              body: dict[str, str], missing: str) -> None:
    with writes_nothing(srv):
        response = http.request(method, path, json=body)
        assert check(response, 404) == f"model '{missing}' not found"


# -- request bodies ------------------------------------------------------------------------------

BODY_ROUTES = [("POST", "/api/show"), ("POST", "/api/create"), ("POST", "/api/copy"), ("DELETE", "/api/delete")]
MALFORMED_BODIES = {
    "truncated": b'{"model": "tiny:ba',
    "array": b'["tiny:base"]',
    "string": b'"tiny:base"',
    "number": b"42",
    "null": b"null",
    "non-utf8": b'{"model": "\xff\xfe"}',
    "utf16-bom": b"\xff\xfe{\x00}\x00",
    "empty": b"",
    "blank": b" \r\n\t",
    "trailing-garbage": b'{"model": "tiny:base"} {}',
    "nested-too-deep": b"[" * 5000,
    "huge-integer": b'{"model": ' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize("kind", MALFORMED_BODIES)
def test_malformed_json_body_is_400(srv: Server, http: httpx.Client, route: tuple[str, str], kind: str) -> None:
    method, path = route
    with writes_nothing(srv):
        check(http.request(method, path, content=MALFORMED_BODIES[kind],
                           headers={"Content-Type": "application/json"}), 400)


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(srv: Server, http: httpx.Client, route: tuple[str, str], chunked: bool) -> None:
    method, path = route
    body = json.dumps({"model": BASE, "system": "x" * MAX_BODY_BYTES}).encode()
    content: Any = iter([body[i:i + 1024] for i in range(0, len(body), 1024)]) if chunked else body
    with writes_nothing(srv):
        response = http.request(method, path, content=content)
        check(response, 413, f"larger than {MAX_BODY_BYTES} bytes")
        assert response.headers["connection"] == "close"  # the rest of the body was never read
        assert http.get("/api/version").status_code == 200  # the same client carries on


# -- Modelfiles through the CLI ------------------------------------------------------------------

INVALID_MODELFILES = [
    pytest.param("FROM {gguf}\nBOGUS x\n", 2, "unknown instruction 'BOGUS'", id="unknown-instruction"),
    pytest.param('FROM {gguf}\n\nSYSTEM """never\nclosed\n', 3, 'unterminated """ quote', id="unterminated-quote"),
    pytest.param("# only a comment\nSYSTEM hello\n", None, "no FROM line", id="no-from"),
    pytest.param("FROM {gguf}\nPARAMETER temperature hot\n", 2,
                 "invalid float value 'hot' for parameter 'temperature'", id="bad-value"),
    pytest.param("FROM {gguf}\nPARAMETER nonsense 1\n", 2, "unknown parameter 'nonsense'", id="unknown-parameter"),
    pytest.param("FROM {gguf}\nMESSAGE user hi\nMESSAGE wizard hi\n", 3, "invalid message role 'wizard'",
                 id="bad-role"),
]


def _create_from_modelfile(srv: Server, text: str) -> subprocess.CompletedProcess[str]:
    folder = srv.home / "fixtures"
    gguf = folder / "other.gguf"  # never uploaded: a CLI that uploaded before parsing would show
    if not gguf.exists():
        write_tiny_llama(gguf, seed=1)
    modelfile = folder / "bad.Modelfile"
    modelfile.write_text(text.format(gguf=gguf))
    try:
        with writes_nothing(srv):
            return srv.cli("create", "bad-modelfile", "-f", str(modelfile), check=False, timeout=60)
    finally:
        modelfile.unlink()


@pytest.mark.parametrize(("text", "line", "reason"), INVALID_MODELFILES)
def test_invalid_modelfile_fails_in_the_cli(srv: Server, text: str, line: int | None, reason: str) -> None:
    proc = _create_from_modelfile(srv, text)
    assert proc.returncode == 1, proc
    assert reason in proc.stderr
    if line is not None:
        assert f"line {line}: {reason}" in proc.stderr


def test_invalid_modelfile_error_is_one_clean_line(srv: Server) -> None:
    proc = _create_from_modelfile(srv, "FROM {gguf}\nBOGUS x\n")
    assert proc.stderr.startswith("Error: line 2: unknown instruction 'BOGUS'"), proc.stderr
    assert "Traceback" not in proc.stderr


# -- /api/create ---------------------------------------------------------------------------------

MISSING_DIGEST = sha256(b"never uploaded")


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"from": "/etc/passwd"}, 400, "must name a model, not a path"),
    ({"from": "../../x"}, 400, "must name a model, not a path"),
    ({"from": "./m.gguf"}, 400, "must name a model, not a path"),
    ({"from": "~/m.gguf"}, 400, "must name a model, not a path"),
    ({"from": "C:\\models\\m.gguf"}, 400, "must name a model, not a path"),
    ({"from": "a/../../b"}, 400, "invalid model name"),
    ({"from": 42}, 400, "'from' must be a string"),
    ({"from": "nope:latest"}, 404, "model 'nope:latest' not found"),
    ({"files": {"../evil.gguf": "{tiny}"}}, 400, "invalid file path"),
    ({"files": {"/abs.gguf": "{tiny}"}}, 400, "invalid file path"),
    ({"files": {"a/../../evil.gguf": "{tiny}"}}, 400, "invalid file path"),
    ({"files": {"": "{tiny}"}}, 400, "invalid file path"),
    ({"files": {"m.gguf": MISSING_DIGEST}}, 400, "upload it first"),
    ({"files": {"m.gguf": "sha256:../../x"}}, 400, "invalid digest"),
    ({"files": {"m.gguf": "md5:" + "a" * 32}}, 400, "invalid digest"),
    ({"files": {"m.gguf": 42}}, 400, "must be an object"),
    ({"files": ["{tiny}"]}, 400, "must be an object"),
    ({"files": {"tiny.gguf": "{tiny}"}, "adapters": {"../a.gguf": "{tiny}"}}, 400, "invalid file path"),
    ({}, 400, "neither 'from' or 'files' was specified"),
    ({"files": {}}, 400, "neither 'from' or 'files' was specified"),
    ({"from": BASE, "quantize": "q9_z"}, 400, "unsupported quantization type q9_z"),
    ({"from": BASE, "quantize": 8}, 400, "'quantize' must be a string"),
    ({"from": BASE, "parameters": {"temperature": "hot"}}, 400, "temperature"),
    ({"from": BASE, "parameters": {"nonsense": 1}}, 400, "unknown parameter 'nonsense'"),
    ({"from": BASE, "parameters": ["temperature", 1]}, 400, "'parameters' must be an object"),
    ({"from": BASE, "template": "{{ .Prompt "}, 400, "1:12"),
    ({"from": BASE, "template": "hi\n{{ if .System }}"}, 400, "2:"),
    ({"from": BASE, "template": 42}, 400, "'template' must be a string"),
    ({"from": BASE, "system": ["a"]}, 400, "'system' must be a string"),
    ({"from": BASE, "license": 42}, 400, "'license'"),
    ({"from": BASE, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid role"),
    ({"from": BASE, "messages": "hi"}, 400, "'messages' must be a list"),
    ({"from": BASE, "stream": "yes"}, 400, "stream must be a boolean"),
], ids=repr)
def test_invalid_create_request(srv: Server, http: httpx.Client, body: dict[str, Any], status: int,
                                fragment: str) -> None:
    tiny = sha256(tiny_gguf_bytes(srv))
    request = json.loads(json.dumps({"model": "bad-create", **body}).replace("{tiny}", tiny))
    with writes_nothing(srv):
        check(http.post("/api/create", json=request), status, fragment)


# -- hostile GGUF files --------------------------------------------------------------------------


def _string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def _replace(data: bytes, old: bytes, new: bytes) -> bytes:
    """Patch the one occurrence of ``old`` with as many bytes, so every other offset stays valid."""
    assert data.count(old) == 1 and len(new) == len(old), old
    return data.replace(old, new)


def _hostile(kind: str, tiny: bytes) -> bytes:
    u32, u64 = (lambda n: struct.pack("<I", n)), (lambda n: struct.pack("<Q", n))
    if kind == "truncated-data":
        return tiny[: len(tiny) // 2]
    if kind == "truncated-header":
        return tiny[:600]
    if kind == "alignment-0":
        # llama.block_count, a uint32 with a key as long as general.alignment's, becomes alignment 0.
        return _replace(tiny, _string("llama.block_count") + u32(4) + u32(1),
                        _string("general.alignment") + u32(4) + u32(0))
    if kind == "string-length-2**62":
        old = _string("general.name") + u32(8) + u64(len("tiny-llama"))
        return _replace(tiny, old, old[:-8] + u64(2**62))
    if kind == "array-count-2**40":
        old = _string("tokenizer.ggml.tokens") + u32(9) + u32(8) + u64(64)
        return _replace(tiny, old, old[:-8] + u64(2**40))
    if kind == "tensor-offset-past-eof":
        # The last tensor's description: name, 2 dimensions, the dimensions, its type, its offset.
        head = _string("blk.0.ffn_down.weight") + u32(2)
        at = tiny.index(head) + len(head) + 8 + 8 + 4
        (offset,) = struct.unpack_from("<Q", tiny, at)
        return tiny[:at] + u64(offset + (1 << 20)) + tiny[at + 8:]
    if kind == "text-file":
        return b"FROM llama3\nSYSTEM this is a Modelfile, not a model\n"
    if kind == "empty":
        return b""
    raise AssertionError(kind)


@pytest.mark.parametrize(("kind", "reason"), [
    ("truncated-data", "past the end of the file"),
    ("truncated-header", "truncated"),
    ("alignment-0", "general.alignment 0 is not a power of two"),
    ("string-length-2**62", f"length {2**62} exceeds"),
    ("array-count-2**40", f"claims {2**40} elements"),
    ("tensor-offset-past-eof", "'blk.0.ffn_down.weight' data ends at byte"),
    ("text-file", "not a GGUF file"),
    ("empty", "truncated"),
])
def test_hostile_gguf_is_refused_before_llama_cpp(srv: Server, http: httpx.Client, kind: str, reason: str) -> None:
    data = _hostile(kind, tiny_gguf_bytes(srv))
    digest = upload(http, data)  # any bytes are a valid blob; the model built from them is not
    assert (srv.models / "blobs" / digest.replace(":", "-")).read_bytes() == data
    with writes_nothing(srv):
        error = check(http.post("/api/create", json={"model": "hostile", "files": {"model.gguf": digest}}),
                      400, "model.gguf: ", reason)
        assert error.count("\n") == 0 and len(error) < 500
        assert server_children(srv) == []
        assert http.get("/api/ps").json() == {"models": []}


# -- and after all that --------------------------------------------------------------------------


def test_store_lists_only_what_was_created_on_purpose(srv: Server, http: httpx.Client) -> None:
    response = http.get("/api/tags")
    assert response.status_code == 200
    assert [m["name"] for m in response.json()["models"]] == [BASE]
    manifests = sorted(str(p.relative_to(srv.models / "manifests"))
                       for p in (srv.models / "manifests").rglob("*") if p.is_file())
    assert manifests == ["registry.ollama.ai/library/tiny/base"]
    assert [p.name for p in (srv.models / "blobs").iterdir() if not p.name.startswith("sha256-")] == []
    assert http.post("/api/show", json={"model": BASE}).json()["details"]["family"] == "llama"
    assert "Traceback" not in srv.log()
