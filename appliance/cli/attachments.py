"""Image files named in an ``ollama run`` prompt (Ollama's ``extractFileNames`` / ``extractFileData``).

For a model that can see images, a path to a ``.png``, ``.jpg``, ``.jpeg`` or ``.webp`` file anywhere in a
prompt is read, taken out of the text and sent as one of the request's ``images``.  A path starts with
``/``, ``./``, ``\\`` or a drive letter, as in Ollama, or with ``~/`` (the home folder: Ollama does not
expand it); it may hold spaces, plain or escaped with a backslash as a shell or a file dropped on the
terminal writes them, and may be wrapped in single quotes, which are removed with it.

Ollama's pattern is lazy and starts at the leftmost slash, so in "is it a cat/dog? /tmp/cat.png" it
first proposes "/dog? /tmp/cat.png".  A proposal that names no file is not an error (the text might just
mention a path): Ollama skips it and leaves the words in the prompt; here the search also resumes inside
it, so the real path after it is still found.  A file that exists but cannot be used (a folder, no
permission, not a PNG, JPEG or WebP image, too large) raises :class:`ImageFileError`.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TextIO

#: What may be an image path (Ollama's pattern, plus ``~``); whether the file exists decides.
#: Its length is bounded by PATH_MAX, which bounds the work of each attempt on a long prompt.
IMAGE_PATH = re.compile(r"(?:(?<![^\s'\"])~|[a-zA-Z]:)?(?:\./|/|\\)[\S\\ ]{1,4096}?"
                        r"\.(?i:jpg|jpeg|png|webp)\b", re.ASCII)

#: Backslash escapes a shell or a terminal drop writes into a path, and what they stand for.
_ESCAPES = re.compile(r"\\([ ()\[\]{}$&;'\\*?~])")

#: The largest image file the server accepts (appliance.api.images.MAX_IMAGE_BYTES).
MAX_FILE_BYTES = 48 << 20

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
)
ALLOWED_TYPES = ("image/png", "image/jpeg", "image/webp")


class ImageFileError(Exception):
    """A path in the prompt names a file that cannot be sent as an image."""


def candidate_paths(text: str) -> list[str]:
    """Every stretch of ``text`` that looks like an image path (Ollama's ``extractFileNames``)."""
    return IMAGE_PATH.findall(text)


def normalize_path(path: str) -> str:
    """Undo backslash escapes (``my\\ cat.png`` is ``my cat.png``) and expand a leading ``~``."""
    path = _ESCAPES.sub(r"\1", path)
    return os.path.expanduser(path) if path.startswith("~") else path


def content_type(head: bytes) -> str:
    """The MIME type of a file from its first bytes, named as Go's ``http.DetectContentType`` names it."""
    if head[:4] == b"RIFF" and head[8:14] == b"WEBPVP":
        return "image/webp"
    for magic, offset, kind in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return kind
    if not head or any(b < 0x09 or (0x0d < b < 0x20 and b != 0x1b) for b in head):
        return "application/octet-stream"
    return "text/plain; charset=utf-8"


def read_image(path: str) -> bytes:
    """The bytes of the image file at ``path``; FileNotFoundError when there is no such file."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(512)
            if not head:
                raise ImageFileError(f"read {path}: the file is empty")
            kind = content_type(head)
            if kind not in ALLOWED_TYPES:
                raise ImageFileError(f"invalid file type: {kind} ({path} is not a PNG, JPEG or WebP image)")
            if size > MAX_FILE_BYTES:
                raise ImageFileError(f"{path}: file size exceeds maximum limit ({MAX_FILE_BYTES >> 20} MiB)")
            return head + f.read()
    except IsADirectoryError:
        raise ImageFileError(f"read {path}: is a directory") from None
    except PermissionError:
        raise ImageFileError(f"open {path}: permission denied") from None
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except OSError as exc:
        raise ImageFileError(f"read {path}: {exc.strerror or exc}") from None


def extract_images(text: str, log: TextIO | None = None) -> tuple[str, list[bytes]]:
    """The prompt without its image paths, and the images' bytes in the order the paths appear.

    Each image found is announced on ``log`` (stderr) as Ollama does: ``Added image '<path>'``.
    """
    log = log or sys.stderr
    found: list[tuple[str, str]] = []  # (as written, as opened)
    images: list[bytes] = []
    position = 0
    while (match := IMAGE_PATH.search(text, position)) is not None:
        written = match.group()
        path = normalize_path(written)
        try:
            images.append(read_image(path))
        except FileNotFoundError:
            position = match.start() + 1  # not a file: a real path may start inside it
            continue
        log.write(f"Added image '{path}'\n")
        found.append((written, path))
        position = match.end()
    for written, path in found:
        for quoted in (f"'{path}'", f"'{written}'", written):
            text = text.replace(quoted, "")
    return text.strip(), images

