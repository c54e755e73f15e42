import hashlib
import os
import time

import pytest

from appliance.errors import DigestMismatch, InvalidDigest
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
