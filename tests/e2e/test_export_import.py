"""``ollama export`` / ``ollama import`` through a real server: a model leaves as an OCI image layout
tarball (the store's own bytes, read by skopeo like any image), comes back (under its own name or
another, from a file or stdin) and answers exactly as before; every hostile or broken archive is a
400 in Ollama's shape and leaves the models folder exactly as it was, temp files included."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server

NAME = "smol-export:135m"
FULL_NAME = "registry.ollama.ai/library/smol-export:135m"
GREEDY = {"temperature": 0, "seed": 7, "num_predict": 16}
MEDIA = "application/vnd.ollama.image."


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    """A server of its own: these tests remove and replace models."""
    server = Server(tmp_path_factory.mktemp("archive"), OLLAMA_KEEP_ALIVE="10m").start()
    server.import_smollm2(smollm2_gguf, NAME)
    yield server
    server.stop()


def _manifest_path(server: Server, model: str, tag: str) -> Path:
    return server.models / "manifests" / "registry.ollama.ai" / "library" / model / tag


def _chat(server: Server, model: str) -> str:
    reply = httpx.post(f"{server.url}/api/chat", timeout=300, json={
        "model": model, "stream": False, "options": GREEDY,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["eval_count"] > 0
    return str(reply.json()["message"]["content"])


def _listing(server: Server) -> list[tuple[str, int]]:
    """Every file and folder under the models folder (temp files and the lock file included)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(server.models):
        for entry in [*dirnames, *filenames]:
            path = Path(dirpath) / entry
            out.append((str(path.relative_to(server.models)), path.lstat().st_size if path.is_file() else -1))
    return sorted(out)


def _cli_bytes(server: Server, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([sys.executable, "-m", "appliance", *args], env=server.env, input=stdin,
                          capture_output=True, timeout=300, cwd=server.home)
    assert proc.returncode == 0, f"ollama {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}"
    return proc


def check_oci_layout(data: bytes) -> dict[str, Any]:
    """Check a tarball against the OCI image-layout spec, structurally; return its manifest."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            assert not member.name.startswith("/") and ".." not in member.name.split("/"), member.name
            assert member.isfile() or member.isdir(), f"{member.name} is neither a file nor a folder"
            if member.isfile():
                assert member.name not in files, f"{member.name} twice"
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[member.name] = extracted.read()
    assert json.loads(files.pop("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files.pop("index.json"))
    assert index["schemaVersion"] == 2 and index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [descriptor] = index["manifests"]
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == FULL_NAME
    for path, content in files.items():  # every blob is content-addressed: its name is its sha256
        assert path.startswith("blobs/sha256/"), path
        assert hashlib.sha256(content).hexdigest() == path.removeprefix("blobs/sha256/"), path

    def blob(desc: dict[str, Any]) -> bytes:
        content = files.pop("blobs/sha256/" + desc["digest"].removeprefix("sha256:"))
        assert len(content) == desc["size"]
        return content

    raw = blob(descriptor)
    manifest = json.loads(raw)
    assert manifest["mediaType"] == descriptor["mediaType"]
    blob(manifest["config"])
    for layer in manifest["layers"]:
        blob(layer)
    assert not files, f"blobs no manifest references: {sorted(files)}"
    return {"raw": raw, **manifest}


def test_export_remove_import_answers_as_before(srv: Server, tmp_path: Path) -> None:
    expected = _chat(srv, NAME)
    assert expected.strip()
    manifest_file = _manifest_path(srv, "smol-export", "135m")
    manifest_bytes = manifest_file.read_bytes()
    listing = _listing(srv)

    archive = tmp_path / "smol.tar"
    out = srv.cli("export", NAME, "-o", str(archive))
    assert "exported" in out.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name != "smol.tar"]  # no partial file left
    manifest = check_oci_layout(archive.read_bytes())
    assert manifest["raw"] == manifest_bytes  # the store's own bytes: the ID in `ollama list` stays
    for layer in [manifest["config"], *manifest["layers"]]:
        blob = srv.models / "blobs" / layer["digest"].replace(":", "-")
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"].removeprefix("sha256:")
    assert manifest["layers"][0]["mediaType"] == MEDIA + "model"  # then template, params ...: as created

    # A standard OCI tool reads the layout: skopeo finds index.json's manifest and its blob.
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is not installed (scripts/test-deps.sh installs it)"
    raw = subprocess.run([skopeo, "inspect", "--raw", f"oci-archive:{archive}"], capture_output=True,
                         timeout=120, check=True).stdout
    assert raw == manifest_bytes

    srv.cli("rm", NAME)
    assert not manifest_file.exists()
    assert not [p for p in (srv.models / "blobs").iterdir()]  # rm took every blob: the import brings them

    out = srv.cli("import", str(archive))
    assert out.stdout.strip() == f"imported {NAME}"
    assert manifest_file.read_bytes() == manifest_bytes
    assert _listing(srv) == listing
    assert _chat(srv, NAME) == expected


def test_import_under_another_name_through_stdin(srv: Server) -> None:
    data = _cli_bytes(srv, "export", NAME, "-o", "-").stdout
    check_oci_layout(data)
    out = _cli_bytes(srv, "import", "-", "someone/renamed:v1", stdin=data)
    assert out.stdout.decode().strip() == "imported someone/renamed:v1"
    renamed = srv.models / "manifests" / "registry.ollama.ai" / "someone" / "renamed" / "v1"
    assert renamed.read_bytes() == _manifest_path(srv, "smol-export", "135m").read_bytes()
    tags = {m["name"]: m["digest"] for m in httpx.get(f"{srv.url}/api/tags").json()["models"]}
    assert tags["someone/renamed:v1"] == tags[NAME]

    # Imported again over itself: replaced, nothing added.
    before = _listing(srv)
    assert _cli_bytes(srv, "import", "-", "someone/renamed:v1", stdin=data).returncode == 0
    assert [p for p in _listing(srv) if not p[0].startswith("manifests")] == \
           [p for p in before if not p[0].startswith("manifests")]
    srv.cli("rm", "someone/renamed:v1")
    assert _chat(srv, NAME).strip()  # the shared blobs stayed for the original


def test_export_and_import_errors_are_ollama_shaped(srv: Server, tmp_path: Path) -> None:
    missing = srv.cli("export", "nothing-here", "-o", str(tmp_path / "x.tar"), check=False)
    assert missing.returncode == 1 and "model 'nothing-here' not found" in missing.stderr
    assert not list(tmp_path.iterdir())  # a failed export leaves no file
    with srv.http() as http:
        reply = http.get("/api/export")
        assert reply.status_code == 400 and reply.json() == {"error": "model is required"}
        reply = http.get("/api/export", params={"model": "../../etc"})
        assert reply.status_code == 400 and "invalid model name" in reply.json()["error"]
        reply = http.post("/api/import", params={"model": "bad//name"}, content=b"x")
        assert reply.status_code == 400 and "invalid model name" in reply.json()["error"]
    gone = srv.cli("import", str(tmp_path / "absent.tar"), check=False)
    assert gone.returncode == 1 and "cannot read" in gone.stderr


# --- hostile archives -------------------------------------------------------------------------

CONFIG = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
WEIGHTS = bytes(range(256)) * 4096  # 1 MiB
TEMPLATE = b"{{ .Prompt }}"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob_path(data: bytes) -> str:
    return "blobs/sha256/" + hashlib.sha256(data).hexdigest()


MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": _digest(CONFIG),
               "size": len(CONFIG)},
    "layers": [{"mediaType": MEDIA + "model", "digest": _digest(WEIGHTS), "size": len(WEIGHTS)},
               {"mediaType": MEDIA + "template", "digest": _digest(TEMPLATE), "size": len(TEMPLATE)}],
}).encode()


def _index(manifest: bytes = MANIFEST, ref: str = "hostile:test") -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                      "digest": _digest(manifest), "size": len(manifest),
                                      "annotations": {"org.opencontainers.image.ref.name": ref}}]}).encode()


Member = tuple[str, bytes] | tarfile.TarInfo


def _layout(*, blobs_first: bool = False) -> list[Member]:
    head: list[Member] = [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", _index())]
    blobs: list[Member] = [(_blob_path(data), data) for data in (MANIFEST, CONFIG, WEIGHTS, TEMPLATE)]
    return [*blobs, *head] if blobs_first else [*head, *blobs]


def _tar(members: list[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _replace(members: list[Member], path: str, new: Member | None) -> list[Member]:
    out = [m for m in members if isinstance(m, tarfile.TarInfo) or m[0] != path]
    return out if new is None else [*out, new]


def _oversized_member() -> bytes:
    """The model layer's header claims one byte more than the manifest (refused before it is read)."""
    members = _layout()
    members[4] = (_blob_path(WEIGHTS), WEIGHTS + b"!")
    return _tar(members)


def _huge_pax_header() -> bytes:
    """A pax record of 4 MiB in front of a member: tarfile would read it whole into memory."""
    info = tarfile.TarInfo("oci-layout")
    info.pax_headers = {"comment": "x" * (4 << 20)}
    data = b'{"imageLayoutVersion": "1.0.0"}'
    info.size = len(data)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "path traversal": (lambda: _tar([*_layout(), ("../../escaped", b"x")]), "leaves the archive"),
    "traversal inside blobs": (lambda: _tar([("blobs/sha256/../../../x", b"x"), *_layout()]),
                               "leaves the archive"),
    "absolute path": (lambda: _tar([("/tmp/escaped", b"x"), *_layout()]), "absolute"),
    "symlink": (lambda: _tar([*_replace(_layout(), _blob_path(WEIGHTS), None),
                              _special(_blob_path(WEIGHTS), tarfile.SYMTYPE, "/etc/passwd")]), "is a link"),
    "hard link": (lambda: _tar([*_layout(), _special("blobs/sha256/" + "0" * 64, tarfile.LNKTYPE,
                                                     "oci-layout")]), "is a link"),
    "character device": (lambda: _tar([_special("blobs/sha256/" + "1" * 64, tarfile.CHRTYPE), *_layout()]),
                         "not a regular file"),
    "fifo": (lambda: _tar([*_layout(), _special("blobs/sha256/" + "2" * 64, tarfile.FIFOTYPE)]),
             "not a regular file"),
    "member bigger than the manifest says": (_oversized_member, "the manifest says"),
    "index.json bigger than the cap": (
        lambda: _tar([("oci-layout", b"{}"), ("index.json", b" " * (2 << 20))]), "larger than"),
    "huge tar header": (_huge_pax_header, "tar headers are larger than"),
    "duplicate member": (lambda: _tar([*_layout(), (_blob_path(TEMPLATE), TEMPLATE)]), "appears twice"),
    "manifest references a missing blob": (lambda: _tar(_replace(_layout(), _blob_path(WEIGHTS), None)),
                                           "does not hold"),
    "digest mismatch": (lambda: _tar(_replace(_layout(), _blob_path(WEIGHTS),
                                              (_blob_path(WEIGHTS), WEIGHTS[:-1] + b"?"))),
                        "does not match its digest"),
    "digest mismatch, blobs before the manifest": (
        lambda: _tar([(_blob_path(WEIGHTS), WEIGHTS[:-1] + b"?"), *_replace(_layout(), _blob_path(WEIGHTS), None)]),
        "does not match its digest"),
    "a blob the manifest does not use": (lambda: _tar([*_layout(), (_blob_path(b"extra"), b"extra")]),
                                         "not part of the model"),
    "truncated archive": (lambda: _tar(_layout())[: 600_000], "the archive ends inside"),
    "not a tar": (lambda: b"this is not a tar archive at all" * 100, "not a tar archive"),
    "a tar that is no OCI layout": (lambda: _tar([("hello.txt", b"hello")]), "unexpected member"),
    "no oci-layout file": (lambda: _tar(_replace(_layout(), "oci-layout", None)), "no oci-layout"),
    "two images": (lambda: _tar(_replace(_layout(), "index.json", ("index.json", json.dumps({
        "schemaVersion": 2, "manifests": json.loads(_index())["manifests"] * 2}).encode()))),
        "an import takes one model"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_archive_is_refused_and_changes_nothing(srv: Server, case: str) -> None:
    build, reason = HOSTILE[case]
    before = _listing(srv)
    reply = httpx.post(f"{srv.url}/api/import", params={"model": "hostile:test"}, content=build(),
                       timeout=120)
    assert reply.status_code == 400, reply.text
    assert list(reply.json()) == ["error"] and reason in reply.json()["error"], reply.json()
    assert _listing(srv) == before


def test_the_hostile_cases_are_one_change_away_from_a_valid_archive(srv: Server) -> None:
    """The base the hostile cases alter imports (blobs before or after the manifest), so each refusal
    above is about what its case changed."""
    before = _listing(srv)
    for blobs_first in (False, True):
        reply = httpx.post(f"{srv.url}/api/import", content=_tar(_layout(blobs_first=blobs_first)), timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"status": "success", "model": "hostile:test"}
        assert _manifest_path(srv, "hostile", "test").read_bytes() == MANIFEST
        assert (srv.models / "blobs" / _digest(WEIGHTS).replace(":", "-")).read_bytes() == WEIGHTS
    srv.cli("rm", "hostile:test")
    assert _listing(srv) == before


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_a_client_that_leaves_mid_import_leaves_nothing(srv: Server) -> None:
    before = _listing(srv)
    data = _tar(_layout())
    head = (f"POST /api/import?model=left:test HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(head + data[: len(data) // 2])  # into the model layer, then gone
        _wait_for(lambda: any(p.name.startswith(".tmp-") for p in (srv.models / "blobs").iterdir()),
                  "the import to write the model layer's temp file")
    _wait_for(lambda: _listing(srv) == before, "the temp file to go")
    assert httpx.get(f"{srv.url}/api/tags").status_code == 200  # and the server goes on
