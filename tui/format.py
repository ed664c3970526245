"""Formatting for the console: times in UTC (so output is the same on every host), ages, numbers."""

from __future__ import annotations

import time

from rich.text import Text

STATE_STYLES = {
    "scheduled": "cyan",
    "available": "blue",
    "running": "yellow",
    "retryable": "dark_orange",
    "completed": "green",
    "cancelled": "magenta",
    "discarded": "bold red",
}


def state_text(state: object) -> Text:
    s = str(state)
    return Text(s, style=STATE_STYLES.get(s, ""))


def clock_time(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%H:%M:%S", time.gmtime(t))


def stamp(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = abs(seconds)
    if s < 1:
        out = f"{s * 1000:.0f}ms"
    elif s < 60:
        out = f"{s:.1f}s"
    elif s < 3600:
        out = f"{int(s // 60)}m{int(s % 60):02d}s"
    elif s < 86400:
        out = f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    else:
        out = f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"
    return ("-" if seconds < 0 else "") + out


def ago(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    d = now - t
    return f"in {duration(-d)}" if d < 0 else f"{duration(d)} ago"


def count(n: int) -> str:
    return f"{n:,}" if n else "·"


def short(text: str | None, width: int) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"
