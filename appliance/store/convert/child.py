"""Running a conversion in a child process: ``ollama convert-safetensors FOLDER OUT``.

A conversion is seconds to minutes of CPU and up to one tensor's worth of memory (gigabytes for a
large vocabulary), so the server never runs it in its own process.  The child writes one JSON object
per line on stdout: progress (``{"status": "converting model", "total": N, "completed": n}``),
``{"warning": "..."}``, and, when the model cannot be converted, ``{"error": "..."}`` before it exits
with status 2.  Anything else (a crash, a full disk) is a non-zero status with the reason on stderr.
``ollama convert-safetensors --check FOLDER`` reads and validates everything but the tensor data (a
second or so), so that the server can refuse a model before it starts streaming the create.

The server hands the child a folder of symlinks to the uploaded blobs, named as the client named the
files (:func:`link_files`), as Ollama does.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.store.convert import ConversionError

Progress = Callable[[dict[str, Any]], None]

#: Progress and warning lines are short; a longer line is not from our child.
MAX_LINE_BYTES = 64 << 10
ERROR_EXIT = 2


def link_files(folder: Path, files: Mapping[str, str], blob_path: Callable[[str], Path]) -> None:
    """Lay out ``files`` (relative name -> digest, names already validated as clean relative paths)
    in ``folder`` as symlinks to their blobs."""
    for name, digest in files.items():
        target = blob_path(digest)
        if not target.is_file():
            raise ConversionError(f"blob {digest} for {name!r} not found; upload it first (POST /api/blobs)")
        link = folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            raise ConversionError(f"file {name!r} given twice")
        link.symlink_to(target)


def check_in_child(self_command: Sequence[str], folder: Path) -> list[str]:
    """Validate ``folder`` in a child process (blocking); raise as :func:`convert_in_child` does."""
    return _run([*self_command, "convert-safetensors", "--check", str(folder)], lambda _: None, ())


def convert_in_child(self_command: Sequence[str], folder: Path, out: Path, progress: Progress,
                     pass_fds: Sequence[int] = ()) -> list[str]:
    """Run the conversion of ``folder`` into ``out`` in a child process (blocking: call it from a
    worker thread); forward its progress; return its warnings.

    Raises ConversionError (400) with the child's reason when the model cannot be converted, and
    ApplianceError (500) when the child fails otherwise.
    """
    return _run([*self_command, "convert-safetensors", str(folder), str(out)], progress, pass_fds)


def _run(cmd: list[str], progress: Progress, pass_fds: Sequence[int]) -> list[str]:
    warnings: list[str] = []
    error: str | None = None
    # stderr goes to a file: a child that logs a lot must not block on a pipe nobody reads yet.
    with tempfile.TemporaryFile() as stderr_file, subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=stderr_file, pass_fds=tuple(pass_fds)) as proc:
        stdout = proc.stdout
        assert stdout is not None
        for raw in iter(lambda: stdout.readline(MAX_LINE_BYTES), b""):
            message = _parse_line(raw)
            if "error" in message:
                error = str(message["error"])
            elif "warning" in message:
                warnings.append(str(message["warning"]))
            elif message.get("status") == "converting model":
                progress(message)
        code = proc.wait()
        stderr_file.seek(max(0, stderr_file.seek(0, os.SEEK_END) - (64 << 10)))
        stderr = stderr_file.read().decode("utf-8", "replace")
    if code == ERROR_EXIT and error is not None:
        raise ConversionError(error)
    if code != 0:
        tail = stderr.strip().splitlines()[-1:] or [f"exit status {code}"]
        raise ApplianceError(f"converting the safetensors model failed: {tail[0][:300]}")
    return warnings


def _parse_line(raw: bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(message, dict):
        return {}
    keep: dict[str, Any] = {}
    for key in ("status", "error", "warning"):
        if isinstance(message.get(key), str):
            keep[key] = message[key]
    for key in ("total", "completed"):
        if type(message.get(key)) is int:
            keep[key] = message[key]
    return keep


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str]) -> int:
    """``ollama convert-safetensors [--check] FOLDER [OUT]``: the child side (see the module docstring)."""
    check = argv[:1] == ["--check"]
    if len(argv) != 2:
        sys.stderr.write("usage: ollama convert-safetensors FOLDER OUT.gguf | --check FOLDER\n")
        return 1
    from appliance.engine.quantize import _exit_with_parent
    from appliance.store.convert.llama import check_safetensors, convert_safetensors

    _exit_with_parent()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        if check:
            warnings = check_safetensors(Path(argv[1])).vocab.warnings
        else:
            warnings = convert_safetensors(Path(argv[0]), Path(argv[1]), _emit)
    except ConversionError as exc:
        _emit({"error": str(exc)})
        return ERROR_EXIT
    except OSError as exc:
        sys.stderr.write(f"convert-safetensors: {exc}\n")
        return 1
    for warning in warnings:
        _emit({"warning": warning})
    return 0
