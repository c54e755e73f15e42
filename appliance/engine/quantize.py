"""The quantizer child process: ``ollama quantize-worker IN OUT FTYPE|copy``.

llama.cpp's quantizer aborts the whole process on some malformed inputs, so the server never runs
it in-process: it re-invokes itself with this hidden command and reads the exit status.  ``copy``
rewrites the model without changing a tensor (llama.cpp's ``only_copy``): given the first shard of a
split GGUF with its siblings named as llama.cpp names them, that merges the shards into one file.
"""

from __future__ import annotations

import sys

#: The FTYPE argument that asks for a copy (a split GGUF merged, tensors as they are).
COPY = "copy"


def quantize(src: str, dst: str, ftype: int | None, threads: int = 0) -> None:
    """Quantize GGUF ``src`` into ``dst`` as llama.cpp file type ``ftype`` (LLAMA_FTYPE_MOSTLY_*), or
    copy it into one file with its tensors unchanged when ``ftype`` is None."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    if ftype is None:
        params.only_copy = True
    else:
        params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = False
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), llama_cpp.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def _exit_with_parent() -> None:
    """Quit when the server that started us is gone (kill -9): nobody is left to use the result, and
    its temp file is only cleaned up once we let go of it.  (PR_SET_PDEATHSIG would fire when the
    server's spawning *thread* ends, which a worker thread may do while the server lives on.)"""
    import os
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not (argv[2].isdigit() or argv[2] == COPY):
        sys.stderr.write(f"usage: ollama quantize-worker IN OUT FTYPE|{COPY}\n")
        return 2
    _exit_with_parent()
    try:
        quantize(argv[0], argv[1], None if argv[2] == COPY else int(argv[2]))
    except Exception as exc:
        sys.stderr.write(f"quantization failed: {exc}\n")
        return 1
    return 0
