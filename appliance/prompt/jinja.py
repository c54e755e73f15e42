"""Rendering a GGUF's own ``tokenizer.chat_template`` (Hugging Face style Jinja), sandboxed.

The environment matches what Hugging Face's ``apply_chat_template`` gives templates: an immutable
sandbox with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, the
``{% generation %}`` block, ``raise_exception``, ``strftime_now`` and a ``tojson`` that neither escapes
HTML nor non-ASCII and takes ``indent``/``separators``/``sort_keys``.

A GGUF's template is untrusted code, so rendering is also bounded:

- every loop iteration and every call spends one step of ``MAX_STEPS``; loops are counted by rewriting
  the template's syntax tree so each ``for`` iterates through a counting guard;
- everything written, also into ``{% set %}`` blocks and macro bodies, is counted against
  ``MAX_PRODUCED_CHARS``, and the rendered prompt may not exceed ``MAX_RENDERED_CHARS``;
- operations that multiply sizes (``*``, ``**``, ``%``, ``~``, ``+``, ``center``/``indent``/
  ``replace``/``wordwrap``/``format`` and their ``str`` method twins) are checked before they allocate,
  and no intermediate string or list may exceed ``MAX_VALUE_CHARS``.

Every failure - syntax, ``raise_exception``, misuse of undefined values, sandbox violations, limits -
is a ``ChatTemplateError`` (400) naming the cause.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes as nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

from appliance.errors import BadRequest

MAX_TEMPLATE_CHARS = 1 << 20
MAX_RENDERED_CHARS = 4 << 20
MAX_VALUE_CHARS = 4 << 20
MAX_PRODUCED_CHARS = 32 << 20
MAX_STEPS = 500_000
MAX_JSON_INDENT = 64
MAX_EXPONENT = 4096

# Names the guards are reached by; a template mentioning this prefix is refused, so it cannot shadow them.
_RESERVED = "__appliance_"
_LOOP_GUARD = _RESERVED + "loop__"
_VALUE_GUARD = _RESERVED + "value__"
_OUTPUT_GUARD = _RESERVED + "output__"

_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class ChatTemplateError(BadRequest):
    """A chat template that does not parse, fails while rendering, or breaks the sandbox or its limits."""


class _Budget:
    """Per-render spending; reached through a context variable so compiled templates can be shared."""

    def __init__(self) -> None:
        self.steps = 0
        self.produced = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise ChatTemplateError(f"chat template: too much work (more than {MAX_STEPS} steps)")

    def produce(self, chars: int) -> None:
        self.produced += chars
        if self.produced > MAX_PRODUCED_CHARS:
            raise ChatTemplateError(f"chat template: writes more than {MAX_PRODUCED_CHARS} characters")


_budget: contextvars.ContextVar[_Budget] = contextvars.ContextVar("chat_template_budget")


def _check_size(value: Any) -> Any:
    if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_VALUE_CHARS:
        raise ChatTemplateError(f"chat template: a value grew past {MAX_VALUE_CHARS} items or characters")
    return value


def _check_int(value: Any, limit: int = MAX_VALUE_CHARS) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit:
        raise ChatTemplateError(f"chat template: number {value} is too large here")


def _loop_guard(iterable: Any) -> Any:
    budget = _budget.get()
    for item in iterable:
        budget.step()
        yield item


def _output_guard(value: Any) -> Any:
    _budget.get().produce(len(value) if isinstance(value, str) else len(str(value)))
    return value


# ------------------------------------------------------------------------------ amplification checks


def _check_printf(fmt: str, args: Any) -> None:
    for width, precision in _PRINTF_SPEC.findall(fmt):
        if "*" in (width, precision):
            for arg in args if isinstance(args, tuple) else (args,):
                _check_int(arg)
        for number in (width, precision):
            if number.isdigit():
                _check_int(int(number))


def _check_format(fmt: str) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format will raise the same error itself
    for _, _, spec, _ in fields:
        for number in re.findall(r"\d+", spec or ""):
            _check_int(int(number))


def _check_amplifier(name: str, text: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Refuse, before it allocates, a string operation whose result would exceed MAX_VALUE_CHARS."""

    def arg(pos: int, key: str, default: Any) -> Any:
        return args[pos] if len(args) > pos else kwargs.get(key, default)

    estimate = len(text)
    if name in ("center", "ljust", "rjust", "zfill"):
        width = arg(0, "width", 0)
        _check_int(width)
        estimate = max(estimate, width if isinstance(width, int) else 0)
    elif name == "indent":
        width = arg(0, "width", 4)
        _check_int(width)
        per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        estimate += per_line * (text.count("\n") + 1)
    elif name == "expandtabs":
        tabsize = arg(0, "tabsize", 8)
        _check_int(tabsize)
        estimate += text.count("\t") * (tabsize if isinstance(tabsize, int) else 0)
    elif name == "replace":
        old, new = arg(0, "old", ""), arg(1, "new", "")
        if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
            estimate += (len(new) - len(old)) * (text.count(old) if old else len(text) + 1)
    elif name == "wordwrap":
        wrapstring = arg(2, "wrapstring", "\n")
        estimate *= 1 + (len(wrapstring) if isinstance(wrapstring, str) else 1)
    elif name == "%":
        _check_printf(text, tuple(args))
    elif name in ("format", "format_map"):
        _check_format(text)
    if estimate > MAX_VALUE_CHARS:
        raise ChatTemplateError(f"chat template: {name}() would build a value too large")


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter so big int arguments are refused and its result size is checked."""
    skip = 1 if getattr(func, "jinja_pass_arg", None) is None else 2  # value (and context) first
    operation = "%" if name == "format" else name  # the format filter is printf-style

    @functools.wraps(func)  # keeps jinja's pass_context/pass_eval_context marker
    def guarded(*args: Any, **kwargs: Any) -> Any:
        value, rest = args[skip - 1] if len(args) >= skip else None, args[skip:]
        counts = rest[1:] if name in ("batch", "slice") else rest
        for number in (*counts, *kwargs.values()):
            _check_int(number)
        if name in ("batch", "slice") and rest:
            _check_int(rest[0], 1 << 16)
        if isinstance(value, str):
            _check_amplifier(operation, value, rest, kwargs)
        return _check_size(func(*args, **kwargs))

    return guarded


# ---------------------------------------------------------------------------------- environment


def _raise_exception(message: Any = "") -> None:
    raise ChatTemplateError(f"chat template raised an error: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(str(fmt)[:256])


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    _check_int(indent, MAX_JSON_INDENT)
    if isinstance(indent, str) and len(indent) > MAX_JSON_INDENT:
        raise ChatTemplateError("chat template: tojson indent too long")
    if separators is not None:
        separators = tuple(separators)  # type: ignore[assignment]
    text = json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    return _check_size(text)


class _GenerationExtension(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` marks assistant text for training masks; render as is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        if attribute.startswith("__"):  # no chat template has a reason to touch dunders: fail loudly
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} is unsafe")
        return super().unsafe_undefined(obj, attribute)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
                    if len(seq) * count > MAX_VALUE_CHARS:
                        raise ChatTemplateError("chat template: repetition builds a value too large")
        elif operator == "**" and isinstance(right, int) and isinstance(left, int) and abs(left) > 1:
            _check_int(right, MAX_EXPONENT)
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right)
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
            if len(left) + len(right) > MAX_VALUE_CHARS:
                raise ChatTemplateError("chat template: concatenation builds a value too large")
        return _check_size(super().call_binop(context, operator, left, right))

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if obj is _loop_guard or obj is _value_guard or obj is _output_guard:
            return context.call(obj, *args, **kwargs)  # free: the guards are the accounting
        _budget.get().step()
        target = getattr(obj, "__wrapped__", obj)  # str.format arrives wrapped by the sandbox
        receiver = getattr(target, "__self__", None)
        if isinstance(receiver, str):
            for value in (*args, *kwargs.values()):
                _check_int(value)
            _check_amplifier(getattr(target, "__name__", ""), receiver, args, kwargs)
        return _check_size(super().call(context, obj, *args, **kwargs))


def _value_guard(value: Any) -> Any:
    return _check_size(value)


class _InsertGuards(NodeTransformer):
    """Route loops, ``~`` concatenations and output through the guards."""

    @staticmethod
    def _wrap(guard: str, node: nodes.Node) -> nodes.Call:
        call = nodes.Call(nodes.Name(guard, "load"), [node], [], None, None)
        call.set_lineno(node.lineno)
        return call

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = self._wrap(_LOOP_GUARD, node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return self._wrap(_VALUE_GUARD, node)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [self._wrap(_OUTPUT_GUARD, child) for child in node.nodes]
        return node


@functools.cache
def _environment() -> _GuardedEnvironment:
    env = _GuardedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationExtension],
    )
    env.globals.pop("lipsum", None)  # generates text of any size on request; no chat template uses it
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        **{_LOOP_GUARD: _loop_guard, _VALUE_GUARD: _value_guard, _OUTPUT_GUARD: _output_guard},
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _guard_filter(name, func) for name, func in env.filters.items()}
    return env


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"chat template is longer than {MAX_TEMPLATE_CHARS} characters")
    if _RESERVED in template:
        raise ChatTemplateError(f"chat template uses the reserved name prefix {_RESERVED!r}")
    env = _environment()
    try:
        tree = env.parse(template)
        _InsertGuards().visit(tree)
        return env.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template: syntax error on line {exc.lineno}: {exc.message}") from exc
    except (jinja2.TemplateError, RecursionError, MemoryError, SyntaxError, ValueError) as exc:
        raise ChatTemplateError(f"chat template does not compile: {exc}") from exc


def validate_chat_template(template: str) -> None:
    """Raise ChatTemplateError unless the template parses (what rendering it would find is not known)."""
    _compile(template)


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    extra: dict[str, Any] | None = None,
) -> str:
    """Render a Hugging Face style chat template as ``apply_chat_template`` would.

    ``extra`` adds template variables (``enable_thinking``, ``reasoning_effort``, ...); the named
    arguments win over it.
    """
    compiled = _compile(template)
    variables = {
        **(extra or {}),
        "messages": messages,
        "tools": tools or None,
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    token = _budget.set(_Budget())
    try:
        parts: list[str] = []
        rendered = 0
        for chunk in compiled.generate(variables):
            rendered += len(chunk)
            if rendered > MAX_RENDERED_CHARS:
                raise ChatTemplateError(f"chat template renders more than {MAX_RENDERED_CHARS} characters")
            parts.append(chunk)
        return "".join(parts)
    except ChatTemplateError:
        raise
    except SecurityError as exc:
        raise ChatTemplateError(f"chat template broke the sandbox: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
    except RecursionError as exc:
        raise ChatTemplateError("chat template recursed too deeply") from exc
    except MemoryError as exc:
        raise ChatTemplateError("chat template ran out of memory") from exc
    except Exception as exc:  # the template's own mistakes: TypeError, KeyError, ZeroDivisionError, ...
        raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
    finally:
        _budget.reset(token)
