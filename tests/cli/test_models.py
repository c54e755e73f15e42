"""The create command's DRAFT handling, before anything reaches a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli.models import _draft_fields


def test_a_draft_naming_a_model_becomes_the_draft_field(tmp_path: Path) -> None:
    assert _draft_fields(["smollm2:135m"], None, tmp_path, client=None, status=None) == {"draft": "smollm2:135m"}
    assert _draft_fields([], None, tmp_path, client=None, status=None) == {}


@pytest.mark.parametrize(("drafts", "message"), [
    (["./missing.gguf"], "draft './missing.gguf' not found"),
    (["a:1", "b:2"], "only one DRAFT model is supported"),
    (["same.gguf"], "DRAFT must not reference the same local path as FROM"),  # as upstream refuses
])
def test_bad_drafts_are_refused(tmp_path: Path, drafts: list[str], message: str) -> None:
    model = tmp_path / "same.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(SystemExit, match=message):
        _draft_fields(drafts, model, tmp_path, client=None, status=None)
