"""``ollama ps`` and ``ollama stop``: the models the server has loaded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from appliance.api.client import Client, ResponseError
from appliance.cli.format import human_bytes, human_duration, human_time, parse_time, table
from appliance.cli.run import load_or_unload


def processor_text(size: int, size_vram: int) -> str:
    """Where a loaded model lives: ``100% CPU``, ``100% GPU`` or a ``48%/52% CPU/GPU`` split."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def rpc_processor_text(placement: Any) -> str:
    """``RPC 2 workers / CPU`` for a model spread over llama.cpp RPC workers (/api/ps's ``rpc``), else ""."""
    if not isinstance(placement, dict) or not placement.get("workers"):
        return ""
    n = len(placement["workers"])
    local = [str(d.get("name") or "") for d in placement.get("devices") or ()
             if isinstance(d, dict) and not d.get("endpoint") and d.get("model_bytes")]
    kinds = sorted({"CPU" if name.startswith("CPU") else "GPU" for name in local})
    return f"RPC {n} worker{'s' if n != 1 else ''}" + "".join(f" / {kind}" for kind in kinds)


def until_text(expires_at: str | None, now: datetime | None = None) -> str:
    """When a model will be unloaded: ``4 minutes from now``, ``Forever``, ``Stopping...``."""
    now = now or datetime.now(UTC)
    if not expires_at or parse_time(expires_at) < now:
        return "Stopping..."
    return human_time(expires_at, "Never", now=now)


def ps_rows(models: list[dict[str, Any]], prefix: str = "", now: datetime | None = None) -> list[list[str]]:
    rows = []
    for m in models:
        name = str(m.get("name") or m.get("model") or "")
        if not name.startswith(prefix):
            continue
        size = int(m.get("size") or 0)
        processor = rpc_processor_text(m.get("rpc")) or processor_text(size, int(m.get("size_vram") or 0))
        rows.append([name, str(m.get("digest") or "")[:12], human_bytes(size), processor,
                     str(int(m.get("context_length") or 0)), until_text(m.get("expires_at"), now)])
    return rows


def request_rows(requests: list[dict[str, Any]], prefix: str = "") -> list[list[str]]:
    """``ollama ps -a``'s second table: the generations queued and running, oldest first."""
    rows = []
    for r in requests:
        model = str(r.get("model") or "")
        if not model.startswith(prefix):
            continue
        age = float(r.get("age_seconds") or 0)
        rows.append([str(r.get("id") or ""), model, str(r.get("route") or ""), str(r.get("state") or ""),
                     f"{age:.0f}s" if age < 120 else human_duration(age), str(int(r.get("tokens") or 0)),
                     str(r.get("client") or "")])
    return rows


def run_ps(filters: list[str], all_requests: bool = False) -> int:
    prefix = filters[0] if filters else ""  # like Ollama, only the first argument filters (by name prefix)
    with Client() as client:
        models = client.ps()
        requests = client.requests() if all_requests else []
    print(table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], ps_rows(models, prefix)))
    if all_requests:
        print()
        print(table(["REQUEST", "MODEL", "ROUTE", "STATE", "AGE", "TOKENS", "CLIENT"],
                    request_rows(requests, prefix)))
    return 0


def run_stop(model: str) -> int:
    with Client() as client:
        try:
            load_or_unload(client, model, keep_alive=0)
        except ResponseError as exc:
            if "not found" in str(exc):
                raise ResponseError(f'couldn\'t find model "{model}" to stop', exc.status) from None
            raise
    return 0
