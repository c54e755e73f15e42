from __future__ import annotations

import random

import pytest

from appliance.prompt.thinking import MAX_HELD_CHARS, ThinkingParser, partial_suffix_len


def parse(chunks: list[str], **kwargs: object) -> tuple[str, str]:
    parser = ThinkingParser(**kwargs)  # type: ignore[arg-type]
    thinking = content = ""
    for chunk in chunks:
        t, c = parser.feed(chunk)
        thinking, content = thinking + t, content + c
    t, c = parser.flush()
    return thinking + t, content + c


# (output, thinking, content)
WHOLE_OUTPUTS = [
    ("<think> internal </think> world", "internal ", "world"),
    ("<think>a</think><think>b</think>c", "a", "<think>b</think>c"),
    ("no think", "", "no think"),
    ("", "", ""),
    ("  abc", "", "  abc"),
    ("  abc <think>def</think> ghi", "", "  abc <think>def</think> ghi"),
    ("  <think>abc</think>\n\ndef", "abc", "def"),
    ("  <think>abc</think>\n\ndef  ghi ", "abc", "def  ghi "),
    ("<think>\n\n</think>\n\nHi there", "", "Hi there"),
    (
        "\n<think>\nStep 1: x < y.\nStep 2: </thin> is not a tag.\n</think>\n\nAnswer",
        "Step 1: x < y.\nStep 2: </thin> is not a tag.\n",
        "Answer",
    ),
    ("<think>unfinished thoughts", "unfinished thoughts", ""),
    ("<think>unfinished </thi", "unfinished </thi", ""),
    ("<thi", "", "<thi"),
    ("   ", "", "   "),
    ("<thinking>x</thinking>", "", "<thinking>x</thinking>"),
    ("<think>é🙂</think>ü", "é🙂", "ü"),
    ("<think>a</think>", "a", ""),
    ("<think></think>b", "", "b"),
]


@pytest.mark.parametrize(("output", "thinking", "content"), WHOLE_OUTPUTS)
def test_whole_output(output: str, thinking: str, content: str) -> None:
    assert parse([output]) == (thinking, content)


@pytest.mark.parametrize(("output", "thinking", "content"), WHOLE_OUTPUTS)
def test_every_split_point_gives_the_same_result(output: str, thinking: str, content: str) -> None:
    for i in range(len(output) + 1):
        assert parse([output[:i], output[i:]]) == (thinking, content), i
    assert parse(list(output)) == (thinking, content)


# Each step: (chunk, thinking delta, content delta), checked as the chunk is fed.
STEPS = {
    "content without a tag passes at once": [("  abc", "", "  abc"), ("def", "", "def")],
    "tag built up piece by piece": [("  <th", "", ""), ("in", "", ""), ("k>a", "a", "")],
    "partial closing tag": [("<think>abc</th", "abc", ""), ("ink>def", "", "def")],
    "partial closing tag fake-out": [
        ("<think>abc</th", "abc", ""),
        ("ing>def", "</thing>def", ""),
        ("ghi</thi", "ghi", ""),
        ("nk>jkl", "", "jkl"),
    ],
    "whitespace after the closing tag, incremental": [
        ("  <think>abc</think>", "abc", ""),
        ("\n\ndef", "", "def"),
    ],
    "token by token": [
        ("<think>", "", ""),
        ("\n", "", ""),
        ("</think>", "", ""),
        ("\n\n", "", ""),
        ("Hi", "", "Hi"),
        (" there", "", " there"),
    ],
    "leading whitespace inside the trace is dropped": [
        ("  <think>   \t ", "", ""),
        ("  these are some ", "these are some ", ""),
        ("thoughts </think>  ", "thoughts ", ""),
        ("  more content", "", "more content"),
    ],
    "later whitespace is kept": [
        ("<think>a", "a", ""),
        ("  b", "  b", ""),
        ("</think>c", "", "c"),
        ("  d", "", "  d"),
    ],
    "text before the tag means no thinking": [
        ("Sure", "", "Sure"),
        (" <think>x</think>", "", " <think>x</think>"),
    ],
}


@pytest.mark.parametrize("steps", STEPS.values(), ids=STEPS.keys())
def test_streaming_steps(steps: list[tuple[str, str, str]]) -> None:
    parser = ThinkingParser()
    for chunk, thinking, content in steps:
        assert parser.feed(chunk) == (thinking, content), chunk


def test_started_in_thinking() -> None:
    assert parse(["\nI should say hi.</think>\n\nHi!"], started_in_thinking=True) == (
        "I should say hi.",
        "Hi!",
    )
    # Without a closing tag everything is thinking.
    assert parse(["all thought"], started_in_thinking=True) == ("all thought", "")
    output = "  a<b </think>  c"
    for i in range(len(output) + 1):
        assert parse([output[:i], output[i:]], started_in_thinking=True) == ("a<b ", "c")


def test_custom_tags() -> None:
    assert parse(["[THINK]plan[/THINK]answer"], opening="[THINK]", closing="[/THINK]") == ("plan", "answer")
    output = "◁think▷深思◁/think▷答"
    for i in range(len(output) + 1):
        chunks = [output[:i], output[i:]]
        assert parse(chunks, opening="◁think▷", closing="◁/think▷") == ("深思", "答")


def test_thinking_done_property() -> None:
    parser = ThinkingParser()
    assert not parser.thinking_done
    parser.feed("<think>x")
    assert not parser.thinking_done
    parser.feed("</think>")
    assert parser.thinking_done
    skipped = ThinkingParser()
    skipped.feed("plain")
    assert skipped.thinking_done


def test_flush_returns_what_was_held() -> None:
    parser = ThinkingParser()
    assert parser.feed("  <thi") == ("", "")
    assert parser.flush() == ("", "  <thi")
    parser = ThinkingParser()
    assert parser.feed("<think>hmm</thi") == ("hmm", "")
    assert parser.flush() == ("</thi", "")
    parser = ThinkingParser()
    assert parser.feed("<think>a</think>  ") == ("a", "")
    assert parser.flush() == ("", "")


def test_leading_whitespace_is_not_held_without_limit() -> None:
    parser = ThinkingParser()
    assert parser.feed(" " * MAX_HELD_CHARS) == ("", "")
    assert parser.feed(" ") == ("", " " * (MAX_HELD_CHARS + 1))


def test_empty_tags_are_refused() -> None:
    with pytest.raises(ValueError):
        ThinkingParser(opening="")
    with pytest.raises(ValueError):
        ThinkingParser(closing="")


@pytest.mark.parametrize(
    ("text", "tag", "expected"),
    [
        ("abc</th", "</think>", 4),
        ("abc<", "</think>", 1),
        ("abc", "</think>", 0),
        ("</think>", "</think>", 0),
        ("", "<x>", 0),
    ],
)
def test_partial_suffix_len(text: str, tag: str, expected: int) -> None:
    assert partial_suffix_len(text, tag) == expected


def test_random_outputs_give_the_same_result_however_split() -> None:
    fragments = ["<think>", "</think>", "<th", "</th", "ink>", " ", "\n", "a", "é", "<", ">", "/"]
    rng = random.Random("thinking")
    for _ in range(500):
        output = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 10)))
        expected = parse([output])
        for started in (False, True):
            whole = parse([output], started_in_thinking=started)
            assert parse(list(output), started_in_thinking=started) == whole, output
        cut = rng.randint(0, len(output))
        assert parse([output[:cut], output[cut:]]) == expected, output
