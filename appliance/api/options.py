"""Model options: the one table of every option / Modelfile ``PARAMETER``, with Ollama's types and defaults.

Three ways in and one way out, each matching what Ollama does at the same place:

* ``parse_parameter`` reads the text of a Modelfile ``PARAMETER`` line (Ollama's ``FormatParams``):
  Go's ``ParseInt`` / ``ParseFloat`` / ``ParseBool`` syntax, nothing looser.
* ``validate_options`` checks the JSON ``options`` of an API request (Ollama's ``FromMap``): numbers may
  come as int or float (a float given for an integer option is truncated toward zero), unknown keys are
  logged and dropped, a wrong type is an error naming the option.
* ``format_parameters`` writes the ``parameters`` text of ``/api/show``.

Floats are stored as Ollama stores them, as float32: a value is rounded to the nearest float32 and kept as
the shortest decimal that reads back to it, so ``0.123456789`` becomes ``0.12345679``, as in Ollama's
params blob. Callers merge the result over the defaults themselves:
``{**DEFAULT_OPTIONS, **model_params, **validate_options(request_options)}``.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from appliance.errors import InvalidParameter
from appliance.prompt.gotemplate_funcs import format_float_v, go_quote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptionSpec:
    """One model option: its JSON / PARAMETER name, value type, Ollama's default and what it does."""

    name: str
    type: type  # int, float, bool, or list (of str; only ``stop``)
    default: Any  # None: unset, the engine decides
    description: str
    load_time: bool = False  # part of Ollama's Runner options: changing it means reloading the model
    bounds: tuple[int, int] | None = None  # integers: the range the engine can represent (else a 400)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_SPECS: tuple[OptionSpec, ...] = (
    # Runner options, fixed when the model is loaded.
    OptionSpec("num_ctx", int, 4096, "Context window size in tokens.", True),
    OptionSpec("num_batch", int, 512, "Prompt tokens evaluated per batch.", True),
    OptionSpec("num_gpu", int, -1, "Layers to offload to the GPU; -1 lets the server decide.", True),
    OptionSpec("main_gpu", int, None, "GPU holding small tensors when a model spans several GPUs.", True),
    OptionSpec("use_mmap", bool, None, "Memory-map the model file; unset lets the server decide.", True),
    OptionSpec("num_thread", int, 0, "CPU threads for generation; 0 lets the runtime decide.", True),
    OptionSpec(
        "draft_num_predict", int, 4, "Tokens a draft model proposes per step; 0 turns drafting off.", True
    ),
    # Predict options, applied per request.
    OptionSpec("num_keep", int, 4, "Prompt tokens kept when the context window is shifted."),
    OptionSpec("seed", int, -1, "Random seed; -1 picks a fresh one for every request."),
    OptionSpec("num_predict", int, -1, "Maximum tokens to generate; -1 means no limit."),
    OptionSpec("top_k", int, 40, "Sample only from the k most likely tokens."),
    OptionSpec("top_p", float, 0.9, "Sample from the smallest token set whose probability reaches p."),
    OptionSpec("min_p", float, 0.0, "Drop tokens less likely than p times the most likely token."),
    OptionSpec("typical_p", float, 1.0, "Locally typical sampling threshold; 1.0 turns it off."),
    OptionSpec("repeat_last_n", int, 64, "Tokens checked for repeats; 0 turns it off, -1 means num_ctx."),
    OptionSpec("temperature", float, 0.8, "Sampling temperature; higher is more varied."),
    OptionSpec("repeat_penalty", float, 1.0, "Penalty for repeated tokens; 1.0 turns it off."),
    OptionSpec("presence_penalty", float, 0.0, "Penalty for tokens that appeared at all."),
    OptionSpec("frequency_penalty", float, 0.0, "Penalty growing with how often a token appeared."),
    OptionSpec("stop", list, (), "Stop sequences; repeat the PARAMETER line for more than one."),
)

# Every integer option is handed to llama.cpp as a C int (the seed as an unsigned 32-bit value), so a
# value outside int32 is an error, not a large request: 4294967297 would silently become 1.
_SPECS = tuple(
    OptionSpec(s.name, s.type, s.default, s.description, s.load_time,
               (_INT64_MIN, _INT64_MAX) if s.name == "seed" else (_INT32_MIN, _INT32_MAX))
    if s.type is int else s
    for s in _SPECS
)

#: Every option by name, in Ollama's struct order.
OPTIONS: Mapping[str, OptionSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})

#: Ollama's defaults (``api.DefaultOptions``); read-only, copy with ``dict(DEFAULT_OPTIONS)``.
#: ``num_ctx``: Ollama picks 4096/32768/262144 by VRAM unless OLLAMA_CONTEXT_LENGTH is set; 4096 is its
#: choice for machines without a large GPU.
DEFAULT_OPTIONS: Mapping[str, Any] = MappingProxyType({spec.name: spec.default for spec in _SPECS})

#: Caps on ``stop``: Ollama has none; every stop string costs time after every generated token.
MAX_STOP_SEQUENCES = 64
MAX_STOP_CHARS = 256

#: ``num_predict`` -1 (unlimited) and anything larger is bounded by this many context windows, as
#: upstream does for an open-ended generation (a request must not hold a slot for ever).
OPEN_ENDED_CONTEXT_MULTIPLIER = 10

#: Modelfile parameters Ollama still accepts but ignores with a warning.
DEPRECATED_PARAMETERS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)

_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_OVERFLOW = _FLOAT32_MAX + 2.0**103  # halfway to the next power of two: rounds to infinity
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
# Decimal floats as Go's ParseFloat reads them (no hex floats, no inf/nan: JSON cannot carry those).
# Each branch is anchored on a distinct character, so a failed match backtracks in linear time.
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOL_TEXT = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
_TYPE_WORD = {int: "integer", float: "float32", bool: "boolean", list: "array"}


def _round_to_float32(value: float) -> float:
    if math.isnan(value) or abs(value) >= _FLOAT32_OVERFLOW:
        return math.copysign(math.inf, value)
    # struct refuses anything above the largest float32, even values that round down to it.
    clamped = max(-_FLOAT32_MAX, min(value, _FLOAT32_MAX))
    return float(struct.unpack("<f", struct.pack("<f", clamped))[0])


def _as_float32(value: float) -> float:
    """Round to float32 and return the shortest decimal that reads back to it; OverflowError past float32."""
    single = _round_to_float32(value)
    if math.isinf(single):
        raise OverflowError(value)
    for digits in range(1, 10):
        shortest = float(f"{single:.{digits}g}")
        if _round_to_float32(shortest) == single:
            return shortest
    return single  # unreachable: nine significant digits always identify a float32


def parse_parameter(name: str, raw: str) -> Any:
    """Read the value text of ``PARAMETER name raw``; ``stop`` gives one str (callers collect the list)."""
    spec = OPTIONS.get(name)
    if spec is None:
        raise InvalidParameter(f"unknown parameter '{name}'")
    kind = spec.type
    if kind is list:
        return _check_stop(spec, raw)
    if kind is bool:
        if raw in _BOOL_TEXT:
            return _BOOL_TEXT[raw]
    elif kind is int:
        # The length check comes first: int() refuses strings of more than 4300 digits.
        if len(raw) <= 20 and _INT_TEXT.fullmatch(raw) and _INT64_MIN <= int(raw) <= _INT64_MAX:
            return _check_bounds(spec, int(raw))
    elif _FLOAT_TEXT.fullmatch(raw):
        try:
            return _as_float32(float(raw))
        except OverflowError:
            pass
    word = {int: "int", float: "float", bool: "bool"}[kind]
    shown = raw if len(raw) <= 40 else raw[:40] + "..."
    raise InvalidParameter(f"invalid {word} value '{shown}' for parameter '{name}'")


def parameter_text(name: str, value: Any) -> str:
    """The Modelfile text of one parameter value, the inverse of ``parse_parameter``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        spec = OPTIONS.get(name)
        if spec is not None and spec.type is int and value.is_integer():
            return str(int(value))
        return format_float_v(value)
    return str(value)


def _check_bounds(spec: OptionSpec, value: int) -> int:
    if spec.bounds is not None and not spec.bounds[0] <= value <= spec.bounds[1]:
        low, high = spec.bounds
        raise InvalidParameter(f'option "{spec.name}" must be between {low} and {high}, got {value}')
    return value


def _check_stop(spec: OptionSpec, value: str) -> str:
    # Every stop string is matched against the output after every token, in the runner's decode loop
    # that all parallel requests share: its cost must stay small.
    if len(value) > MAX_STOP_CHARS:
        raise InvalidParameter(
            f'option "{spec.name}": a stop sequence may be at most {MAX_STOP_CHARS} characters')
    return value


class ValidOptions(dict[str, Any]):
    """The options that passed ``validate_options``; ``ignored`` names the unknown keys it dropped."""

    ignored: tuple[str, ...] = ()


def _coerce_option(spec: OptionSpec, value: Any) -> Any:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if spec.type is bool:
        if isinstance(value, bool):
            return value
    elif spec.type is int:
        # JSON has one number type, so Ollama takes 2.0 (and truncates 2.7) for an integer option.
        if isinstance(value, float) and math.isfinite(value):
            value = int(value)
        if is_number and isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
            return _check_bounds(spec, value)
    elif spec.type is float:
        if is_number:
            try:
                return _as_float32(float(value))
            except OverflowError:
                pass
    elif isinstance(value, list | tuple):
        if all(isinstance(item, str) for item in value):
            if len(value) > MAX_STOP_SEQUENCES:
                raise InvalidParameter(f'option "{spec.name}" allows at most {MAX_STOP_SEQUENCES} sequences')
            return [_check_stop(spec, item) for item in value]
        raise InvalidParameter(f'option "{spec.name}" must be of an array of strings')
    raise InvalidParameter(f'option "{spec.name}" must be of type {_TYPE_WORD[spec.type]}')


def validate_options(opts: Mapping[str, Any]) -> ValidOptions:
    """Type-check and coerce request ``options`` like Ollama; unknown keys are logged and dropped.

    ``None`` values are skipped, as Ollama leaves the default in place for them.
    """
    valid = ValidOptions()
    ignored = []
    for key, value in opts.items():
        spec = OPTIONS.get(key)
        if spec is None:
            log.warning("invalid option provided: %s", key)
            ignored.append(key)
        elif value is not None:
            valid[key] = _coerce_option(spec, value)
    valid.ignored = tuple(ignored)
    return valid


def _show_value(value: Any) -> str:
    # Ollama prints values read back from the JSON params blob with %#v: every number is a float64.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        try:
            return format_float_v(float(value))
        except OverflowError:
            return str(value)
    if isinstance(value, str):
        return go_quote(value)
    if value is None:
        return "<nil>"
    return str(value)


def format_parameters(params: Mapping[str, Any]) -> str:
    """The ``parameters`` text of ``/api/show``: ``name`` padded to 30 columns, a space, the value.

    A list (``stop``) gives one line per item. Ollama walks a Go map, so its order is random; ours
    is sorted by name, the order of the params blob on disk.
    """
    lines = []
    for name in sorted(params):
        value = params[name]
        for item in value if isinstance(value, list | tuple) else [value]:
            lines.append(f"{name:<30} {_show_value(item)}")
    return "\n".join(lines)


def stored_options(params: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """A params layer read from the store (created here, by Ollama, or pulled from any registry) put
    through the checks a request gets; an entry that fails them is dropped with a warning, so the
    engine never sees it and the model still loads with that option at its default."""
    valid: dict[str, Any] = {}
    for key, value in params.items():
        spec = OPTIONS.get(key)
        if spec is None or value is None:
            continue  # deprecated or unknown names: Ollama ignores them too
        try:
            valid[key] = _coerce_option(spec, value)
        except InvalidParameter as exc:
            log.warning("%s: ignoring stored parameter: %s", origin, exc)
    return valid


def predict_limits(opts: Mapping[str, Any], n_ctx: int, n_vocab: int) -> dict[str, int]:
    """The per-request integers the engine uses, clamped to what this context and vocabulary allow.

    The one place that turns an option into something llama.cpp may be handed (the runner calls it
    for every request): ``repeat_last_n`` -1 or beyond the context is the context; ``top_k`` is at most
    the vocabulary; ``num_keep`` at most half the context; ``num_predict`` -1 or past ten context
    windows is ten windows, and -2 fills the context as in Ollama.
    """

    def get(name: str) -> int:
        value = opts.get(name)
        try:
            return int(value) if value is not None else int(DEFAULT_OPTIONS[name])
        except (TypeError, ValueError, OverflowError):
            return int(DEFAULT_OPTIONS[name])

    repeat_last_n = get("repeat_last_n")
    repeat_last_n = n_ctx if repeat_last_n < 0 or repeat_last_n > n_ctx else repeat_last_n
    num_predict = get("num_predict")
    ceiling = OPEN_ENDED_CONTEXT_MULTIPLIER * n_ctx
    if num_predict != -2 and (num_predict < 0 or num_predict > ceiling):
        num_predict = ceiling
    return {
        "repeat_last_n": repeat_last_n,
        "top_k": max(0, min(get("top_k"), n_vocab)),
        "num_keep": max(0, min(get("num_keep"), n_ctx // 2)),
        "num_predict": num_predict,
    }
