# Sourced by ./dev up: start the server, import the bundled model once, stay in the foreground.
serve_with_default_model() {
    export OLLAMA_HOST="${OLLAMA_HOST:-127.0.0.1:11434}"
    "$VENV/bin/ollama" serve &
    server=$!
    trap 'kill -TERM $server 2>/dev/null; wait $server' INT TERM
    i=0
    until "$VENV/bin/python" -c 'import httpx,sys; from appliance import envconfig; httpx.head(envconfig.load().host.url, timeout=1)' 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 100 ] || { echo "server did not start" >&2; exit 1; }
        kill -0 $server 2>/dev/null || { echo "server exited" >&2; exit 1; }
        sleep 0.2
    done
    if ! "$VENV/bin/ollama" show smollm2:135m >/dev/null 2>&1; then
        modelfile=$(mktemp)
        "$PY" -m appliance.assets.default_model > "$modelfile"
        "$VENV/bin/ollama" create smollm2:135m -f "$modelfile"
        rm -f "$modelfile"
    fi
    "$VENV/bin/ollama" list
    say "Ready: ollama run smollm2:135m  (API on http://$OLLAMA_HOST; Ctrl+C stops)"
    wait $server
}
