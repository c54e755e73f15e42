"""Every environment variable the appliance obeys, parsed once into a frozen, typed ``Config``.

This is the only module that reads OLLAMA_* variables.  Parsing follows Ollama's envconfig: values
are stripped of surrounding spaces and quotes, an empty value means "unset", booleans use Go's
``strconv.ParseBool`` (an unparsable non-empty value counts as *true*, as in Ollama), integers are
plain decimal digits, durations use Go's syntax ("1h30m", "250ms") or a bare number of seconds.
Unlike Ollama, every value that falls back to its default is reported with a logged warning.

"Forever" (a negative keep-alive, a zero or negative load timeout) is ``math.inf`` so callers can
hand it straight to ``trio.move_on_after`` or ``trio.sleep`` without a special case.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORT = 11434
DEFAULT_KEEP_ALIVE_S = 300.0
DEFAULT_LOAD_TIMEOUT_S = 300.0
#: Chat requests carry base64 images, so tens of MB are legitimate; blob uploads are streamed to
#: disk and exempt.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_READ_TIMEOUT_S = 60.0
#: Python logging level for OLLAMA_DEBUG=2 (below DEBUG=10).
TRACE = 5

_DEFAULT_ORIGINS = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for port in ("", ":*")
        for scheme in ("http", "https")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)
_UINT64_MAX = 2**64 - 1
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Host:
    """Where the server listens and clients connect, parsed from OLLAMA_HOST (+ OLLAMA_PORT).

    ``host`` is "" when only a port was given, which binds every interface (as Go's net.Listen
    does).  The scheme and path matter only to clients (e.g. behind an HTTPS reverse proxy); the
    server itself always speaks plain HTTP on ``bind``.  ``str(host)`` is Ollama's own rendering.
    """

    scheme: str = "http"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    path: str = ""

    def __str__(self) -> str:
        return f"{self.scheme}://{_join_host_port(self.host, self.port)}{self.path}"

    @property
    def url(self) -> str:
        """Base URL for a client: an unspecified or empty bind host becomes loopback."""
        host, ip = self.host, _parse_ip(self.host)
        if host == "" or (ip is not None and ip.is_unspecified):
            host = "::1" if ip is not None and ip.version == 6 else "127.0.0.1"
        return f"{self.scheme}://{_join_host_port(host, self.port)}{self.path.rstrip('/')}"

    @property
    def bind(self) -> tuple[str, int]:
        """(host, port) for the listening socket; host "" means all interfaces."""
        return self.host, self.port


class _Env:
    """Typed reads from one environment mapping, warning about values that fall back to a default."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, key: str, default: str = "") -> str:
        # Quotes survive in systemd drop-ins and Windows `set X="y"` lines; Ollama strips them too.
        return self.environ.get(key, "").strip().strip("\"'") or default

    def optional(self, key: str, default: None = None) -> str | None:
        return self.text(key) if key in self.environ else default

    def flag(self, key: str, default: bool | None) -> bool | None:
        text = self.text(key)
        if not text:
            return default
        value = parse_bool(text)
        if value is None:
            log.warning("%s=%r is not a boolean; treating it as true, as Ollama does", key, text)
            return True
        return value

    def whole_or_none(self, key: str, *, minimum: int = 0, maximum: int = _UINT64_MAX) -> int | None:
        text = self.text(key)
        if not text:
            return None
        if text.isascii() and text.isdigit() and minimum <= int(text) <= maximum:
            return int(text)
        log.warning("%s=%r is not a whole number from %d to %d; ignoring it", key, text, minimum, maximum)
        return None

    def whole(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self.whole_or_none(key, minimum=minimum)
        return default if value is None else value

    def duration(self, key: str, default: float, *, zero_is_forever: bool = False) -> float:
        text = self.text(key)
        if not text:
            return default
        try:
            seconds = parse_duration(text)
        except ValueError:
            if not (_SIGNED_INT.fullmatch(text) and abs(int(text)) <= _INT64_MAX):
                log.warning("%s=%r is not a duration (e.g. 5m, 1h30m, 300); using %ss", key, text, default)
                return default
            seconds = float(int(text))
        return math.inf if seconds < 0 or (zero_is_forever and seconds == 0) else seconds

    def timeout(self, key: str, default: float) -> float:
        return self.duration(key, default, zero_is_forever=True)

    def path(self, key: str, default: Path | None) -> Path | None:
        text = self.text(key)
        if text == "~" or text.startswith("~/"):
            return self.home() / text[2:]
        return Path(text) if text else default

    def home(self) -> Path:
        return Path(self.environ.get("HOME") or Path.home())


def _read_models_dir(env: _Env, key: str, default: None) -> Path:
    return env.path(key, None) or env.home() / ".ollama" / "models"


def _read_host(env: _Env, key: str, default: Host) -> Host:
    return _parse_host(env.text(key), env.whole_or_none("OLLAMA_PORT", maximum=65535))


def _read_list(env: _Env, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(filter(None, (item.strip() for item in env.text(key).split(",")))) or default


def _read_endpoints(env: _Env, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """``host:port`` items as llama.cpp parses them (no IPv6 literal); a bad one is dropped with a warning."""
    good = []
    for item in _read_list(env, key, ()):
        host, _, port = item.rpartition(":")
        if host and ":" not in host and port.isdigit() and 0 < int(port) < 65536:
            good.append(item)
        else:
            log.warning("%s: %r is not host:port; left out", key, item)
    return tuple(dict.fromkeys(good)) or default


def _read_origins(env: _Env, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    return (*_read_list(env, key, ()), *default)  # the built-in origins always stay


def _read_debug(env: _Env, key: str, default: int) -> int:
    text = env.text(key)
    if not text or parse_bool(text) is not None:
        return 1 if parse_bool(text) else default
    if _SIGNED_INT.fullmatch(text):
        return int(text)
    log.warning("%s=%r is neither a boolean nor a level number; using %d", key, text, default)
    return default


def _read_positive(env: _Env, key: str, default: int) -> int:
    return env.whole(key, default, minimum=1)


def _var(env: str, parse: Callable[[_Env, str, Any], Any], help: str) -> dict[str, Any]:
    """Field metadata: the field is read from variable ``env`` by ``parse(reader, env, default)``."""
    return {"env": env, "parse": parse, "help": help}


_PORT_HELP = ("OLLAMA_PORT", "Port to use when OLLAMA_HOST names none (a port in OLLAMA_HOST wins)")


@dataclass(frozen=True)
class Config:
    """The parsed environment; ``Config()`` is the all-defaults configuration.

    Fields are in the order ``ollama serve --help`` lists their variables: Ollama's own serve list
    first (our OLLAMA_PORT and OLLAMA_MAX_BODY_BYTES beside their kin), then the rest.
    """

    #: Verbosity: 0 info, 1 debug, 2 trace; negative is quieter (-1 warning, -2 error).
    debug: int = field(
        default=0,
        metadata=_var(
            "OLLAMA_DEBUG", _read_debug, "Log more detail: 1 for debug, 2 for trace (e.g. OLLAMA_DEBUG=1)"
        ),
    )
    host: Host = field(
        default=Host(),
        metadata=_var(
            "OLLAMA_HOST",
            _read_host,
            "Address to listen on and for clients to reach (default 127.0.0.1:11434)",
        ),
    )
    #: 0 = automatic (scheduler.automatic_context_length): 4096, or 32768 / 262144 with at least 24 / 48
    #: GiB of VRAM in total; the model's trained context caps either.
    context_length: int = field(
        default=0,
        metadata=_var(
            "OLLAMA_CONTEXT_LENGTH",
            _Env.whole,
            "Default context length (default: 4k/32k/256k by total VRAM, 4k on CPU)",
        ),
    )
    keep_alive_s: float = field(
        default=DEFAULT_KEEP_ALIVE_S,
        metadata=_var(
            "OLLAMA_KEEP_ALIVE",
            _Env.duration,
            "How long an idle model stays loaded, e.g. 10m, -1 (default 5m)",
        ),
    )
    #: 0 = automatic: 3 per GPU, or 3 when running on CPU only.
    max_loaded_models: int = field(
        default=0,
        metadata=_var(
            "OLLAMA_MAX_LOADED_MODELS", _Env.whole, "Most models loaded at once (default 3 per GPU, 3 on CPU)"
        ),
    )
    max_transfer_streams: int = field(
        default=4,
        metadata=_var(
            "OLLAMA_MAX_TRANSFER_STREAMS", _Env.whole, "Parallel blob transfers in a pull or push (default 4)"
        ),
    )
    max_queue: int = field(
        default=512,
        metadata=_var(
            "OLLAMA_MAX_QUEUE", _Env.whole, "Requests allowed to wait before new ones get 503 (default 512)"
        ),
    )
    max_body_bytes: int = field(
        default=DEFAULT_MAX_BODY_BYTES,
        metadata=_var(
            "OLLAMA_MAX_BODY_BYTES",
            _read_positive,
            "Largest request body in bytes; blob uploads are exempt (default 64 MiB)",
        ),
    )
    max_connections: int = field(
        default=DEFAULT_MAX_CONNECTIONS,
        metadata=_var(
            "OLLAMA_MAX_CONNECTIONS", _read_positive,
            "Open client connections at most; more get 503 (default 512)",
        ),
    )
    read_timeout_s: float = field(
        default=DEFAULT_READ_TIMEOUT_S,
        metadata=_var(
            "OLLAMA_READ_TIMEOUT",
            _Env.timeout,
            "Longest wait for a client's request headers or next body bytes (default 60s)",
        ),
    )
    models_dir: Path = field(
        default_factory=lambda: Path.home() / ".ollama" / "models",
        metadata=_var(
            "OLLAMA_MODELS", _read_models_dir, "Where models are stored (default ~/.ollama/models)"
        ),
    )
    #: At least 1 (Ollama's scheduler treats 0 as 1; here 0 is refused with a warning).
    num_parallel: int = field(
        default=1,
        metadata=_var(
            "OLLAMA_NUM_PARALLEL", _read_positive, "Requests each model serves at the same time (default 1)"
        ),
    )
    no_cloud: bool = field(
        default=False,
        metadata=_var("OLLAMA_NO_CLOUD", _Env.flag, "Turn off cloud features (remote models and web search)"),
    )
    noprune: bool = field(
        default=False,
        metadata=_var(
            "OLLAMA_NOPRUNE", _Env.flag, "Keep unreferenced model blobs at start-up instead of deleting them"
        ),
    )
    #: Read-only is also chosen, whatever this says, for a folder this server cannot write.
    models_readonly: bool = field(
        default=False,
        metadata=_var(
            "OLLAMA_MODELS_READONLY", _Env.flag, "Only read the models folder (one of several servers on it)"
        ),
    )
    allowed_origins: tuple[str, ...] = field(
        default=_DEFAULT_ORIGINS,
        metadata=_var(
            "OLLAMA_ORIGINS", _read_origins, "More browser origins allowed to call the API, comma separated"
        ),
    )
    #: "" = no keys: every route is open, as in Ollama.  A value starting with "/" or "~/" is a file
    #: (read by the server at start-up, see appliance/server/auth.py); anything else is a list.
    api_keys: str = field(
        default="",
        metadata=_var(
            "OLLAMA_API_KEYS", _Env.text,
            "API keys clients must send: a key file (/path) or k1,k2 (default off)",
        ),
    )
    sched_spread: bool = field(
        default=False, metadata=_var("OLLAMA_SCHED_SPREAD", _Env.flag, "Spread every model across all GPUs")
    )
    #: None = let the backend decide.
    flash_attention: bool | None = field(
        default=None,
        metadata=_var(
            "OLLAMA_FLASH_ATTENTION", _Env.flag, "Force flash attention on (1) or off (0); unset = automatic"
        ),
    )
    #: "" = f16.
    kv_cache_type: str = field(
        default="",
        metadata=_var(
            "OLLAMA_KV_CACHE_TYPE",
            _Env.text,
            "Quantisation of the K/V cache: f16, q8_0 or q4_0 (default f16)",
        ),
    )
    llm_library: str = field(
        default="",
        metadata=_var("OLLAMA_LLM_LIBRARY", _Env.text, "Compute library to use instead of the detected one"),
    )
    gpu_overhead_bytes: int = field(
        default=0,
        metadata=_var("OLLAMA_GPU_OVERHEAD", _Env.whole, "VRAM to leave unused on each GPU, in bytes"),
    )
    #: None = per-device default (Ollama admits some integrated GPUs unless told otherwise).
    igpu_enable: bool | None = field(
        default=None,
        metadata=_var("OLLAMA_IGPU_ENABLE", _Env.flag, "Allow (1) or refuse (0) integrated GPUs"),
    )
    load_timeout_s: float = field(
        default=DEFAULT_LOAD_TIMEOUT_S,
        metadata=_var(
            "OLLAMA_LOAD_TIMEOUT",
            _Env.timeout,
            "How long a model load may stall before it fails (default 5m)",
        ),
    )
    #: llama.cpp RPC workers (``ollama worker``) a model's layers are spread over; unreachable ones are
    #: left out at each load.
    rpc_servers: tuple[str, ...] = field(
        default=(),
        metadata=_var("OLLAMA_RPC_SERVERS", _read_endpoints, "RPC workers for every model: host:port,..."),
    )
    multiuser_cache: bool = field(
        default=False,
        metadata=_var(
            "OLLAMA_MULTIUSER_CACHE", _Env.flag, "Tune prompt caching for many users sharing one model"
        ),
    )
    #: None = the system temporary directory.
    tmpdir: Path | None = field(
        default=None,
        metadata=_var(
            "OLLAMA_TMPDIR", _Env.path, "Directory for temporary runner files (default: system temp dir)"
        ),
    )
    go_template: bool = field(
        default=True,
        metadata=_var(
            "OLLAMA_GO_TEMPLATE",
            _Env.flag,
            "Render a model's Modelfile TEMPLATE when it has one (default on)",
        ),
    )
    debug_log_requests: bool = field(
        default=False,
        metadata=_var(
            "OLLAMA_DEBUG_LOG_REQUESTS", _Env.flag, "Save inference request bodies to a temp dir for replay"
        ),
    )
    vulkan: bool = field(
        default=True, metadata=_var("OLLAMA_VULKAN", _Env.flag, "Look for Vulkan GPUs (default on)")
    )
    remotes: tuple[str, ...] = field(
        default=("ollama.com",),
        metadata=_var("OLLAMA_REMOTES", _read_list, "Hosts remote models may come from (default ollama.com)"),
    )
    auth: bool = field(
        default=False, metadata=_var("OLLAMA_AUTH", _Env.flag, "Sign the client's requests to the server")
    )
    api_key: str = field(
        default="",
        metadata=_var(
            "OLLAMA_API_KEY", _Env.text, "API key the ollama command sends (Authorization: Bearer)"
        ),
    )
    nohistory: bool = field(
        default=False,
        metadata=_var("OLLAMA_NOHISTORY", _Env.flag, "Do not keep a prompt history for ollama run"),
    )
    editor: str = field(
        default="",
        metadata=_var("OLLAMA_EDITOR", _Env.text, "Editor for composing a prompt in ollama run (Ctrl+G)"),
    )
    # GPU selection is passed to runners untouched; None (unset) differs from "" (no GPU at all).
    cuda_visible_devices: str | None = field(
        default=None,
        metadata=_var("CUDA_VISIBLE_DEVICES", _Env.optional, "NVIDIA GPUs to use, by index or UUID"),
    )
    hip_visible_devices: str | None = field(
        default=None, metadata=_var("HIP_VISIBLE_DEVICES", _Env.optional, "AMD GPUs to use, by numeric index")
    )
    rocr_visible_devices: str | None = field(
        default=None,
        metadata=_var("ROCR_VISIBLE_DEVICES", _Env.optional, "AMD GPUs to use, by UUID or numeric index"),
    )
    ggml_vk_visible_devices: str | None = field(
        default=None,
        metadata=_var("GGML_VK_VISIBLE_DEVICES", _Env.optional, "Vulkan GPUs to use, by numeric index"),
    )
    gpu_device_ordinal: str | None = field(
        default=None, metadata=_var("GPU_DEVICE_ORDINAL", _Env.optional, "AMD GPUs to use, by numeric index")
    )
    hsa_override_gfx_version: str | None = field(
        default=None,
        metadata=_var(
            "HSA_OVERRIDE_GFX_VERSION", _Env.optional, "Treat every AMD GPU as this gfx version (e.g. 10.3.0)"
        ),
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Parse ``environ`` (default ``os.environ``); bad values fall back to defaults with a warning."""
        env = _Env(os.environ if environ is None else environ)
        values = {}
        for f in fields(cls):
            # A factory default (models_dir) is recomputed by its reader from this environment's HOME.
            default = None if f.default is MISSING else f.default
            values[f.name] = f.metadata["parse"](env, f.metadata["env"], default)
        return cls(**values)

    @property
    def log_level(self) -> int:
        """The Python ``logging`` level OLLAMA_DEBUG asks for (``TRACE`` for 2 and above)."""
        levels = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}
        return levels.get(self.debug, TRACE if self.debug > 1 else logging.ERROR)

    def as_env_map(self) -> dict[str, str]:
        """Variable -> effective value as text, in ``describe()`` order (for the start-up log)."""
        result = {}
        for f in fields(self):
            value = getattr(self, f.name)
            secret = f.name == "api_key" or (f.name == "api_keys" and not api_keys_path(value))
            result[f.metadata["env"]] = "***" if secret and value else str(value)
            if f.name == "host":
                result[_PORT_HELP[0]] = str(self.host.port)
        return result


def describe() -> list[tuple[str, str]]:
    """(variable, help text) for every variable, in ``ollama serve --help`` order."""
    result = []
    for f in fields(Config):
        result.append((f.metadata["env"], f.metadata["help"]))
        if f.name == "host":
            result.append(_PORT_HELP)
    return result


def api_keys_path(spec: str) -> str | None:
    """The key file OLLAMA_API_KEYS names, or None when it is a comma-separated list of keys.

    The rule: a value starting with ``/`` or ``~/`` is a path (``~`` is the server's home); anything
    else is the keys themselves, so a key must not start with ``/``.
    """
    if spec.startswith("/"):
        return spec
    if spec.startswith("~/"):
        return str(Path(os.path.expanduser("~")) / spec[2:])
    return None


@functools.cache
def load() -> Config:
    """The process-wide configuration, parsed from ``os.environ`` on first use."""
    return Config.from_env()


def reset() -> None:
    """Forget the cached configuration (tests, or after changing ``os.environ``)."""
    load.cache_clear()
    _bind_is_loopback.cache_clear()


# --- scalars ---------------------------------------------------------------------------------------

_GO_BOOLS = {
    "1": True,
    "t": True,
    "T": True,
    "TRUE": True,
    "true": True,
    "True": True,
    "0": False,
    "f": False,
    "F": False,
    "FALSE": False,
    "false": False,
    "False": False,
}
_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,
    "\u03bcs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_SIGNED_INT = re.compile(r"[+-]?[0-9]+")


def parse_bool(text: str) -> bool | None:
    """Go's ``strconv.ParseBool``; None when ``text`` is not one of its spellings."""
    return _GO_BOOLS.get(text)


def parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration``, in seconds (sign kept).  Raises ValueError when invalid."""
    s, negative = text, text[:1] == "-"
    if s[:1] in ("-", "+"):
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = Fraction(0), 0
    while pos < len(s):
        match = _DURATION_PART.match(s, pos)
        assert match is not None  # every group may be empty, so the pattern always matches
        whole, fraction, unit = match.groups()
        if (not whole and not fraction) or unit not in _DURATION_UNITS_NS:
            raise ValueError(f"invalid duration {text!r}")
        value = Fraction(int(whole or 0))
        if fraction:
            value += Fraction(int(fraction), 10 ** len(fraction))
        total += value * _DURATION_UNITS_NS[unit]
        pos = match.end()
    if total > (_INT64_MAX + 1 if negative else _INT64_MAX):
        raise ValueError(f"duration {text!r} out of range")
    nanoseconds = int(total)
    return (-nanoseconds if negative else nanoseconds) / 1e9


# --- OLLAMA_HOST -----------------------------------------------------------------------------------


def _parse_ip(text: str) -> IPAddress | None:
    """Go's net.ParseIP: no zone, IPv4-mapped IPv6 collapses to IPv4."""
    if "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(hostport: str) -> tuple[str, str]:
    """Go's net.SplitHostPort; raises ValueError where it returns an error."""
    colon = hostport.rfind(":")
    if colon < 0:
        raise ValueError("missing port")
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != colon:
            raise ValueError("bad brackets or missing port")
        host, after_open, after_close = hostport[1:end], 1, end + 1
    else:
        host, after_open, after_close = hostport[:colon], 0, 0
        if ":" in host:
            raise ValueError("too many colons")
    if "[" in hostport[after_open:] or "]" in hostport[after_close:]:
        raise ValueError("unexpected bracket")
    return host, hostport[colon + 1 :]


def _parse_host(text: str, port_override: int | None) -> Host:
    """OLLAMA_HOST as Ollama reads it; OLLAMA_PORT replaces the default port, never a given one."""
    text = text.strip()
    scheme, sep, hostport = text.partition("://")
    default_port = DEFAULT_PORT
    if not sep:
        scheme, hostport = "http", text
        if text == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme in ("http", "https"):
        default_port = 80 if scheme == "http" else 443
    if port_override is not None:
        default_port = port_override
    hostport, _, path = hostport.partition("/")
    try:
        host, port_text = _split_host_port(hostport)
    except ValueError:
        host, port_text = "127.0.0.1", ""
        ip = _parse_ip(hostport.strip("[]"))
        if ip is not None:
            host = str(ip)
        elif hostport:
            host = hostport
    port = default_port
    if _SIGNED_INT.fullmatch(port_text) and 0 <= int(port_text) <= 65535:
        port = int(port_text)
    elif port_text:
        log.warning("OLLAMA_HOST port %r is invalid; using %d", port_text, default_port)
    if path and not path.startswith("/"):
        path = "/" + path
    return Host(scheme=scheme, host=host, port=port, path=path)


# --- CORS and the DNS-rebinding defence ------------------------------------------------------------


def origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    """Whether a browser ``Origin`` matches ``allowed``: exactly, via ``*``, or a pattern.

    Each ``*`` in a pattern matches any run of characters (``http://localhost:*``).  Ollama's CORS
    library drops the character before a trailing ``*``, so there ``http://localhost:*`` also
    admits ``http://localhost.evil.example``; here the colon is kept.
    """
    origin = origin.lower()
    for pattern in allowed:
        pattern = pattern.strip().lower()
        if pattern in ("*", origin) or ("*" in pattern and _wildcard_regex(pattern).fullmatch(origin)):
            return True
    return False


@functools.lru_cache(maxsize=256)
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def is_loopback_bind(cfg: Config) -> bool:
    """Whether the server listens only on a loopback address (and so must check Host headers)."""
    return _bind_is_loopback(cfg.host.host)


def is_loopback_literal(host: str) -> bool | None:
    """Whether ``host`` is a loopback address or a ``localhost`` name; None when only DNS can tell."""
    ip = _parse_ip(host)
    if ip is not None or host == "":
        return ip is not None and ip.is_loopback
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    return None


@functools.cache
def _bind_is_loopback(host: str) -> bool:
    literal = is_loopback_literal(host)
    if literal is not None:
        return literal
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    # The listener takes the first address, as Go's net.Listen does.
    first = _parse_ip(str(infos[0][4][0])) if infos else None
    return first is not None and first.is_loopback


_PRIVATE_NETWORKS = tuple(
    map(ipaddress.ip_network, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
)
_LOCAL_NAME_SUFFIXES = (".localhost", ".local", ".internal")


def host_header_allowed(
    host_header: str,
    cfg: Config,
    *,
    hostname: str | None = None,
    local_ips: Collection[IPAddress] | None = None,
) -> bool:
    """The DNS-rebinding check: may a request with this ``Host`` header be served?

    Only a loopback-bound server checks.  IP literals pass when loopback, private, unspecified or
    an address of this machine (an IP cannot be rebound); names pass when they are localhost, this
    machine's hostname, or end in .localhost / .local / .internal.  ``hostname`` and
    ``local_ips`` default to the machine's own.
    """
    if not is_loopback_bind(cfg):
        return True
    try:
        name, _ = _split_host_port(host_header)
    except ValueError:
        name = host_header
    # Ollama refuses a bare "[::1]" (no port) only because its address parser rejects brackets.
    name = name.removeprefix("[").removesuffix("]")
    ip = _parse_ip(name)
    if ip is not None:
        if ip.is_loopback or ip.is_unspecified or any(ip in net for net in _PRIVATE_NETWORKS):
            return True
        return ip in (local_ips if local_ips is not None else _local_ips())
    name = name.lower().removesuffix(".")
    own_name = (hostname if hostname is not None else socket.gethostname()).lower()
    return name in ("", "localhost", own_name) or name.endswith(_LOCAL_NAME_SUFFIXES)


_local_ips_cache: tuple[float, frozenset[IPAddress]] = (-math.inf, frozenset())
_LOCAL_IPS_TTL_S = 30.0


def _local_ips() -> frozenset[IPAddress]:
    """Addresses on this machine's interfaces (Linux; best effort, re-read every 30 s)."""
    global _local_ips_cache
    if time.monotonic() - _local_ips_cache[0] < _LOCAL_IPS_TTL_S:
        return _local_ips_cache[1]
    found: set[IPAddress] = set()
    try:
        with open("/proc/net/if_inet6") as table:  # one IPv6 address per line, as 32 hex digits
            found.update(ipaddress.IPv6Address(int(line.split()[0], 16)) for line in table if line.strip())
    except (OSError, ValueError, IndexError):
        pass
    try:
        import fcntl  # POSIX only

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _, ifname in socket.if_nameindex():
                try:  # SIOCGIFADDR: the interface's primary IPv4 address
                    packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", ifname.encode()[:15]))
                except OSError:
                    continue
                found.add(ipaddress.IPv4Address(packed[20:24]))
    except (ImportError, OSError):
        pass
    _local_ips_cache = (time.monotonic(), frozenset(found))
    return _local_ips_cache[1]


__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "TRACE",
    "Config",
    "Host",
    "api_keys_path",
    "describe",
    "host_header_allowed",
    "is_loopback_bind",
    "load",
    "origin_allowed",
    "parse_bool",
    "parse_duration",
    "reset",
]
