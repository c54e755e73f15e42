"""The ``ollama`` command: a client of the HTTP API (plus ``serve``, which runs the server).

Sub-command modules are imported only when their command runs, so ``ollama -v`` and
``ollama list`` never import the server, Quart or llama.cpp.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from appliance import __version__

USAGE = """Large language model runner

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  create      Create a model
  show        Show information for a model
  run         Run a model
  stop        Stop a running model
  pull        Pull a model from a registry
  push        Push a model to a registry
  export      Write a model to an OCI image layout tarball
  import      Store a model from an OCI image layout tarball
  list        List models
  ps          List running models
  cp          Copy a model
  rm          Remove a model
  doctor      Check this machine's setup and say how to fix what is wrong
  worker      Lend this machine to a server's models (llama.cpp RPC worker)
  help        Help about any command

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information

Use "ollama [command] --help" for more information about a command.
"""

#: Public commands, in the order of the help text (pinned by a test).
COMMANDS = ("serve", "create", "show", "run", "stop", "pull", "push", "export", "import", "list", "ps", "cp",
            "rm", "doctor", "worker", "help")
ALIASES = {"ls": "list", "start": "serve", "delete": "rm"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"Error: {message}\n")
        sys.exit(1)


def _parser(prog: str, description: str) -> _Parser:
    return _Parser(prog=f"ollama {prog}", description=description)


def _env_epilog(parser: argparse.ArgumentParser, *names: str) -> None:
    from appliance.envconfig import describe

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    rows = [(k, v) for k, v in describe() if k in names]
    parser.epilog = "Environment Variables:\n" + "\n".join(f"      {k:<24} {v}" for k, v in rows)


def _cmd_serve(argv: Sequence[str]) -> int:
    from appliance.cli.serve import run_serve

    parser = _parser("serve", "Start ollama")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    from appliance.envconfig import describe

    parser.epilog = "Environment Variables:\n" + "\n".join(f"      {k:<24} {v}" for k, v in describe())
    parser.parse_args(argv)
    return run_serve()


def _cmd_create(argv: Sequence[str]) -> int:
    from appliance.cli.models import run_create

    parser = _parser("create", "Create a model")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("-f", "--file", help='Name of the Modelfile (default "Modelfile")')
    parser.add_argument("-q", "--quantize", help="Quantize model to this level (e.g. q4_K_M)")
    args = parser.parse_args(argv)
    return run_create(args.model, args.file, args.quantize)


def _cmd_show(argv: Sequence[str]) -> int:
    from appliance.cli.models import run_show

    parser = _parser("show", "Show information for a model")
    parser.add_argument("model", metavar="MODEL")
    for flag, text in (("license", "Show license of a model"), ("modelfile", "Show Modelfile of a model"),
                       ("parameters", "Show parameters of a model"), ("template", "Show template of a model"),
                       ("system", "Show system message of a model")):
        parser.add_argument(f"--{flag}", action="store_true", help=text)
    parser.add_argument("-v", "--verbose", action="store_true", help="Show detailed model information")
    args = parser.parse_args(argv)
    which = [f for f in ("license", "modelfile", "parameters", "template", "system") if getattr(args, f)]
    if len(which) > 1:
        sys.stderr.write("Error: only one of '--license', '--modelfile', '--parameters', '--system', or "
                         "'--template' can be specified\n")
        return 1
    return run_show(args.model, which[0] if which else None, args.verbose)


def _cobra_style(argv: Sequence[str], takes_value: Sequence[str],
                 optional_value: dict[str, str]) -> list[str]:
    """Flag values as cobra reads them: ``--keepalive -1s`` takes "-1s" even though it starts with a
    dash, and a bare optional-value flag (``--think``) never takes the next word."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            return [*out, arg, *args]
        if arg in takes_value:
            value = next(args, None)
            out.append(arg if value is None else f"{arg}={value}")
        elif arg in optional_value:
            out.append(f"{arg}={optional_value[arg]}")
        else:
            out.append(arg)
    return out


def _cmd_run(argv: Sequence[str]) -> int:
    from appliance.cli.run import run_run

    parser = _parser("run", "Run a model")
    parser.usage = "ollama run MODEL [PROMPT] [flags]"
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("prompt", nargs="*", metavar="PROMPT")
    parser.add_argument("--format", default="", help="Response format (e.g. json)")
    parser.add_argument("--hidethinking", action="store_true", help="Hide thinking output (if provided)")
    parser.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    parser.add_argument("--keepalive", default="", help="Duration to keep a model loaded (e.g. 5m)")
    parser.add_argument("--nowordwrap", action="store_true",
                        help="Don't wrap words to the next line automatically")
    parser.add_argument("--think", nargs="?", const="true", metavar="string",
                        help="Enable thinking mode: true/false or high/medium/low for supported models")
    parser.add_argument("--verbose", action="store_true", help="Show timings for response")
    parser.add_argument("--dimensions", type=int, default=0, metavar="int",
                        help="Embedding models only: cut each embedding to this many dimensions")
    parser.add_argument("--truncate", nargs="?", const="true", metavar="bool",
                        help="Embedding models only: cut input longer than the context (the default); "
                             "--truncate=false makes it an error")
    _env_epilog(parser, "OLLAMA_EDITOR", "OLLAMA_HOST", "OLLAMA_NOHISTORY")
    args = parser.parse_intermixed_args(_cobra_style(
        argv, takes_value=("--format", "--keepalive", "--dimensions"),
        optional_value={"--think": "true", "--truncate": "true"}))
    return run_run(args.model, args.prompt, verbose=args.verbose, format=args.format,
                   keepalive=args.keepalive, think=args.think, hide_thinking=args.hidethinking,
                   no_word_wrap=args.nowordwrap, insecure=args.insecure, dimensions=args.dimensions,
                   truncate=args.truncate)


def _cmd_stop(argv: Sequence[str]) -> int:
    from appliance.cli.running import run_stop

    parser = _parser("stop", "Stop a running model")
    parser.add_argument("model", metavar="MODEL")
    return run_stop(parser.parse_args(argv).model)


def _cmd_ps(argv: Sequence[str]) -> int:
    from appliance.cli.running import run_ps

    parser = _parser("ps", "List running models")
    parser.add_argument("filters", nargs="*", metavar="MODEL")
    parser.add_argument("-a", "--all", action="store_true",
                        help="Also list the generations queued and running (GET /api/requests)")
    args = parser.parse_args(argv)
    return run_ps(args.filters, args.all)


def _cmd_list(argv: Sequence[str]) -> int:
    from appliance.cli.models import run_list

    parser = _parser("list", "List models")
    parser.add_argument("filters", nargs="*", metavar="MODEL")
    return run_list(parser.parse_args(argv).filters)


def _cmd_cp(argv: Sequence[str]) -> int:
    from appliance.cli.models import run_copy

    parser = _parser("cp", "Copy a model")
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("destination", metavar="DESTINATION")
    args = parser.parse_args(argv)
    return run_copy(args.source, args.destination)


def _cmd_rm(argv: Sequence[str]) -> int:
    from appliance.cli.models import run_remove

    parser = _parser("rm", "Remove a model")
    parser.add_argument("models", nargs="+", metavar="MODEL")
    return run_remove(parser.parse_args(argv).models)


def _cmd_doctor(argv: Sequence[str]) -> int:
    from appliance.cli.doctor import run_doctor

    parser = _parser("doctor", "Check the OS, CPU, GPUs and drivers, the service, the models folder and the "
                     "port; exit status 1 when a check fails")
    parser.add_argument("--json", action="store_true", help="Print the checks as JSON")
    return run_doctor(as_json=parser.parse_args(argv).json)


def _cmd_worker(argv: Sequence[str]) -> int:
    from appliance.cli.worker import DEFAULT_CACHE, default_threads, run_worker

    parser = _parser("worker", "Serve this machine's CPU or GPUs to a server's runners over llama.cpp's RPC "
                     "protocol (the server lists workers in OLLAMA_RPC_SERVERS)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to listen on (default 127.0.0.1; the protocol has no authentication)")
    parser.add_argument("-p", "--port", type=int, default=50052, help="Port to listen on (default 50052)")
    parser.add_argument("-t", "--threads", type=int, default=default_threads(),
                        help=f"Threads for the CPU device (default {default_threads()})")
    parser.add_argument("-c", "--cache", nargs="?", const=str(DEFAULT_CACHE), default=None, metavar="DIR",
                        help=f"Keep received tensors in a local cache (default folder {DEFAULT_CACHE})")
    parser.add_argument("-d", "--device", action="append", default=[], metavar="NAME",
                        help="A device to serve (repeat or comma-separate; default: every GPU, else the CPU)")
    parser.add_argument("--list-devices", action="store_true", help="List this machine's devices and exit")
    args = parser.parse_args(argv)
    names = [n for spec in args.device for n in spec.replace("/", ",").split(",") if n]
    return run_worker(args.host, args.port, args.threads, args.cache, names, args.list_devices)


def _cmd_help(argv: Sequence[str]) -> int:
    if argv and argv[0] in HANDLERS and argv[0] != "help":
        return HANDLERS[argv[0]](["--help"])
    sys.stdout.write(USAGE)
    return 0


def _cmd_quantize_worker(argv: Sequence[str]) -> int:
    from appliance.engine.quantize import main as quantize_main

    return quantize_main(list(argv))


def _cmd_convert_safetensors(argv: Sequence[str]) -> int:
    from appliance.store.convert.child import main as convert_main

    return convert_main(list(argv))


def _cmd_runner(argv: Sequence[str]) -> int:
    from appliance.engine.runner import main as runner_main

    return runner_main(list(argv))


def _cmd_pull(argv: Sequence[str]) -> int:
    from appliance.cli.transfer import run_pull

    parser = _parser("pull", "Pull a model from a registry")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    _env_epilog(parser, "OLLAMA_HOST")
    args = parser.parse_args(argv)
    return run_pull(args.model, args.insecure)


def _cmd_push(argv: Sequence[str]) -> int:
    from appliance.cli.transfer import run_push

    parser = _parser("push", "Push a model to a registry")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    _env_epilog(parser, "OLLAMA_HOST")
    args = parser.parse_args(argv)
    return run_push(args.model, args.insecure)


def _cmd_export(argv: Sequence[str]) -> int:
    from appliance.cli.archive import run_export

    parser = _parser("export", "Write a model to an OCI image layout tarball (for an offline machine)")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help='The tarball to write ("-": stdout)')
    _env_epilog(parser, "OLLAMA_HOST")
    args = parser.parse_args(argv)
    return run_export(args.model, args.output)


def _cmd_import(argv: Sequence[str]) -> int:
    from appliance.cli.archive import run_import

    parser = _parser("import", "Store a model from an OCI image layout tarball (as ollama export writes)")
    parser.add_argument("file", metavar="FILE", help='The tarball ("-": stdin)')
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="The name to store it as (default: the name in the tarball)")
    _env_epilog(parser, "OLLAMA_HOST")
    args = parser.parse_args(argv)
    return run_import(args.file, args.model)


HANDLERS: dict[str, Callable[[Sequence[str]], int]] = {
    "serve": _cmd_serve,
    "create": _cmd_create,
    "show": _cmd_show,
    "run": _cmd_run,
    "stop": _cmd_stop,
    "pull": _cmd_pull,
    "push": _cmd_push,
    "export": _cmd_export,
    "import": _cmd_import,
    "list": _cmd_list,
    "ps": _cmd_ps,
    "cp": _cmd_cp,
    "rm": _cmd_rm,
    "doctor": _cmd_doctor,
    "worker": _cmd_worker,
    "help": _cmd_help,
    "quantize-worker": _cmd_quantize_worker,  # internal: run by the server in a child process
    "convert-safetensors": _cmd_convert_safetensors,  # internal: the server converts an import in a child
    "runner": _cmd_runner,  # internal: one per loaded model, started by the scheduler
}


def _version() -> int:
    """Like Ollama: the server's version, a warning when the client differs; then our own version."""
    from appliance import OLLAMA_COMPAT_VERSION
    from appliance.api.client import Client, ConnectError, ResponseError

    try:
        with Client(timeout=5) as client:
            server = client.version()
        print(f"ollama version is {server}")
        if server != OLLAMA_COMPAT_VERSION:
            print(f"Warning: client version is {OLLAMA_COMPAT_VERSION}")
    except (ConnectError, ResponseError):
        print("Warning: could not connect to a running Ollama instance")
        print(f"Warning: client version is {OLLAMA_COMPAT_VERSION}")
    from appliance._build import FLAVOR

    print(f"ollama-appliance version is {__version__} ({FLAVOR} build)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ollama`` command; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if args[0] in ("-v", "--version"):
        return _version()
    command = ALIASES.get(args[0], args[0])
    handler = HANDLERS.get(command)
    if handler is None:
        sys.stderr.write(f'Error: unknown command "{args[0]}" for "ollama"\n'
                         "Run 'ollama --help' for usage.\n")
        return 1
    from appliance.api.client import ConnectError, ResponseError
    from appliance.errors import ApplianceError

    try:
        return handler(args[1:])
    except ConnectError:
        sys.stderr.write("Error: could not connect to ollama server, run 'ollama serve' to start it\n")
        return 1
    except ResponseError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    except ApplianceError as exc:  # e.g. an invalid Modelfile, found before anything is sent
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
