"""``ollama run``: display helpers with fake streams, then one-shot runs against the shared server."""

from __future__ import annotations

import io
import re

import pytest

from appliance.cli.run import (
    ReplyPrinter,
    RunOptions,
    format_value,
    go_duration,
    infer_think,
    keep_alive_value,
    metrics_summary,
    stream_reply,
    think_value,
)
from tests.cli.derived import derived_model

VERBOSE_LABELS = ("total duration:", "load duration:", "prompt eval count:", "prompt eval duration:",
                  "prompt eval rate:", "eval count:", "eval duration:", "eval rate:")


class FakeTerminal(io.StringIO):
    """Collects output and replays the two escapes word wrap uses (cursor left, clear to end of line)."""

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        lines, column = [""], 0
        for token in re.split(r"(\x1b\[\d*[DK]|\n)", self.getvalue()):
            if token == "\n":
                lines.append("")
                column = 0
            elif token.startswith("\x1b[") and token.endswith("D"):
                column -= int(token[2:-1])
            elif token == "\x1b[K":
                lines[-1] = lines[-1][:column]
            elif token:
                lines[-1] = lines[-1][:column] + token + lines[-1][column + len(token):]
                column += len(token)
        return lines


# --- formatting helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("ns", "text"), [
    (0, "0s"), (999, "999ns"), (1_500, "1.5µs"), (2_000_000, "2ms"), (123_456_789, "123.456789ms"),
    (1_000_000_000, "1s"), (1_234_567_891, "1.234567891s"), (60 * 10**9, "1m0s"),
    (3723_250_000_000, "1h2m3.25s"), (3600 * 10**9, "1h0m0s"), (-1_500_000, "-1.5ms"),
])
def test_go_duration_matches_go(ns, text):
    assert go_duration(ns) == text


def test_metrics_summary_is_ollamas_verbose_block():
    final = {"total_duration": 1_234_567_891, "load_duration": 5_000_000, "prompt_eval_count": 16,
             "prompt_eval_duration": 100_000_000, "eval_count": 30, "eval_duration": 500_000_000}
    assert metrics_summary(final) == (
        "total duration:       1.234567891s\n"
        "load duration:        5ms\n"
        "prompt eval count:    16 token(s)\n"
        "prompt eval duration: 100ms\n"
        "prompt eval rate:     160.00 tokens/s\n"
        "eval count:           30 token(s)\n"
        "eval duration:        500ms\n"
        "eval rate:            60.00 tokens/s\n"
    )
    # Like Ollama, zero values are left out (a cached prompt has no prompt eval duration).
    assert metrics_summary({"total_duration": 10, "eval_count": 1}) == (
        "total duration:       10ns\neval count:           1 token(s)\n")


def test_word_wrap_moves_the_word_that_crosses_the_margin():
    text = ("The quick brown fox jumps over the lazy dog while the cat watches from a sunny windowsill "
            "and the birds sing their morning songs.\nA second paragraph starts here.")
    out = FakeTerminal()
    printer = ReplyPrinter(out, word_wrap=True, width=40)
    for i in range(0, len(text), 3):  # streamed in small pieces, as tokens arrive
        printer.feed(text[i:i + 3])
    lines = out.screen()
    assert all(len(line) <= 35 for line in lines), lines
    assert " ".join(" ".join(lines).split()) == " ".join(text.split())
    assert "A second paragraph starts here." in lines
    assert printer.content == text


def test_word_wrap_breaks_a_word_longer_than_a_line():
    out = FakeTerminal()
    ReplyPrinter(out, word_wrap=True, width=20).feed("see " + "x" * 30 + " done")
    lines = out.screen()
    assert all(len(line) <= 15 for line in lines)
    assert "".join(lines).replace(" ", "") == "see" + "x" * 30 + "done"


def test_no_word_wrap_writes_text_unchanged():
    out = FakeTerminal()
    text = "word " * 40
    ReplyPrinter(out, word_wrap=False, width=40).feed(text)
    assert out.getvalue() == text


def test_thinking_is_shown_between_markers_then_the_answer():
    out = io.StringIO()
    printer = ReplyPrinter(out, word_wrap=False)
    for thinking, content in (("Let me", ""), (" think.", ""), ("", "Paris"), ("", ".")):
        printer.feed(content, thinking)
    assert out.getvalue() == "Thinking...\nLet me think.\n...done thinking.\n\nParis."
    assert (printer.thinking, printer.content) == ("Let me think.", "Paris.")


def test_thinking_is_grey_on_a_terminal():
    out = FakeTerminal()
    ReplyPrinter(out, word_wrap=False, width=80).feed("", "hmm\n")
    assert out.getvalue() == "\x1b[38;5;245m\x1b[1mThinking...\n\x1b[0m\x1b[38;5;245mhmm\n"


def test_hidden_thinking_prints_only_the_answer():
    out = io.StringIO()
    printer = ReplyPrinter(out, word_wrap=False, hide_thinking=True)
    printer.feed("", "secret")
    printer.feed("answer")
    assert out.getvalue() == "answer"


def test_stream_reply_reads_generate_and_chat_chunks():
    class NoSpinner:
        def stop(self) -> None:
            pass

    out = io.StringIO()
    chunks = [{"response": "Hel", "done": False}, {"response": "lo", "done": True, "eval_count": 2}]
    final = stream_reply(iter(chunks), ReplyPrinter(out, word_wrap=False), NoSpinner())  # type: ignore[arg-type]
    assert out.getvalue() == "Hello" and final == chunks[-1]
    printer = ReplyPrinter(io.StringIO(), word_wrap=False)
    chat = [{"message": {"role": "assistant", "content": "", "thinking": "t"}, "done": False},
            {"message": {"role": "assistant", "content": "ok"}, "done": True}]
    assert stream_reply(iter(chat), printer, NoSpinner()) == chat[-1]  # type: ignore[arg-type]
    assert (printer.role, printer.thinking, printer.content) == ("assistant", "t", "ok")


def test_stream_reply_stops_on_ctrl_c_and_closes_the_stream():
    closed = []

    def chunks():
        try:
            yield {"response": "partial", "done": False}
            raise KeyboardInterrupt
        finally:
            closed.append(True)

    class NoSpinner:
        def stop(self) -> None:
            pass

    out = io.StringIO()
    assert stream_reply(chunks(), ReplyPrinter(out, word_wrap=False), NoSpinner()) is None  # type: ignore[arg-type]
    assert out.getvalue() == "partial" and closed == [True]


def test_flag_values():
    assert keep_alive_value("5m") == "5m0s"
    assert keep_alive_value("1h30m") == "1h30m0s"
    assert keep_alive_value("0") == "0s"
    assert keep_alive_value("-1s") == -1
    with pytest.raises(SystemExit, match='time: invalid duration "300"'):
        keep_alive_value("300")
    assert [think_value(v) for v in ("", "true", "false", "high")] == [True, True, False, "high"]
    with pytest.raises(SystemExit, match="invalid value for --think"):
        think_value("maybe")
    assert format_value("") is None and format_value("json") == "json"
    assert format_value('{"type": "object"}') == {"type": "object"}
    with pytest.raises(SystemExit, match="invalid format"):
        format_value("yaml")
    assert infer_think(["completion", "thinking"], None, explicit=False) is True
    assert infer_think(["completion"], None, explicit=False) is None
    assert infer_think(["completion", "thinking"], False, explicit=True) is False


def test_request_body_carries_session_settings():
    opts = RunOptions(model="m", format="json", options={"num_predict": 5}, keep_alive="5m0s", think="low")
    assert opts.request(prompt="hi") == {"model": "m", "prompt": "hi", "format": "json",
                                         "options": {"num_predict": 5}, "keep_alive": "5m0s", "think": "low"}
    assert RunOptions(model="m").request(messages=[]) == {"model": "m", "messages": []}


# --- against the shared server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def t0(server):
    with derived_model(server, "cli-run-t0", temperature=0, num_predict=24) as name:
        yield name


def test_one_shot_answers_the_prompt(server, t0):
    proc = server.cli("run", t0, "What is the capital of France?")
    assert "Paris" in proc.stdout
    assert proc.stdout.endswith("\n\n")  # Ollama ends a one-shot answer with a blank line
    assert "\x1b[" not in proc.stdout  # no wrapping escapes and no spinner when not on a terminal


def test_piped_stdin_is_the_prompt(server, t0):
    # stdin is the prompt as it is, trailing newline included (as Ollama reads it): the same greedy
    # answer as that text given as an argument (with the bundled SYSTEM, "…France?\n" drifts into French)
    proc = server.cli("run", t0, input="What is the capital of France?\n")
    assert proc.stdout.strip()
    assert proc.stdout == server.cli("run", t0, "What is the capital of France?\n").stdout
    both = server.cli("run", t0, "France?", input="What is the capital of")
    assert "Paris" in both.stdout  # stdin first, then the words, as Ollama joins them


def test_verbose_prints_timings_to_stderr(server, t0):
    proc = server.cli("run", "--verbose", t0, "What is the capital of France?")
    assert "Paris" in proc.stdout and "total duration" not in proc.stdout
    lines = proc.stderr.splitlines()
    for label in VERBOSE_LABELS:
        assert any(line.startswith(label) for line in lines), (label, proc.stderr)
    assert re.search(r"^eval rate: +\d+\.\d\d tokens/s$", proc.stderr, re.M)
    assert re.search(r"^prompt eval count: +\d+ token\(s\)$", proc.stderr, re.M)


def test_format_json_constrains_the_answer(server, t0):
    import json

    proc = server.cli("run", t0, "--format", "json", "--keepalive", "5m",
                      "Give the capital of France as JSON with key capital.")
    text = proc.stdout.strip()
    assert text.startswith("{")
    try:  # num_predict 24 may cut it short; what came must still be JSON's beginning
        json.loads(text)
    except json.JSONDecodeError as exc:
        assert exc.pos >= len(text) - 1, text


def test_unknown_model_is_an_error(server):
    proc = server.cli("run", "no-such-model", "hello", check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith("Error: model 'no-such-model' not found (pulling it failed: ")
    assert proc.stdout == ""


def test_bad_flags_are_errors(server, t0):
    proc = server.cli("run", t0, "--keepalive", "forever", "hi", check=False)
    assert (proc.returncode, proc.stderr) == (1, 'Error: time: invalid duration "forever"\n')
    proc = server.cli("run", t0, "--think=sometimes", "hi", check=False)
    assert proc.returncode == 1 and "invalid value for --think" in proc.stderr
    proc = server.cli("run", t0, "--think", "hi", check=False)  # a bare --think never eats the prompt
    assert proc.returncode == 1 and "does not support thinking" in proc.stderr
