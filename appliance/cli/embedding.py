"""``ollama run`` on an embedding model: the vector of the input, printed as upstream prints it.

Upstream's CLI sends the prompt to ``/api/embed`` and prints the first embedding as Go's
``encoding/json`` writes a ``[]float32``: one line, no spaces, each number the shortest decimal that
reads back as the same float32 (positional, or ``1e-7`` style below 1e-6).
"""

from __future__ import annotations

import math
import struct
import sys
from decimal import Decimal
from typing import Any

from appliance.api.client import Client

_FLOAT32 = struct.Struct("<f")
GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def truncate_flag(text: str | None) -> bool | None:
    """``--truncate`` / ``--truncate=VALUE`` read as Go's ParseBool; None when the flag was not given."""
    if text is None:
        return None
    if text not in GO_BOOLS:
        raise SystemExit(f'Error: invalid argument "{text}" for "--truncate" flag: strconv.ParseBool: '
                         f'parsing "{text}": invalid syntax')
    return GO_BOOLS[text]


def go_float32(value: float) -> str:
    """``value`` as a float32, written as Go's JSON encoder writes a float32."""
    if not math.isfinite(value):
        raise ValueError(f"json: unsupported value: {value}")
    try:
        packed = _FLOAT32.pack(value)
    except OverflowError:
        raise ValueError(f"json: unsupported value: {value}") from None
    exact = _FLOAT32.unpack(packed)[0]
    if exact == 0:
        return "-0" if math.copysign(1.0, exact) < 0 else "0"
    for digits in range(1, 10):  # 9 significant digits always name a float32 exactly
        text = f"{exact:.{digits - 1}e}"
        if _FLOAT32.pack(float(text)) == packed:
            break
    mantissa, exponent = text.split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    power = int(exponent)
    if abs(exact) < 1e-6 or abs(exact) >= 1e21:
        return f"{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}".replace("e-0", "e-")
    return format(Decimal(f"{mantissa}e{power}"), "f")


def format_vector(vector: list[float]) -> str:
    return "[" + ",".join(go_float32(float(x)) for x in vector) + "]"


def embed_once(client: Client, model: str, text: str, *, keep_alive: str | int | None = None,
               truncate: bool | None = None, dimensions: int = 0) -> int:
    """Print the embedding of ``text`` (upstream's ``generateEmbedding``)."""
    if not text:
        sys.stderr.write(f'Error: embedding models require input text. Usage: ollama run {model} '
                         '"your text here"\n')
        return 1
    body: dict[str, Any] = {"model": model, "input": text}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    if truncate is not None:
        body["truncate"] = truncate
    if dimensions > 0:
        body["dimensions"] = dimensions
    embeddings = client.embed(body).get("embeddings") or []
    if not embeddings:
        sys.stderr.write("Error: no embeddings returned\n")
        return 1
    print(format_vector(embeddings[0]))
    return 0
