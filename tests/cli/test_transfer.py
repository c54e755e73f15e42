"""Pull/push progress drawing: Ollama's per-blob bars, on a terminal and in a log."""

from __future__ import annotations

import io
import re

from appliance.cli.progress import Bar, TransferProgress

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(output: str) -> list[str]:
    """What a terminal shows after ``output`` (cursor up, clear line, newlines)."""
    lines, row = [""], 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", output):
        if token == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        elif match := re.fullmatch(r"\x1b\[(\d*)A", token):
            row -= int(match[1] or 1)
        elif token == "\x1b[2K":
            lines[row] = ""
        elif token and not token.startswith("\x1b") and token != "\r":
            lines[row] += token
    return [line.rstrip() for line in lines if line.strip()]


def feed(progress: TransferProgress, clock: list[float]) -> None:
    progress.show({"status": "pulling manifest"})
    progress.show({"status": "pulling aaaaaaaaaaaa", "digest": A, "total": 98_000_000})
    for step in range(0, 11):
        clock[0] += 0.5
        progress.show({"status": "pulling aaaaaaaaaaaa", "digest": A, "total": 98_000_000,
                       "completed": step * 9_800_000})
    progress.show({"status": "pulling bbbbbbbbbbbb", "digest": B, "total": 120, "completed": 120})
    for status in ("verifying sha256 digest", "writing manifest", "success"):
        progress.show({"status": status})
    progress.close()


def test_terminal_shows_one_line_per_status_and_blob():
    out, clock = Terminal(), [0.0]
    feed(TransferProgress("pulling", out, clock=lambda: clock[0]), clock)
    shown = screen(out.getvalue())
    assert shown[0] == "pulling manifest"
    assert re.fullmatch(r"pulling aaaaaaaaaaaa: 100% ▕█+▏  98 MB", shown[1])
    assert re.fullmatch(r"pulling bbbbbbbbbbbb: 100% ▕█+▏  120 B", shown[2])
    assert shown[3:] == ["verifying sha256 digest", "writing manifest", "success"]


def test_a_log_gets_each_line_once():
    out, clock = io.StringIO(), [0.0]
    feed(TransferProgress("pulling", out, clock=lambda: clock[0]), clock)
    lines = out.getvalue().splitlines()
    assert lines[0] == "pulling manifest" and lines[-3:] == ["verifying sha256 digest", "writing manifest",
                                                             "success"]
    assert sum(line.startswith("pulling aaaaaaaaaaaa: 100%") for line in lines) == 1
    assert len(lines) == 6


def test_bar_shows_rate_and_time_left_while_running():
    bar = Bar("pulling abcdef123456:", 98_000_000, 0, 0.0)
    for second in range(1, 6):
        bar.set(second * 10_000_000, second + 0.01)
    text = bar.render(100)
    assert text.startswith("pulling abcdef123456:  51% ▕")
    assert text.endswith("▏  50 MB/ 98 MB   10 MB/s      5s")
    assert len(text) <= 100
