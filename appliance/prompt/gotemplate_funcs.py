"""Go value semantics for the template renderer: printing, printf, JSON, comparisons and builtins.

Template data is plain Python: ``None`` (Go nil), ``bool``, ``int``, ``float``, ``str``, lists or tuples
(Go slices) and mappings (Go maps). ``JSONMap`` / ``JSONList`` stand for Ollama's types whose ``String()``
is their JSON (tool-call arguments, tool properties, the tool list and each tool), so ``{{ .Arguments }}``
prints ``{"a":1}`` as Ollama does instead of ``map[a:1]``; ``GoStruct`` adds a separate JSON form for
structs whose json tag names differ from their Go field names.

JSON keeps mapping insertion order, because a dict stands for a Go struct (fields in declared order) as
often as for a Go map (keys sorted): whoever builds the data orders map keys. ``range`` and ``%v`` sort
mapping keys, as Go does for maps (real templates never range over a struct).

Not supported: printf's hexadecimal and binary float verbs (``%x``/``%b`` of a float give a ``%!x(...)``
diagnostic) and the ``#`` flag on floats (ignored).
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


class FuncError(Exception):
    """A builtin refused its arguments; the renderer adds the position and raises TemplateError."""


class JSONMap(dict):  # type: ignore[type-arg]
    """A Go map or struct whose String() method is its compact JSON."""


class JSONList(list):  # type: ignore[type-arg]
    """A Go slice whose String() method is its compact JSON."""


class GoStruct(JSONMap):
    """A Go struct with json tags: fields by Go name (``.Function.Name``), JSON in ``json_value``'s form.

    Ollama's api.Tool and friends marshal under their json tag names (``{"function":{"name":…}}``)
    while templates reach their fields by Go name; ``print`` and ``json`` use ``json_value``.
    """

    def __init__(self, fields: Mapping[str, Any], json_value: Any) -> None:
        super().__init__(fields)
        self.json_value = json_value


# ---------------------------------------------------------------------------------------------- kinds


def kind(value: Any) -> str:
    """The Go kind of a template value: nil, bool, int, float, string, slice, map or other."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, list | tuple):
        return "slice"
    return "other"


_GO_TYPE_NAMES = {
    "bool": "bool",
    "int": "int",
    "float": "float64",
    "string": "string",
    "slice": "[]interface {}",
    "map": "map[string]interface {}",
}


def go_type_name(value: Any) -> str:
    return _GO_TYPE_NAMES.get(kind(value), type(value).__name__)


def is_true(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty strings, slices and maps are false."""
    k = kind(value)
    if k == "nil":
        return False
    if k in ("bool", "int", "float", "string", "slice", "map"):
        return bool(value)
    return True


def sorted_keys(mapping: Mapping[Any, Any]) -> list[Any]:
    """Keys in Go's map order (fmt and range sort them)."""
    try:
        return sorted(mapping)
    except TypeError:
        return sorted(mapping, key=lambda k: (type(k).__name__, str(k)))


# ---------------------------------------------------------------------------------------------- floats


def _float_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of abs(value) and the point position: 0.DIGITS x 10**point."""
    _sign, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    if digits == "0":
        return "0", 1
    return digits, len(digits) + exponent


def _shortest_e(digits: str, point: int, exp_width: int = 2) -> str:
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    exp = point - 1
    return f"{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):0{exp_width}d}"


def _shortest_f(digits: str, point: int) -> str:
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


def _special_float(value: float) -> str | None:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return None


def format_float_v(value: float) -> str:
    """Go's %v for float64: shortest digits, in exponent form below 1e-4 and from 1e6 up."""
    special = _special_float(value)
    if special is not None:
        return special
    digits, point = _float_digits(value)
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if digits == "0":
        return sign + "0"
    exp = point - 1
    body = _shortest_e(digits, point) if exp < -4 or exp >= 6 else _shortest_f(digits, point)
    return sign + body


def _format_float_json(value: float) -> str:
    digits, point = _float_digits(value)
    sign = "-" if value < 0 else ""
    if digits == "0":
        return "0"
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        return sign + _shortest_e(digits, point, exp_width=1)
    return sign + _shortest_f(digits, point)


# ---------------------------------------------------------------------------------------------- json

_JSON_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _json_string(text: str) -> str:
    out = ['"']
    for ch in text:
        escaped = _JSON_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        elif "\ud800" <= ch <= "\udfff":
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


class _UnsupportedJSON(Exception):
    pass


def _json(value: Any, depth: int) -> str:
    if depth > 200:
        raise _UnsupportedJSON
    k = kind(value)
    if k == "nil":
        return "null"
    if k == "bool":
        return "true" if value else "false"
    if k == "int":
        return str(value)
    if k == "float":
        if _special_float(value) is not None:
            raise _UnsupportedJSON
        return _format_float_json(value)
    if k == "string":
        return _json_string(value)
    if k == "slice":
        return "[" + ",".join(_json(v, depth + 1) for v in value) + "]"
    if k == "map":
        if hasattr(value, "json_value"):
            return _json(value.json_value, depth + 1)
        items = (f"{_json_string(str(key))}:{_json(v, depth + 1)}" for key, v in value.items())
        return "{" + ",".join(items) + "}"
    raise _UnsupportedJSON


def go_json(value: Any) -> str:
    """Compact JSON as Go's json.Marshal writes it (HTML-safe escapes); "" where Marshal would fail."""
    try:
        return _json(value, 0)
    except _UnsupportedJSON:
        return ""


# ---------------------------------------------------------------------------------------------- quoting


def go_quote(text: str, quote: str = '"') -> str:
    """strconv.Quote: Go escapes for quotes, backslash, controls and unprintable runes."""
    short = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    out = [quote]
    for ch in text:
        if ch == quote or ch == "\\":
            out.append("\\" + ch)
        elif ch in short:
            out.append(short[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append(quote)
    return "".join(out)


# ---------------------------------------------------------------------------------------------- literals

_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}


def go_unquote(body: str, quote: str) -> str:
    """The value of a Go interpreted string (or rune) literal's body; ValueError when malformed."""
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
            continue
        esc = body[i + 1 : i + 2]
        if esc in _ESCAPES or esc == quote:
            out.append(_ESCAPES.get(esc, ord(esc)))
            i += 2
        elif esc in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[esc]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not re.fullmatch(r"[0-9a-fA-F]+", digits):
                raise ValueError("invalid escape")
            code = int(digits, 16)
            if esc == "x":
                out.append(code)
            elif code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ValueError("invalid escape")
            else:
                out += chr(code).encode()
            i += 2 + width
        elif re.fullmatch(r"[0-7]{3}", body[i + 1 : i + 4]) and int(body[i + 1 : i + 4], 8) < 256:
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
        else:
            raise ValueError("invalid escape")
    return out.decode(errors="replace")


def go_number(text: str) -> int | float:
    """A Go number literal as an int, or a float when it has a point or exponent; ValueError if bad."""
    body = text.lstrip("+-")
    negative = text.startswith("-")
    hex_int = body[:2].lower() == "0x" and not re.search(r"[.pP]", body)
    if not hex_int and re.search(r"[.eEpP]", body):
        value: int | float = float.fromhex(body) if body[:2].lower() == "0x" else float(body)
    elif re.fullmatch(r"0[0-7_]+", body):
        value = int(body.replace("_", ""), 8)
    else:
        value = int(body, 0)
    return -value if negative else value


# ---------------------------------------------------------------------------------------------- fmt


@dataclass
class _Spec:
    minus: bool = False
    plus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    sharp_v: bool = False  # %#v: Go-syntax representation
    width: int | None = None
    precision: int | None = None


def _pad(text: str, spec: _Spec, zero: bool = True) -> str:
    """Pad to the width: spaces on the right with '-', else zeros (if asked and allowed) or spaces."""
    if spec.width is None or len(text) >= spec.width:
        return text
    fill = spec.width - len(text)
    if spec.minus:
        return text + " " * fill
    return ("0" if spec.zero and zero else " ") * fill + text


def _format_int(value: int, verb: str, spec: _Spec) -> str | None:
    if verb in "cq":
        char = chr(value) if 0 <= value < 0x110000 and not 0xD800 <= value <= 0xDFFF else "\ufffd"
        return _pad(char if verb == "c" else go_quote(char, "'"), spec)
    if verb == "U":
        text = "U+" + format(value & 0xFFFFFFFFFFFFFFFF, "X").zfill(max(4, spec.precision or 0))
        if spec.sharp and 0 <= value < 0x110000 and chr(value).isprintable():
            text += f" '{chr(value)}'"
        return _pad(text, spec, zero=False)
    base = {"v": "d", "d": "d", "b": "b", "o": "o", "O": "o", "x": "x", "X": "X"}.get(verb)
    if base is None:
        return None
    sign = "-" if value < 0 else "+" if spec.plus else " " if spec.space else ""
    digits = format(abs(value), base)
    if spec.precision is not None:
        if spec.precision == 0 and value == 0:
            return _pad("", spec, zero=False)
        digits = digits.zfill(spec.precision)
    elif spec.zero and spec.width is not None:
        digits = digits.zfill(spec.width - len(sign))  # Go zero-fills before adding any 0x prefix
    prefix = "0o" if verb == "O" else ""
    if spec.sharp and (verb in "bxX" or (verb == "o" and not digits.startswith("0"))):
        prefix = {"b": "0b", "o": "0", "x": "0x", "X": "0X"}[verb]
    return _pad(sign + prefix + digits, spec, zero=False)


def _format_float(value: float, verb: str, spec: _Spec) -> str | None:
    if verb not in "vgGeEfF":
        return None
    special = _special_float(value)
    if special is not None:
        if special == "NaN":
            special = ("+" if spec.plus else " " if spec.space else "") + special
        elif special == "+Inf" and spec.space and not spec.plus:
            special = " Inf"
        return _pad(special, spec, zero=False)
    magnitude = abs(value)
    if verb in "vgG" and spec.precision is None:
        body = format_float_v(magnitude)
    else:
        precision = 6 if spec.precision is None else spec.precision
        body = format(magnitude, f".{precision}{'g' if verb == 'v' else verb}")
    body = body.upper() if verb in "GEF" else body
    sign = "-" if math.copysign(1.0, value) < 0 else "+" if spec.plus else " " if spec.space else ""
    if spec.zero and spec.width is not None and not spec.minus:
        return sign + body.zfill(spec.width - len(sign))
    return _pad(sign + body, spec)


def _format_str(value: str, verb: str, spec: _Spec) -> str | None:
    if verb in "vs":
        return _pad(value if spec.precision is None else value[: spec.precision], spec)
    if verb == "q":
        value = value[: spec.precision]
        raw_ok = "`" not in value and "\ufeff" not in value
        raw_ok = raw_ok and all(c == "\t" or c.isprintable() for c in value)
        return _pad(f"`{value}`" if spec.sharp and raw_ok else go_quote(value), spec)
    if verb in "xX":
        data = value.encode()[: spec.precision]
        prefix = ("0x" if verb == "x" else "0X") if spec.sharp else ""
        hexes = [format(b, "02x" if verb == "x" else "02X") for b in data]
        if spec.space:
            return _pad(" ".join(prefix + h for h in hexes), spec)
        return _pad((prefix if hexes else "") + "".join(hexes), spec)
    return None


def _bad_verb(value: Any, verb: str, spec: _Spec) -> str:
    if value is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({go_type_name(value)}={format_value(value, 'v', spec)})"


def _go_syntax(value: Any, depth: int) -> str:
    """%#v: Go-syntax representation of template data (as map[string]any decoded from JSON)."""
    k = kind(value)
    if k == "nil":
        return "interface {}(nil)" if depth else "<nil>"
    if k == "string":
        return go_quote(value)
    if k == "slice":
        return "[]interface {}{" + ", ".join(_go_syntax(v, depth + 1) for v in value) + "}"
    if k == "map":
        items = (
            f"{_go_syntax(key, depth + 1)}:{_go_syntax(value[key], depth + 1)}" for key in sorted_keys(value)
        )
        return "map[string]interface {}{" + ", ".join(items) + "}"
    return format_value(value, "v", None, depth)


def format_value(value: Any, verb: str = "v", spec: _Spec | None = None, depth: int = 0) -> str:
    """One value as fmt prints it for a verb (%v when printing an action)."""
    spec = spec or _Spec()
    if spec.sharp_v and kind(value) in ("nil", "string", "slice", "map"):
        return _pad(_go_syntax(value, depth), spec)
    k = kind(value)
    if k == "nil":
        return _pad("<nil>", spec) if depth or verb == "v" else _bad_verb(None, verb, spec)
    if isinstance(value, JSONMap | JSONList) and verb in "vsqxX":
        return _format_str(go_json(value), verb, spec) or ""
    text: str | None
    if k == "bool":
        text = _pad("true" if value else "false", spec) if verb in "vt" else None
    elif k == "int":
        text = _format_int(value, verb, spec)
    elif k == "float":
        text = _format_float(value, verb, spec)
    elif k == "string":
        text = _format_str(value, verb, spec)
    elif k == "slice":
        return "[" + " ".join(format_value(v, verb, spec, depth + 1) for v in value) + "]"
    elif k == "map":
        parts = (
            f"{format_value(key, verb, spec, depth + 1)}:{format_value(value[key], verb, spec, depth + 1)}"
            for key in sorted_keys(value)
        )
        return "map[" + " ".join(parts) + "]"
    else:
        text = _pad(str(value), spec)
    return _bad_verb(value, verb, spec) if text is None else text


def _parse_number(fmt: str, i: int) -> tuple[int | None, int]:
    start = i
    while i < len(fmt) and fmt[i].isdigit():
        i += 1
    return (int(fmt[start:i]) if i > start else None), i


def sprintf(fmt: str, args: Sequence[Any], max_width: int) -> str:
    """fmt.Sprintf for the verbs templates use, with Go's %!verb(...) diagnostics."""
    out: list[str] = []
    argi = 0
    i = 0
    while i < len(fmt):
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        i = j + 1
        spec = _Spec()
        while i < len(fmt) and fmt[i] in "-+# 0":
            flag = fmt[i]
            spec.minus |= flag == "-"
            spec.plus |= flag == "+"
            spec.sharp |= flag == "#"
            spec.space |= flag == " "
            spec.zero |= flag == "0"
            i += 1
        spec.zero = spec.zero and not spec.minus
        if i < len(fmt) and fmt[i] == "*":
            i += 1
            if argi < len(args) and kind(args[argi]) == "int":
                spec.width = args[argi]
                if spec.width is not None and spec.width < 0:
                    spec.minus, spec.width = True, -spec.width
            else:
                out.append("%!(BADWIDTH)")
            argi += 1
        else:
            spec.width, i = _parse_number(fmt, i)
        if i < len(fmt) and fmt[i] == ".":
            i += 1
            if i < len(fmt) and fmt[i] == "*":
                i += 1
                if argi < len(args) and kind(args[argi]) == "int" and args[argi] >= 0:
                    spec.precision = args[argi]
                else:
                    out.append("%!(BADPREC)")
                argi += 1
            else:
                precision, i = _parse_number(fmt, i)
                spec.precision = precision or 0
        if max(spec.width or 0, spec.precision or 0) > max_width:
            raise FuncError(f"printf width or precision over {max_width}")
        if i >= len(fmt):
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
        elif argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
        elif verb == "v":
            # For %v, '#' asks for Go syntax and '+' for field names; neither is a number flag.
            spec.sharp_v, spec.sharp, spec.plus = spec.sharp, False, False
            out.append(format_value(args[argi], verb, spec))
            argi += 1
        else:
            out.append(format_value(args[argi], verb, spec))
            argi += 1
    if argi < len(args):
        extra = ", ".join(
            "<nil>" if a is None else f"{go_type_name(a)}={format_value(a)}" for a in args[argi:]
        )
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def sprint(args: Sequence[Any]) -> str:
    """fmt.Sprint: a space between operands when neither is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i and kind(arg) != "string" and kind(args[i - 1]) != "string":
            out.append(" ")
        out.append(format_value(arg, "v", None, depth=0))
    return "".join(out)


# ---------------------------------------------------------------------------------------------- comparisons

_BASIC = ("bool", "int", "float", "string")


def _comparable_kinds(a: Any, b: Any) -> tuple[str, str]:
    ka, kb = kind(a), kind(b)
    ka = "number" if ka in ("int", "float") else ka
    kb = "number" if kb in ("int", "float") else kb
    return ka, kb


def go_eq(first: Any, *others: Any) -> bool:
    """eq: first equals any of the others; ints and floats compare by value (Go would refuse)."""
    if not others:
        raise FuncError("missing argument for comparison")
    for other in others:
        if first is None or other is None:
            if first is None and other is None:
                return True
            continue
        ka, kb = _comparable_kinds(first, other)
        if ka != kb:
            raise FuncError("incompatible types for comparison")
        if ka not in ("bool", "number", "string"):
            raise FuncError(f"non-comparable type {go_type_name(first)}")
        if first == other:
            return True
    return False


def go_lt(a: Any, b: Any) -> bool:
    ka, kb = _comparable_kinds(a, b)
    if ka not in ("number", "string") or kb not in ("number", "string"):
        raise FuncError("invalid type for comparison")
    if ka != kb:
        raise FuncError("incompatible types for comparison")
    return bool(a < b)


# ---------------------------------------------------------------------------------------------- builtins


def _len(value: Any) -> int:
    k = kind(value)
    if k == "string":
        return len(value.encode())
    if k in ("slice", "map"):
        return len(value)
    if k == "nil":
        return 0
    raise FuncError(f"len of type {go_type_name(value)}")


def _index(item: Any, *indexes: Any) -> Any:
    for idx in indexes:
        k = kind(item)
        if k == "nil":
            raise FuncError("index of untyped nil")
        if k == "map":
            item = item.get(idx)
            continue
        if k not in ("slice", "string"):
            raise FuncError(f"can't index item of type {go_type_name(item)}")
        if kind(idx) != "int":
            raise FuncError(f"cannot index slice/array with type {go_type_name(idx)}")
        seq = item.encode() if k == "string" else item
        if not 0 <= idx < len(seq):
            raise FuncError(f"index out of range: {idx}")
        item = seq[idx]
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    k = kind(item)
    if k == "nil":
        raise FuncError("slice of untyped nil")
    if k not in ("slice", "string"):
        raise FuncError(f"can't slice item of type {go_type_name(item)}")
    if len(indexes) > 3:
        raise FuncError(f"too many slice indexes: {len(indexes)}")
    if k == "string" and len(indexes) == 3:
        raise FuncError("cannot 3-index slice a string")
    seq = item.encode() if k == "string" else item
    bounds = [0, len(seq)]
    for n, idx in enumerate(indexes[:2]):
        if kind(idx) != "int":
            raise FuncError(f"cannot index slice/array with type {go_type_name(idx)}")
        if not 0 <= idx <= len(seq):
            raise FuncError(f"index out of range: {idx}")
        bounds[n] = idx
    if bounds[0] > bounds[1]:
        raise FuncError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    part = seq[bounds[0] : bounds[1]]
    return part.decode(errors="replace") if k == "string" else list(part)


def _text_of(args: Sequence[Any]) -> str:
    if len(args) == 1 and kind(args[0]) == "string":
        return str(args[0])
    return sprint(args)


def _html(*args: Any) -> str:
    table = {"<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&#39;", '"': "&#34;", "\0": "\ufffd"}
    return "".join(table.get(ch, ch) for ch in _text_of(args))


def _js(*args: Any) -> str:
    table = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026"}
    table["="] = "\\u003D"
    out = []
    for ch in _text_of(args):
        if ch in table:
            out.append(table[ch])
        elif ch < " " or (ord(ch) >= 0x80 and not ch.isprintable()):
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _urlquery(*args: Any) -> str:
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~"
    out = []
    for byte in _text_of(args).encode():
        out.append("+" if byte == 0x20 else chr(byte) if byte in safe else f"%{byte:02X}")
    return "".join(out)


_TS_TYPES = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "array": "any[]",
    "object": "Record<string, any>",
    "null": "null",
}


def to_typescript_type(prop: Any, depth: int = 0) -> str:
    """Ollama's toTypeScriptType for a JSON-schema property mapping; "any" for anything else."""
    prop = getattr(prop, "json_value", prop)
    if not isinstance(prop, Mapping) or depth > 50:
        return "any"
    any_of = prop.get("anyOf", prop.get("AnyOf"))
    if isinstance(any_of, list | tuple) and any_of:
        return " | ".join(to_typescript_type(p, depth + 1) for p in any_of)
    types = prop.get("type", prop.get("Type"))
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list | tuple) or not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") if isinstance(t, str) else "any" for t in types)


def _date_funcs(today: datetime.date) -> dict[str, Callable[..., Any]]:
    def current_date(*_format: Any) -> str:
        return today.isoformat()

    def yesterday_date(*_format: Any) -> str:
        return (today - datetime.timedelta(days=1)).isoformat()

    return {"currentDate": current_date, "yesterdayDate": yesterday_date}


def _call(*_args: Any) -> Any:
    raise FuncError("template data holds no functions to call")


@dataclass(frozen=True)
class Builtin:
    """A template function: its arity and implementation (``and``/``or`` are handled lazily)."""

    name: str
    min_args: int
    max_args: int | None
    impl: Callable[..., Any] | None


def _builtin(name: str, min_args: int, max_args: int | None, impl: Callable[..., Any] | None) -> Builtin:
    return Builtin(name, min_args, max_args, impl)


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in [
        _builtin("and", 1, None, None),
        _builtin("or", 1, None, None),
        _builtin("not", 1, 1, lambda v: not is_true(v)),
        _builtin("eq", 1, None, go_eq),
        _builtin("ne", 2, 2, lambda a, b: not go_eq(a, b)),
        _builtin("lt", 2, 2, go_lt),
        _builtin("le", 2, 2, lambda a, b: go_lt(a, b) or go_eq(a, b)),
        _builtin("gt", 2, 2, lambda a, b: not go_lt(a, b) and not go_eq(a, b)),
        _builtin("ge", 2, 2, lambda a, b: not go_lt(a, b)),
        _builtin("len", 1, 1, _len),
        _builtin("index", 1, None, _index),
        _builtin("slice", 1, None, _slice),
        _builtin("print", 0, None, lambda *a: sprint(a)),
        _builtin("println", 0, None, lambda *a: " ".join(format_value(v) for v in a) + "\n"),
        _builtin("printf", 1, None, None),
        _builtin("html", 0, None, _html),
        _builtin("js", 0, None, _js),
        _builtin("urlquery", 0, None, _urlquery),
        _builtin("call", 1, None, _call),
        _builtin("json", 1, 1, go_json),
        _builtin("toTypeScriptType", 1, 1, to_typescript_type),
        _builtin("currentDate", 0, None, None),
        _builtin("yesterdayDate", 0, None, None),
    ]
}


def date_func(name: str, today: datetime.date) -> Callable[..., Any]:
    return _date_funcs(today)[name]
