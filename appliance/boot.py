"""Start-up of the ``ollama`` command: ``python -m appliance`` and the one-file binary's entry point.

Every CLI command is a process of its own, so ``ollama -v`` or ``ollama list`` costs an interpreter
start plus its imports; the binary's budget is 0.3 s (bench/bench_startup.py).  A third of that
went to optional imports of our dependencies that the CLI's sync HTTP client never runs:

* httpcore imports ``trio`` and ``anyio`` when it loads, only to offer async locks and backends
  (``trio`` alone builds dozens of attrs classes, ~0.1 s of CPU), and ``h2`` for HTTP/2;
* httpx imports its own command line (``httpx._main``), which pulls in rich, click and pygments.

Each importer treats the module as optional (it catches ImportError), so for client commands a
meta-path finder declines exactly those imports when they come from exactly those importers;
anything else may still import them.  ``serve`` and the internal ``runner``/``quantize-worker``
commands run without it.  (build.spec also leaves ``httpx._main`` out of the binary.)

A client command also skips the interpreter's teardown once it has finished (:func:`exit_now`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import FrameType, ModuleType

#: Commands that run the server or llama.cpp: they import everything normally.
FULL_IMPORT_COMMANDS = frozenset({"serve", "start", "runner", "quantize-worker"})

#: importer module -> modules it can do without, declined for client commands.
OPTIONAL_IMPORTS: dict[str, frozenset[str]] = {
    "httpcore._synchronization": frozenset({"trio", "anyio"}),
    "httpcore._backends.trio": frozenset({"trio"}),
    "httpcore._backends.anyio": frozenset({"anyio"}),
    "httpcore._sync.http2": frozenset({"h2"}),
    "httpcore._async.http2": frozenset({"h2"}),
    "httpx": frozenset({"httpx._main"}),
}
_DECLINED = frozenset().union(*OPTIONAL_IMPORTS.values())


class SkipOptionalImports:
    """A meta-path finder raising ImportError for those imports, and only when their importer asks."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> None:
        if fullname not in _DECLINED:
            return None
        frame: FrameType | None = sys._getframe(1)
        for _ in range(12):  # the importing module's frame sits a few importlib frames up
            if frame is None:
                break
            if fullname in OPTIONAL_IMPORTS.get(frame.f_globals.get("__name__", ""), ()):
                raise ImportError(f"{fullname} is not needed by the ollama client", name=fullname)
            frame = frame.f_back
        return None


def install(argv: Sequence[str]) -> None:
    """Decline the optional imports unless ``argv`` (without the program name) runs a full command."""
    if argv and argv[0] in FULL_IMPORT_COMMANDS:
        return
    if not any(isinstance(finder, SkipOptionalImports) for finder in sys.meta_path):
        sys.meta_path.insert(0, SkipOptionalImports())


def main() -> int:
    """Entry point of ``python -m appliance`` and of the frozen ``ollama`` executable."""
    argv = sys.argv[1:]
    if argv[:1] == ["json-decode"]:  # internal: the server decodes a large request body in a child
        from appliance.api.jsonbody import child_main

        code = child_main()
        exit_now(code)
        return code
    install(argv)
    from appliance.cli import main as cli_main

    code = cli_main()
    if not (argv and argv[0] in FULL_IMPORT_COMMANDS):
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End a finished client command without tearing the interpreter down (~40 ms of its start-up
    budget spent freeing ~250 modules): atexit handlers still run and output is flushed.  Only
    when no other thread is alive, which a normal exit would wait for."""
    import atexit
    import os
    import threading

    if threading.active_count() > 1:
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (ollama list | head) or stream
            pass
    os._exit(code)
