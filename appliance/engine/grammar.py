"""Structured output: a request's ``format`` ("json" or a JSON schema) as a GBNF grammar, bounded.

The conversion is llama-cpp-python's port of llama.cpp's json-schema-to-grammar.  It expands
``minItems``/``maxItems``/``minLength``/``maxLength`` item by item and follows remote ``$ref``s with an
HTTP request, so a schema is checked first: its size, nesting and repetition counts are capped and only
local references (``#/...``) are allowed.  Callers run :func:`format_grammar` in a worker thread (it is
pure Python and scales with the schema); the runner compiles the text off its decode loop.
"""

from __future__ import annotations

import json
from typing import Any

from appliance.errors import BadRequest

#: Schema nodes (objects, arrays and scalars) a format may hold.
MAX_SCHEMA_NODES = 20_000
#: How deeply a format may nest.
MAX_SCHEMA_DEPTH = 64
#: The largest repetition count (minItems, maxLength …): each is expanded into that many grammar terms.
MAX_REPETITION = 1_000
#: The largest grammar the conversion may produce.
MAX_GRAMMAR_CHARS = 512 << 10

_REPETITION_KEYS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")


def check_schema(schema: Any) -> None:
    """Refuse (400) a schema whose grammar would be unbounded or that points outside itself."""
    stack: list[tuple[Any, int]] = [(schema, 0)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise BadRequest(f"format: the JSON schema is too large (more than {MAX_SCHEMA_NODES} values)")
        if depth > MAX_SCHEMA_DEPTH:
            raise BadRequest(f"format: the JSON schema nests more than {MAX_SCHEMA_DEPTH} levels deep")
        if isinstance(node, dict):
            for key in _REPETITION_KEYS:
                value = node.get(key)
                if value is None:
                    continue
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise BadRequest(f"format: {key} must be a non-negative integer")
                if value > MAX_REPETITION:
                    raise BadRequest(f"format: {key} {value} is larger than the supported {MAX_REPETITION}")
            ref = node.get("$ref")
            if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
                raise BadRequest("format: only local $ref values (starting with '#') are supported")
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def format_grammar(fmt: Any) -> str | None:
    """GBNF for ``fmt`` (None, "json" or a schema dict); BadRequest for a schema it cannot serve."""
    if fmt is None:
        return None
    from llama_cpp import llama_grammar

    if fmt == "json":
        return str(llama_grammar.JSON_GBNF)
    check_schema(fmt)
    try:
        text = llama_grammar.json_schema_to_gbnf(json.dumps(fmt))
    except RecursionError as exc:
        raise BadRequest("format: the JSON schema is too deeply recursive") from exc
    except Exception as exc:  # the converter raises whatever its code meets on odd schemas
        raise BadRequest(f"invalid JSON schema in format: {exc}") from exc
    if len(text) > MAX_GRAMMAR_CHARS:
        raise BadRequest("format: the JSON schema gives a grammar that is too large")
    return str(text)
