"""Optional API keys (OLLAMA_API_KEYS): every route but a few open ones asks for a key.

Keys come from OLLAMA_API_KEYS, either a file (a value starting with ``/`` or ``~/``: one key per
line, blank lines and ``#`` comments ignored) or a comma-separated list; unset, every route stays
open as in Ollama.  A client sends ``Authorization: Bearer <key>`` (the ollama CLI, the OpenAI
SDKs and curl) or ``x-api-key: <key>`` (the Anthropic SDKs).  A key is compared with every
configured key in constant time and without an early exit, so the answer's timing tells nothing
about which key, or how much of one, matched.  A refusal is a 401 in the shape of the API family
the route belongs to (Ollama, OpenAI or Anthropic).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from quart import Response, current_app, request

from appliance import envconfig
from appliance.errors import ApplianceError

log = logging.getLogger("appliance.server.auth")

#: (method, path) pairs served without a key: the health probes clients send before anything else,
#: and the built-in chat page (its script then sends the key the user types in).  Extend here.
OPEN_ROUTES: frozenset[tuple[str, str]] = frozenset({
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/api/version"),
    ("HEAD", "/api/version"),
    ("GET", "/api/health"),  # a load balancer's or Kubernetes' readiness probe carries no key
    ("HEAD", "/api/health"),
})
#: Path prefixes served without a key (static assets of the chat page, should it get any).
OPEN_PREFIXES: tuple[str, ...] = ("/ui/",)
#: Keys shorter than this are accepted but warned about: they can be guessed.
SHORT_KEY = 16
#: A key file larger than this is refused (it is not a key file).
MAX_KEY_FILE_BYTES = 1 << 20


class KeyFileError(ApplianceError):
    """OLLAMA_API_KEYS names a file that cannot be read, or that holds no key."""


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys, as their SHA-256 digests (equal lengths: a comparison tells nothing of a
    key's length either); empty = no key needed."""

    keys: tuple[bytes, ...] = ()
    source: str = ""

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def accepts(self, presented: str) -> bool:
        """Whether ``presented`` is one of the keys: every key is compared, whatever matched before."""
        given = _digest(presented)
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(given, key)
        return matched


def parse_key_lines(text: str) -> list[str]:
    """Keys from a key file's text: one a line, surrounding spaces dropped, blank and ``#`` lines skipped."""
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line)
    return keys


def load_keys(cfg: envconfig.Config) -> ApiKeys:
    """The keys OLLAMA_API_KEYS gives; raises KeyFileError for a key file that cannot serve."""
    spec = cfg.api_keys
    if not spec:
        return ApiKeys()
    path = envconfig.api_keys_path(spec)
    if path is None:
        keys = [k.strip() for k in spec.split(",") if k.strip()]
        source = "OLLAMA_API_KEYS"
    else:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot read the API key file {path} (OLLAMA_API_KEYS): "
                               f"{exc.strerror}") from exc
        if len(data) > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"the API key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
        keys = parse_key_lines(data.decode("utf-8", "replace"))
        source = path
        _warn_if_readable_by_all(Path(path))
    if not keys:
        raise KeyFileError(f"OLLAMA_API_KEYS is set but {source} holds no key; refusing to serve without one")
    if any(len(k) < SHORT_KEY for k in keys):
        log.warning("an API key from %s is shorter than %d characters and easy to guess", source, SHORT_KEY)
    return ApiKeys(tuple(dict.fromkeys(_digest(k) for k in keys)), source)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _warn_if_readable_by_all(path: Path) -> None:
    try:
        if path.stat().st_mode & 0o004:
            log.warning("the API key file %s is readable by every user: chmod o-r it", path)
    except OSError:
        pass


def presented_key() -> str | None:
    """The key the request carries: ``Authorization: Bearer <key>``, else ``x-api-key``."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    api_key = request.headers.get("x-api-key", "").strip()
    return api_key or None


def is_open(method: str, path: str) -> bool:
    """Whether ``method path`` is served without a key."""
    return (method, path) in OPEN_ROUTES or path.startswith(OPEN_PREFIXES)


def unauthorized_body(path: str, message: str) -> dict[str, object]:
    """A 401 in the shape of the route's API family."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return {"type": "error", "error": {"type": "authentication_error", "message": message}}
    if path.startswith("/v1/"):
        return {"error": {"message": message, "type": "authentication_error", "param": None,
                          "code": "invalid_api_key"}}
    return {"error": message}


async def require_key() -> Response | None:
    """A ``before_request`` hook (after the Host/Origin guard and CORS preflight): 401 without a key."""
    keys: ApiKeys = current_app.extensions["appliance.api_keys"]
    if not keys.required or request.method == "OPTIONS" or is_open(request.method, request.path):
        return None
    presented = presented_key()
    if presented is not None and keys.accepts(presented):
        return None
    message = ("missing API key: send it as Authorization: Bearer <key>" if presented is None
               else "invalid API key")
    response = current_app.json.response(unauthorized_body(request.path, message))
    assert isinstance(response, Response)
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="ollama"'
    return response
