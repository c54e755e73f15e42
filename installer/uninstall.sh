#!/bin/sh
# Removes what installer/install.sh put on this machine: the ollama service, its settings and the
# binary. The models and the ollama user stay unless --purge is given.
#
#   sudo sh uninstall.sh            # or: curl -fsSL .../uninstall.sh | sh
#   sudo sh uninstall.sh --purge    # also the models, /usr/share/ollama and the ollama user and group
#
# Everything is a function and only the last line runs anything, so a download cut short does nothing.

say() { printf '>>> %s\n' "$*" >&2; }
warn() { printf '%sWARNING:%s %s\n' "$RED" "$PLAIN" "$*" >&2; }
fail() {
    printf '%sERROR:%s %s\n' "$RED" "$PLAIN" "$*" >&2
    exit 1
}
available() { command -v "$1" >/dev/null 2>&1; }

usage() {
    cat <<'EOF'
Remove ollama-appliance: stop and disable the ollama service, delete its unit, its settings
(/etc/systemd/system/ollama.service.d) and the ollama binary.

Usage: uninstall.sh [--purge]

  --purge     also delete the models (Ollama's blobs/ and manifests/ in the models folder, and
              /usr/share/ollama, the service's home) and the ollama user and group
  -h, --help  this text
EOF
}

# The value the Environment= lines on stdin give KEY (the last one wins); the same parser as install.sh.
env_value() {
    awk -v key="$1" '
        /^[ \t]*Environment=/ {
            rest = $0
            sub(/^[ \t]*Environment=[ \t]*/, "", rest)
            if (rest == "") { found = 0; next }
            while (rest != "") {
                sub(/^[ \t]+/, "", rest)
                q = substr(rest, 1, 1)
                if (q == "\"" || q == "\047") {
                    rest = substr(rest, 2); end = index(rest, q); if (end == 0) end = length(rest) + 1
                    word = substr(rest, 1, end - 1); rest = substr(rest, end + 1)
                } else {
                    end = match(rest, /[ \t]/); if (end == 0) end = length(rest) + 1
                    word = substr(rest, 1, end - 1); rest = substr(rest, end)
                }
                if (index(word, key "=") == 1) { value = substr(word, length(key) + 2); found = 1 }
            }
        }
        END { if (found) print value; exit !found }'
}

UNIT=/etc/systemd/system/ollama.service
DROPIN_DIR=/etc/systemd/system/ollama.service.d

# The binaries to remove: the service's, else an `ollama` in the folders install.sh picks from; never
# one that a distribution package owns.
installed_binaries() {
    service_binary=
    if [ -f "$UNIT" ]; then
        service_binary=$(sed -n 's/^ExecStart=\([^ ]*\/ollama\) serve.*/\1/p' "$UNIT" | head -n 1)
    fi
    for binary in $service_binary /usr/local/bin/ollama /usr/bin/ollama /bin/ollama; do
        [ -f "$binary" ] || continue
        if available dpkg-query && dpkg-query -S "$binary" >/dev/null 2>&1; then
            warn "leaving $binary: it belongs to a distribution package"
            continue
        fi
        echo "$binary"
    done
}

remove_service() {
    if available systemctl; then
        say "Stopping and disabling the ollama service..."
        $SUDO systemctl stop ollama >/dev/null 2>&1 || :
        $SUDO systemctl disable ollama >/dev/null 2>&1 || :
    fi
    if [ -f "$UNIT" ] || [ -d "$DROPIN_DIR" ]; then
        say "Removing $UNIT and $DROPIN_DIR"
        $SUDO rm -rf "$UNIT" "$DROPIN_DIR"
    fi
    # `disable` leaves the link behind when systemd is not running.
    $SUDO rm -f /etc/systemd/system/multi-user.target.wants/ollama.service \
        /etc/systemd/system/default.target.wants/ollama.service
    if available systemctl; then
        case "$(systemctl is-system-running 2>/dev/null || :)" in
            running | degraded | starting | initializing) $SUDO systemctl daemon-reload ;;
        esac
    fi
}

# Only Ollama's own layout is removed from a models folder set with OLLAMA_MODELS: it may be a folder
# the user also keeps other things in.
purge_models() {
    case "$1" in
        "" | /usr/share/ollama | /usr/share/ollama/*) ;;
        /*)
            if [ -d "$1" ]; then
                say "Removing the models in $1"
                $SUDO rm -rf "$1/blobs" "$1/manifests"
                $SUDO rmdir "$1" 2>/dev/null || :
            fi
            ;;
    esac
    if [ -d /usr/share/ollama ]; then
        say "Removing /usr/share/ollama"
        $SUDO rm -rf /usr/share/ollama
    fi
}

purge_user() {
    if id ollama >/dev/null 2>&1; then
        say "Removing the ollama user"
        $SUDO userdel ollama
    fi
    if getent group ollama >/dev/null 2>&1; then
        $SUDO groupdel ollama
    fi
}

main() {
    set -eu
    if [ -t 2 ]; then
        RED=$(printf '\033[1;31m')
        PLAIN=$(printf '\033[0m')
    else
        RED=
        PLAIN=
    fi
    PURGE=false
    for arg in "$@"; do
        case "$arg" in
            --purge) PURGE=true ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) fail "unknown option: $arg (see --help)" ;;
        esac
    done
    SUDO=
    if [ "$(id -u)" -ne 0 ]; then
        available sudo || fail "this needs root: run it as root or install sudo"
        SUDO=sudo
    fi

    models=
    if [ -d "$DROPIN_DIR" ]; then
        models=$(cat "$DROPIN_DIR"/*.conf 2>/dev/null | env_value OLLAMA_MODELS || :)
    fi
    binaries=$(installed_binaries)
    remove_service
    for binary in $binaries; do
        say "Removing $binary"
        $SUDO rm -f "$binary"
    done

    if [ "$PURGE" = true ]; then
        purge_models "$models"
        purge_user
        say "ollama-appliance, its models and the ollama user are removed."
    else
        say "ollama-appliance is removed. Kept the models (${models:-/usr/share/ollama/.ollama/models}) and the ollama user; --purge removes them too."
    fi
}

# In braces: sh parses the whole group before running it, so even a cut inside this line runs nothing.
{ main "$@"; }
