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
