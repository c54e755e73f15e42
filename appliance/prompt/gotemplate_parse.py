"""Lexer and parser for Go's text/template (see :mod:`appliance.prompt.gotemplate`).

Turns template source into a tree of :class:`Node` objects once; positions in errors are 1-based
line:column, and nesting is capped at parse time as it is at execution time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from appliance.errors import BadRequest
from appliance.prompt import gotemplate_funcs as funcs

MAX_PARSE_NESTING = 64


class TemplateError(BadRequest):
    """A template that does not parse or fails while rendering; the message carries line:column."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        self.reason = message
        self.line = line
        self.col = col
        where = f"{line}:{col}: " if line is not None else ""
        super().__init__(f"template: {where}{message}")


@dataclass(frozen=True)
class Limits:
    """Caps that keep a hostile TEMPLATE from hanging or exhausting memory."""

    max_output_chars: int = 16 * 1024 * 1024
    # Characters built by functions (printf, json…) or given to them as strings, plus elements copied
    # by slice.
    max_work: int = 64 * 1024 * 1024
    # Nodes executed plus range iterations.
    max_steps: int = 2_000_000
    # Nested if/with/range bodies plus template calls, at execution.
    max_depth: int = 64


# ============================================================================================ lexer

TEXT, LEFT, RIGHT, SPACE, FIELD, VAR, IDENT, KEYWORD = "text", "{{", "}}", "space", "field", "var", "id", "kw"
STRING, NUMBER, BOOL, DOT, PIPE, LPAREN, RPAREN = "string", "number", "bool", ".", "|", "(", ")"
DECLARE, ASSIGN, CHAR, EOF = ":=", "=", "char", "EOF"
KEYWORDS = frozenset(
    ["block", "break", "continue", "define", "else", "end", "if", "range", "nil", "template", "with"]
)
SPACES = " \t\r\n"


class Token(NamedTuple):
    kind: str
    val: Any
    pos: int


def _position(src: str, pos: int) -> tuple[int, int]:
    line = src.count("\n", 0, pos) + 1
    return line, pos - (src.rfind("\n", 0, pos) + 1) + 1


_q = funcs.go_quote
# What Go's lexer consumes as a number (validated afterwards by funcs.go_number).
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?[0-9_]*)?"
    r"|0[oO][0-7_]*|0[bB][01_]*|[0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9_]*)?)i?"
)


def _is_alnum(ch: str) -> bool:
    return ch == "_" or ch.isalpha() or ch.isdecimal()


class _Lexer:
    def __init__(self, src: str) -> None:
        self.src = src
        self.tokens: list[Token] = []

    def error(self, message: str, pos: int) -> TemplateError:
        return TemplateError(message, *_position(self.src, pos))

    def at_right_delim(self, pos: int) -> tuple[bool, bool]:
        if self.src[pos : pos + 1] in tuple(SPACES) and self.src.startswith("-}}", pos + 1):
            return True, True
        return self.src.startswith("}}", pos), False

    def skip_spaces(self, pos: int) -> int:
        while pos < len(self.src) and self.src[pos] in SPACES:
            pos += 1
        return pos

    def lex(self) -> list[Token]:
        src, pos = self.src, 0
        while True:
            left = src.find("{{", pos)
            if left < 0:
                if pos < len(src):
                    self.tokens.append(Token(TEXT, src[pos:], pos))
                self.tokens.append(Token(EOF, None, len(src)))
                return self.tokens
            inner = left + 2
            trim = src[inner : inner + 1] == "-" and src[inner + 1 : inner + 2] in tuple(SPACES)
            text = src[pos:left].rstrip(SPACES) if trim else src[pos:left]
            if text:
                self.tokens.append(Token(TEXT, text, pos))
            inner += 2 if trim else 0
            if src.startswith("/*", inner):
                pos = self.lex_comment(left, inner)
            else:
                self.tokens.append(Token(LEFT, None, left))
                pos = self.lex_action(inner)

    def lex_comment(self, left: int, pos: int) -> int:
        end = self.src.find("*/", pos + 2)
        if end < 0:
            raise self.error("unclosed comment", left)
        delim, trim = self.at_right_delim(end + 2)
        if not delim:
            raise self.error("comment ends before closing delimiter", left)
        pos = end + 2 + (2 if trim else 0) + 2
        return self.skip_spaces(pos) if trim else pos

    def lex_action(self, pos: int) -> int:
        src, parens = self.src, 0
        while True:
            delim, trim = self.at_right_delim(pos)
            if delim:
                if parens:
                    raise self.error("unclosed left paren", pos)
                pos += 2 if trim else 0
                self.tokens.append(Token(RIGHT, None, pos))
                return self.skip_spaces(pos + 2) if trim else pos + 2
            if pos >= len(src):
                raise self.error("unclosed action", pos)
            ch = src[pos]
            if ch in SPACES:
                end = self.skip_spaces(pos)
                if src.startswith("-}}", end):
                    end -= 1  # that space belongs to the " -}}" marker
                if end > pos:
                    self.tokens.append(Token(SPACE, None, pos))
                pos = end
            elif ch in "=|()":
                parens += {"(": 1, ")": -1}.get(ch, 0)
                if parens < 0:
                    raise self.error("unexpected right paren", pos)
                self.tokens.append(Token({"=": ASSIGN, "|": PIPE, "(": LPAREN, ")": RPAREN}[ch], ch, pos))
                pos += 1
            elif ch == ":":
                if src[pos + 1 : pos + 2] != "=":
                    raise self.error("expected :=", pos)
                self.tokens.append(Token(DECLARE, ":=", pos))
                pos += 2
            elif ch in "\"'`":
                pos = self.lex_quote(pos, ch)
            elif ch in "$." and not (ch == "." and src[pos + 1 : pos + 2].isdecimal()):
                pos = self.lex_field_or_variable(pos, ch)
            elif ch in "+-." or ch.isdecimal():
                pos = self.lex_number(pos)
            elif _is_alnum(ch):
                end = pos
                while end < len(src) and _is_alnum(src[end]):
                    end += 1
                self.check_terminator(end)
                word = src[pos:end]
                kind = KEYWORD if word in KEYWORDS else BOOL if word in ("true", "false") else IDENT
                self.tokens.append(Token(kind, word == "true" if kind == BOOL else word, pos))
                pos = end
            elif ch.isascii() and ch.isprintable():
                self.tokens.append(Token(CHAR, ch, pos))
                pos += 1
            else:
                raise self.error(f"unrecognized character in action: U+{ord(ch):04X}", pos)

    def check_terminator(self, pos: int) -> None:
        ch = self.src[pos : pos + 1]
        if ch and ch not in SPACES and ch not in ".,|:()" and not self.at_right_delim(pos)[0]:
            raise self.error(f"bad character U+{ord(ch):04X} {ch!r}", pos)

    def lex_field_or_variable(self, pos: int, sigil: str) -> int:
        end = pos + 1
        while end < len(self.src) and _is_alnum(self.src[end]):
            end += 1
        self.check_terminator(end)
        name = self.src[pos:end]
        kind = VAR if sigil == "$" else DOT if name == "." else FIELD
        self.tokens.append(Token(kind, name if kind == VAR else name[1:], pos))
        return end

    def lex_number(self, pos: int) -> int:
        match = _NUMBER.match(self.src, pos)
        end = match.end() if match else pos
        text = self.src[pos:end]
        if end < len(self.src) and _is_alnum(self.src[end]):
            raise self.error(f"bad number syntax: {_q(self.src[pos : end + 1])}", pos)
        if text.endswith("i"):
            raise self.error(f"complex numbers are not supported: {_q(text)}", pos)
        try:
            value = funcs.go_number(text)
        except ValueError:
            raise self.error(f"illegal number syntax: {_q(text)}", pos) from None
        self.tokens.append(Token(NUMBER, value, pos))
        return end

    def lex_quote(self, pos: int, quote: str) -> int:
        src = self.src
        end = pos + 1
        while True:
            if end >= len(src) or (quote != "`" and src[end] == "\n"):
                kind = {"`": "raw quoted string", '"': "quoted string", "'": "character constant"}[quote]
                raise self.error(f"unterminated {kind}", pos)
            if src[end] == "\\" and quote != "`":
                end += 2
                continue
            if src[end] == quote:
                break
            end += 1
        body = src[pos + 1 : end]
        if quote == "`":
            self.tokens.append(Token(STRING, body.replace("\r", ""), pos))
            return end + 1
        try:
            value = funcs.go_unquote(body, quote)
        except ValueError:
            raise self.error(f"invalid syntax in {src[pos : end + 1]}", pos) from None
        if quote == "'":
            if len(value) != 1:
                raise self.error(f"malformed character constant: {src[pos : end + 1]}", pos)
            self.tokens.append(Token(NUMBER, ord(value), pos))
        else:
            self.tokens.append(Token(STRING, value, pos))
        return end + 1


# ============================================================================================ tree


class Node:
    __slots__ = ("pos",)
    pos: int


@dataclass(eq=False, slots=True)
class Text(Node):
    pos: int
    text: str


@dataclass(eq=False, slots=True)
class Field(Node):
    pos: int
    names: tuple[str, ...]


@dataclass(eq=False, slots=True)
class Variable(Node):
    pos: int
    name: str
    fields: tuple[str, ...]


@dataclass(eq=False, slots=True)
class Chain(Node):
    pos: int
    node: Node
    fields: tuple[str, ...]


@dataclass(eq=False, slots=True)
class Ident(Node):
    pos: int
    name: str


@dataclass(eq=False, slots=True)
class Literal(Node):
    """A bool, number or string constant; also dot (``is_dot``) and nil (``value=None``)."""

    pos: int
    value: Any
    is_dot: bool = False


@dataclass(eq=False, slots=True)
class Command(Node):
    pos: int
    args: list[Node]


@dataclass(eq=False, slots=True)
class Pipe(Node):
    pos: int
    decls: list[str]
    is_assign: bool
    cmds: list[Command]


@dataclass(eq=False, slots=True)
class Action(Node):
    pos: int
    pipe: Pipe


@dataclass(eq=False, slots=True)
class Branch(Node):
    """if / with / range: ``kind`` says which; ``orelse`` is None when there is no {{else}}."""

    pos: int
    kind: str
    pipe: Pipe
    body: list[Node]
    orelse: list[Node] | None


@dataclass(eq=False, slots=True)
class TemplateCall(Node):
    pos: int
    name: str
    pipe: Pipe | None


@dataclass(eq=False, slots=True)
class LoopControl(Node):
    pos: int
    word: str  # "break" or "continue"


@dataclass(eq=False, slots=True)
class _Marker(Node):
    pos: int
    word: str  # "end" or "else"


def _is_empty_tree(nodes: list[Node]) -> bool:
    return all(isinstance(n, Text) and not n.text.strip() for n in nodes)


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.tokens = _Lexer(src).lex()
        self.i = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.nesting = 0
        self.templates: dict[str, list[Node]] = {}

    def error(self, message: str, pos: int) -> TemplateError:
        return TemplateError(message, *_position(self.src, pos))

    def next(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next_non_space(self) -> Token:
        while self.tokens[self.i].kind == SPACE:
            self.i += 1
        return self.next()

    def peek_non_space(self) -> Token:
        while self.tokens[self.i].kind == SPACE:
            self.i += 1
        return self.tokens[self.i]

    def describe(self, token: Token) -> str:
        if token.kind == EOF:
            return "EOF"
        if token.kind in (LEFT, RIGHT):
            return f"{'{{' if token.kind == LEFT else '}}'}"
        if token.kind == KEYWORD:
            return f"<{token.val}>"
        if token.kind == FIELD:
            return _q("." + token.val)
        return _q(str(token.val)) if token.val is not None else token.kind

    def unexpected(self, token: Token, context: str) -> TemplateError:
        return self.error(f"unexpected {self.describe(token)} in {context}", token.pos)

    def expect(self, kind: str, context: str) -> Token:
        token = self.next_non_space()
        if token.kind != kind:
            raise self.unexpected(token, context)
        return token

    def add_template(self, name: str, body: list[Node], pos: int) -> None:
        existing = self.templates.get(name)
        if existing is None or _is_empty_tree(existing):
            self.templates[name] = body
        elif not _is_empty_tree(body):
            raise self.error(f"template: multiple definition of template {_q(name)}", pos)

    def parse(self) -> dict[str, list[Node]]:
        root: list[Node] = []
        while self.peek().kind != EOF:
            if self.peek().kind == LEFT:
                start = self.i
                self.next()
                token = self.next_non_space()
                if token.kind == KEYWORD and token.val == "define":
                    self.parse_definition(token)
                    continue
                self.i = start
            node = self.text_or_action()
            if isinstance(node, _Marker):
                raise self.error(f"unexpected {{{{{node.word}}}}}", node.pos)
            root.append(node)
        self.add_template("", root, 0)
        return self.templates

    def parse_definition(self, keyword: Token) -> None:
        name = self.template_name("define clause")
        self.expect(RIGHT, "define clause")
        outer_vars, outer_range, self.vars, self.range_depth = self.vars, self.range_depth, ["$"], 0
        body, end = self.item_list()
        self.vars, self.range_depth = outer_vars, outer_range
        if end.word != "end":
            raise self.error(f"unexpected {{{{{end.word}}}}} in define clause", end.pos)
        self.add_template(name, body, keyword.pos)

    def template_name(self, context: str) -> str:
        token = self.next_non_space()
        if token.kind != STRING:
            raise self.unexpected(token, context)
        return str(token.val)

    def item_list(self) -> tuple[list[Node], _Marker]:
        self.nesting += 1
        if self.nesting > MAX_PARSE_NESTING:
            raise self.error(f"template nesting deeper than {MAX_PARSE_NESTING}", self.peek().pos)
        nodes: list[Node] = []
        while self.peek_non_space().kind != EOF:
            node = self.text_or_action()
            if isinstance(node, _Marker):
                self.nesting -= 1
                return nodes, node
            nodes.append(node)
        raise self.error("unexpected EOF", self.peek().pos)

    def text_or_action(self) -> Node:
        token = self.next_non_space()
        if token.kind == TEXT:
            return Text(token.pos, token.val)
        if token.kind == LEFT:
            return self.action()
        raise self.unexpected(token, "input")

    def action(self) -> Node:
        token = self.next_non_space()
        if token.kind == KEYWORD:
            word = token.val
            if word in ("if", "with", "range"):
                return self.control(word, token.pos)
            if word in ("break", "continue"):
                self.expect(RIGHT, f"{{{{{word}}}}}")
                if not self.range_depth:
                    raise self.error(f"{{{{{word}}}}} outside {{{{range}}}}", token.pos)
                return LoopControl(token.pos, word)
            if word == "else":
                following = self.peek_non_space()
                if not (following.kind == KEYWORD and following.val in ("if", "with")):
                    self.expect(RIGHT, "else")
                return _Marker(token.pos, "else")
            if word == "end":
                self.expect(RIGHT, "end")
                return _Marker(token.pos, "end")
            if word == "template":
                return self.template_call(token.pos)
            if word == "block":
                return self.block(token.pos)
        self.i -= 1
        return Action(token.pos, self.pipeline("command", RIGHT))

    def control(self, context: str, pos: int) -> Branch:
        saved_vars = len(self.vars)
        pipe = self.pipeline(context, RIGHT)
        self.range_depth += context == "range"
        body, marker = self.item_list()
        self.range_depth -= context == "range"
        orelse: list[Node] | None = None
        if marker.word == "else":
            following = self.peek()
            if context in ("if", "with") and following.kind == KEYWORD and following.val == context:
                self.next()
                orelse = [self.control(context, following.pos)]
            else:
                orelse, marker = self.item_list()
                if marker.word != "end":
                    raise self.error(f"expected end; found {{{{{marker.word}}}}}", marker.pos)
        del self.vars[saved_vars:]
        return Branch(pos, context, pipe, body, orelse)

    def template_call(self, pos: int) -> TemplateCall:
        name = self.template_name("template clause")
        pipe = None
        if self.peek_non_space().kind == RIGHT:
            self.next()
        else:
            pipe = self.pipeline("template clause", RIGHT)
        return TemplateCall(pos, name, pipe)

    def block(self, pos: int) -> TemplateCall:
        name = self.template_name("block clause")
        pipe = self.pipeline("block clause", RIGHT)
        outer_vars, outer_range, self.vars, self.range_depth = self.vars, self.range_depth, ["$"], 0
        body, end = self.item_list()
        self.vars, self.range_depth = outer_vars, outer_range
        if end.word != "end":
            raise self.error(f"unexpected {{{{{end.word}}}}} in block clause", end.pos)
        self.add_template(name, body, pos)
        return TemplateCall(pos, name, pipe)

    def declarations(self, pipe: Pipe, context: str) -> None:
        while self.peek_non_space().kind == VAR:
            start = self.i
            var = self.next()
            following = self.peek_non_space()
            if following.kind in (DECLARE, ASSIGN):
                self.next()
                pipe.is_assign = following.kind == ASSIGN
                pipe.decls.append(var.val)
                self.vars.append(var.val)
                return
            if following.kind == CHAR and following.val == ",":
                self.next()
                pipe.decls.append(var.val)
                self.vars.append(var.val)
                if context != "range" or len(pipe.decls) > 1:
                    raise self.error(f"too many declarations in {context}", following.pos)
                if self.peek_non_space().kind not in (VAR, RIGHT, RPAREN):
                    raise self.error("range can only initialize variables", following.pos)
                continue
            self.i = start
            return

    def pipeline(self, context: str, end: str) -> Pipe:
        pipe = Pipe(self.peek_non_space().pos, [], False, [])
        self.declarations(pipe, context)
        while True:
            token = self.next_non_space()
            if token.kind == end:
                break
            if token.kind in (BOOL, DOT, FIELD, IDENT, NUMBER, STRING, VAR, LPAREN) or (
                token.kind == KEYWORD and token.val == "nil"
            ):
                self.i -= 1
                pipe.cmds.append(self.command())
            else:
                raise self.unexpected(token, context)
        if not pipe.cmds:
            raise self.error(f"missing value for {context}", pipe.pos)
        for stage, cmd in enumerate(pipe.cmds[1:], start=2):
            if isinstance(cmd.args[0], Literal):
                raise self.error(f"non executable command in pipeline stage {stage}", cmd.pos)
        return pipe

    def command(self) -> Command:
        cmd = Command(self.peek_non_space().pos, [])
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            token = self.next()
            if token.kind == SPACE:
                continue
            if token.kind in (RIGHT, RPAREN):
                self.i -= 1
            elif token.kind != PIPE:
                raise self.unexpected(token, "operand")
            break
        if not cmd.args:
            raise self.error("empty command", cmd.pos)
        return cmd

    def operand(self) -> Node | None:
        node = self.term()
        if node is None or self.peek().kind != FIELD:
            return node
        fields = []
        while self.peek().kind == FIELD:
            fields.append(self.next().val)
        if isinstance(node, Field):
            return Field(node.pos, node.names + tuple(fields))
        if isinstance(node, Variable):
            return Variable(node.pos, node.name, node.fields + tuple(fields))
        if isinstance(node, Literal):
            raise self.error("unexpected . after term", node.pos)
        return Chain(node.pos, node, tuple(fields))

    def term(self) -> Node | None:
        token = self.next_non_space()
        kind, val, pos = token
        if kind == IDENT:
            if val not in funcs.BUILTINS:
                raise self.error(f"function {_q(val)} not defined", pos)
            return Ident(pos, val)
        if kind == DOT:
            return Literal(pos, None, is_dot=True)
        if kind == KEYWORD and val == "nil":
            return Literal(pos, None)
        if kind == VAR:
            if val not in self.vars:
                raise self.error(f"undefined variable {_q(val)}", pos)
            return Variable(pos, val, ())
        if kind == FIELD:
            return Field(pos, (val,))
        if kind in (BOOL, NUMBER, STRING):
            return Literal(pos, val)
        if kind == LPAREN:
            self.nesting += 1
            if self.nesting > MAX_PARSE_NESTING:
                raise self.error(f"template nesting deeper than {MAX_PARSE_NESTING}", pos)
            pipe = self.pipeline("parenthesized pipeline", RPAREN)
            self.nesting -= 1
            return pipe
        self.i -= 1
        return None
