"""JSON encoded byte-for-byte the way Go's ``encoding/json`` does it.

Ollama writes its config, params and messages layers with Go's encoder; encoding them the same way
makes a layer created here get the very digest Ollama would give it, so stores mix and dedupe.
Go sorts map keys, writes integral floats without a fraction, escapes ``<``, ``>``, ``&``, U+2028
and U+2029, and ``json.Encoder`` ends every document with a newline.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

_HTML_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                               "\u2029": "\\u2029"})


def _go_float(x: float) -> str:
    """``strconv.AppendFloat(x, fmt, -1, 64)`` as ``encoding/json`` picks ``fmt``: the shortest digits
    that round-trip (Python's ``repr`` finds the same ones), plain decimal notation unless
    ``|x| < 1e-6`` or ``|x| >= 1e21``, and there ``e-07`` shortened to ``e-7``."""
    if not math.isfinite(x):
        raise ValueError(f"unsupported value: {x}")
    a = abs(x)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        text = repr(x)  # always in exponent form in these ranges, with at least two exponent digits
        mant, exp = text.split("e")
        if exp[0] == "-" and len(exp) == 3 and exp[1] == "0":
            exp = "-" + exp[2]
        return f"{mant}e{exp}"
    text = format(Decimal(repr(x)).normalize(), "f")
    return "-0" if text == "0" and math.copysign(1.0, x) < 0 else text


def _encode(obj: Any, out: list[str], sort_keys: bool) -> None:
    if obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int):
        out.append(str(obj))
    elif isinstance(obj, float):
        out.append(_go_float(obj))
    elif isinstance(obj, str):
        out.append(json.dumps(obj, ensure_ascii=False).translate(_HTML_ESCAPES))
    elif isinstance(obj, dict):
        out.append("{")
        items = sorted(obj.items()) if sort_keys else obj.items()
        for i, (k, v) in enumerate(items):
            if i:
                out.append(",")
            out.append(json.dumps(str(k), ensure_ascii=False).translate(_HTML_ESCAPES))
            out.append(":")
            _encode(v, out, sort_keys)
        out.append("}")
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, v in enumerate(obj):
            if i:
                out.append(",")
            _encode(v, out, sort_keys)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(obj).__name__}")


def go_marshal(obj: Any, *, sort_keys: bool = True) -> bytes:
    """``json.Marshal``: compact, no trailing newline. Pass ``sort_keys=False`` for Go structs."""
    out: list[str] = []
    _encode(obj, out, sort_keys)
    return "".join(out).encode()


def go_encode(obj: Any, *, sort_keys: bool = True) -> bytes:
    """``json.NewEncoder(w).Encode``: like :func:`go_marshal` plus a newline."""
    return go_marshal(obj, sort_keys=sort_keys) + b"\n"
