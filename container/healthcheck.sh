#!/bin/bash
# The image's HEALTHCHECK: GET /api/health of the server in this container, healthy on a 200.
#
# /api/health is the readiness check (start-up finished, models folder readable, queue not full) and
# needs no API key, so the check works with OLLAMA_API_KEYS set.  bash's /dev/tcp does the request:
# the image needs no curl, and no Python starts every 30 seconds.
set -eu
hostport=${OLLAMA_HOST:-}
hostport=${hostport#*://}
hostport=${hostport%%/*}
port=${hostport##*:}
case $port in
    '' | *[!0-9]*) port=${OLLAMA_PORT:-11434} ;;
esac
if ! exec 3<>"/dev/tcp/127.0.0.1/$port"; then
    echo "unhealthy: nothing listens on port $port" >&2
    exit 1
fi
printf 'GET /api/health HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
status=
IFS= read -r -t 8 status <&3 || true
case $status in
    "HTTP/"*" 200"*) exit 0 ;;
esac
echo "unhealthy: ${status:-no answer} from /api/health" >&2
exit 1
