"""Human-readable sizes, times and tables, in the exact style of Ollama's CLI."""

from __future__ import annotations

import math
from datetime import UTC, datetime


def human_bytes(n: int) -> str:
    """Decimal units like Ollama: ``98 MB``, ``1.2 GB``, ``512 B``."""
    for name, scale in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= scale:
            value, unit = n / scale, name
            break
    else:
        return f"{n} B"
    if value >= 10:
        return f"{int(value)} {unit}"
    if value != math.trunc(value):
        return f"{value:.1f} {unit}"
    return f"{int(value)} {unit}"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def human_time(when: datetime | str | None, zero: str = "Never", now: datetime | None = None) -> str:
    """``2 minutes ago``, ``4 minutes from now``, ``Forever`` (like Ollama's format.HumanTime)."""
    if when is None or when == "":
        return zero
    if isinstance(when, str):
        when = parse_time(when)
    now = now or datetime.now(UTC)
    delta = (now - when).total_seconds()
    if delta / 3600 / 24 / 365 < -20:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def parse_time(text: str) -> datetime:
    """RFC 3339 as Go writes it (nanoseconds and ``Z`` included)."""
    text = text.strip().replace("Z", "+00:00")
    if "." in text:  # Python takes at most microseconds
        head, _, rest = text.partition(".")
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        tz = rest[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{tz}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def table(header: list[str], rows: list[list[str]], padding: str = "    ") -> str:
    """Left-aligned columns separated by four spaces, no borders (Ollama's tablewriter style)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append(padding.join(cells).rstrip())
    return "\n".join(lines)
