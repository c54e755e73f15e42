"""Write appliance/assets/openapi.json, the copy of docs/openapi.yaml that the server carries and serves.

The server serves the JSON bytes as they are: no YAML parser in the binary (build.spec leaves PyYAML
out), nothing parsed on a request.  Run after editing docs/openapi.yaml:

    .venv/bin/python scripts/openapi-json.py

tests/server/test_openapi.py fails while the two files differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "openapi.yaml"
TARGET = ROOT / "appliance" / "assets" / "openapi.json"


def render(document: Any) -> str:
    """The JSON text for ``document``: one key per line, so that a change to the YAML diffs readably."""
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    TARGET.write_text(render(yaml.safe_load(SOURCE.read_text(encoding="utf-8"))), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
