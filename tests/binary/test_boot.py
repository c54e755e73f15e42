"""appliance.boot: client commands skip the optional imports of httpx/httpcore, nothing else changes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

PROBE = """
import json, sys
from appliance import boot
boot.install(sys.argv[1:])
from appliance.api.client import Client
Client(base_url="http://127.0.0.1:9").close()
import httpcore
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"trio", "anyio", "h2", "rich", "click", "pygments"})
import trio, h2.connection  # a direct import still works
print(json.dumps({"loaded": loaded, "http2": httpcore.HTTP2Connection.__module__, "trio": trio.__name__}))
"""


def probe(*argv: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("argv", [["-v"], ["list"], ["run", "x"], []])
def test_client_commands_skip_the_async_and_http2_stacks(argv: list[str]) -> None:
    result = probe(*argv)
    assert result["loaded"] == []
    assert result["http2"] != "httpcore._sync.http2"  # httpcore's own stand-in for a missing h2
    assert result["trio"] == "trio"


@pytest.mark.parametrize("command", ["serve", "runner", "quantize-worker"])
def test_server_and_engine_commands_import_normally(command: str) -> None:
    assert {"anyio", "h2", "trio"} <= set(probe(command)["loaded"])


def test_the_module_entry_point_still_answers() -> None:
    done = subprocess.run([sys.executable, "-m", "appliance", "-v"], capture_output=True, text=True,
                          timeout=60, env={"OLLAMA_HOST": "127.0.0.1:9", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "ollama-appliance version is" in done.stdout and "(source build)" in done.stdout


def test_a_client_command_exits_early_with_its_status_and_all_output() -> None:
    env = {"OLLAMA_HOST": "127.0.0.1:9", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "appliance", "no-such-command"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 1 and 'unknown command "no-such-command"' in done.stderr
    done = subprocess.run([sys.executable, "-m", "appliance", "list"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 1 and "could not connect to ollama server" in done.stderr
