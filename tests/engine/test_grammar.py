"""Structured-output grammars: bounded before the converter expands them (issue 11, item 10)."""

from __future__ import annotations

import pytest

from appliance.engine.grammar import MAX_REPETITION, MAX_SCHEMA_DEPTH, check_schema, format_grammar
from appliance.errors import BadRequest


def test_json_and_ordinary_schemas_convert() -> None:
    assert "root" in (format_grammar("json") or "")
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                        "minItems": 1, "maxItems": 3}},
              "required": ["tags"], "$defs": {"x": {"type": "integer"}}}
    grammar = format_grammar(schema)
    assert grammar and "root" in grammar
    assert format_grammar(None) is None


@pytest.mark.parametrize("schema, word", [
    ({"type": "array", "minItems": MAX_REPETITION + 1}, "minItems"),
    ({"type": "string", "maxLength": 10**12}, "maxLength"),
    ({"type": "array", "maxItems": -1}, "maxItems"),
    ({"type": "array", "minItems": "5"}, "minItems"),
    ({"$ref": "https://example.invalid/s.json"}, "$ref"),
    ({"$ref": "file:///etc/passwd"}, "$ref"),
    ({"properties": {f"p{i}": {"type": "string"} for i in range(30000)}}, "too large"),
])
def test_unbounded_or_remote_schemas_are_refused(schema: dict, word: str) -> None:
    with pytest.raises(BadRequest, match=word.replace("$", r"\$")):
        format_grammar(schema)


def test_deep_nesting_is_refused_without_recursion() -> None:
    schema: dict = {"type": "string"}
    for _ in range(10_000):
        schema = {"type": "array", "items": schema}
    with pytest.raises(BadRequest, match="nests"):
        check_schema(schema)
    shallow: dict = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH // 2 - 1):
        shallow = {"type": "array", "items": shallow}
    check_schema(shallow)


def test_converter_errors_are_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        format_grammar({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})
