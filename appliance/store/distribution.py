"""A client of one registry speaking the OCI distribution protocol (Docker Registry HTTP API v2).

A :class:`RegistryClient` is one conversation with the registry that serves a model name: it knows
the base URL (``https`` unless the caller allowed ``insecure`` plain HTTP, as Ollama's
``errInsecureProtocol`` rule demands), answers auth challenges, and applies the safety rules every
request shares:

* Auth: anonymous first; a ``401`` with ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` is
  answered by fetching a token from the realm, which must be on the registry's own host and port
  (a realm elsewhere is refused, so credentials and tokens never leave the registry's origin); a
  ``Basic`` challenge is answered only with credentials configured for that very host.
* Bodies read into memory (manifests, tokens, error documents) are size-capped and read as sent
  (``Accept-Encoding: identity``; a compressed body is refused, so nothing can inflate past the cap).
* Redirects are never followed, except for blob downloads (:meth:`RegistryClient.open_blob`): up to
  ten hops, no downgrade from https to http unless insecure, no ``Authorization`` header sent to
  another origin, and never to an address "more internal" than the registry's own (a public registry
  may not send us to a private or loopback address; nobody may send us to link-local or cloud
  metadata addresses).  The target's addresses are checked before connecting and the connected
  peer is checked again afterwards (DNS rebinding).

httpx's ``AsyncClient`` runs on Trio through anyio; every call here is plain ``async``.  Timeouts are
policy (:class:`TransferSettings`): a read that sees no bytes for ``stall_timeout_s`` fails, which is
how a stalled transfer is detected.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import os
import platform
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import trio

from appliance import __version__
from appliance.errors import ApplianceError, BadRequest, NotFound
from appliance.store.blobs import parse_digest
from appliance.store.names import Name

log = logging.getLogger(__name__)

#: Manifests, tokens and error documents are small; anything larger is refused unread.
MAX_MANIFEST_BYTES = 4 << 20
MAX_TOKEN_BYTES = 1 << 20
MAX_ERROR_BYTES = 64 << 10
MAX_REDIRECTS = 10
MEDIA_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_LISTS = ("application/vnd.docker.distribution.manifest.list.v2+json",
                  "application/vnd.oci.image.index.v1+json")

#: Socket reads for blob bodies (see transfer.body_chunks); httpcore's own 64 KiB reads cost ~3x the CPU.
BLOB_READ_BYTES = 1 << 20


# --- errors ----------------------------------------------------------------------------------------


class RegistryError(ApplianceError):
    """The registry failed or misbehaved (502 when it ends a non-streamed request)."""

    status = 502


class RegistryUnavailable(RegistryError):
    """A network failure, a stall or a 5xx: worth retrying."""


class RegistryNotFound(NotFound):
    """The registry has no such manifest or blob."""


class RegistryUnauthorized(ApplianceError):
    """The registry refused our credentials (or we had none to offer).

    403, not 401: it is the registry that wants credentials, not this server (a 401 would send
    Ollama's clients off to sign in here).
    """

    status = 403


class InsecureProtocol(BadRequest):
    """An ``http://`` name without ``insecure``."""


class UnsafeRedirect(RegistryError):
    """A redirect (or upload location) that the address policy refuses."""


# --- settings and credentials ----------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True)
class TransferSettings:
    """How pulls and pushes behave; all defaults follow Ollama's."""

    max_streams: int = 4  # parallel connections per pull or push (OLLAMA_MAX_TRANSFER_STREAMS)
    stall_timeout_s: float = 30.0  # a read with no bytes for this long counts as a stalled attempt
    connect_timeout_s: float = 30.0
    max_attempts: int = 6  # per blob part (download) or per blob (upload)
    retry_backoff_s: float = 1.0  # first retry delay; doubles each attempt
    max_backoff_s: float = 30.0
    parts: int = 16  # a large blob is fetched as this many ranged parts…
    min_part_bytes: int = 100 * 1000**2  # …each at least this big…
    max_part_bytes: int = 1000 * 1000**2  # …and at most this big
    upload_chunk_bytes: int = 64 << 20  # larger blobs are uploaded in PATCH chunks of this size
    progress_interval_s: float = 0.1
    #: Registry host (``host[:port]``, lower case) -> credentials, offered only to that host.
    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    #: Told the size of every piece of blob body received by a download (the server's pull-bytes metric).
    on_received: Callable[[int], None] | None = None

    def backoff(self, attempt: int) -> float:
        return min(self.retry_backoff_s * 2**attempt, self.max_backoff_s)


#: Where registry credentials live, relative to the server's home: Docker's config.json shape,
#: ``{"auths": {"host:port": {"username": "…", "password": "…"}}}`` (or ``"auth": base64(user:pass)``).
CREDENTIALS_FILE = Path(".ollama") / "registry.json"
_MAX_CREDENTIALS_BYTES = 1 << 20


def load_credentials(path: Path | None = None) -> dict[str, Credentials]:
    """Per-host registry credentials from ``~/.ollama/registry.json``; an unreadable file is logged."""
    path = path or Path.home() / CREDENTIALS_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CREDENTIALS_BYTES + 1)
        if os.stat(path).st_mode & 0o077:
            log.warning("%s is readable by other users; chmod 600 it", path)
        auths = json.loads(data).get("auths", {})
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("ignoring registry credentials in %s: %s", path, exc)
        return {}
    found: dict[str, Credentials] = {}
    for host, entry in auths.items() if isinstance(auths, dict) else ():
        if not isinstance(entry, dict):
            continue
        user, password = entry.get("username"), entry.get("password")
        if isinstance(entry.get("auth"), str):
            with contextlib.suppress(ValueError):
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        if isinstance(user, str) and isinstance(password, str) and user:
            found[host.lower()] = Credentials(user, password)
    return found


# --- the address policy ----------------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, ("169.254.169.254", "fd00:ec2::254",
                                                           "100.100.100.200")))
PUBLIC, PRIVATE, LOOPBACK = 0, 1, 2
_RANK_NAMES = {PUBLIC: "public", PRIVATE: "private", LOOPBACK: "loopback"}


def address_rank(ip: IPAddress) -> int | None:
    """How internal an address is (public < private < loopback); None for never-reachable ones."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA_ADDRESSES or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return None
    if ip.is_loopback:
        return LOOPBACK
    if ip.is_reserved or ip.is_private or not ip.is_global:
        return PRIVATE
    return PUBLIC


async def resolve(host: str) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(host.strip("[]"))]
    try:
        infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise RegistryUnavailable(f"cannot resolve {host}: {exc}") from exc
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _origin(url: str | httpx.URL) -> tuple[str, str, int]:
    parts = httpx.URL(str(url))
    return parts.scheme, (parts.host or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def _uses_proxy(url: httpx.URL) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get(url.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(url.host)


# --- auth challenges -------------------------------------------------------------------------------


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="a:b:pull,push"`` -> ("bearer", {…}); quotes may hold commas."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key, i = rest[i:eq].strip().lower(), eq + 1
        if i < n and rest[i] == '"':
            value, i = [], i + 1
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            params[key], i = "".join(value), i + 1
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key], i = rest[i:end].strip(), end
    return scheme.lower(), params


def error_message(data: bytes) -> str:
    """The text of an OCI error document (``{"errors": [{"code", "message"}]}``) or the raw body."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        errors = json.loads(data).get("errors")
        texts = [str(e.get("message") or e.get("code")) for e in errors if isinstance(e, dict)]
        if texts:
            return "; ".join(texts)
    return data.decode("utf-8", errors="replace").strip()[:500]


async def read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    """The whole body, refusing (without reading on) anything over ``limit`` bytes."""
    if response.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
        raise RegistryError(f"{what}: unexpected content encoding {response.headers['content-encoding']!r}")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RegistryError(f"{what} is larger than {limit} bytes")
    data = bytearray()
    try:
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) > limit:
                raise RegistryError(f"{what} is larger than {limit} bytes")
    except httpx.TimeoutException as exc:
        raise RegistryUnavailable(f"{what}: stalled") from exc
    except httpx.TransportError as exc:
        raise RegistryUnavailable(f"{what}: {exc or type(exc).__name__}") from exc
    return bytes(data)


# --- the client ------------------------------------------------------------------------------------

Body = bytes | Callable[[], AsyncIterator[bytes]] | None


def check_protocol(name: Name, insecure: bool) -> None:
    """Ollama's rule: an ``http://`` name needs ``insecure``."""
    if name.scheme == "http" and not insecure:
        raise InsecureProtocol("insecure protocol http")


class RegistryClient:
    """One conversation with the registry serving ``name`` (use as ``async with``)."""

    def __init__(self, name: Name, *, insecure: bool, settings: TransferSettings) -> None:
        check_protocol(name, insecure)
        self.name = name
        self.insecure = insecure
        self.settings = settings
        self.base_url = f"{'http' if insecure else 'https'}://{name.host}"
        self.repository = f"{name.namespace}/{name.model}"
        self.streams = trio.CapacityLimiter(max(1, settings.max_streams))
        self._authorization: str | None = None
        self._rank: int | None = None
        timeout = httpx.Timeout(settings.stall_timeout_s, connect=settings.connect_timeout_s, pool=None)
        self._http = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=settings.max_streams + 2),
            headers={"User-Agent": f"ollama-appliance/{__version__} ({platform.machine()} "
                                   f"{platform.system().lower()}) Python/{platform.python_version()}",
                     "Accept-Encoding": "identity"},
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        with trio.CancelScope(shield=True):
            await self._http.aclose()

    def url(self, *path: str) -> str:
        return "/".join((self.base_url, "v2", self.repository, *path))

    @property
    def origin(self) -> tuple[str, str, int]:
        return _origin(self.base_url)

    # -- requests ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                   body: Body = None, authorize: bool = True) -> AsyncIterator[httpx.Response]:
        """Send a request and yield the streamed response; one ``401`` is answered with its challenge."""
        same_origin = _origin(url) == self.origin
        for attempt in range(2):
            request_headers = dict(headers or {})
            if authorize and same_origin and self._authorization:
                request_headers["Authorization"] = self._authorization
            response = await self._send(method, url, request_headers, body)
            if response.status_code == 401 and authorize and same_origin and attempt == 0:
                challenge = response.headers.get("www-authenticate", "")
                await response.aclose()
                await self._answer(challenge)
                continue
            try:
                if response.status_code == 401:
                    raise RegistryUnauthorized("unauthorized: access denied")
                yield response
            finally:
                with trio.CancelScope(shield=True):
                    await response.aclose()
            return

    async def _send(self, method: str, url: str, headers: dict[str, str], body: Body) -> httpx.Response:
        content: Any = body() if callable(body) else body
        request = self._http.build_request(method, url, headers=headers, content=content)
        try:
            return await self._http.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise RegistryUnavailable(f"{method} {_short(url)}: stalled, no data for "
                                      f"{self.settings.stall_timeout_s:g}s") from exc
        except httpx.TransportError as exc:
            raise RegistryUnavailable(f"{method} {_short(url)}: {exc or type(exc).__name__}") from exc

    async def fail(self, response: httpx.Response, what: str) -> ApplianceError:
        """The error for an unexpected answer, with the registry's own message (size-capped)."""
        if 300 <= response.status_code < 400:
            target = _short(response.headers.get("location", "?"))
            return UnsafeRedirect(f"{what}: refusing redirect ({response.status_code}) to {target}: only "
                                  "blob downloads follow redirects")
        try:
            message = error_message(await read_capped(response, MAX_ERROR_BYTES, "error body"))
        except (RegistryError, httpx.HTTPError):
            message = response.reason_phrase
        status = response.status_code
        if status == 404:
            return RegistryNotFound(f"{what}: file does not exist")
        if status == 401 or status == 403:
            return RegistryError(f"{what}: {status}: {message or 'access denied'}")
        cls = RegistryUnavailable if status >= 500 or status == 429 else RegistryError
        return cls(f"{what}: {status}: {message}")

    # -- auth -------------------------------------------------------------------------------------

    def _credentials(self) -> Credentials | None:
        return self.settings.credentials.get(self.name.host.lower())

    async def _answer(self, header: str) -> None:
        scheme, params = parse_challenge(header)
        credentials = self._credentials()
        if scheme == "basic" and credentials is not None:
            self._authorization = credentials.basic()
        elif scheme == "bearer" and params.get("realm"):
            self._authorization = "Bearer " + await self._token(params)
        else:
            raise RegistryUnauthorized("unauthorized: access denied")

    async def _token(self, challenge: Mapping[str, str]) -> str:
        realm = urljoin(self.base_url + "/", challenge["realm"])
        scheme, host, port = _origin(realm)
        _, own_host, own_port = self.origin
        if (host, port) != (own_host, own_port):
            raise RegistryUnauthorized(f"realm host {urlsplit(realm).netloc!r} does not match registry host "
                                       f"{self.name.host!r}")
        if scheme != "https" and not (self.insecure and scheme == "http"):
            raise RegistryUnauthorized(f"refusing auth realm {realm!r}: not https")
        params: list[tuple[str, Any]] = []
        if challenge.get("service"):
            params.append(("service", challenge["service"]))
        params += [("scope", scope) for scope in challenge.get("scope", "").split(" ") if scope]
        headers = {}
        credentials = self._credentials()
        if credentials is not None:
            headers["Authorization"] = credentials.basic()
        url = str(httpx.URL(realm).copy_merge_params(params))
        async with self.open("GET", url, headers=headers, authorize=False) as response:
            if response.status_code != 200:
                error = await self.fail(response, "token request")
                raise RegistryUnauthorized(f"unauthorized: {error}")
            data = await read_capped(response, MAX_TOKEN_BYTES, "token response")
        try:
            answer = json.loads(data)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token or len(token) > 64 << 10 or not token.isprintable():
            raise RegistryUnauthorized("unauthorized: the token service sent no usable token")
        return token

    # -- the address policy -----------------------------------------------------------------------

    async def registry_rank(self) -> int:
        if self._rank is None:
            ranks = [address_rank(ip) for ip in await resolve(self.origin[1])]
            self._rank = max((LOOPBACK if r is None else r) for r in ranks)
        return self._rank

    async def check_target(self, url: httpx.URL, what: str) -> None:
        """Refuse a redirect or upload location that leaves the registry's reach (see module doc)."""
        if url.scheme not in ("http", "https") or (url.scheme == "http" and not self.insecure):
            raise UnsafeRedirect(f"{what}: refusing {url.scheme}:// target {_short(str(url))}")
        if _origin(url) == self.origin:
            return
        allowed = await self.registry_rank()
        for ip in await resolve(url.host):
            self._check_address(ip, allowed, url, what)

    def _check_address(self, ip: IPAddress, allowed: int, url: httpx.URL, what: str) -> None:
        rank = address_rank(ip)
        if rank is None or rank > allowed:
            kind = "link-local, metadata or unroutable" if rank is None else _RANK_NAMES[rank]
            raise UnsafeRedirect(f"{what}: refusing {kind} address {ip} ({url.host}) for a registry on a "
                                 f"{_RANK_NAMES[allowed]} address")

    async def check_peer(self, response: httpx.Response, what: str) -> None:
        """After connecting: the peer we reached must pass the same policy (DNS may have changed)."""
        url = response.request.url
        if _origin(url) == self.origin or _uses_proxy(url):
            return
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if peer:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(str(peer[0]).split("%")[0])
                self._check_address(ip, await self.registry_rank(), url, what)

    # -- the protocol -----------------------------------------------------------------------------

    async def get_manifest(self) -> tuple[bytes, str]:
        """The manifest of ``name``'s tag: its bytes (size-capped) and media type."""
        accept = {"Accept": f"{MEDIA_MANIFEST_V2}, {MEDIA_OCI_MANIFEST}"}
        async with self.open("GET", self.url("manifests", self.name.tag), headers=accept) as response:
            if response.status_code != 200:
                raise await self.fail(response, "pull model manifest")
            data = await read_capped(response, MAX_MANIFEST_BYTES, "manifest")
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
            claimed = response.headers.get("docker-content-digest")
        if claimed:
            from appliance.store.blobs import digest_of_bytes

            try:
                ok = parse_digest(claimed) == digest_of_bytes(data)
            except BadRequest:
                ok = True  # another algorithm: nothing to compare against
            if not ok:
                raise RegistryError("pull model manifest: body does not match its Docker-Content-Digest")
        return data, media_type

    async def has_blob(self, digest: str) -> bool:
        async with self.open("HEAD", self.url("blobs", parse_digest(digest))) as response:
            if response.status_code == 200:
                return True
            if response.status_code == 404:
                return False
            raise await self.fail(response, f"HEAD blob {digest[7:19]}")

    @contextlib.asynccontextmanager
    async def open_blob(self, digest: str, start: int, end: int) -> AsyncIterator[httpx.Response]:
        """GET bytes ``[start, end)`` of a blob, following redirects under the address policy."""
        url = httpx.URL(self.url("blobs", parse_digest(digest)))
        headers = {"Range": f"bytes={start}-{end - 1}"}
        for _hop in range(MAX_REDIRECTS + 1):
            async with self.open("GET", str(url), headers=headers) as response:
                if response.status_code in (301, 302, 303, 307, 308):
                    location = response.headers.get("location")
                    if not location:
                        raise RegistryError(f"blob {digest[7:19]}: redirect without a location")
                    url = url.join(location)
                    await self.check_target(url, f"blob {digest[7:19]} redirect")
                    continue
                await self.check_peer(response, f"blob {digest[7:19]} redirect")
                yield response
                return
        raise RegistryError(f"blob {digest[7:19]}: more than {MAX_REDIRECTS} redirects")

    async def location(self, response: httpx.Response, what: str) -> httpx.URL:
        """The upload ``Location`` an answer points to, checked like a redirect."""
        location = response.headers.get("docker-upload-location") or response.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: the registry sent no upload location")
        url = response.request.url.join(location)
        await self.check_target(url, what)
        return url


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."
