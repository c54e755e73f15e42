"""Request-body decoding off the event loop, with bounded memory (issue 11, item 6)."""

from __future__ import annotations

import json

import pytest

from appliance.api import jsonbody
from appliance.errors import BadRequest


@pytest.mark.parametrize("size", [100, 200 << 10, 3 << 20])  # inline, thread, child process
async def test_each_path_decodes_the_same(size: int) -> None:
    doc = {"model": "m", "prompt": "é" + "x" * size, "context": [1, 2, 3], "options": {"temperature": 0.5},
           "nested": [{"a": None, "b": True, "c": -1.5e3}]}
    assert await jsonbody.decode(json.dumps(doc, ensure_ascii=False).encode()) == doc


@pytest.mark.parametrize("size", [10, 3 << 20])
@pytest.mark.parametrize("bad, word", [(b'{"a": NaN', "NaN"), (b'{"a": Infinity', "Infinity"),
                                      (b'{"a": [1, 2', "invalid JSON"), (b'{"a": "\xff', "invalid")])
async def test_bad_json_is_a_bad_request_on_every_path(size: int, bad: bytes, word: str) -> None:
    body = b"{" + b" " * size + bad[1:] + b"}"
    with pytest.raises(BadRequest, match=word):
        await jsonbody.decode(body)


async def test_too_many_values_are_refused_by_the_child() -> None:
    bomb = b"[" + b",".join([b"{}"] * (jsonbody.MAX_VALUES + 10)) + b"]"
    with pytest.raises(BadRequest, match="JSON values"):
        await jsonbody.decode(bomb)


async def test_commas_inside_strings_do_not_count_as_values() -> None:
    doc = {"prompt": "a," * (jsonbody.MAX_VALUES + 10)}
    assert await jsonbody.decode(json.dumps(doc).encode()) == doc


def test_count_values_stops_early() -> None:
    assert jsonbody.count_values([[1, 2], {"a": [3]}], 100) == 7
    assert jsonbody.count_values(list(range(1000)), 10) == 11
