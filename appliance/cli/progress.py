"""Progress output for create/pull/push: one line per status, a live percentage on a terminal."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from appliance.cli.format import human_bytes


class StatusPrinter:
    """Prints each new status once; on a TTY the current line is redrawn as its progress moves."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._current: str | None = None
        self._open = False

    def _finish_line(self) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False

    def update(self, text: str) -> None:
        key = text.split(" 0%")[0].split(" 100%")[0]
        if self.tty:
            if key != self._current:
                self._finish_line()
            self.stream.write("\r\x1b[K" + text)
            self._open = True
        elif key != self._current or text.endswith("100%"):
            self.stream.write(text + "\n")
        self._current = key
        self.stream.flush()

    def show(self, item: dict[str, Any]) -> None:
        status = str(item.get("status", ""))
        total, completed = int(item.get("total") or 0), int(item.get("completed") or 0)
        if total:
            pct = int(100 * completed / total) if total else 0
            bar = "█" * (pct // 5)
            text = f"{status} {pct:3d}% ▕{bar:<20}▏ {human_bytes(completed)}/{human_bytes(total)}"
            if self.tty or completed >= total or completed == 0:
                self.update(text)
            return
        self.update(status)

    def __enter__(self) -> StatusPrinter:
        return self

    def __exit__(self, *_: object) -> None:
        self._finish_line()
        self.stream.flush()


# --- transfers: one bar per blob, as Ollama's progress package draws them ---------------------------

SPINNER_FRAMES = ("⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏")


def _short_duration(seconds: float) -> str:
    """Ollama's bar ETA: ``4s``, ``2m5s``, ``1h3m``, ``99h+``."""
    s = round(seconds)
    if s >= 100 * 3600:
        return "99h+"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m{s % 60}s"
    return f"{s}s"


class Bar:
    """One blob's progress: percentage, bar, bytes, rate and time left (rate over the last ~10 s)."""

    def __init__(self, message: str, total: int, initial: int, now: float) -> None:
        self.message = message
        self.total = total
        self.initial = self.current = min(initial, total)
        self.started = now
        self.stopped: float | None = now if initial >= total else None
        self._buckets: list[tuple[float, int]] = []

    def set(self, value: int, now: float) -> None:
        self.current = min(value, self.total)
        if self.current >= self.total and self.stopped is None:
            self.stopped = now
        if not self._buckets or now - self._buckets[-1][0] > 1.0:
            self._buckets = [*self._buckets[-9:], (now, self.current)]

    @property
    def done(self) -> bool:
        return self.stopped is not None

    def rate(self) -> float:
        if self.stopped is not None:
            moved, seconds = self.current - self.initial, round(self.stopped - self.started)
        elif len(self._buckets) >= 2:
            (t0, v0), (t1, v1) = self._buckets[0], self._buckets[-1]
            moved, seconds = v1 - v0, round(t1 - t0)
        elif self._buckets:
            moved, seconds = self._buckets[0][1] - self.initial, round(self._buckets[0][0] - self.started)
        else:
            return 0.0
        return moved / seconds if seconds else 0.0

    def render(self, width: int) -> str:
        pct = 100 * self.current / self.total if self.total else 0.0
        head = f"{self.message} {pct:3.0f}%"
        if self.stopped is None:
            tail = f"{human_bytes(self.current):>6}/{human_bytes(self.total):>6}"
        else:
            tail = f"{human_bytes(self.total):>6}" + " " * 7
        rate = self.rate()
        if self.stopped is None and rate > 0:
            left = (self.total - self.current) / rate
            tail += f"  {human_bytes(int(rate)):>6}/s  {_short_duration(left):>6}"
        else:
            tail += " " * 18
        room = max(width - len(head) - len(tail) - 5, 0)
        filled = int(room * pct / 100)
        return f"{head} ▕{'█' * filled}{' ' * (room - filled)}▏ {tail}"


class TransferProgress:
    """Progress of a pull or push: a status line (spinner) per phase and a bar per blob.

    On a terminal every line is redrawn in place (at most ten times a second); otherwise each
    status is printed once and each bar once, when its blob is complete.
    """

    def __init__(self, verb: str, stream: TextIO | None = None, clock: Any = None) -> None:
        import shutil
        import time

        self.verb = verb  # "pulling" or "pushing"
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._clock = clock or time.monotonic
        self._width = shutil.get_terminal_size((80, 24)).columns if self.tty else 80
        self._lines: list[Bar | str] = []
        self._bars: dict[str, Bar] = {}
        self._printed: set[int] = set()
        self._status: str | None = None
        self._drawn = 0
        self._last_draw = 0.0
        self._frame = 0

    def show(self, item: dict[str, Any]) -> None:
        now = self._clock()
        digest, total = str(item.get("digest") or ""), int(item.get("total") or 0)
        completed = int(item.get("completed") or 0)
        if digest:
            if completed == 0 and self.verb == "pulling":
                return  # the announcement before a download starts; Ollama draws no 0% bar for it
            bar = self._bars.get(digest)
            if bar is None:
                short = digest.removeprefix("sha256:")[:12]
                label = f"pulling {short}:" if self.verb == "pulling" else str(item.get("status") or short)
                bar = self._bars[digest] = Bar(label, total, completed, now)
                self._lines.append(bar)
            bar.set(completed, now)
        elif item.get("status") and item["status"] != self._status:
            self._status = str(item["status"])
            self._lines.append(self._status)
        self._draw(now)

    def _draw(self, now: float, final: bool = False) -> None:
        if not self.tty:
            for index, line in enumerate(self._lines):
                if index in self._printed or (isinstance(line, Bar) and not line.done and not final):
                    continue
                self._printed.add(index)
                self.stream.write((line.render(self._width) if isinstance(line, Bar) else line) + "\n")
            self.stream.flush()
            return
        if not final and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self._frame = (self._frame + 1) % len(SPINNER_FRAMES)
        out = ["\x1b[?25l"]
        if self._drawn:
            out.append(f"\r\x1b[{self._drawn - 1}A" if self._drawn > 1 else "\r")
        for index, line in enumerate(self._lines):
            if isinstance(line, Bar):
                text = line.render(self._width)
            elif index == len(self._lines) - 1 and not final:
                text = f"{line} {SPINNER_FRAMES[self._frame]} "
            else:
                text = line
            out.append("\x1b[2K" + text + ("\n" if index < len(self._lines) - 1 else ""))
        out.append("\x1b[?25h")
        self._drawn = len(self._lines)
        self.stream.write("".join(out))
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the last line."""
        self._draw(self._clock(), final=True)
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> TransferProgress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
