"""Split GGUFs in /api/create: the shards of llama.cpp's ``gguf-split``, grouped, checked and linked.

``gguf-split`` writes ``<prefix>-00001-of-0000N.gguf`` ... ``<prefix>-0000N-of-0000N.gguf``.  Every
shard carries ``split.no`` (0-based), ``split.count`` and ``split.tensors.count`` (the whole model's
tensors); only the first carries the model's metadata.  As Ollama does, the server stores a split
model as ONE model blob: llama.cpp's quantizer reads split input when it is given the first shard
with its siblings next to it under the same naming pattern, so merging (the quantizer's copy mode)
and ``-q`` are one pass of the quantizer child over a folder of links to the uploaded blobs
(:func:`linked_shards`).

Everything that can be wrong with the shards the client sent (one missing, one given twice, one
from another split set, names that contradict the metadata) is found here from the headers alone,
before the create streams anything, and answered with a 400 that names the file.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import BadRequest, BlobNotFound, InvalidGGUF
from appliance.store.blobs import BlobStore, translate_disk_full
from appliance.store.gguf import GGUFInfo, read_gguf

#: llama.cpp's shard names (``llama_split_path``): five digits each, the index counting from 1.
_SPLIT_NAME_RE = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.gguf")
#: ``split.count`` is a uint16 in every file gguf-split writes.
MAX_SHARDS = 65535


def parse_split_name(name: str) -> tuple[str, int, int] | None:
    """``(prefix, index from 1, count)`` of a file named as llama.cpp names shards, else None."""
    match = _SPLIT_NAME_RE.fullmatch(posixpath.basename(name))
    if match is None:
        return None
    index, count = int(match.group(2)), int(match.group(3))
    if not 1 <= index <= count:
        return None
    return match.group(1), index, count


def split_name(prefix: str, index: int, count: int) -> str:
    """The name of shard ``index`` (from 1) of ``count``, as llama.cpp's ``llama_split_path`` makes it."""
    return f"{prefix}-{index:05d}-of-{count:05d}.gguf"


def _split_int(info: GGUFInfo, key: str, filename: str) -> int | None:
    value = info.metadata.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= (1 << 31) - 1:
        raise BadRequest(f"split GGUF {filename!r}: {key} must be a non-negative integer, not {value!r}")
    return value


def is_shard(info: GGUFInfo, filename: str) -> bool:
    """Whether a GGUF is one shard of several (``split.count`` > 1)."""
    count = _split_int(info, "split.count", filename)
    return count is not None and count > 1


@dataclass(frozen=True)
class Shard:
    """One uploaded shard: the client's name for it, its blob and its header."""

    filename: str
    digest: str
    info: GGUFInfo
    index: int  # from 1, as in the file name
    count: int
    prefix: str


@dataclass(frozen=True)
class SplitModel:
    """Every shard of one split GGUF, in order; the first holds the model's metadata."""

    shards: tuple[Shard, ...]

    @property
    def first(self) -> Shard:
        return self.shards[0]

    @property
    def size(self) -> int:
        return sum(shard.info.file_size for shard in self.shards)

    @property
    def tensor_count(self) -> int:
        return sum(len(shard.info.tensors) for shard in self.shards)


def take_split_model(blobs: BlobStore, files: Mapping[str, str]) -> tuple[SplitModel | None, dict[str, str]]:
    """Pick the shards of a split GGUF out of an /api/create ``files`` map: (the checked split model or
    None, the other files).  A file that is missing or not a GGUF is left with the others, for the
    caller to report.  Raises BadRequest naming the file when the shards do not make one whole model."""
    shards: list[Shard] = []
    rest: dict[str, str] = {}
    for filename, digest in files.items():
        path = blobs.path(digest)  # validates the digest
        try:
            info = read_gguf(path, max_array=0)
        except (OSError, InvalidGGUF):
            rest[filename] = digest
            continue
        if not is_shard(info, filename):
            rest[filename] = digest
            continue
        shards.append(_shard(filename, digest, info))
    if not shards:
        return None, rest
    return _whole_model(shards), rest


def _shard(filename: str, digest: str, info: GGUFInfo) -> Shard:
    """Check that the file's name and its split metadata tell the same story."""
    count = _split_int(info, "split.count", filename) or 0
    number = _split_int(info, "split.no", filename)
    if number is None:
        raise BadRequest(f"split GGUF {filename!r} has split.count {count} but no split.no")
    if count > MAX_SHARDS or number >= count:
        raise BadRequest(f"split GGUF {filename!r}: split.no {number} is not below split.count {count}")
    named = parse_split_name(filename)
    if named is None:
        raise BadRequest(f"split GGUF {filename!r} is shard {number + 1} of {count} but is not named as "
                         f"llama.cpp names shards ({split_name('<name>', number + 1, count)})")
    prefix, index, name_count = named
    if name_count != count:
        raise BadRequest(f"split GGUF {filename!r}: the name says {name_count} shards but its split.count "
                         f"metadata says {count}")
    if index != number + 1:
        raise BadRequest(f"split GGUF {filename!r}: the name says shard {index} but its split.no metadata "
                         f"says shard {number + 1}")
    return Shard(filename, digest, info, index, count, prefix)


def _whole_model(shards: list[Shard]) -> SplitModel:
    """The shards in order, once each, all of one set; or a BadRequest naming what is wrong."""
    shards.sort(key=lambda shard: (shard.index, shard.filename))
    lead = shards[0]
    by_index: dict[int, Shard] = {}
    for shard in shards:
        if shard.prefix != lead.prefix or shard.count != lead.count:
            raise BadRequest(f"split GGUF {shard.filename!r} does not belong to the same split set as "
                             f"{lead.filename!r}: every shard must be named "
                             f"{lead.prefix}-NNNNN-of-{lead.count:05d}.gguf")
        if shard.index in by_index:
            raise BadRequest(f"split GGUF shard {shard.index} of {shard.count} given twice: "
                             f"{by_index[shard.index].filename!r} and {shard.filename!r}")
        by_index[shard.index] = shard
    missing = [split_name(lead.prefix, i, lead.count) for i in range(1, lead.count + 1) if i not in by_index]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise BadRequest(f"split GGUF {split_name(lead.prefix, 1, lead.count)!r} is incomplete: "
                         f"{len(missing)} of {lead.count} shards missing ({shown})")
    model = SplitModel(tuple(shards))
    _check_one_set(model)
    return model


def _check_one_set(model: SplitModel) -> None:
    """Shards of different split runs can share names; their tensor lists cannot fit together."""
    first = model.first
    if "general.architecture" not in first.info.metadata:
        raise BadRequest(f"split GGUF {first.filename!r} is the first shard but carries no model metadata "
                         "(general.architecture)")
    if first.info.architecture == "clip" or first.info.metadata.get("general.type") == "mmproj":
        raise BadRequest(f"split GGUF {first.filename!r} is a projector; merge it with llama.cpp's "
                         "llama-gguf-split --merge and import the single file")
    expected = _split_int(first.info, "split.tensors.count", first.filename)
    if expected is None:
        raise BadRequest(f"split GGUF {first.filename!r} has no split.tensors.count")
    owner: dict[str, str] = {}
    for shard in model.shards:
        claimed = _split_int(shard.info, "split.tensors.count", shard.filename)
        if claimed != expected:
            raise BadRequest(f"split GGUF {shard.filename!r} does not belong to the same split set as "
                             f"{first.filename!r}: it is from a model of {claimed} tensors, not {expected}")
        for tensor in shard.info.tensors:
            other = owner.setdefault(tensor.name, shard.filename)
            if other != shard.filename:
                raise BadRequest(f"split GGUF {shard.filename!r} does not belong to the same split set as "
                                 f"{first.filename!r}: tensor {tensor.name!r} is also in {other!r}")
    if model.tensor_count != expected:
        raise BadRequest(f"split GGUF {first.filename!r}: the shards hold {model.tensor_count} tensors but "
                         f"split.tensors.count says {expected}; a shard is from another split set")


@contextlib.contextmanager
def linked_shards(blobs: BlobStore, model: SplitModel) -> Iterator[Path]:
    """A temp folder in the models folder holding links to the shards' blobs under llama.cpp's shard
    names; yields the first shard's path, removes the folder on the way out (whatever happened)."""
    from appliance.store.convert.importer import LINK_DIR_PREFIX  # the start-up prune knows the prefix

    with translate_disk_full(blobs.models_dir):
        folder = Path(tempfile.mkdtemp(prefix=LINK_DIR_PREFIX + "split-", dir=blobs.models_dir))
    try:
        count = len(model.shards)
        for shard in model.shards:
            target = blobs.path(shard.digest)
            if not target.is_file():
                raise BlobNotFound(f"blob {shard.digest} for {shard.filename!r} is missing from the store")
            with translate_disk_full(blobs.models_dir):
                (folder / split_name("model", shard.index, count)).symlink_to(target)
        yield folder / split_name("model", 1, count)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
