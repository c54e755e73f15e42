"""The store's invariant under concurrency: create and copy racing delete and prune, many times over,
never leave a manifest that names a missing blob, nor a blob whose bytes do not match its name.

The models built here share their small layers (three system prompts among four models and their
copies), so a delete often removes exactly the blob a concurrent create has just written or found.
A checker takes the store lock now and then and checks the whole folder: inside the lock the store
must always be consistent.  The same race is run across two processes (the lock is an flock there).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.errors import ModelNotFound
from appliance.store.create import plan_create, run_create
from appliance.store.local import Store
from appliance.store.names import parse_name
from tests.fixtures.faults import store_problems
from tests.fixtures.tiny_gguf import write_tiny_llama

ROUNDS = 150
MODELS = 4


def create(store: Store, model: str, **fields: object) -> None:
    run_create(store, plan_create(store, {"model": model, **fields}), lambda _: None)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "models")
    store.ensure_dirs()
    gguf = write_tiny_llama(tmp_path / "tiny.gguf")
    digest, _, _ = store.blobs.put_file(gguf)
    create(store, "base", files={"tiny.gguf": digest})
    return store


def creator(store: Store, i: int) -> None:
    create(store, f"made{i % MODELS}", **{"from": "base", "system": f"system {i % 3}",
                                           "parameters": {"temperature": (i % 5) / 10}})


def copier(store: Store, i: int) -> None:
    try:
        store.copy(parse_name(f"made{i % MODELS}"), parse_name(f"copy{i % MODELS}"))
    except ModelNotFound:
        pass  # deleted meanwhile: fine, as long as nothing half-exists


def deleter(store: Store, i: int) -> None:
    for name in (f"made{(i + 1) % MODELS}", f"copy{(i + 2) % MODELS}"):
        try:
            store.delete(parse_name(name))
        except ModelNotFound:
            pass


def pruner(store: Store, i: int) -> None:
    if i % 3 == 0:
        store.prune(grace_s=0)  # no grace: only the lock protects a create's fresh blobs


def race(store: Store, steps: list[Callable[[Store, int], None]], timeout_s: float = 240) -> list[str]:
    """Run each step ROUNDS times, all at once, while a checker inspects the store under its lock;
    every failure seen (a step that raised, a broken invariant)."""
    failures: list[str] = []
    done = threading.Event()

    def run(step: Callable[[Store, int], None]) -> None:
        for i in range(ROUNDS):
            try:
                step(store, i)
            except Exception as exc:  # every failure is the test's finding; go on racing
                failures.append(f"{step.__name__}: {type(exc).__name__}: {exc}")

    def check() -> None:
        while not done.is_set():
            with store.lock:
                failures.extend(store_problems(store.root))
            time.sleep(0.01)

    threads = [threading.Thread(target=run, args=(step,), daemon=True) for step in steps]
    checker = threading.Thread(target=check, daemon=True)
    for thread in (*threads, checker):
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
        assert not thread.is_alive(), f"{thread.name} still running after {timeout_s:g}s"
    done.set()
    checker.join(30)
    return failures + store_problems(store.root)


def test_create_and_copy_racing_delete_and_prune_keep_the_store_consistent(store):
    assert race(store, [creator, copier, deleter, pruner]) == []
    assert store.manifests.exists(parse_name("base"))


DELETER_PROCESS = textwrap.dedent("""
    import sys, time
    from appliance.errors import ModelNotFound
    from appliance.store.local import Store
    from appliance.store.names import parse_name

    store = Store(sys.argv[1])
    deadline = time.monotonic() + float(sys.argv[2])
    rounds = 0
    while time.monotonic() < deadline:
        for name in ("made0", "made1", "made2", "made3", "copy0", "copy1", "copy2", "copy3"):
            try:
                store.delete(parse_name(name))
            except ModelNotFound:
                pass
        store.prune(grace_s=0)
        rounds += 1
    print(rounds)
""")


def test_the_same_race_across_two_processes(store):
    other = subprocess.Popen([sys.executable, "-c", DELETER_PROCESS, str(store.root), "4"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        failures = race(store, [creator, copier])
        out, err = other.communicate(timeout=120)
    finally:
        other.kill()
        other.wait(10)
    assert other.returncode == 0, err
    assert int(out) > 0
    assert failures == []


def test_prune_removes_link_folders_a_killed_import_left_behind(tmp_path: Path) -> None:
    import os

    store = Store(tmp_path)
    stale, fresh = tmp_path / ".convert-old", tmp_path / ".convert-new"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "config.json").symlink_to(tmp_path / "missing-blob")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    store.prune()
    assert not stale.exists()
    assert fresh.exists()  # an import may be running right now
