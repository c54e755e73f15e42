"""``ollama doctor``: the report, as aligned text lines or as JSON for scripts; exit 1 when a check FAILs."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

from appliance.doctor import Check, Machine, Status, run_checks

_WIDTH = 12  # the longest check name ("environment") and a space


def format_text(checks: Sequence[Check]) -> str:
    """One ``STATUS name  detail`` line per check, each non-OK one followed by its ``fix:`` line."""
    lines = []
    for check in checks:
        lines.append(f"{check.status.value:<4} {check.name:<{_WIDTH}} {check.detail}")
        if check.status is not Status.OK and check.fix:
            lines.append(f"{'':<4} {'':<{_WIDTH}} fix: {check.fix}")
    counts = {s: sum(1 for c in checks if c.status is s) for s in Status}
    lines.append(f"{counts[Status.OK]} ok, {counts[Status.WARN]} warnings, {counts[Status.FAIL]} failures")
    return "\n".join(lines) + "\n"


def format_json(checks: Sequence[Check]) -> str:
    return (
        json.dumps(
            {
                "ok": not any(c.status is Status.FAIL for c in checks),
                "checks": [
                    {"name": c.name, "status": c.status.value, "detail": c.detail, "fix": c.fix}
                    for c in checks
                ],
            },
            indent=2,
        )
        + "\n"
    )


def run_doctor(as_json: bool = False, machine: Machine | None = None, out: TextIO | None = None) -> int:
    """Run every check on ``machine`` (default: this one) and print the report; 1 when any FAILs."""
    checks = run_checks(machine)
    (out or sys.stdout).write(format_json(checks) if as_json else format_text(checks))
    return 1 if any(c.status is Status.FAIL for c in checks) else 0
