"""``ollama worker``: lend this machine's CPU or GPUs to another machine's server (llama.cpp RPC).

The server names its workers in OLLAMA_RPC_SERVERS and spreads a model's layers over them; see
:mod:`appliance.engine.rpc`.  The RPC server is llama.cpp's own, run in this process through ctypes.
It serves one runner at a time.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from appliance.engine import rpc

#: The local tensor cache of ``--cache`` without a folder: where llama.cpp's rpc-server keeps it.
DEFAULT_CACHE = Path.home() / ".cache" / "llama.cpp" / "rpc"

NO_AUTH_WARNING = """\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
WARNING: this worker listens on {host}, not only on this machine (127.0.0.1).
  llama.cpp's RPC protocol has NO authentication and NO encryption: anyone who can reach
  port {port} can read and write this process's memory and run computations on it.
  Keep it on a private network you trust, or reach it through an SSH or WireGuard tunnel
  (bind 127.0.0.1 here and forward the port), and firewall the port from everything else.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


def default_threads() -> int:
    """Half the CPUs, as llama.cpp's rpc-server (the other half is left to the network and the OS)."""
    return max(1, (os.cpu_count() or 2) // 2)


def run_worker(host: str, port: int, threads: int, cache: str | None, device_names: list[str],
               list_devices: bool = False) -> int:
    """Serve until interrupted; 1 when the server cannot start (port taken, unknown device, no RPC)."""
    from appliance.envconfig import is_loopback_literal

    if list_devices:
        for device in rpc.devices():
            print(device)
        return 0
    if not 0 < port < 65536:
        sys.stderr.write(f"Error: port {port} is not between 1 and 65535\n")
        return 1
    if threads < 1:
        sys.stderr.write(f"Error: invalid number of threads: {threads}\n")
        return 1
    if not is_loopback_literal(host):
        sys.stderr.write(NO_AUTH_WARNING.format(host=host, port=port))
        sys.stderr.flush()
    failure: list[BaseException] = []
    stopped = threading.Event()

    def serve() -> None:
        try:
            rpc.serve(host, port, threads=threads, cache_dir=cache, device_names=device_names)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            stopped.set()

    # The C server never returns to Python while it runs: a thread of its own keeps Ctrl+C working.
    threading.Thread(target=serve, name="rpc-server", daemon=True).start()
    local = "127.0.0.1" if host in ("0.0.0.0", "") else host
    announced = False
    try:
        while not stopped.wait(0.2):
            if not announced and not rpc.probe(f"{local}:{port}", timeout_s=1.0):
                print(f"ollama worker listening on {host}:{port} ({threads} threads"
                      f"{', tensor cache ' + cache if cache else ''}); add it to the server's "
                      f"OLLAMA_RPC_SERVERS as <this machine's address>:{port}", flush=True)
                announced = True
            elif not announced:
                time.sleep(0.3)
    except KeyboardInterrupt:
        _leave(130)
    message = str(failure[0]) if failure else "the RPC server stopped"
    sys.stderr.write(f"Error: {message}\n")
    _leave(1)
    return 1  # not reached


def _leave(code: int) -> None:
    # The C server's thread cannot be stopped or joined: leave without waiting for it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


__all__ = ["DEFAULT_CACHE", "NO_AUTH_WARNING", "default_threads", "run_worker"]
