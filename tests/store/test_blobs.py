import errno
import fcntl
import hashlib
import os
import time

import pytest

from appliance.errors import DigestMismatch, InsufficientStorage, InvalidDigest
from appliance.store.blobs import BlobStore, digest_of_bytes, parse_digest

HEX = "a" * 64


@pytest.mark.parametrize("digest", [f"sha256:{HEX}", f"sha256-{HEX}", f"sha256:{HEX.upper()}"])
def test_parse_digest_canonical(digest):
    assert parse_digest(digest) == f"sha256:{HEX}"


@pytest.mark.parametrize(
    "digest",
    ["sha256:../../x", "sha256:" + "a" * 63, "sha256:" + "a" * 65, "sha256:" + "g" * 64, "md5:" + HEX,
     HEX, "sha256:" + "a" * 63 + "/", "sha256:" + HEX + "\n", "", "sha256:", None, 5],
)
def test_parse_digest_rejects(digest):
    with pytest.raises(InvalidDigest):
        parse_digest(digest)


def test_put_bytes_is_content_addressed(tmp_path):
    store = BlobStore(tmp_path)
    digest, created = store.put_bytes(b"hello")
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert created
    assert store.path(digest).read_bytes() == b"hello"
    assert store.path(digest).name == "sha256-" + digest[7:]
    assert oct(store.path(digest).stat().st_mode & 0o777) == "0o644"
    assert store.put_bytes(b"hello") == (digest, False)
    assert list(store.digests()) == [digest]


def test_mismatch_writes_nothing(tmp_path):
    store = BlobStore(tmp_path)
    wrong = digest_of_bytes(b"other")
    with pytest.raises(DigestMismatch):
        store.put_bytes(b"hello", expected=wrong)
    assert os.listdir(store.blobs_dir) == []


def test_interrupted_write_leaves_no_blob(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(RuntimeError), store.open_writer(digest_of_bytes(b"abc")) as w:
        w.write(b"ab")
        raise RuntimeError("connection lost")
    assert os.listdir(store.blobs_dir) == []


def test_prune_keeps_referenced_and_young(tmp_path):
    store = BlobStore(tmp_path)
    keep, _ = store.put_bytes(b"keep")
    drop, _ = store.put_bytes(b"drop")
    young, _ = store.put_bytes(b"young")
    stale_tmp = store.blobs_dir / ".tmp-deadbeef"
    stale_tmp.write_bytes(b"partial")
    old = time.time() - 7200
    for path in (store.path(keep), store.path(drop), stale_tmp):
        os.utime(path, (old, old))
    removed = store.prune({keep})
    assert sorted(removed) == sorted([store.path(drop).name, stale_tmp.name])
    assert store.exists(keep) and store.exists(young) and not store.exists(drop)


def test_read_bytes_is_capped(tmp_path):
    store = BlobStore(tmp_path)
    digest, _ = store.put_bytes(b"x" * 100)
    assert store.read_bytes(digest, 100) == b"x" * 100
    with pytest.raises(InvalidDigest):
        store.read_bytes(digest, 99)


def test_prune_removes_a_dead_writers_temp_at_once_and_leaves_a_live_one(tmp_path):
    store = BlobStore(tmp_path)
    live = store.open_writer()
    live.write(b"still coming")
    dead = store.blobs_dir / ".tmp-0123456789abcdef"  # nobody holds a lock on it: its writer died
    dead.write_bytes(b"half")
    assert store.prune(set(), grace_s=3600) == [dead.name]
    assert live.temp_path.exists()
    digest, created = live.commit()
    assert created and store.path(digest).read_bytes() == b"still coming"


def test_prune_keeps_a_partial_download_in_progress(tmp_path):
    store = BlobStore(tmp_path)
    store.blobs_dir.mkdir(parents=True)
    data = store.blobs_dir / f"sha256-{HEX}-partial"
    state = store.blobs_dir / f"sha256-{HEX}-partial-0"
    data.write_bytes(b"\0" * 10)
    state.write_bytes(b'{"N":0,"Offset":0,"Size":10,"Completed":4}\n')
    old = time.time() - 7200
    for path in (data, state):
        os.utime(path, (old, old))
    with open(data, "rb") as download:  # a download in another process holds this lock
        fcntl.flock(download, fcntl.LOCK_EX)
        assert store.prune(set()) == []
    assert sorted(store.prune(set())) == sorted([data.name, state.name])


def test_a_full_disk_is_a_507_and_leaves_nothing(tmp_path, monkeypatch):
    store = BlobStore(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(InsufficientStorage) as info:
        store.put_bytes(b"does not fit")
    assert info.value.status == 507
    assert str(info.value) == "no space left on device: the disk holding the models folder is full"
    assert os.listdir(store.blobs_dir) == []


def test_adopt_contents_another_process_wrote(tmp_path):
    store = BlobStore(tmp_path)
    with store.open_writer() as writer:
        with open(writer.temp_path, "wb") as other:  # as the quantizer child does, by path
            other.write(b"quantized")
        writer.adopt_contents()
        digest, created = writer.commit()
    assert digest == digest_of_bytes(b"quantized") and created
    assert writer.size == 9 and os.listdir(store.blobs_dir) == [store.path(digest).name]
