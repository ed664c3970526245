"""The live event tail: one line per lifecycle event."""

from __future__ import annotations

from textual.widgets import Log

from chronos.console import event_summary
from chronos.models import Event

from ..format import duration, stamp


def event_line(ev: Event) -> str:
    body = event_summary(ev, error_width=100, with_queue=True, took=duration)
    return f"{stamp(ev.at)[11:]} {ev.kind:<10} {body}".rstrip()


def event_matches(ev: Event, text: str) -> bool:
    """Every word must match: ``kind:x``, ``queue:x``, ``task:x``, ``job:x`` or a substring of the line."""
    if not text:
        return True
    line = None
    for word in text.split():
        key, sep, value = word.partition(":")
        if sep and key in ("kind", "queue", "task", "job", "worker"):
            field = {"kind": ev.kind, "queue": ev.queue, "task": ev.task, "job": ev.job_id,
                     "worker": ev.worker}[key] or ""
            if value.lower() not in field.lower():
                return False
            continue
        line = line if line is not None else event_line(ev).lower()
        if word.lower() not in line:
            return False
    return True


class EventLog(Log):
    DEFAULT_CSS = """
    EventLog { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=2000, auto_scroll=True, highlight=False)
