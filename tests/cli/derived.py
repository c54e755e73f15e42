"""Models derived from the shared server's smollm2:135m, for deterministic and short CLI runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def derived_model(server: Any, name: str, **parameters: Any) -> Iterator[str]:
    """Create ``name`` FROM smollm2:135m with ``parameters`` through /api/create; delete it afterwards."""
    with server.http() as http:
        response = http.post("/api/create", json={"model": name, "from": "smollm2:135m",
                                                  "parameters": parameters, "stream": False})
        assert response.status_code == 200, response.text
    try:
        yield name
    finally:
        with server.http() as http:
            http.post("/api/generate", json={"model": name, "keep_alive": 0})
            http.request("DELETE", "/api/delete", json={"model": name})


def unload_all(server: Any) -> None:
    """Unload every running model of the shared server.

    A runner is shared by every name of the same weights and load options, and ps names it after
    the model that loaded it (as upstream does), so a test that looks for its own name in ps must
    load the weights itself."""
    with server.http() as http:
        for model in http.get("/api/ps").json()["models"]:
            http.post("/api/generate", json={"model": model["name"], "keep_alive": 0})
