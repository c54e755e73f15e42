"""The option table, PARAMETER text parsing, request option validation and /api/show's parameters text."""

from __future__ import annotations

import logging

import pytest

from appliance.api.options import (
    DEFAULT_OPTIONS,
    DEPRECATED_PARAMETERS,
    OPTIONS,
    ValidOptions,
    format_parameters,
    parameter_text,
    parse_parameter,
    validate_options,
)
from appliance.errors import BadRequest, InvalidParameter

# The json names of Ollama's api.Options and api.Runner structs, with their Go types.
OLLAMA_FIELDS = {
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
    "draft_num_predict": int,
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
}


# ------------------------------------------------------------------------------------------- the table


def test_table_has_every_ollama_option_with_its_type():
    assert {name: spec.type for name, spec in OPTIONS.items()} == OLLAMA_FIELDS


def test_every_option_has_a_one_line_description():
    for spec in OPTIONS.values():
        assert spec.description and "\n" not in spec.description, spec.name


def test_runner_options_are_marked_load_time():
    load_time = {name for name, spec in OPTIONS.items() if spec.load_time}
    assert load_time == {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "use_mmap",
        "num_thread",
        "draft_num_predict",
    }


def test_defaults_are_ollamas():
    assert dict(DEFAULT_OPTIONS) == {
        "num_ctx": 4096,
        "num_batch": 512,
        "num_gpu": -1,
        "main_gpu": None,
        "use_mmap": None,
        "num_thread": 0,
        "draft_num_predict": 4,
        "num_keep": 4,
        "seed": -1,
        "num_predict": -1,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_last_n": 64,
        "temperature": 0.8,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stop": (),
    }


def test_defaults_are_read_only():
    with pytest.raises(TypeError):
        DEFAULT_OPTIONS["num_ctx"] = 1  # type: ignore[index]


def test_deprecated_parameters_are_not_options():
    assert "mirostat" in DEPRECATED_PARAMETERS
    assert not DEPRECATED_PARAMETERS & set(OPTIONS)


# ----------------------------------------------------------------------------------- parse_parameter


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("num_ctx", "8192", 8192),
        ("num_ctx", "+8192", 8192),
        ("num_gpu", "-1", -1),
        ("main_gpu", "0", 0),
        ("seed", "0042", 42),
        ("seed", "9223372036854775807", 2**63 - 1),
        ("seed", "-9223372036854775808", -(2**63)),
        ("temperature", "0.25", 0.25),
        ("temperature", "1", 1.0),
        ("top_p", ".5", 0.5),
        ("top_p", "5.", 5.0),
        ("min_p", "1e-3", 0.001),
        ("repeat_penalty", "-1.5E+1", -15.0),
        ("temperature", "0.123456789", 0.12345679),  # float32, as Ollama stores it
        ("temperature", "16777217", 16777216.0),
        ("temperature", "3.4028235e38", 3.4028235e38),  # rounds down to the largest float32
        ("temperature", "1e-50", 0.0),  # underflow is not an error in Go either
        ("use_mmap", "true", True),
        ("use_mmap", "0", False),
        ("stop", "<|im_end|>", "<|im_end|>"),
        ("stop", "", ""),
        ("stop", "  spaced  ", "  spaced  "),
    ],
)
def test_parse_parameter_values(name, raw, expected):
    value = parse_parameter(name, raw)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("raw", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_true_spellings(raw):
    assert parse_parameter("use_mmap", raw) is True


@pytest.mark.parametrize("raw", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_false_spellings(raw):
    assert parse_parameter("use_mmap", raw) is False


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("num_ctx", "1.5", "invalid int value '1.5' for parameter 'num_ctx'"),
        ("num_ctx", "1e3", "invalid int value '1e3' for parameter 'num_ctx'"),
        ("num_ctx", " 1", "invalid int value ' 1' for parameter 'num_ctx'"),
        ("num_ctx", "", "invalid int value '' for parameter 'num_ctx'"),
        ("num_ctx", "0x10", "invalid int value '0x10' for parameter 'num_ctx'"),
        ("num_ctx", "1_000", "invalid int value '1_000' for parameter 'num_ctx'"),
        ("num_ctx", "\uff11", "invalid int value '\uff11' for parameter 'num_ctx'"),  # a full-width 1
        ("seed", "9223372036854775808", "invalid int value '9223372036854775808' for parameter 'seed'"),
        ("temperature", "warm", "invalid float value 'warm' for parameter 'temperature'"),
        ("temperature", "nan", "invalid float value 'nan' for parameter 'temperature'"),
        ("temperature", "inf", "invalid float value 'inf' for parameter 'temperature'"),
        ("temperature", "1e39", "invalid float value '1e39' for parameter 'temperature'"),
        ("temperature", "1.0.0", "invalid float value '1.0.0' for parameter 'temperature'"),
        ("temperature", "", "invalid float value '' for parameter 'temperature'"),
        ("use_mmap", "yes", "invalid bool value 'yes' for parameter 'use_mmap'"),
        ("use_mmap", "tRuE", "invalid bool value 'tRuE' for parameter 'use_mmap'"),
        ("use_mmap", "true ", "invalid bool value 'true ' for parameter 'use_mmap'"),
    ],
)
def test_parse_parameter_rejects(name, raw, message):
    with pytest.raises(InvalidParameter) as info:
        parse_parameter(name, raw)
    assert str(info.value) == message
    assert isinstance(info.value, BadRequest)


@pytest.mark.parametrize("name", ["numa", "Temperature", "mirostat", "", "num ctx"])
def test_parse_parameter_unknown_name(name):
    with pytest.raises(InvalidParameter) as info:
        parse_parameter(name, "1")
    assert str(info.value) == f"unknown parameter '{name}'"


def test_parse_parameter_huge_inputs_fail_cleanly():
    with pytest.raises(InvalidParameter) as info:
        parse_parameter("num_ctx", "1" * 100_000)  # int() would refuse more than 4300 digits
    assert len(str(info.value)) < 120
    with pytest.raises(InvalidParameter):
        parse_parameter("temperature", "1" * 100_000 + "x")


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("num_ctx", 4096, "4096"),
        ("num_ctx", 4096.0, "4096"),  # a params blob read back as float64
        ("seed", 1234567, "1234567"),
        ("seed", 1234567.0, "1234567"),
        ("temperature", 0.7, "0.7"),
        ("temperature", 1e-05, "1e-05"),
        ("temperature", 2.0, "2"),
        ("use_mmap", False, "false"),
        ("stop", "</s>", "</s>"),
    ],
)
def test_parameter_text(name, value, text):
    assert parameter_text(name, value) == text
    assert parse_parameter(name, text) == value


# ---------------------------------------------------------------------------------- validate_options


def test_validate_options_coerces_like_ollama():
    valid = validate_options(
        {
            "num_ctx": 2048.0,
            "num_predict": 2.7,  # Go truncates a float given for an int
            "num_keep": -2.7,
            "temperature": 1,
            "top_p": 0.123456789,
            "use_mmap": False,
            "main_gpu": 1,
            "stop": ["a", "b"],
        }
    )
    assert valid == {
        "num_ctx": 2048,
        "num_predict": 2,
        "num_keep": -2,
        "temperature": 1.0,
        "top_p": 0.12345679,
        "use_mmap": False,
        "main_gpu": 1,
        "stop": ["a", "b"],
    }
    assert type(valid["num_ctx"]) is int
    assert type(valid["temperature"]) is float
    assert valid.ignored == ()


def test_validate_options_drops_and_reports_unknown_keys(caplog):
    with caplog.at_level(logging.WARNING, logger="appliance.api.options"):
        valid = validate_options({"num_ctx": 1024, "mirostat": 1, "bogus": "x"})
    assert valid == {"num_ctx": 1024}
    assert isinstance(valid, ValidOptions) and isinstance(valid, dict)
    assert valid.ignored == ("mirostat", "bogus")
    assert "bogus" in caplog.text


def test_validate_options_skips_null_values():
    assert validate_options({"seed": None, "stop": None}) == {}


def test_validate_options_empty():
    valid = validate_options({})
    assert valid == {} and valid.ignored == ()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_ctx": "2048"}, 'option "num_ctx" must be of type integer'),
        ({"num_ctx": True}, 'option "num_ctx" must be of type integer'),
        ({"num_ctx": float("nan")}, 'option "num_ctx" must be of type integer'),
        ({"num_ctx": float("inf")}, 'option "num_ctx" must be of type integer'),
        ({"num_ctx": 1e300}, 'option "num_ctx" must be of type integer'),
        ({"seed": 2**70}, 'option "seed" must be of type integer'),
        ({"main_gpu": [0]}, 'option "main_gpu" must be of type integer'),
        ({"temperature": "0.5"}, 'option "temperature" must be of type float32'),
        ({"temperature": False}, 'option "temperature" must be of type float32'),
        ({"temperature": float("nan")}, 'option "temperature" must be of type float32'),
        ({"temperature": 1e39}, 'option "temperature" must be of type float32'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"use_mmap": "true"}, 'option "use_mmap" must be of type boolean'),
        ({"stop": "\n"}, 'option "stop" must be of type array'),
        ({"stop": ["ok", 3]}, 'option "stop" must be of an array of strings'),
    ],
)
def test_validate_options_type_errors(options, message):
    with pytest.raises(InvalidParameter) as info:
        validate_options(options)
    assert str(info.value) == message


# --------------------------------------------------------------------------------- format_parameters


def test_format_parameters_matches_ollama_show():
    text = format_parameters(
        {
            "temperature": 0.7,
            "stop": ["<|im_start|>", "<|im_end|>"],
            "num_ctx": 8192,
            "use_mmap": True,
        }
    )
    assert text == (
        "num_ctx                        8192\n"
        'stop                           "<|im_start|>"\n'
        'stop                           "<|im_end|>"\n'
        "temperature                    0.7\n"
        "use_mmap                       true"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.7, "0.7"),
        (1e-05, "1e-05"),
        (0.0001, "0.0001"),
        (100000, "100000"),
        (1234567, "1.234567e+06"),  # Ollama prints every number as a float64 with %#v
        (1000000.0, "1e+06"),
        (-1, "-1"),
        (0, "0"),
        (False, "false"),
        ('tab\tquote"back\\slash', '"tab\\tquote\\"back\\\\slash"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("\x00\x7f", '"\\x00\\x7f"'),
        ("\u00a0é👋", '"\\u00a0é👋"'),
        ("", '""'),
    ],
)
def test_format_parameters_values(value, shown):
    assert format_parameters({"seed": value}) == "seed" + " " * 27 + shown


def test_format_parameters_long_name_is_not_cut():
    name = "x" * 35
    assert format_parameters({name: 1}) == f"{name} 1"


def test_format_parameters_empty():
    assert format_parameters({}) == ""
