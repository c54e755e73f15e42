"""The header rewriter: what no rule touches is written back byte for byte, edits land where they
should, and a copy that cannot be written leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import InsufficientStorage
from appliance.store.gguf import read_gguf
from appliance.store.gguf_rewrite import TYPE_I32, read_editable, write_copy
from tests.fixtures.faults import small_disk
from tests.fixtures.ollama_layouts import write_ollama_gptoss
from tests.fixtures.tiny_gguf import write_tiny_llama


@pytest.mark.parametrize("write", [write_tiny_llama, write_ollama_gptoss])
def test_an_unedited_header_is_written_back_byte_for_byte(write, tmp_path: Path) -> None:
    source = write(tmp_path / "source.gguf")
    write_copy(source, read_editable(source, read_gguf(source)), tmp_path / "copy.gguf")
    assert (tmp_path / "copy.gguf").read_bytes() == source.read_bytes()


def test_edits_change_keys_and_tensors_and_keep_the_data(tmp_path: Path) -> None:
    source = write_ollama_gptoss(tmp_path / "source.gguf")
    info = read_gguf(source)
    header = read_editable(source, info)
    header.set_arch("renamed")
    header.set_array("renamed.sections", TYPE_I32, "i", [1, -2, 3])
    header.truncate_array("tokenizer.ggml.tokens", 10)
    header.drop_tensors("blk.1.")
    header.shrink_rows("token_embd.weight", 100)
    write_copy(source, header, tmp_path / "copy.gguf")
    out = read_gguf(tmp_path / "copy.gguf")
    assert out.architecture == "renamed"
    assert out.metadata["renamed.block_count"] == 2 and "gptoss.block_count" not in out.metadata
    assert out.metadata["renamed.sections"] == [1, -2, 3]
    assert out.metadata["tokenizer.ggml.tokens"] == info.metadata["tokenizer.ggml.tokens"][:10]
    assert not [t for t in out.tensors if t.name.startswith("blk.1.")]
    embd = next(t for t in out.tensors if t.name == "token_embd.weight")
    assert embd.shape == (64, 100)
    old = next(t for t in info.tensors if t.name == "token_embd.weight")
    with open(source, "rb") as a, open(tmp_path / "copy.gguf", "rb") as b:
        a.seek(info.data_offset + old.offset)
        b.seek(out.data_offset + embd.offset)
        assert b.read(embd.n_bytes) == a.read(embd.n_bytes)  # the first 100 rows, unchanged


def test_a_copy_that_does_not_fit_raises_507_and_leaves_nothing_behind(tmp_path: Path) -> None:
    source = write_ollama_gptoss(tmp_path / "source.gguf")
    header = read_editable(source, read_gguf(source))
    with small_disk(tmp_path / "disk", "8m") as disk:  # the copy needs its size and 64 MiB to spare
        with pytest.raises(InsufficientStorage) as caught:
            write_copy(source, header, disk / "copy.gguf")
        assert caught.value.status == 507
        assert list(disk.iterdir()) == []
