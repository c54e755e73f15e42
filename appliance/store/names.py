"""Model names: ``[scheme://][host/][namespace/]model[:tag]``, parsed and validated like Ollama.

A short name is completed with the defaults (``registry.ollama.ai``, ``library``, ``latest``), and
names compare case-insensitively.  Only a fully qualified, valid name may become a path under the
store: every part is checked against Ollama's alphabet, which has no ``/``, ``..`` or NUL, so a name
can never escape the ``manifests`` folder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from appliance.errors import InvalidName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"

_MISSING = "!MISSING!"  # a separator was present but the part before/after it was empty
_ALNUM_ = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
# Ollama's limits (types/model/name.go).  Each part is also one folder or file name under
# ``manifests/``, which filesystems cap at 255 bytes (NAME_MAX): Ollama's 350 for a host would let a
# name through that no store can hold.  The alphabet is ASCII, so characters are bytes.
_MAX_LEN = {"host": 350, "namespace": 80, "model": 80, "tag": 80}
MAX_PATH_COMPONENT = 255


def _valid_part(kind: str, part: str) -> bool:
    if not 1 <= len(part) <= min(_MAX_LEN[kind], MAX_PATH_COMPONENT):
        return False
    if part[0] not in _ALNUM_:
        return False
    for ch in part[1:]:
        if ch in _ALNUM_ or ch in "_-":
            continue
        if ch == "." and kind != "namespace":
            continue
        if ch == ":" and kind == "host":
            continue
        return False
    return True


def _cut_last(text: str, sep: str) -> tuple[str, str, bool]:
    before, found, after = text.rpartition(sep)
    if not found:
        return text, "", False
    return before or _MISSING, after or _MISSING, True


@dataclass(frozen=True)
class Name:
    """A model name split into its four parts (plus the registry scheme)."""

    host: str = ""
    namespace: str = ""
    model: str = ""
    tag: str = ""
    scheme: str = ""

    @classmethod
    def parse_bare(cls, text: str) -> Name:
        """Split ``text`` without filling in defaults."""
        host = namespace = model = tag = scheme = ""
        rest = text
        if rest.rfind(":") > rest.rfind("/"):
            rest, tag, _ = _cut_last(rest, ":")
        rest, model, found = _cut_last(rest, "/")
        if not found:
            return cls(model=rest, tag=tag)
        rest, namespace, found = _cut_last(rest, "/")
        if not found:
            return cls(namespace=rest, model=model, tag=tag)
        if "://" in rest:
            scheme, _, host = rest.partition("://")
        else:
            host = rest
        return cls(host=host, namespace=namespace, model=model, tag=tag, scheme=scheme)

    @classmethod
    def parse(cls, text: str) -> Name:
        """Split ``text`` and fill in the default host, namespace, tag and scheme."""
        bare = cls.parse_bare(text)
        return replace(
            bare,
            host=bare.host or DEFAULT_HOST,
            namespace=bare.namespace or DEFAULT_NAMESPACE,
            tag=bare.tag or DEFAULT_TAG,
            scheme=bare.scheme or DEFAULT_SCHEME,
        )

    @property
    def is_valid(self) -> bool:
        return (
            _valid_part("host", self.host)
            and _valid_part("namespace", self.namespace)
            and _valid_part("model", self.model)
            and _valid_part("tag", self.tag)
        )

    def parts(self) -> tuple[str, str, str, str]:
        """The four path components below ``manifests/``; only for valid names."""
        if not self.is_valid:
            raise InvalidName(f"invalid model name: {self}")
        return (self.host, self.namespace, self.model, self.tag)

    def key(self) -> tuple[str, str, str, str]:
        """What two names are compared by: every part, case-folded."""
        return (self.host.casefold(), self.namespace.casefold(), self.model.casefold(), self.tag.casefold())

    def same_as(self, other: Name) -> bool:
        return self.key() == other.key()

    def __str__(self) -> str:
        out = ""
        if self.host:
            out += self.host + "/"
        if self.namespace:
            out += self.namespace + "/"
        out += self.model
        if self.tag:
            out += ":" + self.tag
        return out

    @property
    def display(self) -> str:
        """The shortest name that parses back to this one (``smollm2:135m``, ``me/model:latest``)."""
        if self.host.casefold() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.casefold() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme or DEFAULT_SCHEME}://{self.host}"


def parse_name(text: str) -> Name:
    """Parse and validate a user-given model name, or raise InvalidName."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidName("model name is required")
    name = Name.parse(text.strip())
    if not name.is_valid:
        raise InvalidName(f"invalid model name: {text!r}")
    return name


def name_from_manifest_path(parts: tuple[str, ...]) -> Name | None:
    """The name stored at ``manifests/<host>/<ns>/<model>/<tag>``, or None if that is not a valid one."""
    if len(parts) != 4:
        return None
    name = Name(host=parts[0], namespace=parts[1], model=parts[2], tag=parts[3], scheme=DEFAULT_SCHEME)
    return name if name.is_valid else None
