"""A bounded renderer for Go's text/template, the language of Ollama's TEMPLATE layers.

``Template.parse(text)`` lexes and parses once (raising ``TemplateError`` with a line and column), then
``template.render(data)`` executes the tree against plain Python data. The grammar, whitespace trimming
(``{{-`` / ``-}}``), scoping, ``break``/``continue``, ``define``/``block``/``template`` and the builtin
functions follow Go's documented semantics, including Go 1.22-1.23's ``range`` over an integer and
``{{ else with }}``; ``gotemplate_funcs`` holds the value semantics. ``vars()`` and
``truncate_after_response()`` are the two tree operations Ollama performs on TEMPLATE layers.

Decisions where Python data differs from the Go structs Ollama passes:

* A missing mapping key is ``None`` (Go nil), and a field of ``None`` is ``None`` (Go would report a nil
  pointer). Printing ``None`` gives ``<no value>``, as Go prints a nil ``interface{}`` from Ollama's
  ``map[string]any``; ``print``/``printf`` give ``<nil>``. Struct fields Go would print as "" must be
  present in the data as "".
* ``len`` of ``None`` is 0, since ``None`` also stands for Go's nil slices (``.Tools`` without tools).
* ``eq``/``lt``… compare ints with floats by value, where Go would refuse mixed kinds.
* ``json`` keeps mapping insertion order (see ``gotemplate_funcs``); ``range`` and printing sort keys.

Nothing here does I/O or evaluates Python; output, work and nesting are capped by ``Limits``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from typing import Any

from appliance.prompt import gotemplate_funcs as funcs
from appliance.prompt.gotemplate_parse import (
    Action,
    Branch,
    Chain,
    Command,
    Field,
    Ident,
    Limits,
    Literal,
    LoopControl,
    Node,
    Pipe,
    TemplateCall,
    TemplateError,
    Text,
    Variable,
    _Parser,
    _position,
    _q,
)

__all__ = ["Limits", "Template", "TemplateError"]


# ============================================================================================ execution

_MISSING: Any = object()  # "no value piped in", distinct from None (Go nil)


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Exec:
    def __init__(self, src: str, templates: dict[str, list[Node]], limits: Limits, today: datetime.date):
        self.src = src
        self.templates = templates
        self.limits = limits
        self.today = today
        self.out: list[str] = []
        self.out_len = 0
        self.steps = 0
        self.work = 0
        self.depth = 0
        # id -> (mapping, its keys in Go's order); the mapping is kept so that its id stays its own.
        self.key_orders: dict[int, tuple[Mapping[Any, Any], list[Any]]] = {}

    def error(self, message: str, node: Node) -> TemplateError:
        return TemplateError(message, *_position(self.src, node.pos))

    def step(self, node: Node) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise self.error(f"template exceeded {self.limits.max_steps} execution steps", node)

    def charge(self, amount: int, node: Node) -> None:
        self.work += amount
        if self.work > self.limits.max_work:
            raise self.error(f"template exceeded its work limit ({self.limits.max_work})", node)

    def write(self, text: str, node: Node) -> None:
        self.out_len += len(text)
        if self.out_len > self.limits.max_output_chars:
            raise self.error(f"template output exceeds {self.limits.max_output_chars} characters", node)
        self.out.append(text)

    def enter(self, node: Node) -> None:
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise self.error(f"exceeded maximum template depth ({self.limits.max_depth})", node)

    # ------------------------------------------------------------------------------------ statements

    def walk(self, nodes: list[Node], dot: Any, scope: list[list[Any]]) -> None:
        for node in nodes:
            self.step(node)
            if isinstance(node, Text):
                self.write(node.text, node)
            elif isinstance(node, Action):
                value = self.eval_pipeline(node.pipe, dot, scope)
                if not node.pipe.decls:
                    self.write("<no value>" if value is None else funcs.format_value(value), node)
            elif isinstance(node, Branch):
                self.enter(node)
                try:
                    if node.kind == "range":
                        self.walk_range(node, dot, scope)
                    else:
                        self.walk_if_or_with(node, dot, scope)
                finally:
                    self.depth -= 1
            elif isinstance(node, TemplateCall):
                self.walk_template(node, dot, scope)
            elif isinstance(node, LoopControl):
                raise _Break if node.word == "break" else _Continue

    def walk_if_or_with(self, node: Branch, dot: Any, scope: list[list[Any]]) -> None:
        mark = len(scope)
        try:
            value = self.eval_pipeline(node.pipe, dot, scope)
            if funcs.is_true(value):
                self.walk(node.body, value if node.kind == "with" else dot, scope)
            elif node.orelse is not None:
                self.walk(node.orelse, dot, scope)
        finally:
            del scope[mark:]

    def range_items(self, value: Any, node: Branch) -> tuple[int, Iterator[tuple[Any, Any]]]:
        """How many items ``range`` visits, and (index or key, element) pairs made one at a time.

        Only the items visited are made: a ``{{ break }}`` in a loop over a long slice costs one step,
        not the slice's length, and a map's keys are sorted once per render, not once per loop.
        """
        k = funcs.kind(value)
        if k == "nil":
            return 0, iter(())
        if k == "slice":
            return len(value), enumerate(value)
        if k == "map":
            keys = self.sorted_keys(value)
            return len(keys), ((key, value[key]) for key in keys)
        if k == "int":
            if len(node.pipe.decls) > 1:
                raise self.error(f"can't use {value} to iterate over more than one variable", node)
            if value > self.limits.max_steps:
                raise self.error(f"template exceeded {self.limits.max_steps} execution steps", node)
            return max(value, 0), ((i, i) for i in range(value))
        raise self.error(f"range can't iterate over {funcs.format_value(value)}", node)

    def sorted_keys(self, mapping: Mapping[Any, Any]) -> list[Any]:
        cached = self.key_orders.get(id(mapping))
        if cached is None or cached[0] is not mapping:
            cached = self.key_orders[id(mapping)] = (mapping, funcs.sorted_keys(mapping))
        return cached[1]

    def walk_range(self, node: Branch, dot: Any, scope: list[list[Any]]) -> None:
        mark = len(scope)
        decls, assign = node.pipe.decls, node.pipe.is_assign
        try:
            value = self.eval_commands(node.pipe, dot, scope)
            count, items = self.range_items(value, node)
            if not assign:
                scope.extend([name, value] for name in decls)
            for index, elem in items:
                self.step(node)
                if assign:
                    if len(decls) > 1:
                        self.set_var(scope, decls[0], index, node)
                    if decls:
                        self.set_var(scope, decls[-1], elem, node)
                elif len(decls) > 1:
                    scope[mark][1], scope[mark + 1][1] = index, elem
                elif decls:
                    scope[mark][1] = elem
                body_mark = len(scope)
                try:
                    self.walk(node.body, elem, scope)
                except _Continue:
                    pass
                except _Break:
                    break
                finally:
                    del scope[body_mark:]
            if not count and node.orelse is not None:
                self.walk(node.orelse, dot, scope)
        finally:
            del scope[mark:]

    def walk_template(self, node: TemplateCall, dot: Any, scope: list[list[Any]]) -> None:
        body = self.templates.get(node.name)
        if body is None:
            raise self.error(f"template {_q(node.name)} not defined", node)
        value = None if node.pipe is None else self.eval_pipeline(node.pipe, dot, scope)
        self.enter(node)
        try:
            self.walk(body, value, [["$", value]])
        finally:
            self.depth -= 1

    # ------------------------------------------------------------------------------------ expressions

    def set_var(self, scope: list[list[Any]], name: str, value: Any, node: Node) -> None:
        for entry in reversed(scope):
            if entry[0] == name:
                entry[1] = value
                return
        raise self.error(f"undefined variable: {name}", node)

    def get_var(self, scope: list[list[Any]], node: Variable) -> Any:
        for name, value in reversed(scope):
            if name == node.name:
                return value
        raise self.error(f"undefined variable: {node.name}", node)

    def eval_pipeline(self, pipe: Pipe, dot: Any, scope: list[list[Any]]) -> Any:
        value = self.eval_commands(pipe, dot, scope)
        for name in pipe.decls:
            if pipe.is_assign:
                self.set_var(scope, name, value, pipe)
            else:
                scope.append([name, value])
        return value

    def eval_commands(self, pipe: Pipe, dot: Any, scope: list[list[Any]]) -> Any:
        value = _MISSING
        for cmd in pipe.cmds:
            self.step(cmd)
            value = self.eval_command(cmd, dot, scope, value)
        return value

    def not_a_function(self, args: list[Node], final: Any, node: Node) -> None:
        if len(args) > 1 or final is not _MISSING:
            raise self.error("can't give argument to non-function", node)

    def eval_command(self, cmd: Command, dot: Any, scope: list[list[Any]], final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, Field):
            return self.eval_fields(dot, first.names, cmd.args, final, first)
        if isinstance(first, Chain | Variable):
            return self.eval_fields(
                self.eval_arg(first, dot, scope, chained=True), first.fields, cmd.args, final, first
            )
        if isinstance(first, Ident):
            return self.call(first, cmd.args[1:], final, dot, scope)
        self.not_a_function(cmd.args, final, first)
        if isinstance(first, Literal) and first.value is None and not first.is_dot:
            raise self.error("nil is not a command", first)
        return self.eval_arg(first, dot, scope)

    def eval_fields(
        self, receiver: Any, names: tuple[str, ...], args: list[Node], final: Any, node: Node
    ) -> Any:
        if not names:
            self.not_a_function(args, final, node)
        has_args = len(args) > 1 or final is not _MISSING
        for i, name in enumerate(names):
            if receiver is None:
                return None
            if not isinstance(receiver, Mapping):
                raise self.error(f"can't evaluate field {name} in type {funcs.go_type_name(receiver)}", node)
            if has_args and i == len(names) - 1:
                raise self.error(f"{name} is not a method but has arguments", node)
            receiver = receiver.get(name)
        return receiver

    def eval_arg(self, node: Node, dot: Any, scope: list[list[Any]], chained: bool = False) -> Any:
        """The value of one argument; ``chained`` evaluates a chain or variable without its fields."""
        if isinstance(node, Literal):
            return dot if node.is_dot else node.value
        if isinstance(node, Field):
            return self.eval_fields(dot, node.names, [node], _MISSING, node)
        if isinstance(node, Variable):
            value = self.get_var(scope, node)
            return value if chained else self.eval_fields(value, node.fields, [node], _MISSING, node)
        if isinstance(node, Chain):
            if isinstance(node.node, Literal) and node.node.value is None and not node.node.is_dot:
                raise self.error("indirection through explicit nil", node)
            base = self.eval_arg(node.node, dot, scope)
            return base if chained else self.eval_fields(base, node.fields, [node], _MISSING, node)
        if isinstance(node, Pipe):
            self.enter(node)
            try:
                return self.eval_pipeline(node, dot, scope)
            finally:
                self.depth -= 1
        if isinstance(node, Ident):
            return self.call(node, [], _MISSING, dot, scope)
        raise self.error("can't evaluate this argument", node)

    def call(self, ident: Ident, arg_nodes: list[Node], final: Any, dot: Any, scope: list[list[Any]]) -> Any:
        builtin = funcs.BUILTINS[ident.name]
        count = len(arg_nodes) + (final is not _MISSING)
        if count < builtin.min_args or (builtin.max_args is not None and count > builtin.max_args):
            want = f"at least {builtin.min_args}" if builtin.max_args is None else str(builtin.min_args)
            raise self.error(f"wrong number of args for {ident.name}: want {want} got {count}", ident)
        if ident.name in ("and", "or"):
            value = None
            for arg in arg_nodes:
                value = self.eval_arg(arg, dot, scope)
                if funcs.is_true(value) == (ident.name == "or"):
                    return value
            return final if final is not _MISSING else value
        args = [self.eval_arg(arg, dot, scope) for arg in arg_nodes]
        if final is not _MISSING:
            args.append(final)
        # A builtin reads its string arguments whole (len encodes, eq compares, index and slice copy),
        # so they are charged like the strings builtins build: a loop over a long prompt must run into
        # the work limit, not into minutes of CPU.
        self.charge(sum(len(arg) for arg in args if isinstance(arg, str)), ident)
        try:
            result = self.apply(ident.name, builtin, args)
        except funcs.FuncError as exc:
            raise self.error(f"error calling {ident.name}: {exc}", ident) from None
        if isinstance(result, str | list):
            self.charge(len(result), ident)
        return result

    def apply(self, name: str, builtin: funcs.Builtin, args: list[Any]) -> Any:
        if name == "printf":
            if funcs.kind(args[0]) != "string":
                got = funcs.go_type_name(args[0])
                raise funcs.FuncError(f"wrong type for value; expected string; got {got}")
            return funcs.sprintf(args[0], args[1:], self.limits.max_output_chars)
        if name in ("currentDate", "yesterdayDate"):
            return funcs.date_func(name, self.today)(*args)
        assert builtin.impl is not None
        return builtin.impl(*args)


# ============================================================================================ template


def _identifiers(nodes: list[Node] | None) -> list[str]:
    names: list[str] = []
    for node in nodes or []:
        if isinstance(node, TemplateCall):
            if node.pipe is None:
                raise TemplateError("undefined template specified")
            names += _identifiers([node.pipe])
        elif isinstance(node, Action):
            names += _identifiers([node.pipe])
        elif isinstance(node, Branch):
            names += _identifiers([node.pipe]) + _identifiers(node.body) + _identifiers(node.orelse)
        elif isinstance(node, Pipe):
            names += _identifiers([arg for cmd in node.cmds for arg in cmd.args])
        elif isinstance(node, Field):
            names += node.names
        elif isinstance(node, Variable):
            names += [node.name, *node.fields]
    return names


def _cut_after_response(root: list[Node]) -> list[Node]:
    """Ollama's legacy-prompt surgery: drop every node visited after the first ``.Response`` field."""
    cut = False

    def drop(node: Node | list[Node]) -> bool:
        nonlocal cut
        if isinstance(node, Field) and "Response" in node.names:
            cut = True
            return False
        return cut

    def walk_list(nodes: list[Node]) -> list[Node] | None:
        if drop(nodes):
            return None
        return [kept for node in nodes if (kept := walk(node)) is not None]

    def walk_pipe(pipe: Pipe) -> Pipe | None:
        if drop(pipe):
            return None
        cmds = []
        for cmd in pipe.cmds:
            args = [kept for arg in cmd.args if (kept := walk(arg)) is not None]
            if not args:
                return None
            cmds.append(Command(cmd.pos, args))
        return Pipe(pipe.pos, pipe.decls, pipe.is_assign, cmds)

    def walk(node: Node) -> Node | None:
        if isinstance(node, Pipe):
            return walk_pipe(node)
        if drop(node):
            return None
        if isinstance(node, Branch):
            body = walk_list(node.body) or []
            orelse = None if node.orelse is None else walk_list(node.orelse)
            return Branch(node.pos, node.kind, node.pipe, body, orelse)
        if isinstance(node, Action):
            pipe = walk_pipe(node.pipe)
            return None if pipe is None else Action(node.pos, pipe)
        return node

    return walk_list(root) or []


class Template:
    """A parsed Go template: parse once, render many times; immutable and safe to share."""

    __slots__ = ("_templates", "_text")

    def __init__(self, text: str, templates: dict[str, list[Node]]) -> None:
        self._text = text
        self._templates = templates

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse Go template source; raises TemplateError naming the line and column of a mistake."""
        try:
            return cls(text, _Parser(text).parse())
        except RecursionError:
            raise TemplateError("template nesting too deep") from None

    @property
    def text(self) -> str:
        return self._text

    def render(self, data: Any, *, limits: Limits | None = None, today: datetime.date | None = None) -> str:
        """Execute the template with ``data`` as dot; ``today`` feeds currentDate (default: today)."""
        state = _Exec(self._text, self._templates, limits or Limits(), today or datetime.date.today())
        try:
            state.walk(self._templates[""], data, [["$", data]])
        except RecursionError:
            raise TemplateError("template nesting too deep") from None
        return "".join(state.out)

    def vars(self) -> list[str]:
        """Ollama's Vars(): every field and variable name used, lower-cased and sorted.

        Raises TemplateError for ``{{ template "x" }}`` without an argument, as Ollama rejects it.
        """
        names: set[str] = set()
        for nodes in self._templates.values():
            names.update(name.lower() for name in _identifiers(nodes))
        return sorted(names)

    def truncate_after_response(self) -> Template:
        """A copy whose main body stops at its first ``.Response`` (Ollama's legacy last turn)."""
        templates = dict(self._templates)
        templates[""] = _cut_after_response(self._templates[""])
        return Template(self._text, templates)
