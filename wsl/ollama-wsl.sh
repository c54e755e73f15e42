#!/bin/sh
# Runs the ollama server under WSL2 when systemd is off: in the background, with a pid file and a log.
#
#   ollama-wsl.sh start | stop | restart | status | logs | gpu
#
# Run as root where the installer created the `ollama` user, the server runs as that user with the
# environment the systemd service would give it (ollama.service, then its override.conf), so the
# installer's settings apply. Otherwise it runs as you, with your own environment and models
# (~/.ollama/models). `gpu` checks that the NVIDIA GPU is passed through from Windows.
# See wsl/README.md.

say() { printf '>>> %s\n' "$*" >&2; }
warn() { printf '%sWARNING:%s %s\n' "$RED" "$PLAIN" "$*" >&2; }
fail() {
    printf '%sERROR:%s %s\n' "$RED" "$PLAIN" "$*" >&2
    exit 1
}
available() { command -v "$1" >/dev/null 2>&1; }

UNIT=/etc/systemd/system/ollama.service
WSL_LIB=/usr/lib/wsl/lib

usage() {
    cat <<'EOF'
Usage: ollama-wsl.sh start | stop | restart | status | logs | gpu

  start    start `ollama serve` in the background (as the ollama user with the service's settings
           when run as root after install.sh, else as you)
  stop     stop it
  status   is it running, and does the API answer? (exit 0 yes, 3 not running)
  logs     the last lines of its log
  gpu      check the NVIDIA GPU passthrough from Windows (exit 0 when CUDA is usable)

Environment: OLLAMA_BIN (the binary, default `ollama` on PATH), OLLAMA_WSL_STATE_DIR (where the pid
file and the log go).
EOF
}

# Every KEY=VALUE the Environment= lines of the unit files on stdin assign, in order (later wins).
unit_environment() {
    awk '
        /^[ \t]*Environment=/ {
            rest = $0
            sub(/^[ \t]*Environment=[ \t]*/, "", rest)
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
                if (word ~ /^[A-Za-z_][A-Za-z0-9_]*=/) print word
            }
        }'
}

setup() {
    if [ "$(id -u)" -eq 0 ] && id ollama >/dev/null 2>&1; then
        AS_SERVICE=true
        STATE_DIR=${OLLAMA_WSL_STATE_DIR:-/run/ollama}
        LOG_DIR=${OLLAMA_WSL_STATE_DIR:-/var/log/ollama}
        SERVICE_ENV=$(cat "$UNIT" "$UNIT.d"/*.conf 2>/dev/null | unit_environment)
        host=$(printf '%s\n' "$SERVICE_ENV" | sed -n 's/^OLLAMA_HOST=//p' | tail -n 1)
    else
        AS_SERVICE=false
        STATE_DIR=${OLLAMA_WSL_STATE_DIR:-$HOME/.ollama}
        LOG_DIR=${OLLAMA_WSL_STATE_DIR:-$HOME/.ollama/logs}
        host=${OLLAMA_HOST:-}
    fi
    PID_FILE=$STATE_DIR/serve.pid
    LOG=$LOG_DIR/serve.log
    BIN=${OLLAMA_BIN:-$(command -v ollama || echo /usr/local/bin/ollama)}
    # Where a client on this machine reaches the API: the listen address, loopback for "all".
    host=${host#*://}
    host=${host%%/*}
    case "$host" in
        "" | 0.0.0.0 | "[::]") PROBE=127.0.0.1:11434 ;;
        0.0.0.0:* | :*) PROBE=127.0.0.1:${host##*:} ;;
        "[::]:"*) PROBE=127.0.0.1:${host##*:} ;;
        \[*\]:* | *:*:*) PROBE=$host ;;
        *:*) PROBE=$host ;;
        *) PROBE=$host:11434 ;;
    esac
}

running_pid() {
    [ -f "$PID_FILE" ] || return 1
    pid=$(cat "$PID_FILE" 2>/dev/null)
    case "$pid" in
        "" | *[!0-9]*) return 1 ;;
    esac
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

api_answers() {
    available curl && curl -fsS -m 2 "http://$PROBE/api/version" >/dev/null 2>&1
}

start() {
    if pid=$(running_pid); then
        say "ollama is already running (pid $pid); the API is at http://$PROBE"
        return 0
    fi
    [ -x "$BIN" ] || fail "no ollama binary at $BIN (install it with install.sh, or set OLLAMA_BIN)"
    mkdir -p "$STATE_DIR" "$LOG_DIR"
    if [ "$AS_SERVICE" = true ]; then
        set -- PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/usr/share/ollama \
            LANG="${LANG:-C.UTF-8}"
        while IFS= read -r assignment; do
            [ -n "$assignment" ] && set -- "$@" "$assignment"
        done <<EOF
$SERVICE_ENV
EOF
        say "Starting ollama serve as the ollama user (log: $LOG)"
        nohup runuser -u ollama -- env -i "$@" "$BIN" serve >>"$LOG" 2>&1 </dev/null &
    else
        say "Starting ollama serve (log: $LOG)"
        nohup "$BIN" serve >>"$LOG" 2>&1 </dev/null &
    fi
    echo $! >"$PID_FILE"
    # Wait for the API (the one-file binary unpacks itself first), or for the server to give up.
    tries=0
    while [ $tries -lt 40 ]; do
        if ! running_pid >/dev/null; then
            tail -n 15 "$LOG" >&2 || :
            fail "ollama serve exited; its log is $LOG"
        fi
        if api_answers; then
            say "ollama is running; the API is at http://$PROBE"
            return 0
        fi
        available curl || break
        sleep 0.5
        tries=$((tries + 1))
    done
    say "ollama serve started (pid $(cat "$PID_FILE")); the API will be at http://$PROBE"
}

stop() {
    if ! pid=$(running_pid); then
        rm -f "$PID_FILE"
        say "ollama is not running"
        return 0
    fi
    kill "$pid" 2>/dev/null || :
    tries=0
    while kill -0 "$pid" 2>/dev/null && [ $tries -lt 100 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    kill -9 "$pid" 2>/dev/null || :
    rm -f "$PID_FILE"
    say "ollama stopped"
}

status() {
    if pid=$(running_pid); then
        if api_answers; then
            say "ollama is running (pid $pid); the API answers at http://$PROBE"
        else
            say "ollama is running (pid $pid); the API does not answer at http://$PROBE (yet?)"
        fi
        say "log: $LOG"
        return 0
    fi
    say "ollama is not running (start it with: $0 start)"
    return 3
}

nvidia_smi() {
    if available nvidia-smi; then
        nvidia-smi "$@"
    elif [ -x "$WSL_LIB/nvidia-smi" ]; then
        "$WSL_LIB/nvidia-smi" "$@"
    else
        return 127
    fi
}

# WSL2 hands NVIDIA GPUs to Linux through /dev/dxg and the Windows driver's libraries in
# /usr/lib/wsl/lib; a Linux NVIDIA driver installed inside the distro gets in the way.
gpu() {
    ok=true
    case "$(uname -r)" in
        *icrosoft*WSL2 | *icrosoft*wsl2) say "WSL2 kernel $(uname -r)" ;;
        *icrosoft*) fail "this is WSL1, which has no GPU access: in PowerShell run 'wsl --set-version <distro> 2'" ;;
        *) warn "not a WSL2 kernel ($(uname -r)); these checks are for WSL2" ;;
    esac
    if [ -e /dev/dxg ]; then
        say "GPU paravirtualization device /dev/dxg: present"
    else
        warn "no /dev/dxg: this WSL has no GPU access. Update WSL ('wsl --update' in PowerShell) and the Windows GPU driver"
        ok=false
    fi
    if ls "$WSL_LIB"/libcuda.so* >/dev/null 2>&1; then
        say "Windows NVIDIA driver's CUDA library: $WSL_LIB/libcuda.so"
    else
        warn "no $WSL_LIB/libcuda.so: install the NVIDIA driver for Windows (it brings CUDA to WSL2; install no driver inside Linux)"
        ok=false
    fi
    for lib in /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/lib/aarch64-linux-gnu/libcuda.so.1 /usr/lib64/libcuda.so.1; do
        if [ -e "$lib" ]; then
            case "$(readlink -f "$lib")" in
                "$WSL_LIB"/*) ;;
                *) warn "$lib comes from a Linux NVIDIA driver installed inside WSL; it hides the Windows driver: remove that driver package" ;;
            esac
        fi
    done
    if gpus=$(nvidia_smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null) && [ -n "$gpus" ]; then
        printf '%s\n' "$gpus" | while IFS= read -r line; do
            say "NVIDIA GPU: $line"
        done
    else
        warn "nvidia-smi finds no GPU: ollama will run on the CPU"
        ok=false
    fi
    if [ "$ok" = true ]; then
        say "GPU passthrough works; install the cuda build (install.sh picks it when nvidia-smi works)"
        return 0
    fi
    return 1
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
    command=${1:-}
    case "$command" in
        -h | --help | help | "")
            usage
            [ -n "$command" ] || exit 2
            exit 0
            ;;
        gpu)
            gpu
            exit
            ;;
    esac
    setup
    case "$command" in
        start) start ;;
        stop) stop ;;
        restart)
            stop
            start
            ;;
        status) status ;;
        logs)
            say "$LOG"
            tail -n 50 "$LOG" 2>/dev/null || :
            ;;
        *) fail "unknown command: $command (see --help)" ;;
    esac
}

{ main "$@"; }
