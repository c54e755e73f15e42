"""Two servers over one read-only models folder behind Debian's nginx, with docs/scaling/nginx.conf.

One server creates the bundled model and stops; its folder is bind-mounted read-only elsewhere (root
ignores file modes, a read-only mount binds root too); two servers serve that mount, and nginx, run
with the example config (only its ports changed), spreads chats over both, keeps one model on one
replica with its hash variant, and passes on the 403 that every write gets.  The folder is byte for
byte what the writer left.  Needs root (mount) and nginx (scripts/test-deps.sh installs it).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.store.lock import LOCK_FILE, StoreLock
from tests.conftest import ROOT, Server, free_port
from tests.fixtures.mounts import read_only_bind

EXAMPLE = ROOT / "docs" / "scaling" / "nginx.conf"
CHAT = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Say hi."}],
        "stream": False, "options": {"temperature": 0, "num_predict": 4}}


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)
    assert found, "Debian's nginx is not installed: `sh scripts/test-deps.sh` (./dev setup) installs it"
    return found


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every entry under ``root``: mode and, for files, the sha256 of the bytes."""
    result = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        result[str(path.relative_to(root))] = (st.st_mode, digest)
    return result


@contextlib.contextmanager
def nginx_in_front(workdir: Path, replicas: list[Server]) -> Iterator[tuple[str, str]]:
    """nginx with the example config, its replica and listen ports replaced: (least_conn, by-model) URLs."""
    binary = nginx_binary()
    front, by_model = free_port(), free_port()
    conf = EXAMPLE.read_text()
    for example_port, server in zip((11435, 11436), replicas, strict=True):
        assert conf.count(f"server 127.0.0.1:{example_port} ") == 2
        conf = conf.replace(f"server 127.0.0.1:{example_port} ", f"server 127.0.0.1:{server.port} ")
    for example_port, port in ((11434, front), (11444, by_model)):
        assert conf.count(f"listen {example_port};") == 1
        conf = conf.replace(f"listen {example_port};", f"listen 127.0.0.1:{port};")
    workdir.mkdir()
    (workdir / "ollama.conf").write_text(conf)
    temp_paths = "\n".join(f"    {kind}_temp_path {workdir / kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (workdir / "nginx.conf").write_text(textwrap.dedent(f"""\
        user root;
        worker_processes 1;
        pid {workdir}/nginx.pid;
        error_log {workdir}/error.log info;
        events {{ worker_connections 256; }}
        http {{
        """) + temp_paths + textwrap.indent(textwrap.dedent(f"""
        include {workdir}/ollama.conf;
        # What the by-model front end hashed on, to check that the body's model name was found.
        log_format routing '$server_port $request_method $uri key=$ollama_hash_key to=$upstream_addr';
        access_log {workdir}/access.log routing;
        """), "    ") + "}\n")
    args = [binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", str(workdir / "error.log")]
    checked = subprocess.run([*args, "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen([*args, "-g", "daemon off;"], stderr=subprocess.STDOUT,
                            stdout=open(workdir / "stdout.log", "wb"))
    try:
        urls = (f"http://127.0.0.1:{front}", f"http://127.0.0.1:{by_model}")
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (workdir / "error.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if all(httpx.get(url + "/", timeout=2).status_code == 200 for url in urls):
                    break
            assert time.monotonic() < deadline, (workdir / "error.log").read_text()
            time.sleep(0.1)
        yield urls
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then the master exits
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chat(url: str, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """(answering replica's address, reply text) for one chat through nginx."""
    r = httpx.post(url + "/api/chat", json=CHAT, headers=headers, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["done"] is True and body["message"]["role"] == "assistant"
    return r.headers["X-Ollama-Upstream"], body["message"]["content"]


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 403, (response.status_code, response.text)
    error = response.json()["error"]
    assert "read-only" in error and "read-only mount" in error


def other_process_can_lock(folder: Path) -> bool:
    code = (f"import fcntl, os; fd = os.open({str(folder / LOCK_FILE)!r}, os.O_RDONLY)\n"
            "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
            "except BlockingIOError:\n    print('busy')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "free"


def test_two_servers_over_a_read_only_store_behind_nginx(tmp_path, smollm2_gguf):
    nginx_binary()  # fail at once, before minutes of set-up, when nginx is missing
    writer = Server(tmp_path / "writer").start()
    try:
        writer.import_smollm2(smollm2_gguf)
    finally:
        writer.stop()
    before = snapshot(writer.models)
    assert any(name.startswith("manifests/") for name in before)

    with read_only_bind(writer.models, tmp_path / "ro") as ro:
        # A reader that locks (an export) still excludes a writer of the same folder: the lock file
        # opens read-only on the read-only mount.
        with StoreLock(ro):
            assert not other_process_can_lock(writer.models)
        assert other_process_can_lock(writer.models)

        replicas = [Server(tmp_path / name, OLLAMA_MODELS=str(ro), OLLAMA_KEEP_ALIVE="10m")
                    for name in ("a", "b")]
        try:
            for replica in replicas:
                replica.start()
            for replica in replicas:
                health = httpx.get(replica.url + "/api/health", timeout=10)
                assert health.status_code == 200, health.text
                assert health.json()["status"] == "ok"
                assert health.json()["store"] == {"readable": True, "read_only": True}
                head = httpx.head(replica.url + "/api/health", timeout=10)
                assert head.status_code == 200 and head.content == b""
                assert "models folder is read-only (the models folder is on a read-only mount)" in replica.log()
            with nginx_in_front(tmp_path / "nginx", replicas) as (front, by_model):
                check_through_nginx(front, by_model, replicas, tmp_path)
        finally:
            for replica in replicas:
                replica.stop()
        assert snapshot(ro) == before
    assert snapshot(writer.models) == before


def check_through_nginx(front: str, by_model: str, replicas: list[Server], tmp_path: Path) -> None:
    addresses = {f"127.0.0.1:{replica.port}" for replica in replicas}

    # Least connections: concurrent chats keep both replicas busy, and both answer.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: chat(front), range(8)))
    served = Counter(upstream for upstream, _ in answers)
    assert set(served) == addresses, served
    assert all(text for _, text in answers)

    # Streaming passes through unbuffered, as NDJSON lines.
    with httpx.stream("POST", front + "/api/chat", json={**CHAT, "stream": True}, timeout=300) as r:
        assert r.status_code == 200 and r.headers["X-Ollama-Upstream"] in addresses
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) >= 2 and lines[-1]["done"] is True

    # By model: every chat for one model goes to one replica, named in the body or in a header.
    assert len({chat(by_model)[0] for _ in range(4)}) == 1
    assert len({chat(by_model, {"X-Ollama-Model": "smollm2:135m"})[0] for _ in range(3)}) == 1
    port = by_model.rsplit(":", 1)[1]
    routed = [line.split() for line in (tmp_path / "nginx" / "access.log").read_text().splitlines()
              if line.startswith(f"{port} POST /api/chat ")]
    assert len(routed) == 7 and {fields[3] for fields in routed} == {"key=smollm2:135m"}, routed

    # Health through nginx, and reads: list, show, the OpenAI model list.
    for url in (front, by_model):
        assert httpx.get(url + "/api/health", timeout=10).json()["store"]["read_only"] is True
        tags = httpx.get(url + "/api/tags", timeout=30).json()["models"]
        assert [m["name"] for m in tags] == ["smollm2:135m"]
        shown = httpx.post(url + "/api/show", json={"model": "smollm2:135m"}, timeout=30)
        assert shown.status_code == 200 and "template" in shown.json()
        assert [m["id"] for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]] == ["smollm2:135m"]

    # Writes: each one a 403 in Ollama's shape, from whichever replica nginx picked.
    with httpx.Client(base_url=front, timeout=60) as client:
        assert_refused(client.post("/api/create", json={"model": "derived", "from": "smollm2:135m",
                                                        "system": "Be brief.", "stream": False}))
        assert_refused(client.post("/api/pull", json={"model": "smollm2:135m", "stream": False}))
        assert_refused(client.post("/api/copy", json={"source": "smollm2:135m", "destination": "twin"}))
        assert_refused(client.request("DELETE", "/api/delete", json={"model": "smollm2:135m"}))
        upload = os.urandom(3 << 20)  # through the streamed blob location, larger than nginx's buffer
        digest = "sha256:" + hashlib.sha256(upload).hexdigest()
        assert_refused(client.post(f"/api/blobs/{digest}", content=upload))
    # A new connection: one whose upload was refused early may be closed once answered.
    assert httpx.head(f"{front}/api/blobs/{digest}", timeout=30).status_code == 404

    # The command line says so too, through nginx, and exits non-zero.
    cli = replicas[0]
    cli_env = {**cli.env, "OLLAMA_HOST": front}
    for args in (["rm", "smollm2:135m"], ["cp", "smollm2:135m", "twin"]):
        proc = subprocess.run([sys.executable, "-m", "appliance", *args], env=cli_env, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode != 0 and "read-only" in proc.stderr, (proc.stdout, proc.stderr)
    listed = subprocess.run([sys.executable, "-m", "appliance", "list"], env=cli_env, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, check=True)
    assert "smollm2:135m" in listed.stdout


@pytest.fixture(autouse=True)
def _no_stray_mounts(tmp_path):
    yield
    mounts = Path("/proc/self/mounts").read_text()
    assert str(tmp_path) not in mounts, "a read-only bind mount was left behind"
