"""The one table of option bounds (issue 11): the same checks for requests, Modelfiles and stored params."""

from __future__ import annotations

import pytest

from appliance.api.options import (
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    OPTIONS,
    parse_parameter,
    predict_limits,
    stored_options,
    validate_options,
)
from appliance.errors import InvalidParameter


def test_every_integer_option_has_bounds() -> None:
    for spec in OPTIONS.values():
        assert (spec.bounds is not None) == (spec.type is int), spec.name


@pytest.mark.parametrize("name, value", [("num_batch", 4294967297), ("repeat_last_n", 2**31),
                                         ("num_ctx", -(2**31) - 1), ("num_thread", 2**40)])
def test_integers_beyond_int32_are_refused_everywhere(name: str, value: int) -> None:
    with pytest.raises(InvalidParameter, match=name):
        validate_options({name: value})
    with pytest.raises(InvalidParameter, match=name):
        validate_options({name: float(value)})
    with pytest.raises(InvalidParameter, match=name):
        parse_parameter(name, str(value))
    assert name not in stored_options({name: value}, "test")


def test_the_seed_takes_any_int64() -> None:
    assert validate_options({"seed": 2**40}) == {"seed": 2**40}
    with pytest.raises(InvalidParameter, match="seed"):
        validate_options({"seed": 2**63})


def test_stop_lists_are_capped() -> None:
    assert validate_options({"stop": ["a"] * MAX_STOP_SEQUENCES})["stop"] == ["a"] * MAX_STOP_SEQUENCES
    with pytest.raises(InvalidParameter, match="stop"):
        validate_options({"stop": ["a"] * (MAX_STOP_SEQUENCES + 1)})
    with pytest.raises(InvalidParameter, match="stop"):
        validate_options({"stop": ["x" * (MAX_STOP_CHARS + 1)]})
    with pytest.raises(InvalidParameter, match="stop"):
        parse_parameter("stop", "x" * (MAX_STOP_CHARS + 1))


def test_stored_options_keep_the_good_and_drop_the_bad(caplog: pytest.LogCaptureFixture) -> None:
    stored = {"num_batch": 4294967297, "temperature": 0.5, "top_k": "x", "stop": ["<end>"],
              "mirostat": 2, "num_ctx": None}
    assert stored_options(stored, "model m") == {"temperature": 0.5, "stop": ["<end>"]}
    assert "num_batch" in caplog.text and "top_k" in caplog.text


@pytest.mark.parametrize("opts, expected", [
    ({}, {"repeat_last_n": 64, "top_k": 40, "num_keep": 4, "num_predict": 20480}),
    ({"repeat_last_n": -1}, {"repeat_last_n": 2048}),
    ({"repeat_last_n": 50_000_000}, {"repeat_last_n": 2048}),
    ({"top_k": 10**9}, {"top_k": 49152}),
    ({"top_k": -3}, {"top_k": 0}),
    ({"num_keep": 10**6}, {"num_keep": 1024}),
    ({"num_keep": -1}, {"num_keep": 0}),
    ({"num_predict": -2}, {"num_predict": -2}),
    ({"num_predict": 10**9}, {"num_predict": 20480}),
    ({"num_predict": -7}, {"num_predict": 20480}),
    ({"num_predict": 12}, {"num_predict": 12}),
    ({"repeat_last_n": "junk"}, {"repeat_last_n": 64}),
])
def test_predict_limits_clamp_to_the_context(opts: dict, expected: dict) -> None:
    limits = predict_limits(opts, 2048, 49152)
    assert {k: limits[k] for k in expected} == expected
