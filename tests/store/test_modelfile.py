"""Modelfile parsing (Ollama's grammar), the create fields it yields, and the show --modelfile writer."""

from __future__ import annotations

import time

import pytest

from appliance.errors import BadRequest, InvalidModelfile
from appliance.store.modelfile import (
    INSTRUCTIONS,
    MAX_MODELFILE_SIZE,
    Command,
    decode_modelfile,
    parse_modelfile,
    quote_value,
    render_modelfile,
)


def commands(text: str) -> list[tuple[str, str, str]]:
    """(name, key, args) of every instruction, the shape the table-driven cases compare."""
    return [(c.name, c.key, c.args) for c in parse_modelfile(text).commands]


def error(text: str) -> InvalidModelfile:
    with pytest.raises(InvalidModelfile) as info:
        parse_modelfile(text)
    return info.value


# ------------------------------------------------------------------------------------------- parsing


def test_full_modelfile():
    text = (
        "\n"
        "FROM base-model\n"
        "ADAPTER ./lora.gguf\n"
        "LICENSE Apache-2.0\n"
        "PARAMETER num_ctx 2048\n"
        "PARAMETER temperature 0.3\n"
        'TEMPLATE """<|user|>\n'
        "{{ .Prompt }}\n"
        '<|assistant|>"""   \n'
    )
    parsed = parse_modelfile(text)
    assert parsed.commands == (
        Command("from", "base-model", 2),
        Command("adapter", "./lora.gguf", 3),
        Command("license", "Apache-2.0", 4),
        Command("parameter", "2048", 5, "num_ctx"),
        Command("parameter", "0.3", 6, "temperature"),
        Command("template", "<|user|>\n{{ .Prompt }}\n<|assistant|>", 7),
    )
    assert parsed.warnings == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM  qwen3:8b  ", [("from", "", "qwen3:8b")]),
        ("FROM\tqwen3", [("from", "", "qwen3")]),
        ('FROM "  two  spaces  "', [("from", "", "  two  spaces  ")]),
        ("FROM  inner  blanks kept ", [("from", "", "inner  blanks kept")]),
        ("FROM /models/my model.gguf", [("from", "", "/models/my model.gguf")]),
        ("FROM hf.co/org/repo:Q4_K_M", [("from", "", "hf.co/org/repo:Q4_K_M")]),
        ("from lower", [("from", "", "lower")]),
        ("FrOm mixed", [("from", "", "mixed")]),
        ("   FROM indented", [("from", "", "indented")]),
        (
            "PARAMETER top_k 5\nFROM later",
            [("parameter", "top_k", "5"), ("from", "", "later")],
        ),
        (
            "PARAMETER stop the \nFROM a b c ",
            [("parameter", "stop", "the"), ("from", "", "a b c")],
        ),
    ],
)
def test_from_lines(text, expected):
    assert commands(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# only a comment\n", "PARAMETER top_k 5", "SYSTEM hello\nLICENSE MIT\n"],
)
def test_missing_from(text):
    exc = error(text)
    assert exc.reason == "no FROM line"
    assert exc.line is None
    assert str(exc) == "no FROM line"


def test_trailing_blanks_trimmed_only_outside_quotes():
    text = 'FROM m\nADAPTER    ./a.gguf\t\nLICENSE "BSD   "\nSYSTEM   """  padded  """  \n'
    assert commands(text) == [
        ("from", "", "m"),
        ("adapter", "", "./a.gguf"),
        ("license", "", "BSD   "),
        ("system", "", "  padded  "),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("RENDERER qwen3-coder", ("renderer", "", "qwen3-coder")),
        ("PARSER harmony", ("parser", "", "harmony")),
        ("DRAFT ./small.gguf", ("draft", "", "./small.gguf")),
        ("REQUIRES 0.14.0", ("requires", "", "0.14.0")),
        ("template {{ .Prompt }}", ("template", "", "{{ .Prompt }}")),
        ("System you are terse", ("system", "", "you are terse")),
    ],
)
def test_other_instructions(line, expected):
    assert commands(f"FROM m\n{line}\n")[1] == expected


def test_instruction_list_is_ollamas():
    assert set(INSTRUCTIONS) == {
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
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MESSAGE user Where is Oslo?", [("message", "user", "Where is Oslo?")]),
        ("MESSAGE assistant In Norway.\n", [("message", "assistant", "In Norway.")]),
        ("MESSAGE system Be brief.", [("message", "system", "Be brief.")]),
        ("MESSAGE\tuser\ttabs", [("message", "user", "tabs")]),
        ("MESSAGE   user   extra blanks", [("message", "user", "extra blanks")]),  # Ollama rejects this
        ('MESSAGE user """\nfirst\nsecond\n"""', [("message", "user", "\nfirst\nsecond\n")]),
        ("MESSAGE user ", [("message", "user", "")]),
        (
            "MESSAGE user hi\nMESSAGE assistant hello\nMESSAGE user bye",
            [("message", "user", "hi"), ("message", "assistant", "hello"), ("message", "user", "bye")],
        ),
    ],
)
def test_messages(text, expected):
    assert commands("FROM m\n" + text)[1:] == expected


@pytest.mark.parametrize(
    ("value_text", "value"),
    [
        ('"""\nA\nB\n"""', "\nA\nB\n"),
        ('"""\nA\nB"""', "\nA\nB"),
        ('"""A\nB"""', "A\nB"),
        ('"""single line"""', "single line"),
        ('"""say "cheese" now"""', 'say "cheese" now'),
        ('"""ends in a quote""""', 'ends in a quote"'),
        ('""""starts with one"""', '"starts with one'),
        ('""""""', ""),
        ('""', ""),
        ('"\'"', "'"),
        ('"two\nlines"', "two\nlines"),
        ('"no "escapes\\" here"', 'no "escapes\\" here'),
        ('"C:\\new\\table"', "C:\\new\\table"),
        ('"""mixed \'"\' quotes \'""\' """', "mixed '\"' quotes '\"\"' "),
        ('"""a """ inside"""', 'a """ inside'),
        ('"""\n  indented\n\t"""', "\n  indented\n\t"),
        ('"""closes after blanks"""  \t ', "closes after blanks"),
        ("bare # not a comment", "bare # not a comment"),
        ("#starts with hash", "#starts with hash"),
        ("'single quotes are plain'", "'single quotes are plain'"),
        ('ends with quote"', 'ends with quote"'),
        ("json:not json", "json:not json"),
        ('json:"ok"', 'json:"ok"'),  # json: is decoded only when it had to be used
        ("  ", ""),
    ],
)
def test_value_quoting(value_text, value):
    assert commands(f"FROM m\nSYSTEM {value_text}\n")[1] == ("system", "", value)


def test_value_at_end_of_file_without_line_break():
    assert commands('FROM m\nTEMPLATE """\n{{ .Prompt }}\n"""')[1] == ("template", "", "\n{{ .Prompt }}\n")
    assert commands("FROM m\nSYSTEM last")[1] == ("system", "", "last")


def test_quoted_value_keeps_blank_lines_and_hash_lines():
    text = 'FROM m\nLICENSE """\n\n# Section 1\n\n  text\n"""\nSYSTEM after\n'
    assert commands(text)[1:] == [("license", "", "\n\n# Section 1\n\n  text\n"), ("system", "", "after")]


@pytest.mark.parametrize(
    ("raw", "name", "value"),
    [
        ("num_ctx 1", "num_ctx", "1"),
        ("num_batch 256", "num_batch", "256"),
        ("num_gpu 99", "num_gpu", "99"),
        ("main_gpu 1", "main_gpu", "1"),
        ("use_mmap false", "use_mmap", "false"),
        ("num_thread 8", "num_thread", "8"),
        ("draft_num_predict 6", "draft_num_predict", "6"),
        ("num_keep 24", "num_keep", "24"),
        ("seed 7", "seed", "7"),
        ("num_predict 128", "num_predict", "128"),
        ("top_k 20", "top_k", "20"),
        ("top_p 0.8", "top_p", "0.8"),
        ("min_p 0.1", "min_p", "0.1"),
        ("typical_p 0.7", "typical_p", "0.7"),
        ("repeat_last_n -1", "repeat_last_n", "-1"),
        ("temperature 0", "temperature", "0"),
        ("repeat_penalty 1.1", "repeat_penalty", "1.1"),
        ("presence_penalty 0.5", "presence_penalty", "0.5"),
        ("frequency_penalty 0.5", "frequency_penalty", "0.5"),
        ("stop <|eot|>", "stop", "<|eot|>"),
        ("stop User said:", "stop", "User said:"),
        ("stop User said: ", "stop", "User said:"),
        ('stop "User said: "', "stop", "User said: "),
        ('stop """User said:"""', "stop", "User said:"),
        ('stop """User said:\n"""', "stop", "User said:\n"),
        ("stop [/INST]", "stop", "[/INST]"),
        ("    top_k    3   ", "top_k", "3"),  # Ollama rejects blanks before the name
        ("penalize_newline true", "penalize_newline", "true"),  # deprecated: accepted, then ignored
    ],
)
def test_parameters(raw, name, value):
    assert commands(f"FROM m\nPARAMETER {raw}\n")[1] == ("parameter", name, value)


def test_comments():
    text = "# header\n  # indented comment\nFROM m # not a comment\n#SYSTEM ignored\n\t\nSYSTEM kept\n# end"
    parsed = parse_modelfile(text)
    assert [(c.name, c.args, c.line) for c in parsed.commands] == [
        ("from", "m # not a comment", 3),
        ("system", "kept", 6),
    ]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_line_endings(newline):
    text = newline.join(["# c", "FROM m", "", 'SYSTEM """one', "two", '"""', "PARAMETER top_k 2", ""])
    parsed = parse_modelfile(text)
    assert [(c.name, c.args, c.line) for c in parsed.commands] == [
        ("from", "m", 2),
        ("system", f"one{newline}two{newline}", 4),  # line ends inside quotes are kept as written
        ("parameter", "2", 7),
    ]


def test_every_character_is_kept():
    # Ollama drops what Go does not call printable (ZWJ, NBSP, controls); we keep it.
    value = "a\u200db\u00a0c\x1bd\x00e"
    assert commands(f"FROM m\nSYSTEM {value}\n")[1] == ("system", "", value)


def test_multibyte():
    assert commands("FROM m\nSYSTEM 你好👋 ça va\n")[1] == ("system", "", "你好👋 ça va")


# ------------------------------------------------------------------------------------------ decoding

DECODE_TEXT = "FROM bob\nPARAMETER top_k 1\nSYSTEM héllo 👋\n"


@pytest.mark.parametrize(
    "data",
    [
        DECODE_TEXT.encode("utf-8"),
        b"\xef\xbb\xbf" + DECODE_TEXT.encode("utf-8"),
        b"\xff\xfe" + DECODE_TEXT.encode("utf-16-le"),
        b"\xfe\xff" + DECODE_TEXT.encode("utf-16-be"),
    ],
    ids=["utf-8", "utf-8 bom", "utf-16 le", "utf-16 be"],
)
def test_decode_modelfile(data):
    text = decode_modelfile(data)
    assert text == DECODE_TEXT
    assert commands(text)[2] == ("system", "", "héllo 👋")


def test_decode_replaces_invalid_utf8():
    assert decode_modelfile(b"FROM m\nSYSTEM \xff\n") == "FROM m\nSYSTEM \ufffd\n"


def test_byte_order_mark_in_text_is_ignored():
    assert commands("\ufeffFROM m") == [("from", "", "m")]


# -------------------------------------------------------------------------------------------- errors

COMMAND_HINT = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", '
    '"renderer", "parser", "parameter", "message", or "requires"'
)
ROLE_HINT = 'message role must be one of "system", "user", or "assistant"'


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("FROM m\n\nBADCOMMAND x y\n", 3, f"unknown instruction 'BADCOMMAND': {COMMAND_HINT}"),
        ("FROM m\nFROM:x\n", 2, f"unknown instruction 'FROM:x': {COMMAND_HINT}"),
        ("FROM m\nSYSTEM\u00a0x\n", 2, f"unknown instruction 'SYSTEM\u00a0x': {COMMAND_HINT}"),
        ('FROM m\n"""\n', 2, f'unknown instruction \'"""\': {COMMAND_HINT}'),
        ("FROM", 1, "missing argument for FROM"),
        ("FROM m\nSYSTEM\nx", 2, "missing argument for SYSTEM"),
        ("FROM m\r\nLICENSE\r\n", 2, "missing argument for LICENSE"),
        ("FROM  ", 1, "missing argument for FROM"),
        ('FROM ""', 1, "missing argument for FROM"),
        ("FROM m\nADAPTER  \n", 2, "missing argument for ADAPTER"),
        ("FROM m\nDRAFT \n", 2, "missing argument for DRAFT"),
        ("FROM m\nPARAMETER\n", 2, "missing argument for PARAMETER"),
        ("FROM m\nPARAMETER   \n", 2, "missing argument for PARAMETER"),
        ("FROM m\nPARAMETER top_k\n", 2, "missing value for PARAMETER top_k"),
        ("FROM m\nPARAMETER numa true\n", 2, "unknown parameter 'numa'"),
        ("FROM m\nPARAMETER Temperature 1\n", 2, "unknown parameter 'Temperature'"),
        ("FROM m\nPARAMETER top_k 1.5\n", 2, "invalid int value '1.5' for parameter 'top_k'"),
        ("FROM m\nPARAMETER top_k  \n", 2, "invalid int value '' for parameter 'top_k'"),
        ("FROM m\nPARAMETER top_p high\n", 2, "invalid float value 'high' for parameter 'top_p'"),
        ("FROM m\nPARAMETER use_mmap yes\n", 2, "invalid bool value 'yes' for parameter 'use_mmap'"),
        ("FROM m\nMESSAGE\n", 2, "missing argument for MESSAGE"),
        ("FROM m\nMESSAGE user\n", 2, "missing value for MESSAGE user"),
        ("FROM m\nMESSAGE user", 2, "missing value for MESSAGE user"),
        ("FROM m\nMESSAGE villain Mwahaha\n", 2, f"invalid message role 'villain': {ROLE_HINT}"),
        ("FROM m\nMESSAGE tool {}\n", 2, f"invalid message role 'tool': {ROLE_HINT}"),
        ("FROM m\nMESSAGE User hi\n", 2, f"invalid message role 'User': {ROLE_HINT}"),
        ("FROM m\nMESSAGE user: hi\n", 2, f"invalid message role 'user:': {ROLE_HINT}"),
        ('FROM m\nSYSTEM """never closed\n\n\n', 2, 'unterminated """ quote'),
        ('FROM m\n# c\nSYSTEM """almost""\n', 3, 'unterminated """ quote'),
        ('FROM m\nSYSTEM """\n"""x\n', 2, 'unterminated """ quote'),
        ('FROM m\nSYSTEM """"\n', 2, 'unterminated """ quote'),
        ('FROM m\nSYSTEM """""\n', 2, 'unterminated """ quote'),
        ('FROM m\nSYSTEM "\n', 2, 'unterminated " quote'),
        ('FROM m\nTEMPLATE "open\nstill open', 2, 'unterminated " quote'),
        ("FROM m\nREQUIRES soon\n", 2, "requires must be a valid semver (e.g. 0.14.0)"),
        ("FROM m\nREQUIRES 1.2.3.4\n", 2, "requires must be a valid semver (e.g. 0.14.0)"),
        ("FROM m\nREQUIRES 01.2.3\n", 2, "requires must be a valid semver (e.g. 0.14.0)"),
        ("FROM m\nREQUIRES 1.2-beta\n", 2, "requires must be a valid semver (e.g. 0.14.0)"),
        ("FROM m\nREQUIRES vv1.2.3\n", 2, "requires must be a valid semver (e.g. 0.14.0)"),
        ("FROM m\nREQUIRES  \n", 2, "requires must be a valid semver (e.g. 0.14.0)"),
    ],
)
def test_errors_name_the_line(text, line, reason):
    exc = error(text)
    assert (exc.line, exc.reason) == (line, reason)
    assert str(exc) == f"line {line}: {reason}"
    assert isinstance(exc, BadRequest)


def test_error_line_counts_lines_inside_values():
    text = 'FROM m\nSYSTEM """\n1\n2\n3\n"""\r\n\r\nPARAMETER top_k x\n'
    assert error(text).line == 8


def test_long_words_are_clipped_in_errors():
    exc = error("FROM m\n" + "X" * 10_000 + " y\n")
    assert len(str(exc)) < 400
    assert "XXX..." in exc.reason


@pytest.mark.parametrize("version", ["0.14.0", "v0.14.0", "1", "1.2", "1.0.0-rc.1+build.5", "2.0.0+meta"])
def test_requires_accepts_semver(version):
    fields = parse_modelfile(f"FROM m\nREQUIRES {version}\n").to_create_fields()
    assert fields["requires"] == version.removeprefix("v")


def test_size_cap():
    with pytest.raises(InvalidModelfile) as info:
        parse_modelfile("FROM m\n" + "#" * MAX_MODELFILE_SIZE)
    assert info.value.line is None
    assert "larger than" in str(info.value)
    with pytest.raises(InvalidModelfile):
        decode_modelfile(b"x" * (MAX_MODELFILE_SIZE + 1))


HOSTILE = {
    "unterminated triple": 'FROM m\nSYSTEM """' + "\n" * 1_000_000,
    "unterminated single over blank lines": 'FROM m\nSYSTEM "' + " \t\n" * 300_000,
    "quotes on one line": "FROM m\nSYSTEM " + '"' * 1_000_000,
    "triple quotes then blanks": 'FROM m\nSYSTEM """' + '""" ' * 250_000 + "x",
    "quote blank pairs": 'FROM m\nSYSTEM "' + '" ' * 500_000 + "x",
    "blank lines": "FROM m\n" + " \n" * 500_000,
    "comment lines": "FROM m\n" + "# c\n" * 250_000,
    "indentation without a line end": "FROM m\n" + " \t" * 500_000,
    "one long word": "F" * 1_000_000,
    "long number": "FROM m\nPARAMETER temperature " + "9" * 1_000_000 + "x",
    "long version": "FROM m\nREQUIRES 1.0.0-" + "a1" * 500_000 + "!",
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_linear(text):
    started = time.monotonic()
    try:
        parse_modelfile(text)
    except InvalidModelfile:
        pass
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------------------------- create fields


def test_create_fields_minimal():
    assert parse_modelfile("FROM llama3.2").to_create_fields() == {"from": "llama3.2"}


def test_create_fields_typed_and_collected():
    text = """FROM base
FROM ./mmproj.gguf
ADAPTER ./a.gguf
ADAPTER ./b.gguf
DRAFT ./draft.gguf
TEMPLATE first
TEMPLATE {{ .Prompt }}
SYSTEM You are a bot.
LICENSE one
LICENSE two
RENDERER r
PARSER p
REQUIRES v0.14.1
PARAMETER temperature 0.5
PARAMETER top_k 1
PARAMETER top_k 2
PARAMETER use_mmap false
PARAMETER stop <a>
PARAMETER stop <b>
PARAMETER mirostat 2
MESSAGE user Hello there!
MESSAGE assistant Hi! How are you?
"""
    parsed = parse_modelfile(text)
    assert parsed.to_create_fields() == {
        "from": "base",
        "adapters": ["./a.gguf", "./b.gguf"],
        "drafts": ["./draft.gguf"],
        "template": "{{ .Prompt }}",
        "system": "You are a bot.",
        "license": ["one", "two"],
        "renderer": "r",
        "parser": "p",
        "requires": "0.14.1",
        "parameters": {"temperature": 0.5, "top_k": 2, "use_mmap": False, "stop": ["<a>", "<b>"]},
        "messages": [
            {"role": "user", "content": "Hello there!"},
            {"role": "assistant", "content": "Hi! How are you?"},
        ],
    }
    assert parsed.values("from") == ["base", "./mmproj.gguf"]
    assert parsed.warnings == ("line 20: parameter mirostat is deprecated",)


def test_create_fields_keep_empty_values():
    fields = parse_modelfile('FROM m\nSYSTEM ""\nTEMPLATE """"""\n').to_create_fields()
    assert fields == {"from": "m", "system": "", "template": ""}


def test_create_fields_only_deprecated_parameters():
    parsed = parse_modelfile("FROM m\nPARAMETER f16_kv true\n")
    assert "parameters" not in parsed.to_create_fields()
    assert parsed.warnings == ("line 2: parameter f16_kv is deprecated",)


def test_create_fields_values_are_fresh_objects():
    parsed = parse_modelfile("FROM m\nLICENSE x\n")
    parsed.to_create_fields()["license"].append("y")
    assert parsed.to_create_fields()["license"] == ["x"]


# ----------------------------------------------------------------------------------------- rendering


def test_render_like_ollama_show():
    text = render_modelfile(
        header_name="mymodel:latest",
        from_="/root/.ollama/models/blobs/sha256-aaaa",
        adapters=["/root/.ollama/models/blobs/sha256-bbbb"],
        projectors=["/root/.ollama/models/blobs/sha256-cccc"],
        template='{{- if .System }}<|system|>\n{{ .System }}\n{{- end }}<|user|>\n{{ .Prompt }}"',
        system="Answer in French.",
        parameters={"temperature": 0.7, "stop": ["<|user|>", "<|end|>"], "num_ctx": 8192},
        license=["MIT License\n\nCopyright (c) someone"],
        messages=[{"role": "user", "content": "Salut"}, {"role": "assistant", "content": "Bonjour !"}],
    )
    assert text == (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM mymodel:latest\n"
        "\n"
        "FROM /root/.ollama/models/blobs/sha256-aaaa\n"
        "ADAPTER /root/.ollama/models/blobs/sha256-bbbb\n"
        "FROM /root/.ollama/models/blobs/sha256-cccc\n"
        'TEMPLATE """{{- if .System }}<|system|>\n{{ .System }}\n{{- end }}<|user|>\n{{ .Prompt }}""""\n'
        "SYSTEM Answer in French.\n"
        "PARAMETER num_ctx 8192\n"
        "PARAMETER stop <|user|>\n"
        "PARAMETER stop <|end|>\n"
        "PARAMETER temperature 0.7\n"
        'LICENSE "MIT License\n\nCopyright (c) someone"\n'
        "MESSAGE user Salut\n"
        "MESSAGE assistant Bonjour !\n"
    )


def test_render_without_header_and_optional_parts():
    assert render_modelfile(from_="llama3.2") == "FROM llama3.2\n"
    assert render_modelfile(from_="m", template="", system="") == 'FROM m\nTEMPLATE ""\n'
    text = render_modelfile(from_="m", draft="/d", renderer="r", parser="p")
    assert text == "FROM m\nDRAFT /d\nRENDERER r\nPARSER p\n"


def test_render_parameter_numbers_read_back():
    text = render_modelfile(from_="m", parameters={"seed": 1234567.0, "top_p": 1e-05, "use_mmap": True})
    assert "PARAMETER seed 1234567\n" in text  # not Go's 1.234567e+06, which PARAMETER would refuse
    assert parse_modelfile(text).to_create_fields()["parameters"] == {
        "seed": 1234567,
        "top_p": 1e-05,
        "use_mmap": True,
    }


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),  # Ollama's writer and ours agree on all of these
        ("inner  blanks", "inner  blanks"),
        ('has "quotes"', 'has "quotes"'),
        (" leading", '" leading"'),
        ("trailing ", '"trailing "'),
        ("two\nlines", '"two\nlines"'),
        ('two\n"lines"', '"""two\n"lines""""'),
        ("", '""'),  # Ollama writes nothing after the keyword; "" survives editors that trim lines
        ("\tleading tab", '"\tleading tab"'),  # Ollama writes these bare and loses the tab
        ('"quoted"', '""""quoted""""'),  # Ollama writes it bare and loses the quotes
        ("cr\ronly", '"cr\ronly"'),
        ('a"""\nb', 'json:"a\\"\\"\\"\\nb"'),  # no Ollama quoting can hold this one
        ('json:"x\\"\\"\\"\\ny"', '"""json:"x\\"\\"\\"\\ny""""'),  # literal text that looks like the escape
    ],
)
def test_quote_value(value, written):
    assert quote_value(value) == written
    assert commands(f"FROM m\nSYSTEM {written}\n")[1] == ("system", "", value)


NASTY = [
    "",
    " ",
    "  \t  ",
    "\n",
    "\n\n",
    "\r\n",
    "\r",
    '"',
    '""',
    '"""',
    '""""',
    '"""""""',
    "'",
    "\\",
    "\\n",
    '\\"',
    "#",
    "# looks like a comment",
    "#\n#",
    "a # b",
    "  leading and trailing  ",
    "\tTab\t",
    "multi\nline\nvalue",
    "ends with newline\n",
    "\nstarts with newline",
    'say "hi"',
    '"starts with quote',
    'ends with quote"',
    '"both"',
    '""both doubled""',
    'a """ b',
    'a"""',
    '"""a',
    'line one"""\nline two',
    'line one"""   \nline two',
    'x\n"""\ny',
    '"""\n"""',
    'ends in triple"""',
    'ends in triple"""\n',
    "json:",
    'json:"',
    'json:"not needed"',
    'json:"a\\"\\"\\"\\nb"',
    "FROM evil\nPARAMETER stop x",
    "MESSAGE user injected",
    "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}",
    "unicode ✓ 你好 👋 \u00a0nbsp \u200dzwj",
    "control \x00\x01\x1b\x7f chars",
    "\x0b\x0c vertical tab and form feed \x0b",
    "\u2028line separator\u2029",
    "crlf\r\ninside\r\n",
    "mixed \r\n and \n and \r endings",
    " \n \n ",
]


@pytest.mark.parametrize("value", NASTY)
def test_round_trip(value):
    system = value or "x"  # an empty system prompt is not written, as in Ollama
    text = render_modelfile(
        header_name="nasty:latest",
        from_="/blobs/sha256-0",
        template=value,
        system=system,
        parameters={"stop": [value, "after"], "temperature": 0.7, "num_ctx": 2048},
        license=[value, "second"],
        messages=[{"role": "user", "content": value}, {"role": "assistant", "content": value}],
    )
    assert parse_modelfile(text).to_create_fields() == {
        "from": "/blobs/sha256-0",
        "template": value,
        "system": system,
        "parameters": {"stop": [value, "after"], "temperature": 0.7, "num_ctx": 2048},
        "license": [value, "second"],
        "messages": [{"role": "user", "content": value}, {"role": "assistant", "content": value}],
    }


@pytest.mark.parametrize("path", [value for value in NASTY if value])  # FROM cannot be empty
def test_round_trip_as_from_and_adapter(path):
    text = render_modelfile(from_=path, adapters=[path])
    assert parse_modelfile(text).to_create_fields() == {"from": path, "adapters": [path]}


def test_parse_render_parse_is_stable():
    original = (
        'FROM m\nADAPTER a\nLICENSE """\nLegal text.\n\'Quoted\' and "quoted".\n"""\n\n'
        'PARAMETER top_k 3\nTEMPLATE t\nMESSAGE system """\nBe "nice".\n"""\nMESSAGE user Hey\n'
        'SYSTEM ""\n'
    )
    fields = parse_modelfile(original).to_create_fields()
    rendered = render_modelfile(
        from_=fields["from"],
        adapters=fields["adapters"],
        template=fields["template"],
        system=fields["system"],
        parameters=fields["parameters"],
        license=fields["license"],
        messages=fields["messages"],
    )
    again = parse_modelfile(rendered).to_create_fields()
    assert fields["system"] == ""
    assert again == {key: value for key, value in fields.items() if key != "system"}  # empty: not written
    assert (
        render_modelfile(
            from_=again["from"],
            adapters=again["adapters"],
            template=again["template"],
            parameters=again["parameters"],
            license=again["license"],
            messages=again["messages"],
        )
        == rendered
    )
