"""install.sh's --api-keys (OLLAMA_API_KEYS in the installer's override block), in a throw-away Debian root.

A key file is the recommended form (override.conf is world-readable); an inline list is accepted with a
warning; anything that could break out of the unit's Environment= line, or that the server would read
as neither form, is refused before anything is installed.
"""

from __future__ import annotations

import pytest

from tests.installer.checks import assert_nothing_installed, override_block, verify_unit
from tests.installer.debian_root import Machine

pytestmark = [pytest.mark.chroot, pytest.mark.timeout(300)]

KEY_FILE = "/etc/ollama/api-keys"


def test_api_keys_go_into_the_override_and_are_kept_changed_or_removed(machine: Machine) -> None:
    machine.write(KEY_FILE, "# one key a line\nk-0123456789abcdef\n", mode=0o640)
    run = machine.install("--from", "/srv/release", "--host", "0.0.0.0", "--api-keys", KEY_FILE)
    assert override_block(machine) == ['Environment="OLLAMA_HOST=0.0.0.0"', f'Environment="OLLAMA_API_KEYS={KEY_FILE}"']
    assert machine.override_env()["OLLAMA_API_KEYS"] == KEY_FILE
    assert "WARNING" not in run.stderr  # neither the exposure (keys are asked for) nor the key file
    assert "asks clients for an API key" in run.stderr
    verify_unit(machine)

    machine.install("--from", "/srv/release")  # not given again: kept
    assert f'Environment="OLLAMA_API_KEYS={KEY_FILE}"' in override_block(machine)

    run = machine.install("--from", "/srv/release", OLLAMA_API_KEYS="k-alpha-0123456789,k-beta_0123+/=")
    assert machine.override_env()["OLLAMA_API_KEYS"] == "k-alpha-0123456789,k-beta_0123+/="
    assert "which every user can read: a key file is safer" in run.stderr
    verify_unit(machine)

    run = machine.install("--from", "/srv/release", "--api-keys", "/etc/ollama/not-yet")
    assert "the API key file /etc/ollama/not-yet does not exist yet" in run.stderr
    assert machine.override_env()["OLLAMA_API_KEYS"] == "/etc/ollama/not-yet"

    machine.install("--from", "/srv/release", "--api-keys=")  # an empty value removes it
    assert override_block(machine) == ['Environment="OLLAMA_HOST=0.0.0.0"']
    assert "OLLAMA_API_KEYS" not in machine.override_env()


@pytest.mark.parametrize("value", ['k1" ExecStartPre=/bin/evil', "key with spaces", "k1,,k2", "100%key", "~/keys",
                                   "/etc/ollama/my keys", "k1,/etc/keys"])
def test_api_keys_that_cannot_be_written_safely_are_refused(machine: Machine, value: str) -> None:
    run = machine.install("--from", "/srv/release", "--api-keys", value, check=False)
    assert run.returncode == 1
    assert "invalid OLLAMA_API_KEYS" in run.stderr
    assert_nothing_installed(machine)
