"""The quantizer child process: ``ollama quantize-worker IN OUT FTYPE``.

llama.cpp's quantizer aborts the whole process on some malformed inputs, so the server never runs
it in-process: it re-invokes itself with this hidden command and reads the exit status.
"""

from __future__ import annotations

import sys


def quantize(src: str, dst: str, ftype: int, threads: int = 0) -> None:
    """Quantize GGUF ``src`` into ``dst`` as llama.cpp file type ``ftype`` (LLAMA_FTYPE_MOSTLY_*)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = False
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), llama_cpp.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[2].isdigit():
        sys.stderr.write("usage: ollama quantize-worker IN OUT FTYPE\n")
        return 2
    try:
        quantize(argv[0], argv[1], int(argv[2]))
    except Exception as exc:
        sys.stderr.write(f"quantization failed: {exc}\n")
        return 1
    return 0
