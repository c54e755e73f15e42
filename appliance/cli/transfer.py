"""``ollama pull`` and ``ollama push``: stream the server's progress and draw it like Ollama."""

from __future__ import annotations

import sys
from typing import TextIO

from appliance.api.client import Client, ResponseError
from appliance.cli.progress import TransferProgress


def pull_model(client: Client, name: str, insecure: bool = False, stream: TextIO | None = None) -> None:
    """Pull ``name`` through ``client``, drawing progress on ``stream`` (stderr); errors raise."""
    with TransferProgress("pulling", stream) as progress:
        for item in client.stream("POST", "/api/pull", {"model": name, "insecure": insecure}):
            progress.show(item)


def push_model(client: Client, name: str, insecure: bool = False, stream: TextIO | None = None) -> None:
    """Push ``name`` through ``client``, drawing progress on ``stream`` (stderr); errors raise."""
    with TransferProgress("pushing", stream) as progress:
        for item in client.stream("POST", "/api/push", {"model": name, "insecure": insecure}):
            progress.show(item)


def run_pull(name: str, insecure: bool = False) -> int:
    with Client() as client:
        pull_model(client, name, insecure)
    return 0


def run_push(name: str, insecure: bool = False) -> int:
    with Client() as client:
        try:
            push_model(client, name, insecure)
        except ResponseError as exc:
            text = str(exc).lower()
            if "access denied" in text or "unauthorized" in text:
                raise ResponseError("you are not authorized to push to this namespace, create the model "
                                    "under a namespace you own", exc.status) from exc
            raise
    sys.stdout.write(f"\nYou can find your model at:\n\n\t{name}\n")
    return 0
