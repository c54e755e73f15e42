#!/bin/sh
# The Debian packages the test suite (and bench/) needs besides Python ones: the one place to add one.
#   ./dev test sources this file and calls ensure_test_tools; `sh scripts/test-deps.sh` runs it too.
#
#   docker-registry  a real OCI registry for the pull/push tests (tests/e2e/test_registry.py, bench/)
#   curl             bench/bench_pull.py
#   ShellCheck       lints installer/*.sh and wsl/*.sh (tests/installer/test_scripts.py)
#   debootstrap      builds the throw-away Debian root of tests/installer and tests/binary
#   systemd          for systemd-analyze, which verifies the unit and override install.sh writes
#   tmux             drives `ollama run` in a real terminal (tests/cli/test_interactive.py)
#   skopeo           reads `ollama export`'s OCI archive as a standard tool (tests/e2e/test_export_import.py)
#   chromium, chromium-driver  a real browser for the chat page (tests/e2e/test_chat_page.py)
#   podman, runc     build and run the container image (tests/container/test_image.py)
#   nginx            the load balancer of docs/scaling/nginx.conf (tests/e2e/test_read_only_store.py)
# Quick when everything is present; without apt (or root/sudo) it only says what is missing.

ensure_test_tools() {
    missing=
    [ -x /usr/bin/docker-registry ] || missing="$missing docker-registry"
    command -v curl >/dev/null 2>&1 || missing="$missing curl"
    command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing="$missing debootstrap"
    command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
    command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
    command -v skopeo >/dev/null 2>&1 || missing="$missing skopeo"
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
    command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
    command -v podman >/dev/null 2>&1 || missing="$missing podman"
    command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing="$missing runc"
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
    [ -f /usr/include/zlib.h ] || missing="$missing zlib1g-dev"
    [ -n "$missing" ] || return 0
    sudo=
    if [ "$(id -u)" -ne 0 ]; then
        sudo=sudo
    fi
    if ! command -v apt-get >/dev/null 2>&1 || { [ -n "$sudo" ] && ! command -v sudo >/dev/null 2>&1; }; then
        printf '>>> Missing test tools:%s (install them for the tests that need them)\n' "$missing" >&2
        return 0
    fi
    printf '>>> Installing test tools:%s\n' "$missing" >&2
    # shellcheck disable=SC2086 # one word per package
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >&2 || {
        $sudo apt-get update -q >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >&2
    }
}

# Run, not sourced (./dev sources it and calls the function itself).
case "${0##*/}" in
    test-deps.sh) ensure_test_tools ;;
esac
