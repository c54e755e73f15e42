"""A runner's prompt as a sequence of items: text tokens (ints) and whole images.

Why this shape: a text token takes one KV cell and an image (:class:`ImageChunk`) takes ``n_tokens``
cells that are valid only together and only for the same pixels.  The runner's prefix cache compares
*keys*, one per KV cell: a token's key is its id, an image's are its ``cache_keys`` (strings, never equal
to a token id).  Whatever cuts a sequence (the common prefix with a cached one, a context shift) must cut
between items, never inside an image; the helpers here move a cut to an image's start or end.

Only models whose images advance the position by as many cells as they take are served (no M-RoPE),
so a cell's position is its index in the key list.
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.engine.vision import ImageChunk

Item = int | ImageChunk
Key = int | str


def keys_of(items: Sequence[Item]) -> list[Key]:
    """One key per KV cell the items take, in order."""
    keys: list[Key] = []
    for item in items:
        if isinstance(item, ImageChunk):
            keys.extend(item.cache_keys)
        else:
            keys.append(item)
    return keys


def image_offset(keys: Sequence[Key], at: int) -> int:
    """How far ``keys[at]`` lies inside an image (0 at its first cell, or for a token or the end)."""
    if at >= len(keys):
        return 0
    key = keys[at]
    return int(key.rsplit(":", 1)[1]) if isinstance(key, str) else 0


def cut_before_image(keys: Sequence[Key], at: int) -> int:
    """``at`` moved back to the start of the image it falls inside (unchanged between items)."""
    return at - image_offset(keys, at)


def cut_after_image(keys: Sequence[Key], at: int) -> int:
    """``at`` moved forward past the end of the image it falls inside (unchanged between items)."""
    while at < len(keys) and image_offset(keys, at) > 0:
        at += 1
    return at


def items_after(items: Sequence[Item], n_keys: int) -> list[Item]:
    """The items after their first ``n_keys`` keys (``n_keys`` must fall between items)."""
    seen = 0
    for i, item in enumerate(items):
        if seen == n_keys:
            return list(items[i:])
        if seen > n_keys:
            raise ValueError("cut inside an image")
        seen += item.n_tokens if isinstance(item, ImageChunk) else 1
    if seen != n_keys:
        raise ValueError("cut inside an image")
    return []


def close_images(items: Sequence[Item]) -> None:
    """Free the preprocessed pixels of the images among ``items`` (idempotent)."""
    for item in items:
        if isinstance(item, ImageChunk):
            item.close()
