"""The appliance's exception tree and its mapping to HTTP status codes.

    ApplianceError                      500  anything unexpected that we still raise on purpose
     ├── BadRequest                     400
     │    ├── InvalidName                    model name fails Ollama's name rules
     │    ├── InvalidDigest                  not "sha256:" / "sha256-" + 64 hex
     │    ├── DigestMismatch                 bytes do not hash to the digest they claim
     │    ├── InvalidModelfile               carries .line (1-based) and .reason
     │    ├── InvalidGGUF                    a GGUF that fails the bounds checks
     │    ├── InvalidParameter               an option/PARAMETER with a bad name or value
     │    └── UnsupportedModel               a GGUF llama.cpp cannot run here (see store/gguf_compat.py)
     ├── Forbidden                      403  e.g. a Host header that fails the DNS-rebinding check
     ├── NotFound                       404
     │    ├── ModelNotFound
     │    └── BlobNotFound
     ├── Conflict                       409
     ├── PayloadTooLarge                413  a JSON body over OLLAMA_MAX_BODY_BYTES
     ├── ServerBusy                     503  the request queue is full
     ├── InsufficientStorage            507  the models folder's disk is full (ENOSPC/EDQUOT), or a
     │                                       pull or upload would not fit
     └── RunnerError                    500  a model runner failed or died

The registry client (appliance/store/distribution.py, transfer.py) adds, next to its callers:

    RegistryError (ApplianceError)      502  the registry failed or misbehaved
     ├── RegistryUnavailable                 network failure, stall or 5xx: retried, then reported
     └── UnsafeRedirect                      a redirect or upload location the address policy refuses
    RegistryNotFound (NotFound)         404  no such manifest or blob there
    RegistryUnauthorized                403  the registry refused our credentials (403, not 401: the
                                             credentials are the registry's, not this server's)
    InsecureProtocol (BadRequest)       400  an http:// registry without ``insecure``

Lower-layer errors (OSError, httpx, llama.cpp) are translated at the boundary with
``raise SomeError(...) from exc``; the server turns every ApplianceError into
``{"error": str(exc)}`` with ``exc.status``.
"""

from __future__ import annotations

#: An error's text is cut to this many characters: messages quote what the client sent (a name, a
#: value, an id), and a client that sends megabytes must not get megabytes back in every family's shape.
MAX_MESSAGE_CHARS = 2000


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""

    status: int = 500

    def __str__(self) -> str:
        text = super().__str__()
        if len(text) <= MAX_MESSAGE_CHARS:
            return text
        return f"{text[:MAX_MESSAGE_CHARS]}… ({len(text)} characters in all)"


class BadRequest(ApplianceError):
    status = 400


class InvalidName(BadRequest):
    pass


class InvalidDigest(BadRequest):
    pass


class DigestMismatch(BadRequest):
    pass


class InvalidModelfile(BadRequest):
    """A Modelfile that does not parse; the message names the line and the reason."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(f"line {line}: {reason}" if line is not None else reason)


class InvalidGGUF(BadRequest):
    pass


class InvalidParameter(BadRequest):
    pass


class UnsupportedModel(BadRequest):
    """A model whose architecture or layout llama.cpp cannot run here: 400 rather than a runner's 500,
    since the answer never changes on retry (clients retry 5xx) and the remedy is another model."""


class Forbidden(ApplianceError):
    status = 403


class NotFound(ApplianceError):
    status = 404


class ModelNotFound(NotFound):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"model '{name}' not found")


class BlobNotFound(NotFound):
    pass


class Conflict(ApplianceError):
    status = 409


class PayloadTooLarge(ApplianceError):
    status = 413


class ServerBusy(ApplianceError):
    status = 503


class InsufficientStorage(ApplianceError):
    """Out of disk space.  507 rather than 500: a client can tell "free some space" from a server bug,
    and it is still a 5xx, so nothing treats it as the request's own fault."""

    status = 507


class RunnerError(ApplianceError):
    status = 500


def public_message(exc: BaseException) -> str:
    """What a client may read of ``exc``: our own errors as they are; an unexpected OSError by its
    reason only (its file names are server paths); anything else as an internal error."""
    if isinstance(exc, ApplianceError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        return f"internal error: {exc.strerror or type(exc).__name__}"
    return f"internal error: {exc}" if str(exc) else f"internal error: {type(exc).__name__}"
