"""Properties of the Go template parser and renderer (appliance.prompt.gotemplate*).

Whatever the template text and the data, parsing and rendering end in a result or TemplateError (a
BadRequest), within the limits; and values that can travel through a template and back do: a string
through ``printf "%q"`` and the lexer, any JSON value through ``json``, any value through printing.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from appliance.prompt.gotemplate import Limits, Template, TemplateError
from appliance.prompt.gotemplate_funcs import JSONList, JSONMap, go_quote
from tests.prompt.test_gotemplate import CountingList

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = Limits(max_output_chars=200_000, max_work=2_000_000, max_steps=50_000, max_depth=40)

# -- data ---------------------------------------------------------------------------------------

KEYS = ["A", "B", "L", "M", "S", "N", "Messages", "Tools", "Role", "Content", "Response", "a", "b"]
no_surrogates = st.characters(exclude_categories=["Cs"])
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(no_surrogates, max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(no_surrogates, max_size=6), inner, max_size=4),
    max_leaves=12,
)
template_data = st.recursive(
    scalars | st.floats(),
    lambda inner: (st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(JSONList)
                   | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
                   | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3).map(JSONMap)),
    max_leaves=12,
)
top_data = st.dictionaries(st.sampled_from(KEYS), template_data, max_size=6)

# -- template text: balanced blocks of actions over the grammar, and anything at all ---------------

FIELDS = [".", "$", ".A", ".B", ".L", ".M", ".S", ".N", ".A.B", ".Messages", "$.Tools", "$.A.Role", ".Response"]
LITERALS = ['"s"', '""', "`r`", "'c'", "1", "0", "-1", "1.5", "1e3", "0x1F", "true", "false", "nil",
            '"%d %s %v %q %x %5.2f %-3s %!"', '"é\\n"', "2", "3"]
FUNCS = ["and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len", "index", "slice", "print", "printf",
         "println", "html", "js", "urlquery", "json", "toTypeScriptType", "currentDate", "call"]
VARIABLES = ["$x", "$i", "$e"]

operands = st.recursive(
    st.sampled_from(FIELDS + LITERALS + VARIABLES),
    lambda inner: (st.builds(lambda f, args: f"({' '.join([f, *args])})", st.sampled_from(FUNCS),
                             st.lists(inner, max_size=3))
                   | st.builds(lambda a: f"({a}).A", inner)),
    max_leaves=6,
)
commands = (st.builds(lambda f, args: " ".join([f, *args]), st.sampled_from(FUNCS), st.lists(operands, max_size=3))
            | operands)
pipelines = st.builds(lambda decl, cmds: decl + " | ".join(cmds),
                      st.sampled_from(["", "", "$x := ", "$x = ", "$i, $e := ", "$e := "]),
                      st.lists(commands, min_size=1, max_size=3))
lefts, rights = st.sampled_from(["{{", "{{- ", "{{ "]), st.sampled_from(["}}", " -}}", " }}"])
actions = st.builds(lambda left, body, right: left + body + right, lefts,
                    pipelines | st.sampled_from(["break", "continue", "/* c */", 'template "t" .', 'template "t"']),
                    rights)
texts = st.sampled_from(["x", " ", "\n", " \n\t", "{", "}", "-", "é"])


def blocks(body: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def block(keyword: str, pipe: str, inside: str, orelse: str | None) -> str:
        tail = "" if orelse is None else "{{ else }}" + orelse
        return f"{{{{ {keyword} {pipe} }}}}{inside}{tail}{{{{ end }}}}"

    return st.builds(block, st.sampled_from(["if", "with", "range"]), pipelines, body, st.none() | body)


bodies = st.recursive(st.lists(actions | texts, max_size=4).map("".join),
                      lambda inner: st.lists(inner | blocks(inner), max_size=3).map("".join), max_leaves=8)
templates = (bodies
             | st.builds(lambda d, b: '{{ define "t" }}' + d + "{{ end }}" + b, bodies, bodies)
             | st.lists(st.sampled_from(["{{", "}}", "{{-", "-}}", " ", "if", "end", "else", "range", "with",
                                         "(", ")", "|", ":=", "=", ",", '"', "`", "'", "/*", "*/", "$", ".",
                                         "A", "1", "define", "block", '"t"', "\n"]), max_size=20).map("".join)
             | st.text(max_size=30))


def run(text: str, data: Any) -> None:
    """Parse, render and inspect ``text``: each step returns normally or raises TemplateError."""
    try:
        tmpl = Template.parse(text)
    except TemplateError:
        return
    for step in (lambda: tmpl.render(data, limits=LIMITS), lambda: tmpl.vars(),
                 lambda: tmpl.truncate_after_response().render(data, limits=LIMITS)):
        try:
            out = step()
        except TemplateError:
            continue
        if isinstance(out, str):
            assert len(out) <= LIMITS.max_output_chars


@SETTINGS
@given(templates, top_data)
@example('{{ printf "%v" .M }}', {"M": {"a": float("nan")}})
@example("{{ slice .S 0 1 }}", {"S": "é"})
@example('{{ index .M "a" 0 }}', {"M": {"a": "x"}})
@example("{{ range $i, $e := .N }}{{ end }}", {"N": -3})
@example('{{ printf "%c %U" .N .N }}', {"N": -(2**63)})
@example('{{ printf "%x %o %b" .F .F .F }}', {"F": 1.5})
@example('{{ printf "%.*d" .N 1 }}', {"N": 10**9})
def test_any_template_parses_and_renders_or_raises_template_error(text: str, data: dict[str, Any]) -> None:
    run(text, data)


# -- round trips ----------------------------------------------------------------------------------


@SETTINGS
@given(st.text(max_size=40).filter(lambda t: "{{" not in t), top_data)
def test_text_without_actions_renders_as_itself(text: str, data: dict[str, Any]) -> None:
    assert Template.parse(text).render(data) == text


@SETTINGS
@given(st.text(no_surrogates, max_size=30))
@example("\x7f\x85\u2028\U0001f600")
def test_a_quoted_string_reads_back_through_the_lexer(value: str) -> None:
    quoted = Template.parse('{{ printf "%q" .S }}').render({"S": value})
    assert quoted == go_quote(value)
    assert Template.parse("{{ " + quoted + " }}").render({}) == value


def same_json(read_back: Any, value: Any) -> bool:
    """Equal, a float matching a number that reads back to it (Go writes 3e16 as 30000000000000000)."""
    if isinstance(value, float):
        return isinstance(read_back, int | float) and float(read_back) == value
    if isinstance(value, list):
        return isinstance(read_back, list) and len(read_back) == len(value) and all(
            same_json(r, v) for r, v in zip(read_back, value, strict=True))
    if isinstance(value, dict):
        return isinstance(read_back, dict) and read_back.keys() == value.keys() and all(
            same_json(read_back[k], v) for k, v in value.items())
    return bool(read_back == value) and type(read_back) is type(value)


@SETTINGS
@given(json_values)
@example({"a": [1.5e300, -0.0, 1e-7, 2**63 - 1, "<&>\u2028", 2.943848841758145e16]})
def test_json_reads_back_as_the_same_value(value: Any) -> None:
    out = Template.parse("{{ json .V }}").render({"V": value})
    assert same_json(json.loads(out), value), out


@SETTINGS
@given(template_data.filter(lambda v: v is not None))
def test_printing_a_value_is_print_and_printf_v(value: Any) -> None:
    data = {"V": value}
    printed = Template.parse("{{ .V }}").render(data)
    assert printed == Template.parse("{{ print .V }}").render(data)
    assert printed == Template.parse('{{ printf "%v" .V }}').render(data)


@SETTINGS
@given(template_data)
def test_truth_is_the_same_for_if_and_not(value: Any) -> None:
    data = {"V": value}
    branch = Template.parse("{{ if .V }}true{{ else }}false{{ end }}").render(data)
    assert Template.parse("{{ not .V }}").render(data) == ("false" if branch == "true" else "true")
    assert Template.parse("{{ if .V }}true{{ else }}false{{ end }}").render(data) == Template.parse(
        "{{ with .V }}true{{ else }}false{{ end }}").render(data)


@SETTINGS
@given(st.lists(template_data, max_size=5))
def test_range_visits_every_element_with_its_index(items: list[Any]) -> None:
    data = {"L": items}
    out = Template.parse("{{ range $i, $e := .L }}{{ $i }};{{ end }}{{ len .L }}").render(data)
    assert out == "".join(f"{i};" for i in range(len(items))) + str(len(items))
    each = Template.parse("{{ range .L }}[{{ print . }}]{{ end }}").render(data)
    assert each == "".join("[" + Template.parse("{{ print .V }}").render({"V": item}) + "]" for item in items)


@SETTINGS
@given(st.lists(template_data, max_size=20), st.integers(0, 25))
def test_range_makes_only_the_items_it_visits(items: list[Any], stop: int) -> None:
    counted = CountingList(items)
    text = "{{ range $i, $e := .L }}{{ if eq $i $.Stop }}{{ break }}{{ end }}{{ end }}"
    Template.parse(text).render({"L": counted, "Stop": stop})
    assert counted.taken == min(len(items), stop + 1)
