import hashlib
import json
import os

import pytest

from appliance.errors import ApplianceError, BadRequest, InvalidName, ModelNotFound
from appliance.store import manifests as mf
from appliance.store.blobs import BlobStore
from appliance.store.local import Store
from appliance.store.manifests import Layer, Manifest, ManifestStore
from appliance.store.names import parse_name


def _manifest(store: BlobStore) -> Manifest:
    config_digest, _ = store.put_bytes(b'{"model_format":"gguf"}\n')
    model_digest, _ = store.put_bytes(b"GGUF-ish")
    return Manifest(
        config=Layer(mf.MEDIA_CONFIG, config_digest, 24),
        layers=(Layer(mf.MEDIA_MODEL, model_digest, 8, from_="base:latest"),),
    )


def test_manifest_bytes_match_go_layout(tmp_path):
    m = _manifest(BlobStore(tmp_path))
    raw = m.to_bytes()
    assert raw.startswith(b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
                          b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:')
    assert b'"from":"base:latest"' in raw and b" " not in raw
    assert Manifest.from_bytes(raw) == m


def test_write_get_and_case_insensitive_lookup(tmp_path):
    blobs, manifests = BlobStore(tmp_path), ManifestStore(tmp_path)
    m = _manifest(blobs)
    path = manifests.write(parse_name("Smol:Latest"), m)
    assert path == tmp_path / "manifests/registry.ollama.ai/library/Smol/Latest"
    stored = manifests.get(parse_name("smol"))
    assert stored.manifest == m
    assert stored.name.display == "Smol:Latest"
    assert stored.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    # Writing a differently-cased twin replaces the first instead of adding a second entry.
    manifests.write(parse_name("smol:latest"), m)
    assert [s.name.display for s in manifests.all()] == ["smol:latest"]


def test_missing_and_garbage_manifests(tmp_path):
    manifests = ManifestStore(tmp_path)
    with pytest.raises(ModelNotFound, match="model 'nope:latest' not found"):
        manifests.get(parse_name("nope"))
    bad = tmp_path / "manifests/registry.ollama.ai/library/bad/latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    assert list(manifests.all()) == []
    with pytest.raises(BadRequest):
        manifests.get(parse_name("bad"))


def test_oversized_manifest_is_refused(tmp_path):
    path = tmp_path / "manifests/registry.ollama.ai/library/big/latest"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.truncate(mf.MAX_MANIFEST_BYTES + 10)
    with pytest.raises(BadRequest, match="too large"):
        ManifestStore(tmp_path).get(parse_name("big"))


def test_delete_removes_only_unshared_blobs_and_empty_dirs(tmp_path):
    store = Store(tmp_path)
    m = _manifest(store.blobs)
    only_a, _ = store.blobs.put_bytes(b"only a")
    a = Manifest(config=m.config, layers=(*m.layers, Layer(mf.MEDIA_SYSTEM, only_a, 6)))
    store.write_manifest(parse_name("a"), a)
    store.write_manifest(parse_name("me/b"), m)
    store.delete(parse_name("a"))
    assert not store.blobs.exists(only_a)
    assert all(store.blobs.exists(d) for d in m.all_digests())
    assert not (tmp_path / "manifests/registry.ollama.ai/library").exists()
    store.delete(parse_name("me/b"))
    assert list(store.blobs.digests()) == []


def test_write_manifest_refuses_missing_or_wrong_size_blobs(tmp_path):
    store = Store(tmp_path)
    m = _manifest(store.blobs)
    wrong = Manifest(config=m.config, layers=(Layer(mf.MEDIA_MODEL, m.layers[0].digest, 999),))
    with pytest.raises(BadRequest):
        store.write_manifest(parse_name("x"), wrong)
    assert not store.manifests.exists(parse_name("x"))


def test_reads_a_store_written_by_ollama(tmp_path):
    """A manifest laid out by Ollama (hand-written from its docs) lists and copies here."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()

    def blob(data: bytes) -> str:
        hexd = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{hexd}").write_bytes(data)
        return f"sha256:{hexd}"

    config = (b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],'
              b'"model_type":"134.52M","file_type":"Q4_1","architecture":"amd64","os":"linux",'
              b'"rootfs":{"type":"layers","diff_ids":[]}}')
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", "digest": blob(b"weights"), "size": 7},
        {"mediaType": "application/vnd.ollama.image.template", "digest": blob(b"{{ .Prompt }}"), "size": 13},
        {"mediaType": "application/vnd.ollama.image.params", "digest": blob(b'{"stop":["x"]}'), "size": 14},
    ]
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
           "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": blob(config),
                      "size": len(config)}, "layers": layers}
    path = tmp_path / "manifests/registry.ollama.ai/library/smollm2/135m"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    store = Store(tmp_path)
    [listed] = store.list()
    assert listed.name.display == "smollm2:135m"
    assert listed.manifest.size == len(config) + 7 + 13 + 14
    model = store.get(parse_name("smollm2:135m"))
    assert model.template == "{{ .Prompt }}" and model.parameters == {"stop": ["x"]}
    assert model.details.parameter_size == "134.52M" and model.details.quantization_level == "Q4_1"
    store.copy(parse_name("smollm2:135m"), parse_name("mine"))
    assert json.loads((tmp_path / "manifests/registry.ollama.ai/library/mine/latest").read_bytes()) == doc
    assert os.path.getsize(tmp_path / "manifests/registry.ollama.ai/library/mine/latest") > 0


def test_os_errors_reach_no_client_with_the_models_path(tmp_path, monkeypatch):
    # A name valid by the rules but longer than this filesystem takes (as on eCryptfs, 143 bytes).
    monkeypatch.setattr("appliance.store.names.MAX_PATH_COMPONENT", 350)
    blobs, manifests = BlobStore(tmp_path), ManifestStore(tmp_path)
    long_name = parse_name("h" * 300 + "/library/m:latest")
    manifests.root.mkdir(parents=True)
    for call in (lambda: manifests.get(long_name), lambda: manifests.exists(long_name),
                 lambda: manifests.write(long_name, _manifest(blobs)), lambda: manifests.delete(long_name)):
        with pytest.raises(InvalidName) as info:
            call()
        assert info.value.status == 400 and "File name too long" in str(info.value)
        assert str(tmp_path) not in str(info.value) and "Errno" not in str(info.value)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "manifests" / "x"))

    monkeypatch.setattr(mf.os, "replace", refuse)
    with pytest.raises(ApplianceError) as failed:
        manifests.write(parse_name("m:t"), _manifest(blobs))
    assert failed.value.status == 500
    assert str(failed.value) == "cannot access the manifest of m:t: Permission denied"
