"""Images in prompts: where each of a request's images goes, and which ones the runner is sent.

As upstream (server/prompt.go): each image of a message becomes a tag ``[img-N]`` in its content, N
counting the request's images in order; the tag replaces a literal ``[img]`` in the text, or else is
put before the text.  ``/api/generate`` does the same with its prompt and ``images``.  The template
renders the tags as text; older messages may then be dropped to fit the context, taking their tags with
them.  Finally each surviving tag becomes the runner's media marker and only those images are sent, in
the order of their markers.  A literal marker in any text is broken first, so no text can stand for
an image (or make the runner's marker count differ from its images).

Decoding the images (:mod:`appliance.api.images`) happens off the event loop, once the model is known
to see images, so that a text-only model refuses them before any pixel is decoded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from appliance.api import images as image_files
from appliance.engine.protocol import MEDIA_MARKER

#: A tag as the template renders it (a bounded number: a hostile one cannot cost an int() of 5000 digits).
_TAG = re.compile(r"\[img-(\d{1,9})\]")
#: What a literal marker in the text becomes: the same characters to a reader, never a marker.
ESCAPED_MARKER = MEDIA_MARKER.replace("<", "<\u200b", 1)

Group = tuple[str, list[str]]  # (where, the base64 images of one message or of /api/generate)


def tag_text(text: str, n_images: int, first: int) -> str:
    """``text`` with tags for images ``first`` .. ``first + n_images - 1`` (upstream's rule)."""
    prefix = ""
    for n in range(first, first + n_images):
        tag = f"[img-{n}]"
        if "[img]" in text:
            text = text.replace("[img]", tag, 1)
        else:
            prefix += tag
    return prefix + text


def tag_messages(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Group]]:
    """Chat messages with their images' tags in their content, and the images in tag order."""
    out: list[dict[str, Any]] = []
    groups: list[Group] = []
    n = 0
    for i, msg in enumerate(messages):
        found = msg.get("images") or []
        if not found:
            out.append(msg)
            continue
        out.append({**msg, "content": tag_text(str(msg.get("content") or ""), len(found), n)})
        groups.append((f"messages[{i}]", list(found)))
        n += len(found)
    return out, groups


async def decode(groups: Sequence[Group]) -> list[image_files.Image]:
    """Every image checked and decoded (off the event loop), in tag order; BadRequest names a bad one."""
    decoded: list[image_files.Image] = []
    for where, found in groups:
        decoded += await image_files.decode_all(found, where)
    return decoded


def place(prompt: str, decoded: Sequence[image_files.Image]) -> tuple[str, list[image_files.Image]]:
    """The rendered prompt with a marker for each surviving tag, and the images those markers stand for.

    A tag naming no image of the request, or one already placed, stays text."""
    prompt = prompt.replace(MEDIA_MARKER, ESCAPED_MARKER)
    sent: list[image_files.Image] = []
    placed: set[int] = set()

    def marker(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if n >= len(decoded) or n in placed:
            return match.group(0)
        placed.add(n)
        sent.append(decoded[n])
        return MEDIA_MARKER

    return _TAG.sub(marker, prompt), sent
