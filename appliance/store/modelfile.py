"""Modelfiles: read the text ``ollama create`` takes, write the text ``ollama show --modelfile`` prints.

The grammar is Ollama's (``parser/parser.go``), learned from its behaviour:

* One instruction per line, its keyword in any case: FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, DRAFT,
  LICENSE, MESSAGE, REQUIRES, RENDERER, PARSER. Blank lines and lines starting with ``#`` are skipped; a
  ``#`` later in a line is part of the value.
* ``PARAMETER name value`` and ``MESSAGE role content`` take a word before the value; roles are
  ``system``, ``user`` and ``assistant``.
* A value is bare (the rest of the line, trimmed), ``"quoted"`` or ``\"\"\"triple quoted\"\"\"``. Quotes do
  not escape anything: the value simply runs to the first line end at which, trailing blanks aside, it
  closes with the quote it opened with, so ``"..."`` may span lines too and ``\"\"\"a "b" c\"\"\"`` keeps
  its inner quotes.

So Ollama's syntax cannot hold a value in which some line ends with three quotes (the value would close
there). For that value alone the writer emits ``json:`` and a JSON string literal, and the reader decodes
a bare ``json:"..."`` only when the decoded text is such a value. Any other ``json:...`` stays literal text,
so every Modelfile Ollama accepts reads the same here. Where we differ from Ollama on purpose:

* Ollama silently drops characters Go does not call printable (zero-width joiners, NBSP, control
  characters) from everything but the blanks and line ends inside values; we keep every character.
* Ollama needs exactly one space between PARAMETER / MESSAGE and the word after it; we allow several.
* PARAMETER values are checked here, with the line number; FROM, ADAPTER and DRAFT must not be empty.
* A CRLF counts as one line end, so line numbers match what an editor shows.
* The writer quotes whatever Ollama's writer would write in a form that does not read back the same
  (e.g. a value starting with ``"``, an empty value, leading tabs); all else it writes as Ollama does.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.api.options import DEPRECATED_PARAMETERS, OPTIONS, parameter_text, parse_parameter
from appliance.errors import InvalidModelfile, InvalidParameter

MAX_MODELFILE_SIZE = 8 * 1024 * 1024  # bytes of a file, characters of a str

INSTRUCTIONS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
MESSAGE_ROLES = ("system", "user", "assistant")

_INSTRUCTION_HINT = (
    "command must be one of "
    + ", ".join(f'"{name}"' for name in INSTRUCTIONS[:-1])
    + f', or "{INSTRUCTIONS[-1]}"'
)
_ROLE_HINT = 'message role must be one of "system", "user", or "assistant"'
_LIST_FIELDS = {"adapter": "adapters", "draft": "drafts", "license": "license"}
_NEEDS_VALUE = frozenset({"from", "adapter", "draft"})

# Go's unicode.IsSpace, which is what Ollama trims; Python's str.strip() would also eat \x1c-\x1f.
_WHITESPACE = (
    "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_ANY_BREAK = re.compile(r"[\r\n]")
_BLANK = "[\t\v\f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"  # _WHITESPACE less line ends
_BLANKS = re.compile(f"{_BLANK}*")
# Blank lines, comment lines and the indentation before the next instruction word.
_INSTRUCTION_HEAD = re.compile(f"(?:{_BLANK}*(?:#[^\r\n]*)?(?:\r\n|\r|\n))*{_BLANK}*(?P<word>[^ \t\r\n]*)")
_KEY = re.compile(r"[ \t]*(?P<key>[^ \t\r\n]*)")
_CLOSING = {quote: re.compile(f"{quote}{_BLANK}*(?=[\r\n]|\\Z)") for quote in ('"""', '"')}
_NUMBER = r"(?:0|[1-9][0-9]*)"
_SEMVER = re.compile(
    rf"v{_NUMBER}(?:\.{_NUMBER}(?:\.{_NUMBER}"
    rf"(?:-(?:{_NUMBER}|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:{_NUMBER}|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?)?"
)


@dataclass(frozen=True)
class Command:
    """One instruction: ``name`` in lower case, its unquoted value, the line it starts on."""

    name: str
    args: str
    line: int
    key: str = ""  # the PARAMETER name or the MESSAGE role


@dataclass(frozen=True)
class Modelfile:
    """A parsed Modelfile: its instructions in order, and warnings for what was accepted but ignored."""

    commands: tuple[Command, ...]
    warnings: tuple[str, ...] = ()

    def values(self, name: str) -> list[str]:
        """The values of every ``name`` instruction, in order (``values("from")`` lists all FROM lines)."""
        return [command.args for command in self.commands if command.name == name]

    def to_create_fields(self) -> dict[str, Any]:
        """The fields of an ``/api/create`` body, before the CLI resolves local files.

        A key is present only when its instruction is. ``from`` is the first FROM (show --modelfile
        writes the model before its projectors; the CLI resolves every FROM, see ``values``);
        ``adapters``, ``drafts`` and ``license`` list every line; ``template``, ``system``,
        ``renderer``, ``parser`` and ``requires`` take the last one. In ``parameters`` each ``stop``
        adds to a list and any other repeated name keeps its last value; deprecated ones are left out.
        """
        fields: dict[str, Any] = {"from": self.values("from")[0]}
        parameters: dict[str, Any] = {}
        for command in self.commands:
            name, value = command.name, command.args
            if name in _LIST_FIELDS:
                fields.setdefault(_LIST_FIELDS[name], []).append(value)
            elif name in ("template", "system", "renderer", "parser"):
                fields[name] = value
            elif name == "requires":
                fields[name] = value.removeprefix("v")
            elif name == "message":
                fields.setdefault("messages", []).append({"role": command.key, "content": value})
            elif name == "parameter" and command.key not in DEPRECATED_PARAMETERS:
                typed = parse_parameter(command.key, value)
                if command.key == "stop":
                    parameters.setdefault("stop", []).append(typed)
                else:
                    parameters[command.key] = typed
        if parameters:
            fields["parameters"] = parameters
        return fields


def decode_modelfile(data: bytes) -> str:
    """Decode Modelfile bytes as Ollama does: UTF-8, or UTF-16 when a byte order mark says so."""
    if len(data) > MAX_MODELFILE_SIZE:
        raise InvalidModelfile(f"Modelfile is larger than {MAX_MODELFILE_SIZE} bytes")
    if data.startswith(codecs.BOM_UTF16_LE):
        return data[2:].decode("utf-16-le", errors="replace")
    if data.startswith(codecs.BOM_UTF16_BE):
        return data[2:].decode("utf-16-be", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def parse_modelfile(text: str) -> Modelfile:
    """Parse Modelfile text; raises InvalidModelfile with the 1-based line where the problem starts."""
    if len(text) > MAX_MODELFILE_SIZE:
        raise InvalidModelfile(f"Modelfile is larger than {MAX_MODELFILE_SIZE} bytes")
    text = text.removeprefix("\ufeff")
    has_cr = "\r" in text
    commands: list[Command] = []
    warnings: list[str] = []
    pos, line, counted = 0, 1, 0
    while pos < len(text):
        head = _INSTRUCTION_HEAD.match(text, pos)
        assert head is not None  # every part of the pattern may match empty
        word, pos = head["word"], head.end()
        if not word or word.startswith("#"):
            break  # the end, or a last comment line without a line break after it
        # Counting line breaks once per instruction keeps a file of many short lines cheap.
        line += text.count("\n", counted, pos)
        if has_cr:
            line += text.count("\r", counted, pos) - text.count("\r\n", counted, pos)
        counted = pos
        name = word.lower()
        if name not in INSTRUCTIONS:
            raise InvalidModelfile(f"unknown instruction '{_clip(word)}': {_INSTRUCTION_HINT}", line)
        end = _line_end(text, pos)
        if pos == end:
            raise InvalidModelfile(f"missing argument for {name.upper()}", line)
        key = ""
        if name in ("parameter", "message"):
            key_match = _KEY.match(text, pos)
            assert key_match is not None
            key, pos = key_match["key"], key_match.end()
            if not key:
                raise InvalidModelfile(f"missing argument for {name.upper()}", line)
            _check_key(name, key, line)
            if pos == end:
                raise InvalidModelfile(f"missing value for {name.upper()} {_clip(key)}", line)
        value, pos = _read_value(text, pos, end, line)
        _check_value(name, key, value, line, warnings)
        commands.append(Command(name, value, line, key))
    if not any(command.name == "from" for command in commands):
        raise InvalidModelfile("no FROM line")
    return Modelfile(tuple(commands), tuple(warnings))


def _clip(word: str) -> str:
    """A word from the file, shortened for an error message."""
    return word if len(word) <= 40 else word[:40] + "..."


def _line_end(text: str, pos: int) -> int:
    match = _ANY_BREAK.search(text, pos)
    return match.start() if match else len(text)


def _check_key(name: str, key: str, line: int) -> None:
    if name == "message":
        if key not in MESSAGE_ROLES:
            raise InvalidModelfile(f"invalid message role '{_clip(key)}': {_ROLE_HINT}", line)
    elif key not in OPTIONS and key not in DEPRECATED_PARAMETERS:
        raise InvalidModelfile(f"unknown parameter '{_clip(key)}'", line)


def _read_value(text: str, pos: int, end: int, line: int) -> tuple[str, int]:
    """Read the value starting at ``pos`` on a line ending at ``end``; return it and the line end after it."""
    first = _BLANKS.match(text, pos).end()  # type: ignore[union-attr]
    if first == end:
        return "", end  # only blanks after the keyword: an empty value, as in Ollama
    if text[first] != '"':
        return _decode_json_form(text[first:end].rstrip(_WHITESPACE)), end
    quote = '"""' if text.startswith('"""', first) else '"'
    # The value closes at the first line end where the text so far, trailing blanks aside, ends in
    # the quote that opened it: that is a quote followed by nothing but blanks up to a line end.
    closing = _CLOSING[quote].search(text, first + len(quote))
    if closing is None:
        raise InvalidModelfile(f"unterminated {quote} quote", line)
    return text[first + len(quote) : closing.start()], closing.end()


def _check_value(name: str, key: str, value: str, line: int, warnings: list[str]) -> None:
    if name in _NEEDS_VALUE and not value:
        raise InvalidModelfile(f"missing argument for {name.upper()}", line)
    if name == "requires" and not (len(value) <= 256 and _SEMVER.fullmatch("v" + value.removeprefix("v"))):
        raise InvalidModelfile("requires must be a valid semver (e.g. 0.14.0)", line)
    if name == "parameter":
        if key in DEPRECATED_PARAMETERS:
            warnings.append(f"line {line}: parameter {key} is deprecated")
            return
        try:
            parse_parameter(key, value)
        except InvalidParameter as exc:
            raise InvalidModelfile(str(exc), line) from exc


def _needs_json_form(value: str) -> bool:
    """True when a line of ``value`` ends in three quotes: no Ollama quoting can hold it."""
    return any(part.rstrip(_WHITESPACE).endswith('"""') for part in _LINE_BREAK.split(value)[:-1])


def _decode_json_form(bare: str) -> str:
    if bare.startswith('json:"') and bare.endswith('"'):
        try:
            decoded = json.loads(bare[5:])
        except ValueError:
            return bare
        if isinstance(decoded, str) and _needs_json_form(decoded):
            return decoded
    return bare


def quote_value(value: str) -> str:
    """Write ``value`` so that the parser reads it back unchanged, as Ollama would where that works."""
    if _needs_json_form(value):
        return "json:" + json.dumps(value, ensure_ascii=False)
    bare_ok = (
        value
        and value == value.strip(_WHITESPACE)
        and not _LINE_BREAK.search(value)
        and not value.startswith('"')
        and _decode_json_form(value) == value
    )
    if bare_ok:
        return value
    return f'"{value}"' if '"' not in value else f'"""{value}"""'


def render_modelfile(
    *,
    from_: str,
    template: str | None = None,
    system: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    adapters: Sequence[str] = (),
    license: Sequence[str] = (),
    messages: Sequence[Mapping[str, Any]] = (),
    header_name: str | None = None,
    projectors: Sequence[str] = (),
    draft: str | None = None,
    renderer: str | None = None,
    parser: str | None = None,
    requires: str | None = None,
) -> str:
    """The Modelfile ``ollama show --modelfile`` prints, in Ollama's order.

    ``header_name`` (the model's short name) adds Ollama's comment header; ``template=None`` and an
    empty ``system`` are left out. Parameters come sorted by name (Ollama's order is a Go map's, random),
    one line per ``stop`` value. REQUIRES is written after PARSER, so the text builds the same model
    again (Ollama leaves it out, but its parser reads it).
    """
    lines = []
    if header_name is not None:
        lines += [
            '# Modelfile generated by "ollama show"',
            "# To build a new Modelfile based on this, replace FROM with:",
            f"# FROM {header_name}",
            "",
        ]
    lines.append(f"FROM {quote_value(from_)}")
    lines += [f"ADAPTER {quote_value(path)}" for path in adapters]
    if draft:
        lines.append(f"DRAFT {quote_value(draft)}")
    lines += [f"FROM {quote_value(path)}" for path in projectors]
    if template is not None:
        lines.append(f"TEMPLATE {quote_value(template)}")
    if system:
        lines.append(f"SYSTEM {quote_value(system)}")
    if renderer:
        lines.append(f"RENDERER {quote_value(renderer)}")
    if parser:
        lines.append(f"PARSER {quote_value(parser)}")
    if requires:
        lines.append(f"REQUIRES {quote_value(requires)}")
    for name, value in sorted((parameters or {}).items()):
        for item in value if isinstance(value, list | tuple) else [value]:
            lines.append(f"PARAMETER {name} {quote_value(parameter_text(name, item))}")
    lines += [f"LICENSE {quote_value(text)}" for text in license]
    for message in messages:
        lines.append(f"MESSAGE {message['role']} {quote_value(str(message.get('content') or ''))}")
    return "\n".join(lines) + "\n"
