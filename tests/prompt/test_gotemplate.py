"""Go text/template semantics of appliance.prompt.gotemplate, its bounds, and chat templates shaped like
Ollama's (tests/prompt/data; the suite needs no copy of Ollama's sources).

Expected outputs in GO_CASES were produced by Go's own text/template (Option("missingkey=zero"), data
decoded from JSON into map[string]any, as Ollama passes it); the few places where this renderer decides
differently on purpose have their own tests below.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import BadRequest
from appliance.prompt.gotemplate import Limits, Template, TemplateError
from appliance.prompt.gotemplate_funcs import GoStruct, JSONList, JSONMap, go_json, to_typescript_type


def render(text: str, data: Any = None, **kwargs: Any) -> str:
    return Template.parse(text).render({} if data is None else data, **kwargs)


# (template, data, output of Go's text/template)
GO_CASES: list[tuple[str, dict[str, Any], str]] = [
    # whitespace trimming
    ("a  {{- 1 -}}  b", {}, "a1b"),
    ("a \n\t {{- 1}} \n b", {}, "a1 \n b"),
    ("a {{1 -}} \n\n b", {}, "a 1b"),
    ("a {{-1}} b", {}, "a -1 b"),
    ("{{- /* c */ -}}\n  x  {{/* d */}} y", {}, "x   y"),
    ("x\n{{- if true }}\n  y\n{{- end }}\nz", {}, "x\n  y\nz"),
    ("{{ if true -}}\n\n{{- end }}|", {}, "|"),
    ("{{- range .L }}\n  [{{ . }}]\n{{- end }}\n", {"L": ["a", "b"]}, "\n  [a]\n  [b]\n"),
    ('a {{- "x" -}}\tb', {}, "axb"),
    ("{{ 3 -}}\r\n4", {}, "34"),
    ("a{{/* comment with }} inside */}}b{{- /* trimmed */ -}} c", {}, "abc"),
    # values and printing
    ("{{ . }}", {"A": 1, "B": [1, "x"]}, "map[A:1 B:[1 x]]"),
    (
        "{{ .A }}|{{ .B }}|{{ .C }}|{{ .D }}|{{ .E }}|{{ .F }}|{{ .Missing }}",
        {"A": "s", "B": True, "C": [], "D": {}, "E": None, "F": 2.5},
        "s|true|[]|map[]|<no value>|2.5|<no value>",
    ),
    ("{{ .A.B.C }}", {"A": {"B": {"C": "deep"}}}, "deep"),
    ("{{ $ }}{{ $.A }}", {"A": "x"}, "map[A:x]x"),
    (
        "{{ 1 }} {{ 1.0 }} {{ 1e3 }} {{ 0x1F }} {{ 0o17 }} {{ 017 }} {{ 0b101 }} {{ 1_000 }} {{ -5 }}"
        " {{ +5 }} {{ 'a' }} {{ 2.5e-3 }} {{ .5 }}",
        {},
        "1 1 1000 31 15 15 5 1000 -5 5 97 0.0025 0.5",
    ),
    ('{{ "a\\tb\\n\\"c\\\\ \\x41\\u00e9\\101" }}|{{ `raw\\n` }}', {}, 'a\tb\n"c\\ AéA|raw\\n'),
    ("{{ true }} {{ false }} {{ print nil }}", {}, "true false <nil>"),
    (
        "{{ .L }}|{{ .M }}|{{ print .M }}",
        {"L": ["a", 1, None, True, 2.5, {"b": 1, "a": [1]}], "M": {"z": 1, "a": "x"}},
        "[a 1 <nil> true 2.5 map[a:[1] b:1]]|map[a:x z:1]|map[a:x z:1]",
    ),
    # variables and scope
    ("{{ $x := 1 }}{{ $x }}{{ $x = 2 }}{{ $x }}", {}, "12"),
    ('{{ $x := "a" }}{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}', {"L": ["b", "c"]}, "c"),
    ("{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}", {}, "21"),
    ('{{ $x := 1 }}{{ define "v" }}{{ $ }}{{ end }}{{ template "v" 2 }}', {}, "2"),
    # range
    ("{{ range $i, $e := .L }}{{ $i }}={{ $e }};{{ end }}", {"L": ["a", "b"]}, "0=a;1=b;"),
    ("{{ range $e := .L }}{{ $e }};{{ end }}", {"L": ["a", "b"]}, "a;b;"),
    (
        "{{ range $k, $v := .M }}{{ $k }}={{ $v }};{{ end }}",
        {"M": {"b": "2", "a": "1", "c": "3"}},
        "a=1;b=2;c=3;",
    ),
    ("{{ range .M }}{{ . }};{{ end }}", {"M": {"b": "2", "a": "1"}}, "1;2;"),
    (
        "{{ range .L }}x{{ else }}empty{{ end }}|{{ range .N }}x{{ else }}nil{{ end }}"
        "|{{ range .M }}x{{ else }}m{{ end }}",
        {"L": [], "N": None, "M": {}},
        "empty|nil|m",
    ),
    (
        "{{ range $i, $_ := .L }}{{ if eq $i 1 }}{{ continue }}{{ end }}{{ if eq $i 3 }}{{ break }}{{ end }}"
        "{{ . }}{{ end }}",
        {"L": ["a", "b", "c", "d", "e"]},
        "ac",
    ),
    ("{{ range .L }}{{ range . }}{{ . }}{{ break }}{{ end }};{{ end }}", {"L": [["a", "b"], ["c"]]}, "a;c;"),
    ("{{ range .L }}{{ $.T }}{{ . }}{{ end }}", {"L": ["a", "b"], "T": "-"}, "-a-b"),
    # if / with
    ("{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}", {"A": "", "B": 0}, "c"),
    ("{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}", {"A": "", "B": [1]}, "b"),
    (
        "{{ with .A }}[{{ . }}]{{ else }}none{{ end }}|{{ with .B }}[{{ . }}]{{ else }}none{{ end }}",
        {"A": "x", "B": ""},
        "[x]|none",
    ),
    ("{{ with $x := .A }}{{ $x }}{{ . }}{{ end }}", {"A": "v"}, "vv"),
    ("{{ if $x := .A }}{{ $x }}{{ else }}no{{ $x }}{{ end }}", {"A": ""}, "no"),
    # logic and comparison
    (
        '{{ if and .A .B }}y{{ else }}n{{ end }}{{ and .A .B }}|{{ or .C .A }}|{{ and 1 0 2 }}|{{ or 0 "" }}'
        '|{{ or 0 "x" 1 }}',
        {"A": "a", "B": "b", "C": ""},
        "yb|a|0||x",
    ),
    (
        "{{ not .A }} {{ not .B }} {{ not 0 }} {{ not .L }} {{ not .M }}",
        {"A": "", "B": "x", "L": [], "M": {"a": 1}},
        "true false true true false",
    ),
    (
        '{{ eq .A "x" }} {{ eq .A "y" "x" }} {{ ne .A "x" }} {{ eq 1 1 }} {{ eq .Missing "x" }}'
        " {{ eq true true }}",
        {"A": "x"},
        "true true false true false true",
    ),
    (
        '{{ lt 1 2 }} {{ le 2 2 }} {{ gt 3 2 }} {{ ge 1 2 }} {{ lt "a" "b" }} {{ gt 1.5 1.2 }}',
        {},
        "true true true false true true",
    ),
    ("{{ if eq (len .L) 2 }}two{{ end }}", {"L": [1, 2]}, "two"),
    # functions
    (
        '{{ len .S }} {{ len .L }} {{ len .M }} {{ len "héllo" }}',
        {"S": "abc", "L": [1, 2], "M": {"a": 1}},
        "3 2 1 6",
    ),
    (
        '{{ index .L 1 }} {{ index .M "a" }} {{ index .N 0 1 }} {{ index .M "zz" }} {{ index "abc" 1 }}',
        {"L": ["x", "y"], "M": {"a": "A"}, "N": [["p", "q"]]},
        "y A q <no value> 98",
    ),
    (
        "{{ slice .L 1 }} {{ slice .L 1 2 }} {{ slice .L }} {{ slice .S 1 3 }} {{ len (slice .L 2) }}",
        {"L": ["a", "b", "c"], "S": "hello"},
        "[b c] [b] [a b c] el 1",
    ),
    ('{{ print "a" "b" 1 2 true "c" }}|{{ println "x" 1 }}|{{ print }}', {}, "ab1 2 truec|x 1\n|"),
    ('{{ printf "%s-%d-%v-%q-%%-%t" "s" 42 .L "q" true }}', {"L": ["a", "b"]}, 's-42-[a b]-"q"-%-true'),
    (
        '{{ printf "%5s|%-5s|%05d|%.2f|%x|%X|%o|%c|%U|%e|%g" "ab" "ab" 42 3.14159 255 255 8 65 65 1234.5'
        " 0.000012 }}",
        {},
        "   ab|ab   |00042|3.14|ff|FF|10|A|U+0041|1.234500e+03|1.2e-05",
    ),
    (
        '{{ printf "%d %s" 1 }}|{{ printf "%d" 1 2 }}|{{ printf "%z" 1 }}|{{ printf "%s" 1 }}'
        '|{{ printf "%d" "x" }}|{{ printf "%" }}',
        {},
        "1 %!s(MISSING)|1%!(EXTRA int=2)|%!z(int=1)|%!s(int=1)|%!d(string=x)|%!(NOVERB)",
    ),
    ('{{ printf "%v %v %v" 1e6 123456.0 0.0001 }}', {}, "1e+06 123456 0.0001"),
    (
        '{{ printf "%#v|%#v|%+v|%#08x|%08.3f|%-8q|%#q|% x|%.2q|%+.1e|%5t|%U|%#U" .S .L 1.5 255 -3.14159'
        ' "a" "b`" "hi" "hello" 12345.678 true 128512 65 }}',
        {"S": 'x"y', "L": ["a", 1, None]},
        '"x\\"y"|[]interface {}{"a", 1, interface {}(nil)}|1.5|0x000000ff|-003.142|"a"     |"b`"|68 69'
        "|\"he\"|+1.2e+04| true|U+1F600|U+0041 'A'",
    ),
    (
        '{{ html "<a href=\'x\'>&\\"" }}|{{ js "it\'s <b> \\"q\\" = \\\\ \\n" }}|{{ urlquery "a b&c=d/é" }}',
        {},
        '&lt;a href=&#39;x&#39;&gt;&amp;&#34;|it\\\'s \\u003Cb\\u003E \\"q\\" \\u003D \\\\ \\u000A'
        "|a+b%26c%3Dd%2F%C3%A9",
    ),
    (
        "{{ json .L }}|{{ json .S }}|{{ json .N }}|{{ json 1.5 }}|{{ json 1e21 }}|{{ json 0.0000001 }}"
        "|{{ json true }}",
        {"L": [1, "<b>&", None], "S": 'line\nq"\\\t\u2028\x01', "N": None},
        '[1,"\\u003cb\\u003e\\u0026",null]|"line\\nq\\"\\\\\\t\\u2028\\u0001"|null|1.5|1e+21|1e-7|true',
    ),
    # pipelines and sub-expressions
    (
        '{{ .A | printf "%s!" }}|{{ "x" | printf "%s%s" "y" }}|{{ .A | len }}|{{ 3 | printf "%d-%d" 1 }}',
        {"A": "abc"},
        "abc!|yx|3|1-3",
    ),
    (
        '{{ (index .L 0).Name }}|{{ (printf "%s" "x") }}|{{ len (slice .L 0 1) }}',
        {"L": [{"Name": "n"}]},
        "n|x|1",
    ),
    # define / template / block
    (
        '{{ define "t" }}[{{ . }}]{{ end }}{{ template "t" .A }}{{ template "t" "lit" }}{{ template "t" }}',
        {"A": "a"},
        "[a][lit][<no value>]",
    ),
    ('{{ block "b" .A }}<{{ . }}>{{ end }}|{{ template "b" "z" }}', {"A": "a"}, "<a>|<z>"),
    (
        '{{ define "r" }}{{ if . }}{{ len . }}{{ template "r" (slice . 1) }}{{ end }}{{ end }}'
        '{{ template "r" .L }}',
        {"L": [1, 2, 3]},
        "321",
    ),
]


@pytest.mark.parametrize(("text", "data", "expected"), GO_CASES)
def test_matches_go_text_template(text: str, data: dict[str, Any], expected: str) -> None:
    assert render(text, data) == expected


# ------------------------------------------------------------------------------------ Go 1.22+ syntax


def test_else_with_chain() -> None:
    text = "{{ with .A }}a{{ else with .B }}b:{{ . }}{{ else }}none{{ end }}"
    assert render(text, {"B": "v"}) == "b:v"
    assert render(text, {}) == "none"


def test_range_over_integer() -> None:
    assert render("{{ range $i := 3 }}{{ $i }}{{ end }}") == "012"


# ------------------------------------------------------------------------------------ our decisions


def test_json_keeps_mapping_insertion_order() -> None:
    # Dicts stand for Go structs (declared field order) as well as maps: the data's builder orders keys.
    assert render("{{ json .A }}", {"A": {"z": 1, "a": "x"}}) == '{"z":1,"a":"x"}'


def test_field_of_missing_value_is_no_value() -> None:
    assert render("[{{ .A.B.C }}]", {}) == "[<no value>]"
    assert render("{{ if .A.B }}yes{{ else }}no{{ end }}", {"A": None}) == "no"


def test_len_of_nil_is_zero() -> None:
    assert render("{{ len .Tools }}", {"Tools": None}) == "0"


def test_int_and_float_compare_by_value() -> None:
    assert render("{{ eq .N 1 }} {{ lt .N 1.5 }}", {"N": 1.0}) == "true true"


def test_json_stringers_print_as_json() -> None:
    data = {"Args": JSONMap({"city": "Paris", "n": 2}), "Tools": JSONList([JSONMap({"a": [1, 2]})])}
    assert render("{{ .Args }}|{{ .Tools }}|{{ range .Tools }}{{ . }}{{ end }}", data) == (
        '{"city":"Paris","n":2}|[{"a":[1,2]}]|{"a":[1,2]}'
    )
    assert render('{{ printf "%s" .Args }}', data) == '{"city":"Paris","n":2}'
    assert render("{{ range $k, $v := .Args }}{{ $k }}={{ $v }};{{ end }}", data) == "city=Paris;n=2;"


def test_go_struct_fields_by_go_name_and_json_by_tag() -> None:
    fn = GoStruct({"Name": "f", "Description": ""}, {"name": "f", "description": ""})
    tool = GoStruct({"Type": "function", "Function": fn}, {"type": "function", "function": fn.json_value})
    data = {"Tools": JSONList([tool])}
    assert render("{{ range .Tools }}{{ .Function.Name }}{{ end }}", data) == "f"
    expected = '{"type":"function","function":{"name":"f","description":""}}'
    assert render("{{ range .Tools }}{{ . }}{{ end }}", data) == expected
    assert render("{{ json .Tools }}", data) == f"[{expected}]"


# ------------------------------------------------------------------------------------ functions


def test_current_and_yesterday_date() -> None:
    day = datetime.date(2024, 3, 1)
    assert render('{{ currentDate }} {{ yesterdayDate }} {{ currentDate "x" }}', today=day) == (
        "2024-03-01 2024-02-29 2024-03-01"
    )
    assert render("{{ currentDate }}") == datetime.date.today().isoformat()


def test_to_typescript_type() -> None:
    assert to_typescript_type({"type": "integer"}) == "number"
    assert to_typescript_type({"type": ["string", "null"]}) == "string | null"
    assert (
        to_typescript_type({"anyOf": [{"type": "array"}, {"type": "object"}]})
        == "any[] | Record<string, any>"
    )
    assert to_typescript_type({}) == "any"
    assert to_typescript_type("x") == "any"
    prop = GoStruct({"Type": "boolean"}, {"type": "boolean"})
    assert render("{{ toTypeScriptType .P }}", {"P": prop}) == "boolean"


def test_json_matches_go_marshal() -> None:
    assert go_json({"a": [1, 2.0, -0.5, 1e-7, 123456789.0], "b": None}) == (
        '{"a":[1,2,-0.5,1e-7,123456789],"b":null}'
    )
    assert go_json("\b\f<>&\u2029") == '"\\b\\f\\u003c\\u003e\\u0026\\u2029"'
    assert go_json(float("nan")) == ""  # json.Marshal fails; Ollama's helper then prints nothing


def test_printf_float_and_padding_forms() -> None:
    assert render('{{ printf "%v|%6.2f|%-6.1f|%+d|%x" 1234567.0 3.14159 2.25 5 "hi" }}') == (
        "1.234567e+06|  3.14|2.2   |+5|6869"
    )
    assert render('{{ printf "%q %v" 10 .N }}', {"N": None}) == "'\\n' <nil>"


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ .Prompt ", "1:12: unclosed action"),
        ("{{ if .A }}x", "unexpected EOF"),
        ("{{ end }}", "1:4: unexpected {{end}}"),
        ("{{ else }}", "unexpected {{else}}"),
        ("{{ nosuch 1 }}", 'function "nosuch" not defined'),
        ("{{ $x }}", 'undefined variable "$x"'),
        ("{{ break }}", "{{break}} outside {{range}}"),
        ("{{ range .L }}{{ else }}{{ continue }}{{ end }}", "{{continue}} outside {{range}}"),
        ('{{ "abc }}', "unterminated quoted string"),
        ("{{ `abc }}", "unterminated raw quoted string"),
        ("{{ ( .A }}", "unclosed left paren"),
        ("{{ .A ) }}", "unexpected right paren"),
        ("{{ }}", "missing value for command"),
        ("{{ if }}{{ end }}", "missing value for if"),
        ("{{/* unclosed }}", "unclosed comment"),
        ("{{/* x */ .A }}", "comment ends before closing delimiter"),
        ('{{ .A | "x" }}', "non executable command in pipeline stage 2"),
        ('{{ define "a" }}x{{ end }}{{ define "a" }}y{{ end }}', 'multiple definition of template "a"'),
        ("{{ 1a }}", "bad number syntax"),
        ("{{ .A:B }}", "expected :="),
        ("{{ $x, $y := .A }}", "too many declarations in command"),
        ("{{ if .A }}{{ else }}{{ else }}{{ end }}", "expected end; found {{else}}"),
        ("{{ template .A }}", "in template clause"),
        ("{{ 'ab' }}", "malformed character constant"),
        ('{{ "x".A }}', "unexpected . after term"),
        ("{{ range $a, $b, $c := .L }}{{ end }}", "too many declarations in range"),
        ("{{ with $x := 1 }}{{ end }}{{ $x }}", 'undefined variable "$x"'),
        ("line1\n  {{ if }}", "2:9: missing value for if"),
        ("{{ 1i }}", "complex numbers"),
        ("{{ if true }}" * 70 + "{{ end }}" * 70, "nesting deeper than 64"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        Template.parse(text)
    assert message in str(info.value)
    assert str(info.value).startswith("template: ")


@pytest.mark.parametrize(
    ("text", "data", "message"),
    [
        ("{{ .A.B }}", {"A": "str"}, "can't evaluate field B in type string"),
        ("{{ len 3 }}", {}, "error calling len: len of type int"),
        ("{{ index .L 5 }}", {"L": [1]}, "error calling index: index out of range: 5"),
        ('{{ template "nope" }}', {}, 'template "nope" not defined'),
        ('{{ eq "a" 1 }}', {}, "incompatible types for comparison"),
        ("{{ range .S }}{{ end }}", {"S": "str"}, "range can't iterate over str"),
        ("{{ .A 1 }}", {"A": {"x": 1}}, "A is not a method but has arguments"),
        ("{{ slice .L 2 1 }}", {"L": [1, 2, 3]}, "invalid slice index: 2 > 1"),
        ("{{ lt true false }}", {}, "invalid type for comparison"),
        ("{{ printf 1 }}", {}, "expected string; got int"),
        ("{{ json }}", {}, "wrong number of args for json: want 1 got 0"),
        ("{{ $x := 1 }}{{ $y = 2 }}", {}, "undefined variable: $y"),
        ('{{ 1 | printf "%d" | "x" | len }}', {}, "non executable command"),
        ("{{ nil }}", {}, "nil is not a command"),
        ("{{ range $a, $b := 3 }}{{ end }}", {}, "can't use 3 to iterate over more than one variable"),
    ],
)
def test_render_errors(text: str, data: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(text, data)
    assert message in str(info.value)


def test_template_error_is_a_bad_request_with_position() -> None:
    with pytest.raises(TemplateError) as info:
        Template.parse("ok\n{{ end }}")
    err = info.value
    assert isinstance(err, BadRequest) and err.status == 400
    assert (err.line, err.col, err.reason) == (2, 4, "unexpected {{end}}")


# ------------------------------------------------------------------------------------ bounds


@pytest.mark.parametrize(
    ("text", "limits", "message"),
    [
        (
            "{{ range $.L }}{{ range $.L }}{{ range $.L }}{{ end }}{{ end }}{{ end }}",
            Limits(max_steps=10_000),
            "execution steps",
        ),
        (
            '{{ define "x" }}{{ template "x" . }}{{ end }}{{ template "x" . }}',
            Limits(),
            "maximum template depth",
        ),
        (
            '{{ $x := "aaaaaaaa" }}{{ range $.L }}{{ $x = printf "%s%s" $x $x }}{{ end }}',
            Limits(max_work=1_000_000),
            "work limit",
        ),
        (
            "{{ range $.L }}{{ range $.L }}xxxxxxxxxx{{ end }}{{ end }}",
            Limits(max_output_chars=5000),
            "output exceeds",
        ),
        ('{{ printf "%999999999d" 1 }}', Limits(), "width or precision"),
        ("{{ range 100000000000 }}{{ end }}", Limits(), "execution steps"),
    ],
)
def test_hostile_templates_are_stopped(text: str, limits: Limits, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(text, {"L": list(range(100))}, limits=limits)
    assert message in str(info.value)


def test_deep_parentheses_are_refused() -> None:
    with pytest.raises(TemplateError, match="nesting"):
        Template.parse("{{" + "(" * 80 + "1" + ")" * 80 + "}}")


class CountingList(list):  # type: ignore[type-arg]
    """A list that counts the elements iteration hands out."""

    taken = 0

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            self.taken += 1
            yield item


class CountingDict(dict):  # type: ignore[type-arg]
    """A dict that counts how often its keys are listed (sorting them lists them)."""

    listed = 0

    def __iter__(self) -> Iterator[Any]:
        self.listed += 1
        return super().__iter__()


def test_a_loop_cut_short_makes_only_the_items_it_visits() -> None:
    # Every {{ range }} used to build all its (index, element) pairs before the first step: a
    # {{ break }} in a loop over a long slice cost the whole slice, uncounted, each time (one request
    # could hold a worker for hours).
    items = CountingList(range(10_000))
    out = render("{{ range 1000 }}{{ range $.L }}{{ . }}{{ break }}{{ end }}{{ end }}", {"L": items})
    assert out == "0" * 1000 and items.taken == 1000


def test_map_keys_are_sorted_once_per_render() -> None:
    mapping = CountingDict({f"k{i}": i for i in range(100)})
    out = render("{{ range 50 }}{{ range $k, $v := $.M }}{{ $k }}{{ break }}{{ end }}{{ end }}", {"M": mapping})
    assert out == "k0" * 50 and mapping.listed == 1


@pytest.mark.timeout(60)  # the old code built a million pairs per inner loop: hours
def test_a_loop_over_an_integer_is_made_one_number_at_a_time() -> None:
    assert render("{{ range 20000 }}{{ range 1000000 }}{{ break }}{{ end }}{{ end }}") == ""


def test_strings_given_to_builtins_count_as_work() -> None:
    # len encodes, eq compares, index and slice copy their string: uncharged, a loop over a long
    # prompt ran for minutes within the step limit.
    for call in ("len $.S", 'eq $.S "x"', "index $.S 1", "slice $.S 1 2"):
        with pytest.raises(TemplateError, match="work limit"):
            render(f"{{{{ range 1000 }}}}{{{{ {call} }}}}{{{{ end }}}}", {"S": "x" * 100_000},
                   limits=Limits(max_work=1_000_000))


# ------------------------------------------------------------------------------------ Ollama helpers


def test_vars_like_ollama() -> None:
    text = '{{ range .Messages }}{{ if eq .Role "tool" }}{{ $.System }}{{ .ToolName }}{{ end }}{{ end }}'
    assert Template.parse(text).vars() == ["$", "messages", "role", "system", "toolname"]
    assert Template.parse("{{ .System }} {{ .Prompt }}").vars() == ["prompt", "system"]
    with pytest.raises(TemplateError, match="undefined template specified"):
        Template.parse('{{ define "x" }}{{ template "x" }}{{ end }}{{ template "x" . }}').vars()


def test_truncate_after_response() -> None:
    text = (
        "{{ if .System }}S:{{ .System }} {{ end }}{{ if .Prompt }}U:{{ .Prompt }} {{ end }}"
        "A:{{ .Response }}<end>{{ if .X }}x{{ end }}"
    )
    tmpl = Template.parse(text)
    data = {"System": "s", "Prompt": "p", "Response": "r", "X": True}
    assert tmpl.render(data) == "S:s U:p A:r<end>x"
    assert tmpl.truncate_after_response().render(data) == "S:s U:p A:r"
    assert tmpl.render(data) == "S:s U:p A:r<end>x"  # the original is untouched
    nested = Template.parse("{{ if .P }}[{{ .P }}|{{ .Response }}]{{ end }}tail")
    assert nested.truncate_after_response().render({"P": "p", "Response": "r"}) == "[p|r"


# ------------------------------------------------------------------------------------ chat templates

# Templates in the shapes of the ones Ollama's library ships (tests/prompt/data/*.gotmpl, written for
# these tests): ChatML with tools, header turns, [INST] turns, turns that fold the system prompt into the
# first user turn, thinking switches, tool signatures and the legacy .System/.Prompt/.Response form.
# Each expected output was worked out by hand from Go's rules (``{{-``/``-}}`` trim every blank next to
# them, ``$`` is the data, variables live to the ``end`` of their block, assignment reaches outwards)
# and checked against Go 1.19's text/template with Ollama's data types (structs whose String() is JSON).
TEMPLATES = Path(__file__).parent / "data"
TODAY = datetime.date(2025, 1, 2)


def data_template(name: str) -> Template:
    """A template file; the line end that closes the file is not part of the template."""
    return Template.parse((TEMPLATES / f"{name}.gotmpl").read_text().removesuffix("\n"))


def message(
    role: str, content: str = "", *, tool_calls: list[Any] | None = None, tool_name: str = "", thinking: str = ""
) -> dict:
    """A message as Ollama hands it to templates (its templateMessage struct)."""
    return {
        "Role": role,
        "Content": content,
        "Thinking": thinking,
        "Images": None,
        "ToolCalls": tool_calls,
        "ToolName": tool_name,
        "ToolCallID": "",
    }


def values(system: str, messages: list[dict], tools: Any = None, **think: bool) -> dict[str, Any]:
    return {
        "System": system,
        "Messages": messages,
        "Tools": tools,
        "Response": "",
        "Think": think.get("think", False),
        "ThinkLevel": "",
        "IsThinkSet": think.get("is_think_set", False),
    }


def weather_tool() -> GoStruct:
    prop_json = {"type": "string", "description": "City name"}
    params_json = {"type": "object", "required": ["city"], "properties": {"city": prop_json}}
    params = GoStruct(
        {
            "Type": "object",
            "Required": ["city"],
            "Properties": JSONMap(
                {"city": GoStruct({"Type": "string", "Description": "City name"}, prop_json)}
            ),
        },
        params_json,
    )
    fn_json = {"name": "get_weather", "description": "Get the current weather", "parameters": params_json}
    fn = GoStruct(
        {"Name": "get_weather", "Description": "Get the current weather", "Parameters": params}, fn_json
    )
    return GoStruct({"Type": "function", "Function": fn}, {"type": "function", "function": fn_json})


def tool_conversation() -> dict[str, Any]:
    call = {
        "ID": "call_1",
        "Function": {"Index": 0, "Name": "get_weather", "Arguments": JSONMap({"city": "Paris"})},
    }
    return values(
        "You are a helpful assistant.",
        [
            message("system", "You are a helpful assistant."),
            message("user", "What's the weather in Paris?"),
            message("assistant", tool_calls=[call]),
            message("tool", "22C and sunny", tool_name="get_weather"),
            message("assistant", "It is 22C and sunny."),
            message("user", "Thanks! And in Rome?"),
        ],
        JSONList([weather_tool()]),
    )


HELLO = message("user", "Hello, how are you?")
UAU = [
    HELLO,
    message("assistant", "I'm doing great. How can I help you today?"),
    message("user", "I'd like to show off how chat templating works!"),
]
SYSTEM = "You are a helpful assistant."
CASES: dict[str, dict[str, Any]] = {
    "user": values("", [HELLO]),
    "user-assistant-user": values("", UAU),
    "system-user-assistant-user": values(SYSTEM, [message("system", SYSTEM), *UAU]),
    "tools": tool_conversation(),
    "think-off": values(
        "",
        [message("user", "What is 2+2?"), message("assistant", "4", thinking="2+2 is 4"), message("user", "And 3+3?")],
        is_think_set=True,
    ),
    "think-on-tool-loop": values(
        "", [message("user", "Weather?"), message("assistant", thinking="need tool")], think=True, is_think_set=True
    ),
    "legacy-prompt": {"System": "", "Prompt": "Hello", "Response": ""},
    "legacy-all": {"System": "Be brief.", "Prompt": "Hello", "Response": "Hi there"},
}

TOOL_JSON = (
    '{"type":"function","function":{"name":"get_weather","description":"Get the current weather",'
    '"parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string",'
    '"description":"City name"}}}}}'
)
A1 = "I'm doing great. How can I help you today?"
U2 = "I'd like to show off how chat templating works!"

GOLDEN: list[tuple[str, str, str]] = [
    # ChatML: a system turn only when there is a system prompt or tools; the assistant turn of the last
    # message stays open; tool calls as <tool_call> lines, their arguments printed through String().
    (
        "chatml-tools",
        "user",
        "<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "chatml-tools",
        "user-assistant-user",
        "<|im_start|>user\nHello, how are you?<|im_end|>\n"
        f"<|im_start|>assistant\n{A1}<|im_end|>\n"
        f"<|im_start|>user\n{U2}<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "chatml-tools",
        "system-user-assistant-user",
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHello, how are you?<|im_end|>\n"
        f"<|im_start|>assistant\n{A1}<|im_end|>\n"
        f"<|im_start|>user\n{U2}<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "chatml-tools",
        "tools",
        f"<|im_start|>system\n{SYSTEM}\n\nYou can call these tools:\n<tools>\n{TOOL_JSON}\n</tools><|im_end|>\n"
        "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>tool\n22C and sunny<|im_end|>\n"
        "<|im_start|>assistant\nIt is 22C and sunny.<|im_end|>\n"
        "<|im_start|>user\nThanks! And in Rome?<|im_end|>\n<|im_start|>assistant\n",
    ),
    # Header turns: {{ continue }} skips system messages, with/else on .ToolCalls, currentDate, a tool
    # printed through its String() (JSON), tool results under another role name.
    (
        "headers",
        "user",
        "<|start_header_id|>user<|end_header_id|>\n\nHello, how are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    (
        "headers",
        "user-assistant-user",
        "<|start_header_id|>user<|end_header_id|>\n\nHello, how are you?<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A1}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U2}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    (
        "headers",
        "system-user-assistant-user",
        f"<|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello, how are you?<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A1}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U2}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    (
        "headers",
        "tools",
        f"<|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}\n\n"
        f"Today is 2025-01-02. Answer with a JSON function call when a tool helps.\n{TOOL_JSON}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat's the weather in Paris?<|eot_id|>"
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city":"Paris"}}'
        "<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n22C and sunny<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 22C and sunny.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nThanks! And in Rome?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    # [INST] turns: the system prompt and the tool list go with the last user message only, found with
    # len (slice $.Messages $index); json of a string and of the tool list.
    ("inst", "user", "[INST] Hello, how are you?[/INST]"),
    ("inst", "user-assistant-user", f"[INST] Hello, how are you?[/INST] {A1}</s>[INST] {U2}[/INST]"),
    (
        "inst",
        "system-user-assistant-user",
        f"[INST] Hello, how are you?[/INST] {A1}</s>[INST] {SYSTEM}\n\n{U2}[/INST]",
    ),
    (
        "inst",
        "tools",
        "[INST] What's the weather in Paris?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city":"Paris"}}]</s>'
        '[TOOL_RESULTS] {"content": "22C and sunny"} [/TOOL_RESULTS]'
        " It is 22C and sunny.</s>"
        f"[AVAILABLE_TOOLS] [{TOOL_JSON}][/AVAILABLE_TOOLS][INST] {SYSTEM}\n\nThanks! And in Rome?[/INST]",
    ),
    # The system prompt folded into the first user turn: a variable assigned inside with/range.
    (
        "turns",
        "user",
        "<start_of_turn>user\nHello, how are you?<end_of_turn>\n<start_of_turn>model\n",
    ),
    (
        "turns",
        "user-assistant-user",
        "<start_of_turn>user\nHello, how are you?<end_of_turn>\n"
        f"<start_of_turn>model\n{A1}<end_of_turn>\n"
        f"<start_of_turn>user\n{U2}<end_of_turn>\n<start_of_turn>model\n",
    ),
    (
        "turns",
        "system-user-assistant-user",
        f"<start_of_turn>user\n{SYSTEM}\nHello, how are you?<end_of_turn>\n"
        f"<start_of_turn>model\n{A1}<end_of_turn>\n"
        f"<start_of_turn>user\n{U2}<end_of_turn>\n<start_of_turn>model\n",
    ),
    (
        "turns",
        "tools",
        f"<start_of_turn>user\n{SYSTEM}\nWhat's the weather in Paris?<end_of_turn>\n"
        "<start_of_turn>model\n<end_of_turn>\n"
        "<start_of_turn>model\nIt is 22C and sunny.<end_of_turn>\n"
        "<start_of_turn>user\nThanks! And in Rome?<end_of_turn>\n<start_of_turn>model\n",
    ),
    # Thinking: an integer variable found in one range and used in the next, printf with a \n escape,
    # thinking shown only after the last user message, the /think switches.
    (
        "think",
        "user-assistant-user",
        f"<|user|>\nHello, how are you?<|end|>\n<|assistant|>\n{A1}<|end|>\n<|user|>\n{U2}<|end|>\n<|assistant|>\n",
    ),
    (
        "think",
        "think-off",
        "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4<|end|>\n<|user|>\nAnd 3+3? /no_think<|end|>\n"
        "<|assistant|>\n<think>\n\n</think>\n\n",
    ),
    (
        "think",
        "think-on-tool-loop",
        "<|user|>\nWeather? /think<|end|>\n<|assistant|>\n<think>need tool</think>\n<|end|>\n<|assistant|>\n",
    ),
    # Tool signatures: fields of a tool by Go name, a range over a map (sorted keys), printf padding.
    ("functions", "user", "user: Hello, how are you?\nassistant:"),
    (
        "functions",
        "system-user-assistant-user",
        f"user: Hello, how are you?\nassistant: {A1}\nuser: {U2}\nassistant:",
    ),
    (
        "functions",
        "tools",
        "Functions:\n- get_weather(city): Get the current weather\n    city   string -- City name\n\n"
        "user: What's the weather in Paris?\nassistant: \ntool: 22C and sunny\n"
        "assistant: It is 22C and sunny.\nuser: Thanks! And in Rome?\nassistant:",
    ),
    # The legacy form: block defines and runs a template; everything after .Response is cut for the
    # last turn (see test_legacy_template_is_cut_after_the_response).
    ("legacy", "legacy-prompt", "### Instruction:\nHello\n\n### Response:\n</s>"),
    ("legacy", "legacy-all", "Be brief.\n\n### Instruction:\nHello\n\n### Response:\nHi there</s>"),
]


@pytest.mark.parametrize(("name", "case", "expected"), GOLDEN)
def test_chat_templates_render_like_go(name: str, case: str, expected: str) -> None:
    assert data_template(name).render(CASES[case], today=TODAY) == expected


def test_every_chat_template_is_covered_and_uses_the_messages() -> None:
    files = sorted(path.stem for path in TEMPLATES.glob("*.gotmpl"))
    assert files == sorted({name for name, _, _ in GOLDEN})
    for name in files:
        variables = data_template(name).vars()
        assert ("messages" in variables) != (name == "legacy"), name


def test_legacy_template_is_cut_after_the_response() -> None:
    cut = data_template("legacy").truncate_after_response()
    assert cut.render(CASES["legacy-all"]) == "Be brief.\n\n### Instruction:\nHello\n\n### Response:\nHi there"
    assert cut.render(CASES["legacy-prompt"]) == "### Instruction:\nHello\n\n### Response:\n"


@pytest.fixture
def tool_chat() -> dict[str, Any]:
    return tool_conversation()


# A llama3.1-style tool template, as published with models on ollama.com.
LLAMA31_TOOLS = """\
{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

Cutting Knowledge Date: December 2023. Today is {{ currentDate }}.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, respond with a JSON function call.

{{ range $.Tools }}
{{- . }}
{{ end }}
{{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}

{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""


def test_llama31_style_tool_template(tool_chat: dict[str, Any]) -> None:
    out = Template.parse(LLAMA31_TOOLS).render(tool_chat, today=datetime.date(2025, 1, 2))
    tool_json = (
        '{"type":"function","function":{"name":"get_weather","description":"Get the current weather",'
        '"parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string",'
        '"description":"City name"}}}}}'
    )
    assert out.startswith(
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.\n\n"
        "Cutting Knowledge Date: December 2023. Today is 2025-01-02.<|eot_id|>"
    )
    assert "<|start_header_id|>user<|end_header_id|>\n\nWhat's the weather in Paris?<|eot_id|>" in out
    assert (
        '<|start_header_id|>assistant<|end_header_id|>\n\n\n{"name": "get_weather", "parameters": '
        '{"city":"Paris"}}<|eot_id|>'
    ) in out
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n22C and sunny<|eot_id|>" in out
    assert out.endswith(
        "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, respond with a JSON "
        f"function call.\n\n{tool_json}\n\nThanks! And in Rome?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
