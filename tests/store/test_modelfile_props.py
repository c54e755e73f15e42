"""Properties of the Modelfile reader and writer (appliance.store.modelfile).

Any text or bytes either parse or raise InvalidModelfile; whatever ``render_modelfile`` writes parses
back to the same create fields; and parse, render, parse is stable.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from appliance.api.options import parse_parameter
from appliance.errors import InvalidModelfile, InvalidParameter
from appliance.store.modelfile import (
    INSTRUCTIONS,
    MESSAGE_ROLES,
    decode_modelfile,
    parse_modelfile,
    quote_value,
    render_modelfile,
)

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The pieces the grammar gives a meaning to, so that generated text hits quoting and line-end rules.
PIECES = ['"', '"""', "\n", "\r\n", "\r", " ", "\t", "#", "json:", 'json:"', "\\", "\\n", "\u2028", "\x85",
          "\xa0", "\ufeff", "\x00", "\v"]
KEYWORDS = [*INSTRUCTIONS, "FROM", "Parameter", "MESSAGE user", "MESSAGE", "PARAMETER stop", "PARAMETER num_ctx",
            "PARAMETER temperature", "PARAMETER mirostat", "REQUIRES"]

tricky = st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=12).map("".join)
values = tricky | st.text(max_size=40)
lines = st.builds(lambda word, sep, value: f"{word}{sep}{value}", st.sampled_from(KEYWORDS),
                  st.sampled_from([" ", "  ", "\t", ""]), values)
modelfiles = st.lists(lines | values, max_size=8).map("\n".join) | st.text(max_size=200)


def parse_or_refuse(text: str) -> None:
    """Parse ``text``; InvalidModelfile is the one accepted failure, with a line inside the text."""
    try:
        parsed = parse_modelfile(text)
    except InvalidModelfile as exc:
        assert exc.line is None or 1 <= exc.line <= text.count("\n") + text.count("\r") + 1
        return
    assert parsed.values("from")
    parsed.to_create_fields()


@SETTINGS
@given(modelfiles)
@example('FROM m\nSYSTEM """a"""b"""\n')
@example("FROM m\nPARAMETER stop json:\"\\ud800\"")
@example("FROM m\nMESSAGE user json:\"a\\\"\\\"\\\"\\n\"")
def test_any_text_parses_or_raises_invalid_modelfile(text: str) -> None:
    parse_or_refuse(text)


@SETTINGS
@given(st.binary(max_size=200) | modelfiles.map(lambda t: t.encode("utf-16", "surrogatepass")))
def test_any_bytes_decode_and_parse_or_raise_invalid_modelfile(data: bytes) -> None:
    parse_or_refuse(decode_modelfile(data))


# -- writing reads back --------------------------------------------------------------------------

nonempty = values.filter(bool)
PARAMETER_TEXT = {
    "num_ctx": st.integers(1, 1 << 20).map(str),
    "seed": st.integers(-(1 << 63), (1 << 63) - 1).map(str),
    "num_predict": st.integers(-2, 1 << 30).map(str),
    "temperature": st.floats(0, 1e6, allow_nan=False).map(repr),
    "top_p": st.floats(-1e-30, 1.0).map(repr),
    "use_mmap": st.sampled_from(["true", "false", "1", "F"]),
    "stop": values,
}


@st.composite
def parameters(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(sorted(PARAMETER_TEXT)), unique=True, max_size=4)):
        texts = draw(st.lists(PARAMETER_TEXT[name], min_size=1, max_size=3 if name == "stop" else 1))
        try:
            typed = [parse_parameter(name, text) for text in texts]
        except InvalidParameter:
            assume(False)
        out[name] = typed if name == "stop" else typed[0]
    return out


messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(MESSAGE_ROLES), "content": values}), max_size=3)


@SETTINGS
@given(from_=nonempty, adapters=st.lists(nonempty, max_size=2), projectors=st.lists(nonempty, max_size=1),
       template=st.none() | values, system=st.none() | values, params=parameters(),
       license=st.lists(values, max_size=2), msgs=messages, header=st.sampled_from([None, "m:latest"]))
def test_what_is_written_reads_back(from_: str, adapters: list[str], projectors: list[str], template: str | None,
                                    system: str | None, params: dict[str, Any], license: list[str],
                                    msgs: list[dict[str, str]], header: str | None) -> None:
    text = render_modelfile(from_=from_, adapters=adapters, projectors=projectors, template=template,
                            system=system, parameters=params, license=license, messages=msgs, header_name=header)
    parsed = parse_modelfile(text)
    assert parsed.values("from") == [from_, *projectors]
    expected: dict[str, Any] = {"from": from_}
    if adapters:
        expected["adapters"] = adapters
    if template is not None:
        expected["template"] = template
    if system:  # an empty system prompt is not written, as in Ollama
        expected["system"] = system
    if params:
        expected["parameters"] = params
    if license:
        expected["license"] = license
    if msgs:
        expected["messages"] = msgs
    assert parsed.to_create_fields() == expected
    again = parse_modelfile(render_modelfile(from_=from_, adapters=adapters, projectors=projectors,
                                             template=template, system=system, parameters=params,
                                             license=license, messages=msgs))
    assert again.to_create_fields() == expected


@SETTINGS
@given(values)
@example('a"""\n')
@example('json:"a\\"\\"\\"\\n"')
def test_a_quoted_value_reads_back_in_every_instruction(value: str) -> None:
    written = quote_value(value)
    text = (f"FROM x\nTEMPLATE {written}\nSYSTEM {written}\nLICENSE {written}\nMESSAGE user {written}\n"
            f"PARAMETER stop {written}\n")
    try:
        parse_parameter("stop", value)
    except InvalidParameter:
        text = text.replace(f"PARAMETER stop {written}\n", "")
    parsed = parse_modelfile(text)
    assert [c.args for c in parsed.commands[1:]] == [value] * (len(parsed.commands) - 1)
