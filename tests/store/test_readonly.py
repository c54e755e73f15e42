"""A read-only store: every change is refused (403) before a file is touched, prune removes nothing,
reads work, the probe that finds a writable folder leaves nothing behind, and a read-only mount is
found (as root, who ignores file modes) and uses the translated copies its writer made."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from appliance.errors import Forbidden
from appliance.store.create import plan_create, run_create
from appliance.store.gguf_compat import cache_dir, translated_copy
from appliance.store.local import Store
from appliance.store.names import parse_name
from appliance.store.readonly import (
    PROBE_PREFIX,
    REASON_MOUNT,
    REASON_SETTING,
    StoreReadOnly,
    TranslationNeedsWriter,
)
from tests.fixtures.mounts import read_only_bind
from tests.fixtures.ollama_layouts import write_ollama_gptoss
from tests.fixtures.tiny_gguf import write_tiny_llama


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``root`` with its mode and bytes."""
    return {str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A models folder with one model, an unreferenced old blob and a dead writer's temp file."""
    writer = Store(tmp_path / "models")
    assert writer.decide_read_only() == ""
    gguf = write_tiny_llama(tmp_path / "tiny.gguf")
    digest, _, _ = writer.blobs.put_file(gguf)
    run_create(writer, plan_create(writer, {"model": "base", "files": {"tiny.gguf": digest}}), lambda _: None)
    orphan, _ = writer.blobs.put_bytes(b"nobody uses me")
    (writer.blobs.blobs_dir / ".tmp-deadwriter").write_bytes(b"half")
    old = time.time() - 7 * 86400
    for path in (writer.blobs.path(orphan), writer.blobs.blobs_dir / ".tmp-deadwriter"):
        os.utime(path, (old, old))
    return writer.root


def test_a_writable_folder_is_found_writable_and_the_probe_leaves_nothing(tmp_path):
    store = Store(tmp_path / "fresh" / "models")
    assert store.decide_read_only() == "" and not store.read_only
    assert store.blobs.blobs_dir.is_dir() and store.manifests.root.is_dir()
    assert not [p for p in store.root.rglob("*") if p.name.startswith(PROBE_PREFIX)]


def test_every_change_is_refused_and_nothing_is_touched(folder):
    before = snapshot(folder)
    store = Store(folder)
    assert store.decide_read_only(requested=True) == REASON_SETTING and store.read_only
    base, other = parse_name("base"), parse_name("other")
    digests = store.referenced_digests()
    changes = [
        lambda: store.copy(base, other),
        lambda: store.delete(base),
        lambda: store.write_manifest(other, store.manifests.get(base).manifest),
        lambda: store.remove_unused(digests),
        lambda: store.blobs.put_bytes(b"new bytes"),
        lambda: store.blobs.open_writer(),
        store.ensure_dirs,
        lambda: run_create(store, plan_create(store, {"model": "derived", "from": "base", "system": "x"}),
                           lambda _: None),
    ]
    for change in changes:
        with pytest.raises(StoreReadOnly) as caught:
            change()
        assert isinstance(caught.value, Forbidden) and caught.value.status == 403
        assert "read-only" in str(caught.value) and str(folder) not in str(caught.value)
    assert store.prune(grace_s=0) == []  # the dead writer's temp file may be another server's
    assert snapshot(folder) == before


def test_reads_work_on_a_read_only_store(folder):
    store = Store(folder)
    store.decide_read_only(requested=True)
    assert [m.name.display for m in store.list()] == ["base:latest"]
    model = store.get(parse_name("base"))
    assert model.model_path is not None and model.model_path.is_file()
    store.check_blobs(store.manifests.get(parse_name("base")).manifest)


def test_a_translated_copy_is_made_by_the_writer_and_used_by_a_read_only_server(tmp_path):
    models = tmp_path / "models"
    data = write_ollama_gptoss(tmp_path / "gptoss.gguf").read_bytes()
    blob = models / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    with read_only_bind(models, tmp_path / "ro") as ro:
        assert Store(ro).decide_read_only() == REASON_MOUNT
        with pytest.raises(TranslationNeedsWriter) as caught:
            translated_copy(ro / "blobs" / blob.name, ro)
        assert caught.value.status == 403 and "load the model once on the server" in str(caught.value)
        assert not cache_dir(models).exists()
        written = translated_copy(blob, models)  # the writer's first load
        found = translated_copy(ro / "blobs" / blob.name, ro)
        assert found == cache_dir(ro) / written.name and found.read_bytes() == written.read_bytes()
