"""``ollama serve``: run the API server in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import sys

import trio


def run_serve() -> int:
    from appliance import envconfig
    from appliance.server.app import serve

    cfg = envconfig.load()
    logging.basicConfig(
        level=logging.DEBUG if cfg.debug else logging.INFO,
        format="time=%(asctime)s level=%(levelname)s source=%(name)s msg=%(message)s",
        stream=sys.stderr,
    )
    if not cfg.debug:  # httpx logs every registry request at INFO; pulls log their own progress
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        trio.run(serve, cfg)
    except OSError as exc:
        host, port = cfg.host.bind
        sys.stderr.write(f"Error: listen tcp {host}:{port}: {exc.strerror or exc}\n")
        return 1
    return 0
