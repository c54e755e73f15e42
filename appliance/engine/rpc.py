"""llama.cpp's RPC backend: one model's layers spread over other machines (``ollama worker``).

A *worker* is llama.cpp's RPC server run inside an ``ollama worker`` process: it offers its devices
(its CPU, or its GPUs) to one client at a time.  A runner started with ``--rpc host:port,...``
(OLLAMA_RPC_SERVERS) adds each reachable worker as a device, as llama-server's ``--rpc`` does, and
offloads every layer; llama.cpp splits the layers over the devices by their free memory and keeps
the input layer on the local CPU.

Why the probe: llama.cpp aborts the whole process when a worker cannot be reached (or when one
that was reached goes away mid-decode), so a worker is added only after a TCP connect and the
protocol's HELLO have answered in time.  A worker busy with another runner does not answer HELLO
until that runner lets go, so it is left out too (rather than hanging the load).

Security: the RPC protocol has no authentication and trusts every message; whoever can reach a
worker's port can make it read and write its memory.  Workers bind 127.0.0.1 unless told otherwise;
across machines they belong on a private network or behind an SSH/WireGuard tunnel.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import re
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: llama.cpp's rpc-server listens here by default; so does ``ollama worker``.
DEFAULT_PORT = 50052
#: How long a worker may take to accept a connection and answer HELLO before it is left out.
PROBE_TIMEOUT_S = 3.0
#: The protocol version of the bundled llama.cpp (ggml-rpc.h): a worker must speak the same major.
PROTO_MAJOR, PROTO_MINOR = 7, 0
_CMD_HELLO = 14
_CONN_CAPS_SIZE = 24
_HELLO_REPLY = struct.Struct("<4B24s")
_DEVICE_TYPE_CPU, _DEVICE_TYPE_ACCEL = 0, 3
_LAYER_LINE = re.compile(r"layer\s+(\d+) assigned to device (\S+?),")
_BUFFER_LINE = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_ENDPOINT = re.compile(r"(?P<host>[A-Za-z0-9.\-_]+):(?P<port>\d{1,5})")


class RpcError(RuntimeError):
    """The RPC backend is missing from this build, or a worker cannot be started."""


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` as llama.cpp reads it (the host has no colon: no IPv6 literal), checked."""
    match = _ENDPOINT.fullmatch(text.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{text!r} is not host:port (a port from 1 to 65535)")
    return match["host"], int(match["port"])


def probe(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """"" when ``endpoint`` is a worker ready for a client, else why not (for the log)."""
    try:
        host, port = parse_endpoint(endpoint)
    except ValueError as exc:
        return str(exc)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE))
            size = struct.unpack("<Q", _receive(sock, 8))[0]
            if size != _HELLO_REPLY.size:
                return f"not an RPC worker of this version (HELLO reply of {size} bytes)"
            major, minor, patch, _, _ = _HELLO_REPLY.unpack(_receive(sock, size))
    except TimeoutError:
        return f"no HELLO answer within {timeout_s:g}s (busy with another runner, or not an RPC worker)"
    except (OSError, EOFError) as exc:
        return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    if major != PROTO_MAJOR or minor > PROTO_MINOR:
        return f"speaks RPC protocol {major}.{minor}.{patch}, this build {PROTO_MAJOR}.{PROTO_MINOR}"
    return ""


def _receive(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the worker closed the connection during HELLO")
        data += chunk
    return data


def sort_reachable(endpoints: list[str], timeout_s: float = PROBE_TIMEOUT_S
                   ) -> tuple[list[str], list[tuple[str, str]]]:
    """``(reachable, [(unreachable, why), ...])``, probed at the same time, in the given order."""
    if not endpoints:
        return [], []
    with concurrent.futures.ThreadPoolExecutor(len(endpoints)) as pool:
        reasons = list(pool.map(lambda e: probe(e, timeout_s), endpoints))
    reachable = [e for e, why in zip(endpoints, reasons, strict=True) if not why]
    return reachable, [(e, why) for e, why in zip(endpoints, reasons, strict=True) if why]


# -- the ggml backend API (libggml, loaded by llama_cpp already) ----------------------------------


def _ggml() -> ctypes.CDLL:
    """libggml from llama_cpp's lib folder, with the registry functions this module calls typed."""
    import llama_cpp

    folder = Path(llama_cpp.__file__).parent / "lib"
    # The file libllama loads (its soname): a wheel holds copies, not links, and another copy of the
    # library would be another device registry, which the model would never see.
    names = [folder / "libggml.so.0", *sorted(folder.glob("libggml.so*")), *sorted(folder.glob("libggml.*"))]
    found = [name for name in names if name.exists()]
    if not found:
        raise RpcError(f"libggml not found in {folder}")
    lib = ctypes.CDLL(str(found[0]), mode=ctypes.RTLD_GLOBAL)
    p, s, size_p = ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)
    for name, restype, argtypes in (
        ("ggml_backend_reg_by_name", p, [s]),
        ("ggml_backend_reg_get_proc_address", p, [p, s]),
        ("ggml_backend_register", None, [p]),
        ("ggml_backend_dev_count", ctypes.c_size_t, []),
        ("ggml_backend_dev_get", p, [ctypes.c_size_t]),
        ("ggml_backend_dev_by_name", p, [s]),
        ("ggml_backend_dev_by_type", p, [ctypes.c_int]),
        ("ggml_backend_dev_name", s, [p]),
        ("ggml_backend_dev_description", s, [p]),
        ("ggml_backend_dev_type", ctypes.c_int, [p]),
        ("ggml_backend_dev_memory", None, [p, size_p, size_p]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _rpc_function(lib: ctypes.CDLL, name: str) -> Any:
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    address = lib.ggml_backend_reg_get_proc_address(reg, name.encode()) if reg else None
    if not address:
        raise RpcError("this llama.cpp build has no RPC backend (build the wheel with -DGGML_RPC=ON: "
                       "scripts/llama-wheel.sh)")
    return address


@dataclass(frozen=True)
class Device:
    """A ggml device, as ``ollama worker --list-devices`` shows it."""

    name: str
    description: str
    free_bytes: int
    total_bytes: int
    kind: int

    def __str__(self) -> str:
        mib = 1 << 20
        return (f"{self.name}: {self.description} ({self.total_bytes // mib} MiB, "
                f"{self.free_bytes // mib} MiB free)")


def devices() -> list[Device]:
    """Every device this process's llama.cpp offers (the CPU, GPUs of a GPU build, added workers)."""
    lib = _ggml()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(Device(lib.ggml_backend_dev_name(dev).decode(),
                            lib.ggml_backend_dev_description(dev).decode(),
                            free.value, total.value, lib.ggml_backend_dev_type(dev)))
    return found


def serve(host: str, port: int, *, threads: int, cache_dir: str | None, device_names: list[str]) -> None:
    """Run llama.cpp's RPC server on ``host:port`` until the process ends (blocks; call it from a thread).

    As llama.cpp's rpc-server: the named devices, else every GPU, else the CPU."""
    lib = _ggml()
    signature = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                 ctypes.POINTER(ctypes.c_void_p))
    start = signature(_rpc_function(lib, "ggml_backend_rpc_start_server"))
    chosen: list[int] = []
    for name in device_names:
        dev = lib.ggml_backend_dev_by_name(name.encode())
        if not dev:
            listing = "; ".join(str(d) for d in devices())
            raise RpcError(f"unknown device {name!r}; this machine has: {listing}")
        chosen.append(dev)
    if not chosen:
        chosen = [d for i in range(lib.ggml_backend_dev_count())
                  if lib.ggml_backend_dev_type(d := lib.ggml_backend_dev_get(i))
                  not in (_DEVICE_TYPE_CPU, _DEVICE_TYPE_ACCEL)]
    if not chosen:
        chosen = [lib.ggml_backend_dev_by_type(_DEVICE_TYPE_CPU)]
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
    array = (ctypes.c_void_p * len(chosen))(*chosen)
    start(f"{host}:{port}".encode(), cache_dir.encode() if cache_dir else None, max(1, threads), len(chosen),
          array)
    raise RpcError(f"the RPC server on {host}:{port} stopped (is the port already in use?)")


# -- the runner's side ------------------------------------------------------------------------------


@dataclass
class Placement:
    """Where a runner's model went: layers and weight bytes per device, and the workers left out.

    It is llama.cpp's log callback while the runner lives: it forwards warnings and errors (all
    lines when verbose) to stderr, and reads the load's placement lines out of it."""

    verbose: bool
    endpoints: dict[str, str] = field(default_factory=dict)  # device name -> endpoint
    left_out: list[tuple[str, str]] = field(default_factory=list)
    #: Recording stops when the model's context is made: a draft model loaded later is not counted.
    recording: bool = True
    layers: dict[str, int] = field(default_factory=dict)
    model_bytes: dict[str, int] = field(default_factory=dict)
    _partial: str = ""

    def read_log(self, level: int, text: bytes) -> None:
        line = text.decode("utf-8", "replace")
        if self.verbose or level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
            sys.stderr.write(line)
        if not self.recording:
            return
        self._partial += line
        while "\n" in self._partial:
            whole, self._partial = self._partial.split("\n", 1)
            if whole.startswith("llama_context:"):
                self.recording = False
                return
            if layer := _LAYER_LINE.search(whole):
                self.layers[layer[2]] = self.layers.get(layer[2], 0) + 1
            elif buffer := _BUFFER_LINE.search(whole):
                device = self._device_of_buffer(buffer[1])
                self.model_bytes[device] = self.model_bytes.get(device, 0) + int(float(buffer[2]) * (1 << 20))

    def _device_of_buffer(self, name: str) -> str:
        """``RPC1[host:port]`` (the worker's own device number) -> our device name; ``CPU_Mapped`` -> CPU."""
        if "[" in name:
            remote, endpoint = name.removesuffix("]").split("[", 1)
            ours = [dev for dev, e in self.endpoints.items() if e == endpoint]  # in the worker's order
            index = int(remote[3:]) if remote[3:].isdigit() else 0
            return ours[index] if index < len(ours) else name
        return name.removesuffix("_Mapped").removesuffix("_REPACK")

    def report(self) -> dict[str, Any]:
        """The ``rpc`` member of the runner's ready event (and of /api/ps)."""
        names = list(dict.fromkeys([*self.layers, *self.model_bytes]))
        return {
            "devices": [{"name": name, "endpoint": self.endpoints.get(name, ""),
                         "layers": self.layers.get(name, 0), "model_bytes": self.model_bytes.get(name, 0)}
                        for name in names],
            "workers": sorted(set(self.endpoints.values())),
            "left_out": [{"endpoint": e, "reason": why} for e, why in self.left_out],
        }


def attach(llama: Any, endpoints: list[str], *, verbose: bool) -> Placement:
    """Add the reachable workers of ``endpoints`` as llama.cpp devices, before the model loads.

    Unreachable ones are reported on stderr and in the placement, and left out; with none left the
    model loads on the local devices alone."""
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # an abort would otherwise wait for gdb to attach
    placement = Placement(verbose=verbose)

    @llama.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        placement.read_log(level, text)

    placement._callback = callback  # type: ignore[attr-defined]  # llama.cpp keeps only the pointer
    llama.llama_log_set(callback, ctypes.c_void_p(0))
    reachable, placement.left_out = sort_reachable(endpoints)
    for endpoint, why in placement.left_out:
        sys.stderr.write(f"runner: RPC worker {endpoint} left out: {why}\n")
    if not reachable:
        return placement
    lib = _ggml()
    signature = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
    add_server = signature(_rpc_function(lib, "ggml_backend_rpc_add_server"))
    before = lib.ggml_backend_dev_count()
    for endpoint in reachable:
        reg = add_server(endpoint.encode())
        if not reg:
            placement.left_out.append((endpoint, "the worker offers no device"))
            continue
        lib.ggml_backend_register(reg)
    for i in range(before, lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        name, endpoint = lib.ggml_backend_dev_name(dev), lib.ggml_backend_dev_description(dev)
        placement.endpoints[name.decode()] = endpoint.decode()
    return placement


def local_bytes(estimated: int, file_size: int, n_layers: int) -> int:
    """What a load over workers costs this machine: the estimate less the repeating layers' weights,
    which go to the workers (the input layer stays here).  The KV cache is left in: an overestimate."""
    return max(0, estimated - file_size * n_layers // (n_layers + 1))


def explain_death(endpoints: tuple[str, ...]) -> str:
    """Why a runner using workers died, when a worker is to blame ("" when none is unreachable)."""
    _, gone = sort_reachable(list(endpoints))
    if not gone:
        return ""
    names = ", ".join(f"{e} ({why})" for e, why in gone)
    return (f"RPC worker {names} stopped answering, so the model's runner stopped; the next request "
            "loads the model again without it")


__all__ = [
    "DEFAULT_PORT",
    "PROBE_TIMEOUT_S",
    "Device",
    "Placement",
    "RpcError",
    "attach",
    "devices",
    "explain_death",
    "local_bytes",
    "parse_endpoint",
    "probe",
    "serve",
    "sort_reachable",
]
