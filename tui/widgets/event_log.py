"""The live event tail: one line per lifecycle event."""

from __future__ import annotations

from textual.widgets import Log

from chronos.models import Event

from ..format import duration, short, stamp


def event_line(ev: Event) -> str:
    parts = [stamp(ev.at)[11:], f"{ev.kind:<10}"]
    if ev.job_id:
        parts.append(ev.job_id)
    if ev.task:
        parts.append(ev.task)
    if ev.queue:
        parts.append(f"{ev.queue}/{ev.priority or 'default'}")
    if ev.attempt:
        parts.append(f"try={ev.attempt}")
    if ev.worker:
        parts.append(f"worker={ev.worker}")
    if ev.duration is not None:
        parts.append(f"took={duration(ev.duration)}")
    if ev.error:
        parts.append(f"error={short(ev.error, 100)}")
    if ev.message:
        parts.append(ev.message)
    return " ".join(parts)


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
