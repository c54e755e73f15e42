"""appliance/engine/sequence.py: prompts as tokens and whole images; cuts never fall inside an image."""

from __future__ import annotations

import pytest

from appliance.engine.sequence import cut_after_image, cut_before_image, image_offset, items_after, keys_of
from appliance.engine.speculative import common_prefix
from appliance.engine.vision import ImageChunk


def image(name: str, n: int = 3) -> ImageChunk:
    return ImageChunk(id=name, n_tokens=n, n_pos=n, _ptr=0)  # no libmtmd chunk behind it


def test_keys_are_tokens_and_one_key_per_image_cell() -> None:
    items = [1, 2, image("a"), 3]
    assert keys_of(items) == [1, 2, "img:a:0", "img:a:1", "img:a:2", 3]


def test_cuts_move_to_the_edges_of_an_image() -> None:
    keys = keys_of([1, image("a"), 2, image("b", 2)])  # 1 a0 a1 a2 2 b0 b1
    assert [image_offset(keys, i) for i in range(len(keys) + 1)] == [0, 0, 1, 2, 0, 0, 1, 0]
    assert [cut_before_image(keys, i) for i in range(len(keys) + 1)] == [0, 1, 1, 1, 4, 5, 5, 7]
    assert [cut_after_image(keys, i) for i in range(len(keys) + 1)] == [0, 1, 4, 4, 4, 5, 7, 7]


def test_the_common_prefix_of_another_image_ends_before_it() -> None:
    cached = keys_of([1, 2, image("a"), 3])
    same, other = keys_of([1, 2, image("a"), 4]), keys_of([1, 2, image("b"), 3])
    assert common_prefix(cached, same) == 5
    assert common_prefix(cached, other) == 2
    # the same image id with a longer prompt: the prefix may end inside only where the prompt does
    assert cut_before_image(same, common_prefix(cached[:4], same)) == 2


def test_items_after_a_cut_between_items() -> None:
    a = image("a")
    items = [1, 2, a, 3]
    assert items_after(items, 0) == items
    assert items_after(items, 2) == [a, 3]
    assert items_after(items, 5) == [3]
    assert items_after(items, 6) == []
    with pytest.raises(ValueError, match="inside an image"):
        items_after(items, 3)
