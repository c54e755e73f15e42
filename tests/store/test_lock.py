"""The models folder's write lock: re-entrant in a thread, exclusive across threads and processes,
and released by the kernel when its holder is killed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

from appliance.store.lock import LOCK_FILE, StoreLock

TRY_LOCK = textwrap.dedent("""
    import fcntl, sys
    with open(sys.argv[1], "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("locked")
        else:
            print("free")
""")


def other_process_sees(tmp_path) -> str:
    proc = subprocess.run([sys.executable, "-c", TRY_LOCK, str(tmp_path / LOCK_FILE)], capture_output=True,
                          text=True, timeout=30, check=True)
    return proc.stdout.strip()


def test_reentrant_in_one_thread_exclusive_across_threads(tmp_path):
    lock = StoreLock(tmp_path)
    entered = threading.Event()

    def other() -> None:
        with lock:
            entered.set()

    with lock, lock:  # nested: the same thread does not wait for itself
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        assert not entered.wait(0.3)
    assert entered.wait(10)
    thread.join(10)


def test_exclusive_across_processes_only_while_held(tmp_path):
    lock = StoreLock(tmp_path)
    with lock:
        with lock:
            assert other_process_sees(tmp_path) == "locked"
        assert other_process_sees(tmp_path) == "locked"  # still held by the outer level
    assert other_process_sees(tmp_path) == "free"


def test_two_lock_objects_on_one_folder_exclude_each_other(tmp_path):
    first, second = StoreLock(tmp_path), StoreLock(tmp_path)
    entered = threading.Event()

    def other() -> None:
        with second:
            entered.set()

    with first:
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        assert not entered.wait(0.3)
    assert entered.wait(10)
    thread.join(10)


def test_a_killed_holder_releases_the_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom appliance.store.lock import StoreLock\n"
         "with StoreLock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert other_process_sees(tmp_path) == "locked"
        holder.kill()
        holder.wait(10)
        assert other_process_sees(tmp_path) == "free"
    finally:
        holder.kill()
        holder.wait(10)


def test_a_folder_without_a_lock_file_still_locks_this_process(tmp_path):
    lock = StoreLock(tmp_path / "missing")
    with lock, lock:
        pass
    assert not (tmp_path / "missing").exists()
