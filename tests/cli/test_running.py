"""``ollama ps`` and ``ollama stop``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from appliance.cli.running import processor_text, ps_rows, until_text
from tests.cli.derived import derived_model, unload_all

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("size", "vram", "text"), [
    (1000, 0, "100% CPU"), (1000, 1000, "100% GPU"), (1000, 520, "48%/52% CPU/GPU"),
    (1000, 2000, "Unknown"), (0, 5, "Unknown"),
])
def test_processor_column(size, vram, text):
    assert processor_text(size, vram) == text


def test_until_column():
    def at(delta: timedelta) -> str:
        return (NOW + delta).isoformat()

    assert until_text(at(timedelta(minutes=4, seconds=59)), NOW) == "4 minutes from now"
    assert until_text(at(timedelta(days=365 * 300)), NOW) == "Forever"
    assert until_text(at(-timedelta(seconds=1)), NOW) == "Stopping..."
    assert until_text(None, NOW) == "Stopping..."


def test_ps_rows_filter_by_prefix():
    models = [{"name": "a:latest", "digest": "0123456789abcdef", "size": 470_000_000, "size_vram": 0,
               "context_length": 4096, "expires_at": (NOW + timedelta(minutes=5)).isoformat()},
              {"name": "b:latest", "digest": "fedcba9876543210", "size": 1, "size_vram": 1,
               "context_length": 2048, "expires_at": (NOW - timedelta(seconds=3)).isoformat()}]
    assert ps_rows(models, "", NOW) == [
        ["a:latest", "0123456789ab", "470 MB", "100% CPU", "4096", "5 minutes from now"],
        ["b:latest", "fedcba987654", "1 B", "100% GPU", "2048", "Stopping..."],
    ]
    assert [r[0] for r in ps_rows(models, "b", NOW)] == ["b:latest"]


@pytest.fixture(scope="module")
def short(server):
    with derived_model(server, "cli-ps-short", num_predict=4) as name:
        yield name


def _row(server, name: str) -> list[str] | None:
    out = server.cli("ps").stdout.splitlines()
    assert out[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    rows = [line.split("    ") for line in out[1:]]
    return next(([c.strip() for c in r if c.strip()] for r in rows if r[0].strip() == name), None)


def test_ps_shows_a_model_after_run_and_stop_unloads_it(server, short):
    unload_all(server)
    server.cli("run", short, "hi")
    row = _row(server, f"{short}:latest")
    assert row is not None
    assert row[3:5] == ["100% CPU", "4096"]
    assert row[5].endswith("minutes from now")  # OLLAMA_KEEP_ALIVE=10m on the shared server
    assert server.cli("ps", short).stdout.count(short) == 1
    assert server.cli("ps", "zzz").stdout.strip().split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT",
                                                              "UNTIL"]
    proc = server.cli("stop", short)
    assert (proc.stdout, proc.stderr) == ("", "")
    assert _row(server, f"{short}:latest") is None
    # Stopping a model that exists but is not loaded is quietly fine, as in Ollama.
    assert server.cli("stop", short).returncode == 0


def test_keepalive_flag_sets_until(server, short):
    unload_all(server)
    server.cli("run", "--keepalive", "-1s", short, "hi")
    row = _row(server, f"{short}:latest")
    assert row is not None and row[5] == "Forever"
    server.cli("stop", short)


def test_stop_unknown_model(server):
    proc = server.cli("stop", "no-such-model", check=False)
    assert proc.returncode == 1
    assert proc.stderr == 'Error: couldn\'t find model "no-such-model" to stop\n'
