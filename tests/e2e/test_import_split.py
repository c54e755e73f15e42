"""`ollama create` from a split GGUF (llama.cpp's gguf-split shards) through a real server: the shards
are uploaded, checked, merged into one model blob by llama.cpp's quantizer in the server's child, and
the model answers exactly as the unsplit GGUF does; shards that do not make one whole model are refused
with a 400 that names the file, and leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.assets.default_model import modelfile
from appliance.store.gguf import read_gguf
from tests.conftest import Server
from tests.fixtures.split_gguf import poison_tensor, split_gguf
from tests.fixtures.tiny_gguf import write_tiny_llama

GREEDY = {"temperature": 0, "seed": 7, "num_predict": 16}
PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def smol_shards(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> list[Path]:
    """The bundled SmolLM2 as three shards, alone in their folder."""
    return split_gguf(smollm2_gguf, tmp_path_factory.mktemp("split") / "smol", 3, prefix="smol")


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Another model (a tiny random F16 llama), also as three shards."""
    folder = tmp_path_factory.mktemp("tiny-split")
    return split_gguf(write_tiny_llama(folder / "tiny.gguf"), folder / "shards", 3, prefix="tiny")


def _manifest(server: Server, name: str) -> dict[str, Any] | None:
    path = server.models / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    return json.loads(path.read_bytes()) if path.exists() else None


def _model_blob(server: Server, name: str) -> Path:
    manifest = _manifest(server, name)
    assert manifest is not None, f"{name} was not created"
    [layer] = [layer for layer in manifest["layers"] if layer["mediaType"].endswith(".model")]
    return server.models / "blobs" / layer["digest"].replace(":", "-")


def _greedy(server: Server, name: str) -> str:
    reply = httpx.post(f"{server.url}/api/generate", timeout=300, json={
        "model": name, "prompt": PROMPT, "stream": False, "options": GREEDY})
    assert reply.status_code == 200, reply.text
    assert reply.json()["eval_count"] > 0
    return str(reply.json()["response"])


def _show(server: Server, name: str) -> dict[str, Any]:
    reply = httpx.post(f"{server.url}/api/show", json={"model": name}, timeout=60)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """Every tensor of a GGUF: its type, shape and the sha256 of its data."""
    info = read_gguf(path, max_array=0)
    out: dict[str, tuple[str, tuple[int, ...], str]] = {}
    with path.open("rb") as f:
        for tensor in info.tensors:
            f.seek(info.data_offset + tensor.offset)
            data = f.read(tensor.n_bytes)
            out[tensor.name] = (tensor.type_name, tensor.shape, hashlib.sha256(data).hexdigest())
    return out


def _leftovers(server: Server) -> list[str]:
    """Temp files of blob writers and link folders of imports: none may outlive a create."""
    return sorted([p.name for p in (server.models / "blobs").glob(".tmp-*")]
                  + [p.name for p in server.models.glob(".convert-*")])


def _upload(server: Server, path: Path) -> str:
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    with path.open("rb") as f:
        reply = httpx.post(f"{server.url}/api/blobs/{digest}", content=f, timeout=300)
    assert reply.status_code in (200, 201), reply.text
    return digest


def test_create_from_the_folder_and_from_the_first_shard_runs_as_the_unsplit_model(
        server: Server, smollm2_gguf: Path, smol_shards: list[Path], tmp_path: Path) -> None:
    for name, source in (("smol-split-dir", smol_shards[0].parent), ("smol-split-first", smol_shards[0])):
        (tmp_path / name).write_text(modelfile(source))
        out = server.cli("create", name, "-f", str(tmp_path / name))
        assert "merging split GGUF shards" in out.stderr and "success" in out.stderr

    # One model blob, the shards merged: a single GGUF with the original's tensors and no split keys.
    merged = _model_blob(server, "smol-split-dir")
    assert _model_blob(server, "smol-split-first") == merged  # the same shards merge to the same bytes
    assert not [key for key in read_gguf(merged, max_array=0).metadata if key.startswith("split.")]
    assert _tensors(merged) == _tensors(smollm2_gguf)
    assert _leftovers(server) == []

    unsplit = _show(server, "smollm2:135m")
    expected = _greedy(server, "smollm2:135m")
    assert expected.strip()
    for name in ("smol-split-dir", "smol-split-first"):
        show = _show(server, name)
        assert show["details"] == unsplit["details"]
        assert show["template"] == unsplit["template"] and show["parameters"] == unsplit["parameters"]
        assert show["model_info"]["general.parameter_count"] == unsplit["model_info"]["general.parameter_count"]
        assert _greedy(server, name) == expected

    for name in ("smol-split-dir", "smol-split-first"):
        httpx.request("DELETE", f"{server.url}/api/delete", json={"model": name}, timeout=60)


def test_quantize_reads_the_shards_directly(server: Server, tiny_shards: list[Path], tmp_path: Path) -> None:
    unsplit = tiny_shards[0].parent.parent / "tiny.gguf"
    for name, source in (("tiny-split-q8", tiny_shards[0]), ("tiny-whole-q8", unsplit)):
        (tmp_path / name).write_text(f"FROM {source}\n")
        out = server.cli("create", name, "-f", str(tmp_path / name), "-q", "q8_0")
        assert "quantizing F16 model to Q8_0" in out.stderr and "success" in out.stderr
    assert "merging split GGUF shards" not in out.stderr  # one pass: no merge before the quantizer

    split_show, whole_show = _show(server, "tiny-split-q8"), _show(server, "tiny-whole-q8")
    assert split_show["details"]["quantization_level"] == "Q8_0"
    assert split_show["details"] == whole_show["details"]
    info = read_gguf(_model_blob(server, "tiny-split-q8"), max_array=0)
    assert info.file_type == "Q8_0" and not [key for key in info.metadata if key.startswith("split.")]
    # The same tensors, quantized the same way, as from the unsplit file.
    assert _tensors(_model_blob(server, "tiny-split-q8")) == _tensors(_model_blob(server, "tiny-whole-q8"))
    assert _leftovers(server) == []
    for name in ("tiny-split-q8", "tiny-whole-q8"):
        httpx.request("DELETE", f"{server.url}/api/delete", json={"model": name}, timeout=60)


def _bad_bodies(smol: list[str], tiny: list[str]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Create bodies whose shards do not make one model, with what the 400 must say."""
    a1, a2, a3 = smol
    names = [f"smol-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    return {
        "missing shard": ({"files": {names[0]: a1, names[2]: a3}},
                          ["incomplete", "1 of 3 shards missing", names[1]]),
        "shard from another split set": ({"files": {names[0]: a1, names[1]: tiny[1], names[2]: a3}},
                                         [names[1], "does not belong to the same split set", names[0]]),
        "renamed to another prefix": ({"files": {names[0]: a1, "other-00002-of-00003.gguf": a2, names[2]: a3}},
                                      ["other-00002-of-00003.gguf", "does not belong to the same split set"]),
        "renamed to another index": ({"files": {names[0]: a1, names[1]: a3, names[2]: a2}},
                                     [names[1], "the name says shard 2 but its split.no metadata says shard 3"]),
        "renamed to another count": ({"files": {names[0]: a1, names[1]: a2, "smol-00003-of-00004.gguf": a3}},
                                     ["smol-00003-of-00004.gguf", "the name says 4 shards",
                                      "split.count metadata says 3"]),
        "not named as a shard": ({"files": {"smol.gguf": a1, names[1]: a2, names[2]: a3}},
                                 ["'smol.gguf' is shard 1 of 3 but is not named as llama.cpp names shards"]),
        "shard given twice": ({"files": {names[0]: a1, f"copy/{names[0]}": a1, names[1]: a2, names[2]: a3}},
                              ["shard 1 of 3 given twice", names[0], f"copy/{names[0]}"]),
        "split adapter": ({"from": "smollm2:135m", "adapters": {names[0]: a1}},
                          [names[0], "only the model itself may be a split GGUF"]),
    }


def test_shards_that_do_not_make_one_model_are_refused_and_leave_nothing(
        server: Server, smol_shards: list[Path], tiny_shards: list[Path]) -> None:
    smol = [_upload(server, shard) for shard in smol_shards]
    tiny = [_upload(server, shard) for shard in tiny_shards]
    blobs_before = sorted(p.name for p in (server.models / "blobs").iterdir())
    for case, (body, expected) in _bad_bodies(smol, tiny).items():
        reply = httpx.post(f"{server.url}/api/create", timeout=120, json={"model": "bad-split", **body})
        assert reply.status_code == 400, (case, reply.text)
        error = reply.json()["error"]
        assert all(part in error for part in expected), (case, error)
        assert _manifest(server, "bad-split") is None, case
        assert sorted(p.name for p in (server.models / "blobs").iterdir()) == blobs_before, case
        assert _leftovers(server) == [], case


def test_the_cli_refuses_an_incomplete_split(server: Server, smol_shards: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "incomplete"
    folder.mkdir()
    for shard in (smol_shards[0], smol_shards[2]):
        shutil.copyfile(shard, folder / shard.name)
    blobs_before = sorted(p.name for p in (server.models / "blobs").iterdir())
    modelfile_path = tmp_path / "Modelfile"

    # A folder is uploaded whole; the server refuses it and names the missing shard.
    modelfile_path.write_text(f"FROM {folder}\n")
    out = server.cli("create", "incomplete-split", "-f", str(modelfile_path), check=False)
    assert out.returncode == 1
    assert "incomplete" in out.stderr and "smol-00002-of-00003.gguf" in out.stderr
    # The first shard alone: the client looks for its siblings and names the one it cannot find.
    modelfile_path.write_text(f"FROM {folder / smol_shards[0].name}\n")
    out = server.cli("create", "incomplete-split", "-f", str(modelfile_path), check=False)
    assert out.returncode == 1
    assert "Error: split GGUF smol-00001-of-00003.gguf is incomplete" in out.stderr
    assert "smol-00002-of-00003.gguf" in out.stderr
    # Another shard than the first is not a model on its own.
    modelfile_path.write_text(f"FROM {folder / smol_shards[2].name}\n")
    out = server.cli("create", "incomplete-split", "-f", str(modelfile_path), check=False)
    assert out.returncode == 1 and "FROM takes the first shard (smol-00001-of-00003.gguf)" in out.stderr

    assert _manifest(server, "incomplete-split") is None
    uploaded = {"sha256-" + hashlib.sha256(shard.read_bytes()).hexdigest() for shard in folder.iterdir()}
    assert {p.name for p in (server.models / "blobs").iterdir()} <= {*blobs_before, *uploaded}
    assert _leftovers(server) == []


def test_a_merge_llama_cpp_refuses_leaves_nothing(server: Server, tmp_path: Path) -> None:
    """Shards whose headers fit together but whose data llama.cpp refuses (a NaN weight) fail the merge
    in the quantizer child: a 400 with llama.cpp's reason and no server path, and nothing is kept."""
    shards = split_gguf(write_tiny_llama(tmp_path / "odd.gguf", seed=3), tmp_path / "odd", 2, prefix="odd")
    poison_tensor(shards[1], "blk.0.ffn_down.weight")
    files = {shard.name: _upload(server, shard) for shard in shards}
    blobs_before = sorted(p.name for p in (server.models / "blobs").iterdir())
    reply = httpx.post(f"{server.url}/api/create", timeout=300,
                       json={"model": "odd-split", "files": files, "stream": False})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == "merging the split GGUF failed: tensor 'blk.0.ffn_down.weight' has invalid data"
    assert _manifest(server, "odd-split") is None
    assert sorted(p.name for p in (server.models / "blobs").iterdir()) == blobs_before
    assert _leftovers(server) == []
