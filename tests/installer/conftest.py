"""Fixtures for the installer tests: the cached Debian root, a fresh machine per test, fake releases.

The chroot tests fail when debootstrap cannot build the root (a missing tool or an unreachable mirror
is a broken test machine, not a reason to skip); they are skipped, loudly, only where this machine can
never run them: not Linux, not root, or chroot forbidden.  Under CI=true that skip fails too
(tests/conftest.py): a CI machine must be able to run them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installer.debian_root import (
    BaseBuildError,
    CannotChroot,
    Machine,
    base_tar,
    check_can_chroot,
    make_release,
    unpack_base,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chroot: runs scripts as root in a debootstrap root; fails when the root cannot be built"
    )


@pytest.fixture(scope="session")
def debian_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached Debian root, unpacked once for this session (never written to)."""
    try:
        check_can_chroot()
    except CannotChroot as exc:
        pytest.skip(f"INSTALLER NOT TESTED: {exc}")
    try:
        tar = base_tar()
    except BaseBuildError as exc:
        pytest.fail(f"cannot build the Debian test root: {exc}", pytrace=False)
    return unpack_base(tar, tmp_path_factory.mktemp("debian") / "base")


@pytest.fixture
def machine(debian_base: Path, tmp_path: Path) -> Iterator[Machine]:
    """A fresh Debian root with a running (fake) systemd and the fake release in /srv/release."""
    box = Machine.create(debian_base, tmp_path / "machine")
    try:
        make_release(box.path("/srv/release"))
        yield box
    finally:
        box.destroy()


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake release on the host (for tests that serve it over HTTP)."""
    return make_release(tmp_path_factory.mktemp("release"))
