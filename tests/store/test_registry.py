"""Pull and push against a scriptable fake registry on loopback: the protocol, resume, and hostility.

Every hostile case checks the same outcome: a clear error, no manifest, no bad blob kept, and nothing
written outside the models folder.
"""

from __future__ import annotations

import json
import os
import random
import time
import tracemalloc
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from appliance.errors import DigestMismatch
from appliance.store import registry
from appliance.store.distribution import (
    LOOPBACK,
    PRIVATE,
    PUBLIC,
    Credentials,
    InsecureProtocol,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryUnauthorized,
    RegistryUnavailable,
    TransferSettings,
    UnsafeRedirect,
    address_rank,
    load_credentials,
    parse_challenge,
)
from appliance.store.local import Store
from appliance.store.manifests import Layer, Manifest
from appliance.store.names import parse_name
from appliance.store.partial import Part, PartialFiles, plan_parts
from appliance.store.transfer import Downloads, InsufficientStorage
from tests.fixtures.registries import MEDIA_MODEL, FakeRegistry, manifest_bytes, sha256, stream_forever

REPO = "library/m"


def fast(**overrides: object) -> TransferSettings:
    base: dict[str, object] = {"stall_timeout_s": 0.5, "connect_timeout_s": 5.0, "max_attempts": 3,
                               "retry_backoff_s": 0.01, "progress_interval_s": 0.02}
    return TransferSettings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def reg():
    fake = FakeRegistry()
    yield fake
    fake.stop()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def model_name(reg: FakeRegistry, repo: str = REPO, tag: str = "1"):
    return parse_name(f"{reg.host}/{repo}:{tag}")


async def pull(store: Store, name, settings: TransferSettings | None = None, **kw) -> list[dict]:
    events: list[dict] = []
    await registry.pull(store, name, True, events.append, settings=settings or fast(),
                        downloads=kw.pop("downloads", None) or Downloads(), **kw)
    return events


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def assert_nothing_kept(tmp_path: Path, store: Store, *bad_digests: str) -> None:
    """No manifest, no bad blob, no file outside the models folder."""
    assert {f for f in files(tmp_path) if not f.startswith("models/")} == set()
    if store.manifests.root.exists():
        assert files(store.manifests.root) == set()
    blobs = files(store.blobs.blobs_dir) if store.blobs.blobs_dir.exists() else set()
    for digest in bad_digests:
        assert "sha256-" + digest[7:] not in blobs


def blob_gets(reg: FakeRegistry, digest: str) -> list[dict[str, str]]:
    return [headers for method, path, headers in reg.requests if method == "GET" and path.endswith(digest)]


# --- pieces ----------------------------------------------------------------------------------------


async def test_httpx_async_client_runs_on_trio(reg):
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{reg.url}/v2/{REPO}/manifests/none")
    assert response.status_code == 404


def test_parse_challenge():
    scheme, params = parse_challenge(
        'Bearer realm="https://r.example/token",service="registry",scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://r.example/token", "service": "registry",
                      "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="x y"') == ("basic", {"realm": "x y"})
    assert parse_challenge("Bearer realm=https://a/t, service=s") == ("bearer", {"realm": "https://a/t",
                                                                                 "service": "s"})
    assert parse_challenge("") == ("", {})


@pytest.mark.parametrize(("address", "rank"), [
    ("8.8.8.8", PUBLIC), ("10.1.2.3", PRIVATE), ("192.168.0.1", PRIVATE), ("fd00::1", PRIVATE),
    ("127.0.0.1", LOOPBACK), ("::1", LOOPBACK), ("169.254.169.254", None), ("169.254.1.1", None),
    ("fe80::1", None), ("::ffff:169.254.169.254", None), ("fd00:ec2::254", None), ("100.100.100.200", None),
    ("0.0.0.0", None), ("224.0.0.1", None),
])
def test_address_rank(address, rank):
    import ipaddress

    assert address_rank(ipaddress.ip_address(address)) == rank


def test_credentials_are_per_host(tmp_path):
    path = tmp_path / "registry.json"
    import base64

    path.write_text(json.dumps({"auths": {
        "Registry.Example:5000": {"username": "u", "password": "p"},
        "other.example": {"auth": base64.b64encode(b"v:q:r").decode()},
        "broken": "nope",
    }}))
    os.chmod(path, 0o600)
    assert load_credentials(path) == {"registry.example:5000": Credentials("u", "p"),
                                      "other.example": Credentials("v", "q:r")}
    assert load_credentials(tmp_path / "missing.json") == {}
    path.write_text("{not json")
    assert load_credentials(path) == {}


def test_part_state_is_ollamas_format(tmp_path):
    parts = plan_parts(1000, TransferSettings(parts=4, min_part_bytes=100, max_part_bytes=300))
    assert [(p.offset, p.size) for p in parts] == [(0, 250), (250, 250), (500, 250), (750, 250)]
    assert Part(2, 500, 250, 17).to_json() == b'{"N":2,"Offset":500,"Size":250,"Completed":17}\n'
    files_ = PartialFiles(tmp_path / ("sha256-" + "a" * 64))
    files_.data.write_bytes(b"\0" * 1000)
    for part in parts:
        files_.save(part)
    assert [p.offset for p in files_.load(1000)] == [0, 250, 500, 750]
    assert files_.load(999) is None  # the data file has another size
    files_.part_path(1).write_text('{"N":1,"Offset":260,"Size":240,"Completed":0}')
    assert files_.load(1000) is None  # a gap


def test_fresh_partials_survive_the_startup_prune(store):
    store.ensure_dirs()
    digest = "sha256-" + "b" * 64
    fresh = [store.blobs.blobs_dir / f"{digest}-partial", store.blobs.blobs_dir / f"{digest}-partial-0"]
    stale = store.blobs.blobs_dir / ("sha256-" + "c" * 64 + "-partial")
    for path in [*fresh, stale]:
        path.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    store.prune()
    assert all(p.exists() for p in fresh) and not stale.exists()


# --- pulling ---------------------------------------------------------------------------------------


async def test_pull_writes_manifest_byte_for_byte_after_its_blobs(reg, store):
    model = random.randbytes(300_000)
    manifest = reg.add_model(REPO, "1", model)
    events = await pull(store, model_name(reg))
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    digest = sha256(model)
    bar = [e for e in events if e.get("digest") == digest]
    assert bar[0] == {"status": f"pulling {digest[7:19]}", "digest": digest, "total": len(model)}
    assert bar[-1]["completed"] == len(model)
    path = store.manifests.root / reg.host / "library" / "m" / "1"
    assert path.read_bytes() == manifest
    assert store.blobs.path(digest).read_bytes() == model
    assert not [f for f in files(store.blobs.blobs_dir) if "partial" in f or f.startswith(".tmp")]


async def test_pull_of_an_up_to_date_model_fetches_only_the_manifest(reg, store):
    reg.add_model(REPO, "1", random.randbytes(50_000))
    await pull(store, model_name(reg))
    reg.requests.clear()
    await pull(store, model_name(reg))
    assert [(m, p.split("/")[-2]) for m, p, _ in reg.requests] == [("GET", "manifests")]


async def test_pulling_an_updated_tag_removes_the_layers_it_no_longer_uses(reg, store):
    old, new = random.randbytes(20_000), random.randbytes(20_000)
    reg.add_model(REPO, "1", old)
    await pull(store, model_name(reg))
    reg.add_model(REPO, "1", new)
    statuses = [e["status"] for e in await pull(store, model_name(reg))]
    assert statuses[-2:] == ["removing unused layers", "success"]
    assert not store.blobs.exists(sha256(old)) and store.blobs.exists(sha256(new))


async def test_large_blob_comes_in_parallel_ranged_parts(reg, store):
    model = random.randbytes(1 << 20)
    reg.add_model(REPO, "1", model)
    await pull(store, model_name(reg), fast(parts=8, min_part_bytes=64 << 10, max_streams=3))
    ranges = sorted(h["Range"] for h in blob_gets(reg, sha256(model)))
    assert len(ranges) == 8
    assert ranges[0] == "bytes=0-131071"
    assert store.blobs.path(sha256(model)).read_bytes() == model


def _truncate_blob_after(reg: FakeRegistry, digest: str, limit: int) -> None:
    def hook(handler, method, path):
        if method != "GET" or not path.endswith(digest):
            return False
        data = reg.blobs[digest]
        start = int(handler.headers["Range"].split("=")[1].split("-")[0])
        handler.send_response(206)
        handler.send_header("Content-Length", str(len(data) - start))
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        handler.wfile.write(data[start:limit])
        handler.close_connection = True
        return True

    reg.hook = hook


async def test_interrupted_pull_resumes_from_saved_state(reg, store, tmp_path):
    model = random.randbytes(6 << 20)
    digest = sha256(model)
    reg.add_model(REPO, "1", model)
    _truncate_blob_after(reg, digest, 2 << 20)
    with pytest.raises(RegistryUnavailable, match="pull again to resume"):
        await pull(store, model_name(reg), fast(max_attempts=1))
    assert_nothing_kept(tmp_path, store)
    state = json.loads((store.blobs.blobs_dir / f"sha256-{digest[7:]}-partial-0").read_text())
    assert state == {"N": 0, "Offset": 0, "Size": len(model), "Completed": 2 << 20}
    reg.hook = None
    reg.requests.clear()
    events = await pull(store, model_name(reg))
    assert [h["Range"] for h in blob_gets(reg, digest)] == [f"bytes={2 << 20}-{len(model) - 1}"]
    first = next(e for e in events if e.get("digest") == digest and e.get("completed"))
    assert first["completed"] >= 2 << 20  # progress starts where the last pull stopped
    assert store.blobs.path(digest).read_bytes() == model


async def test_5xx_is_retried(reg, store):
    model = random.randbytes(10_000)
    reg.add_model(REPO, "1", model)
    failures = [503, 500]

    def hook(handler, method, path):
        if method == "GET" and path.endswith(sha256(model)) and failures:
            handler.error(failures.pop(0), "UNAVAILABLE", "try later")
            return True
        return False

    reg.hook = hook
    await pull(store, model_name(reg))
    assert len(blob_gets(reg, sha256(model))) == 3
    assert store.blobs.exists(sha256(model))


async def test_stalled_connection_is_retried_then_fails_clearly(reg, store, tmp_path):
    model = random.randbytes(100_000)
    reg.add_model(REPO, "1", model)

    def hook(handler, method, path):
        if method == "GET" and path.endswith(sha256(model)):
            start = int(handler.headers["Range"].split("=")[1].split("-")[0])
            handler.send_response(206)
            handler.send_header("Content-Length", str(len(model) - start))
            handler.send_header("Content-Range", f"bytes {start}-{len(model) - 1}/{len(model)}")
            handler.end_headers()
            handler.wfile.write(model[start:start + 1000])
            handler.wfile.flush()
            reg.release.wait(10)
            handler.close_connection = True
            return True
        return False

    reg.hook = hook
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=r"stalled, no data for 0\.3s .*gave up after 3 attempts"):
        await pull(store, model_name(reg), fast(stall_timeout_s=0.3))
    assert time.monotonic() - started < 5
    assert len(blob_gets(reg, sha256(model))) == 3
    assert_nothing_kept(tmp_path, store, sha256(model))


async def test_bytes_that_do_not_match_the_digest_are_removed(reg, store, tmp_path):
    model = random.randbytes(200_000)
    reg.add_model(REPO, "1", model)
    reg.blobs[sha256(model)] = random.randbytes(len(model))
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        await pull(store, model_name(reg))
    assert_nothing_kept(tmp_path, store, sha256(model))
    assert not [f for f in files(store.blobs.blobs_dir) if f.startswith("sha256-" + sha256(model)[7:])]


@pytest.mark.parametrize("bad", [
    "sha256:../../../../outside", "sha256-../../../../outside", "sha256:" + "a" * 63, "sha256:" + "a" * 65,
    "sha256:" + "g" * 64, "md5:d41d8cd98f00b204e9800998ecf8427e", "/etc/passwd", "",
])
async def test_malformed_digests_never_reach_a_path(reg, store, tmp_path, bad):
    config = b"{}"
    reg.add_blob(REPO, config)
    reg.manifests[(REPO, "1")] = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha256(config),
                   "size": 2},
        "layers": [{"mediaType": MEDIA_MODEL, "digest": bad, "size": 10}]}).encode()
    with pytest.raises(RegistryError, match="invalid digest"):
        await pull(store, model_name(reg))
    assert not [m for m, p, _ in reg.requests if "/blobs/" in p]
    assert_nothing_kept(tmp_path, store)
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("bad_first", [True, False])
async def test_config_and_layer_sharing_a_digest_cannot_smuggle_bytes(reg, store, tmp_path, bad_first):
    good = random.randbytes(4096)
    bad = random.randbytes(4096)
    digest = sha256(good)
    reg.manifests[(REPO, "1")] = manifest_bytes((digest, len(good)), [(MEDIA_MODEL, digest, len(good))])
    answers = ["bad", "good"] if bad_first else ["good", "bad"]

    def hook(handler, method, path):
        if path.endswith(digest):
            handler.send(307, headers={"Location": f"/alt/{answers.pop(0) if answers else 'bad'}"})
            return True
        if path.startswith("/alt/"):
            handler.send_range(good if path.endswith("good") else bad)
            return True
        return False

    reg.hook = hook
    if bad_first:
        with pytest.raises(DigestMismatch):
            await pull(store, model_name(reg))
        assert_nothing_kept(tmp_path, store, digest)
        assert not store.blobs.exists(digest)
    else:
        await pull(store, model_name(reg))
        assert store.blobs.path(digest).read_bytes() == good
        assert reg.count("GET", "/alt/") == 1  # one download per digest, however often it is listed


async def test_manifest_listing_one_digest_with_two_sizes_is_refused(reg, store, tmp_path):
    digest = reg.add_blob(REPO, b"x" * 10)
    reg.manifests[(REPO, "1")] = manifest_bytes((digest, 10), [(MEDIA_MODEL, digest, 11)])
    with pytest.raises(RegistryError, match="two different sizes"):
        await pull(store, model_name(reg))
    assert_nothing_kept(tmp_path, store)


async def test_missing_manifest_is_not_found(reg, store):
    with pytest.raises(RegistryNotFound, match="pull model manifest: file does not exist"):
        await pull(store, model_name(reg))


async def test_manifest_not_matching_its_docker_content_digest_is_refused(reg, store, tmp_path):
    reg.add_model(REPO, "1", b"abc")

    def hook(handler, method, path):
        if "/manifests/" in path:
            handler.send(200, reg.manifests[(REPO, "1")], {"Docker-Content-Digest": sha256(b"other")})
            return True
        return False

    reg.hook = hook
    with pytest.raises(RegistryError, match="Docker-Content-Digest"):
        await pull(store, model_name(reg))
    assert_nothing_kept(tmp_path, store)


async def pull_peak_memory(store, reg, error: type[Exception], match: str) -> int:
    """The peak Python memory of a pull that must fail with ``error`` matching ``match``."""
    tracemalloc.start()
    try:
        with pytest.raises(error, match=match):
            await pull(store, model_name(reg))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("declared", [True, False])
async def test_huge_manifest_is_refused_with_bounded_memory(reg, store, tmp_path, declared):
    sent: list[int] = []

    def hook(handler, method, path):
        if "/manifests/" in path:
            headers = {"Content-Length": str(5 << 30)} if declared else {"Connection": "close"}
            sent.append(stream_forever(handler, 200, {"Content-Type": "application/json", **headers},
                                       reg.release))
            return True
        return False

    reg.hook = hook
    assert await pull_peak_memory(store, reg, RegistryError, "manifest is larger than 4194304 bytes") < 32 << 20
    assert_nothing_kept(tmp_path, store)
    for _ in range(50):
        if sent:
            break
        await trio.sleep(0.05)
    assert sent and sent[0] < 256 << 20  # the registry's generator stopped soon after we hung up


async def test_huge_error_body_is_capped(reg, store, tmp_path):
    model = random.randbytes(1000)
    reg.add_model(REPO, "1", model)

    def hook(handler, method, path):
        if method == "GET" and path.endswith(sha256(model)):
            stream_forever(handler, 500, {"Content-Length": str(3 << 30)}, reg.release)
            return True
        return False

    reg.hook = hook
    assert await pull_peak_memory(store, reg, RegistryUnavailable, "500") < 32 << 20
    assert_nothing_kept(tmp_path, store, sha256(model))


# --- redirects and the address policy --------------------------------------------------------------


async def test_manifest_redirects_are_not_followed(reg, store, tmp_path):
    reg.add_model(REPO, "1", b"abc")

    def hook(handler, method, path):
        if "/manifests/" in path:
            handler.send(307, headers={"Location": f"http://127.0.0.1:{reg.port}/elsewhere"})
            return True
        return False

    reg.hook = hook
    with pytest.raises(UnsafeRedirect, match="only blob downloads follow redirects"):
        await pull(store, model_name(reg))
    assert reg.count("GET", "/elsewhere") == 0
    assert_nothing_kept(tmp_path, store)


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/x", "http://[fe80::1]/x",
    "http://0.0.0.0/x", "file:///etc/passwd",
])
async def test_blob_redirect_to_link_local_or_metadata_is_refused(reg, store, tmp_path, target):
    model = b"weights"
    reg.add_model(REPO, "1", model)

    def hook(handler, method, path):
        if path.endswith(sha256(model)):
            handler.send(307, headers={"Location": target})
            return True
        return False

    reg.hook = hook
    with pytest.raises(UnsafeRedirect, match="refusing"):
        await pull(store, model_name(reg))
    assert_nothing_kept(tmp_path, store, sha256(model))


async def test_blob_redirect_on_loopback_is_followed_without_credentials(reg, store):
    cdn = FakeRegistry()
    try:
        model = random.randbytes(5000)
        reg.add_model(REPO, "1", model)
        cdn.blobs["/cdn/blob"] = model
        reg.auth = "bearer"

        def redirect(handler, method, path):
            if path.endswith(sha256(model)) and handler.headers.get("Authorization"):
                handler.send(307, headers={"Location": f"{cdn.url}/cdn/blob"})
                return True
            return False

        def serve(handler, method, path):
            handler.send_range(model)
            return True

        reg.hook, cdn.hook = redirect, serve
        await pull(store, model_name(reg))
        assert store.blobs.path(sha256(model)).read_bytes() == model
        assert [h.get("Authorization") for _, _, h in cdn.requests] == [None]
    finally:
        cdn.stop()


async def test_a_public_registry_may_not_redirect_inwards(reg):
    async with RegistryClient(model_name(reg), insecure=True, settings=fast()) as client:
        client._rank = PUBLIC
        with pytest.raises(UnsafeRedirect, match=r"loopback address 127\.0\.0\.1"):
            await client.check_target(httpx.URL("http://127.0.0.1:9/blob"), "blob redirect")
        with pytest.raises(UnsafeRedirect, match=r"private address 10\.0\.0\.5"):
            await client.check_target(httpx.URL("http://10.0.0.5/blob"), "blob redirect")
        await client.check_target(httpx.URL("http://93.184.216.34/blob"), "blob redirect")
        client._rank = PRIVATE
        await client.check_target(httpx.URL("http://10.0.0.5/blob"), "blob redirect")


async def test_https_may_not_be_downgraded(reg):
    async with RegistryClient(model_name(reg), insecure=False, settings=fast()) as client:
        client._rank = PUBLIC
        with pytest.raises(UnsafeRedirect, match="refusing http:// target"):
            await client.check_target(httpx.URL("http://93.184.216.34/blob"), "blob redirect")


# --- auth ------------------------------------------------------------------------------------------


async def test_bearer_challenge_with_credentials_for_this_host(reg, store):
    reg.add_model(REPO, "1", b"weights")
    reg.auth, reg.users = "bearer", {"alice": "s3cret"}
    settings = fast(credentials={reg.host: Credentials("alice", "s3cret")})
    await pull(store, model_name(reg), settings)
    assert store.manifests.exists(model_name(reg))
    token_requests = [h for m, p, h in reg.requests if p.startswith("/token")]
    assert token_requests and all(h["Authorization"].startswith("Basic ") for h in token_requests)


async def test_credentials_of_another_host_are_never_offered(reg, store):
    reg.add_model(REPO, "1", b"weights")
    reg.auth, reg.users = "bearer", {"alice": "s3cret"}
    settings = fast(credentials={"elsewhere.example": Credentials("alice", "s3cret")})
    with pytest.raises(RegistryUnauthorized, match="unauthorized"):
        await pull(store, model_name(reg), settings)
    assert not [h for _, _, h in reg.requests if "Basic" in h.get("Authorization", "")]


async def test_basic_challenge(reg, store):
    reg.add_model(REPO, "1", b"weights")
    reg.auth, reg.users = "basic", {"bob": "pw"}
    with pytest.raises(RegistryUnauthorized, match="unauthorized: access denied"):
        await pull(store, model_name(reg))
    await pull(store, model_name(reg), fast(credentials={reg.host: Credentials("bob", "pw")}))


async def test_realm_on_another_host_is_refused(reg, store, tmp_path):
    other = FakeRegistry()
    try:
        reg.add_model(REPO, "1", b"weights")
        reg.auth, reg.realm = "bearer", f"{other.url}/token"
        settings = fast(credentials={reg.host: Credentials("alice", "s3cret")})
        with pytest.raises(RegistryUnauthorized, match=r"realm host .* does not match registry host"):
            await pull(store, model_name(reg), settings)
        assert other.requests == []
        assert_nothing_kept(tmp_path, store)
    finally:
        other.stop()


async def test_http_name_needs_insecure(reg, store):
    with pytest.raises(InsecureProtocol, match="insecure protocol http"):
        await registry.pull(store, parse_name(f"http://{reg.host}/{REPO}:1"), False, lambda _: None,
                            settings=fast())
    assert reg.requests == []


async def test_refuses_a_pull_that_cannot_fit(reg, store, tmp_path):
    digest = "sha256:" + "d" * 64
    reg.manifests[(REPO, "1")] = manifest_bytes((digest, 1 << 50), [])
    with pytest.raises(InsufficientStorage, match="not enough disk space"):
        await pull(store, model_name(reg))
    assert not [p for _, p, _ in reg.requests if "/blobs/" in p]
    assert_nothing_kept(tmp_path, store)


# --- sharing one download --------------------------------------------------------------------------


def _slow_blob(reg: FakeRegistry, digest: str, delay: float = 0.01) -> None:
    def hook(handler, method, path):
        if method == "GET" and path.endswith(digest):
            data = reg.blobs[digest]
            start = int(handler.headers["Range"].split("=")[1].split("-")[0])
            handler.send_response(206)
            handler.send_header("Content-Length", str(len(data) - start))
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            handler.end_headers()
            try:
                for offset in range(start, len(data), 64 << 10):
                    handler.wfile.write(data[offset:offset + (64 << 10)])
                    with reg._lock:
                        reg.body_bytes_sent += len(data[offset:offset + (64 << 10)])
                    time.sleep(delay)
            except OSError:
                handler.close_connection = True
            return True
        return False

    reg.hook = hook


async def test_concurrent_pulls_of_one_blob_share_a_download(reg, store):
    model = random.randbytes(2 << 20)
    reg.add_model(REPO, "1", model)
    reg.add_model("library/alias", "1", model)
    _slow_blob(reg, sha256(model))
    downloads = Downloads()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(pull, store, model_name(reg), downloads=downloads))
        await trio.sleep(0.1)
        nursery.start_soon(partial(pull, store, model_name(reg, "library/alias"), downloads=downloads))
    assert len(blob_gets(reg, sha256(model))) == 1
    assert reg.body_bytes_sent < len(model) + 10_000
    assert store.manifests.exists(model_name(reg)) and store.manifests.exists(model_name(reg, "library/alias"))
    assert downloads.active() == 0


async def test_a_waiting_pull_takes_over_when_the_downloading_one_is_cancelled(reg, store):
    model = random.randbytes(4 << 20)
    digest = sha256(model)
    reg.add_model(REPO, "1", model)
    _slow_blob(reg, digest, delay=0.02)
    downloads = Downloads()
    seen: list[dict] = []
    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def first_pull() -> None:
            with first:
                await registry.pull(store, model_name(reg), True, seen.append, settings=fast(),
                                    downloads=downloads)

        nursery.start_soon(first_pull)
        with trio.fail_after(20):
            while not any(e.get("digest") == digest and e.get("completed", 0) >= 256 << 10 for e in seen):
                await trio.sleep(0.02)
        nursery.start_soon(partial(pull, store, model_name(reg), downloads=downloads))
        await trio.sleep(0.1)
        first.cancel()
    gets = blob_gets(reg, digest)
    assert len(gets) == 2
    assert int(gets[1]["Range"].split("=")[1].split("-")[0]) >= 256 << 10  # resumed, not restarted
    assert store.blobs.path(digest).read_bytes() == model


# --- pushing ---------------------------------------------------------------------------------------


def _local_model(store: Store, name, model: bytes) -> bytes:
    store.ensure_dirs()
    config = b'{"model_format":"gguf","model_family":"llama"}'
    config_digest, _ = store.blobs.put_bytes(config)
    model_digest, _ = store.blobs.put_bytes(model)
    manifest = Manifest(Layer("application/vnd.docker.container.image.v1+json", config_digest, len(config)),
                        (Layer(MEDIA_MODEL, model_digest, len(model)),))
    store.write_manifest(name, manifest)
    return store.manifests.find_path(name).read_bytes()


@pytest.mark.parametrize("chunk", [1 << 30, 100_000])
async def test_push_uploads_blobs_then_the_manifest_bytes(reg, store, chunk):
    model = random.randbytes(350_000)
    name = model_name(reg)
    local = _local_model(store, name, model)
    events: list[dict] = []
    await registry.push(store, name, True, events.append, settings=fast(upload_chunk_bytes=chunk))
    assert reg.manifests[(REPO, "1")] == local
    assert reg.blobs[sha256(model)] == model
    assert [e["status"] for e in events if "digest" not in e] == ["retrieving manifest", "pushing manifest",
                                                                   "success"]
    assert reg.count("PATCH", "/uploads/") == (4 if chunk == 100_000 else 0)
    pushed = [e for e in events if e.get("digest") == sha256(model)]
    assert pushed[-1] == {"status": f"pushing {sha256(model)[7:19]}", "digest": sha256(model),
                          "total": len(model), "completed": len(model)}
    # the manifest went last
    methods = [(m, p) for m, p, _ in reg.requests]
    assert methods[-1][0] == "PUT" and "/manifests/" in methods[-1][1]


async def test_push_skips_blobs_the_registry_has_and_mounts_from_another_repository(reg, store):
    model = random.randbytes(200_000)
    first, second = model_name(reg), model_name(reg, "me/copy", "latest")
    _local_model(store, first, model)
    store.copy(first, second)
    await registry.push(store, first, True, lambda _: None, settings=fast())
    reg.requests.clear()
    await registry.push(store, first, True, lambda _: None, settings=fast())
    assert reg.count("POST", "/uploads/") == 0 and reg.count("HEAD", "/blobs/") == 2
    reg.requests.clear()
    await registry.push(store, second, True, lambda _: None, settings=fast())
    mounts = [p for m, p, _ in reg.requests if m == "POST"]
    assert mounts and all("mount=sha256" in p and "from=library%2Fm" in p for p in mounts)
    assert reg.count("PUT", "/uploads/") == 0
    assert reg.manifests[("me/copy", "latest")] == store.manifests.find_path(second).read_bytes()


async def test_push_of_a_missing_model(reg, store):
    from appliance.errors import ModelNotFound

    with pytest.raises(ModelNotFound):
        await registry.push(store, model_name(reg), True, lambda _: None, settings=fast())


async def test_push_refuses_an_upload_location_to_a_metadata_address(reg, store):
    _local_model(store, model_name(reg), b"weights")

    def hook(handler, method, path):
        if method == "POST":
            handler.send(202, headers={"Location": "http://169.254.169.254/upload"})
            return True
        return False

    reg.hook = hook
    with pytest.raises(UnsafeRedirect, match="link-local"):
        await registry.push(store, model_name(reg), True, lambda _: None, settings=fast())
    assert (REPO, "1") not in reg.manifests
