"""Facts about this build of the ``ollama`` command.

A checkout says ``source``; build.spec bundles a copy of this module whose FLAVOR names the llama.cpp
build inside the binary (``cpu``, ``cuda`` or ``rocm``).
"""

from __future__ import annotations

FLAVOR = "source"


def llama_system_info() -> str:
    """llama.cpp's own account of its backends and the CPU features it was built with.

    Loads only the shared library through ctypes (not the llama_cpp package, which imports numpy);
    a GPU build may initialise its driver here, so the server calls this from a worker thread.
    """
    import ctypes
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llama_cpp")
    folders = spec.submodule_search_locations if spec is not None else None
    for folder in folders or ():
        lib = Path(folder) / "lib" / "libllama.so"
        if lib.exists():
            llama = ctypes.CDLL(str(lib))
            llama.llama_print_system_info.restype = ctypes.c_char_p
            return " ".join(llama.llama_print_system_info().decode("utf-8", "replace").split())
    return "llama.cpp library not found"
