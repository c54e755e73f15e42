"""Where install.sh takes the release from, and how it checks it: folders, tarballs, file:// and
http:// locations, the default GitHub location and OLLAMA_VERSION, checksums, and a cut download."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installer.checks import assert_binary, assert_nothing_installed
from tests.installer.debian_root import INSTALLER, Machine, make_release

pytestmark = [pytest.mark.chroot, pytest.mark.timeout(300)]


@pytest.mark.parametrize(
    ("args", "env", "flavor"),
    [
        (["--from", "/srv/release"], {}, "cpu"),
        ([], {"OLLAMA_DOWNLOAD_URL": "file:///srv/release/"}, "cpu"),
        (["--from", "/srv/release/ollama-linux-amd64-cuda.tgz"], {}, "cuda"),
        (["--from", "/srv/release", "--flavor", "rocm"], {}, "rocm"),
    ],
    ids=["folder", "file-url", "tarball", "flavor-choice"],
)
def test_offline_install(machine: Machine, args: list[str], env: dict[str, str], flavor: str) -> None:
    machine.fake_tool("curl", 'echo "$*" >> /var/log/fake-curl.log\nexit 7\n')
    machine.env.update(env)
    machine.install(*args)
    assert_binary(machine, flavor)
    assert not machine.path("/var/log/fake-curl.log").exists(), "an offline install must not download"


def test_tarball_for_another_architecture_is_refused(machine: Machine) -> None:
    run = machine.install("--from", "/srv/release/ollama-linux-arm64.tgz", check=False)
    assert run.returncode == 1
    assert "is not a build for this machine (amd64)" in run.stderr
    assert_nothing_installed(machine)


def test_checksum_mismatch_is_refused(machine: Machine) -> None:
    artifact = machine.path("/srv/release/ollama-linux-amd64.tgz")
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    run = machine.install("--from", "/srv/release", check=False)
    assert run.returncode == 1
    assert "checksum mismatch for ollama-linux-amd64.tgz" in run.stderr
    assert "nothing was installed" in run.stderr
    assert_nothing_installed(machine)


def test_missing_checksums_are_refused(machine: Machine) -> None:
    machine.path("/srv/release/sha256sum.txt").unlink()
    run = machine.install("--from", "/srv/release", check=False)
    assert run.returncode == 1
    assert "cannot read sha256sum.txt" in run.stderr
    assert_nothing_installed(machine)


@pytest.fixture
def http_release(tmp_path: Path) -> Iterator[str]:
    """A release without a cuda build, served over HTTP on the loopback (the chroot shares it)."""
    folder = make_release(tmp_path / "www" / "rel", flavors=("cpu", "rocm"))
    handler = functools.partial(QuietHandler, directory=str(folder.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/rel"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_download_over_http_falls_back_to_cpu(machine: Machine, http_release: str) -> None:
    machine.nvidia_smi()
    run = machine.install(OLLAMA_DOWNLOAD_URL=http_release)  # the real curl of the root
    assert_binary(machine, "cpu")
    assert "has no cuda build (ollama-linux-amd64-cuda.tgz); installing the CPU build" in run.stderr
    assert "Verified ollama-linux-amd64.tgz" in run.stderr


def test_default_release_location_and_version(machine: Machine) -> None:
    """Without OLLAMA_DOWNLOAD_URL: the project's GitHub releases, latest or OLLAMA_VERSION's."""
    github = "/srv/mirror/github.com/ollama-appliance/ollama-appliance/releases"
    make_release(machine.path(f"{github}/latest/download"), "0.4.0")
    make_release(machine.path(f"{github}/download/v0.3.1"), "0.3.1")
    # A curl that serves https://host/path from /srv/mirror/host/path and logs what it was asked for.
    machine.fake_tool("curl", """out=
for arg; do
    [ "$prev" = -o ] && out=$arg
    prev=$arg
    url=$arg
done
echo "$url" >> /var/log/fake-curl.log
src=/srv/mirror/${url#*://}
[ -f "$src" ] || exit 22
cp "$src" "$out"
""")
    machine.install()
    assert machine.installed_version() == "ollama-appliance version is 0.4.0 (cpu build, amd64)"
    machine.install(OLLAMA_VERSION="0.3.1")
    assert machine.installed_version() == "ollama-appliance version is 0.3.1 (cpu build, amd64)"
    base = "https://github.com/ollama-appliance/ollama-appliance/releases"
    assert machine.path("/var/log/fake-curl.log").read_text().splitlines() == [
        f"{base}/latest/download/sha256sum.txt",
        f"{base}/latest/download/ollama-linux-amd64.tgz",
        f"{base}/download/v0.3.1/sha256sum.txt",
        f"{base}/download/v0.3.1/ollama-linux-amd64.tgz",
    ]


def test_truncated_download_runs_nothing(machine: Machine) -> None:
    """Any prefix of install.sh, cut at a line end or inside the last line, changes nothing."""
    script = INSTALLER.read_bytes()
    complete = len(script.rstrip(b"\n"))  # from here on the script is whole
    cuts = sorted({i + 1 for i, byte in enumerate(script) if byte == ord("\n")} | set(range(complete - 40, complete)))
    cuts = [n for n in cuts if n < complete]
    machine.write("/srv/install.sh", script.decode())
    machine.write("/srv/cuts", "".join(f"{n}\n" for n in cuts))
    machine.chroot("/bin/sh", "-c", 'while read -r n; do head -c "$n" /srv/install.sh | sh -s >/dev/null 2>&1; '
                   "done < /srv/cuts; true", env={"OLLAMA_DOWNLOAD_URL": "file:///srv/release"}, timeout=240)
    assert_nothing_installed(machine)
    # The whole script, same environment, does install: the cuts above were not harmless by accident.
    machine.chroot("/bin/sh", "/srv/install.sh", env={"OLLAMA_DOWNLOAD_URL": "file:///srv/release"})
    assert_binary(machine, "cpu")
