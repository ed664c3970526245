"""A page of jobs: id, task, state, queue, attempt, progress, age, error. Header clicks ask for a sort.

A LineTable, not a DataTable: a page is on screen a few milliseconds after it arrives (line_table.py).
"""

from __future__ import annotations

from rich.text import Text

from chronos.models import JobRecord

from ..format import ago, short, state_text
from .line_table import LineTable


class JobTable(LineTable):
    COLUMNS = (
        ("id", "ID"), ("task", "TASK"), ("state", "STATE"), ("queue", "QUEUE"), ("attempt", "ATTEMPT"),
        ("progress", "PROGRESS"), ("created", "CREATED"), ("updated", "UPDATED"), ("error", "ERROR"),
    )

    def show(self, jobs: tuple[JobRecord, ...], now: float) -> None:
        rows = []
        for r in jobs:
            rows.append((r.id, (
                r.id, r.spec.task, state_text(r.state), f"{r.spec.queue}/{r.spec.priority}",
                f"{r.attempt}/{r.spec.max_attempts}", _progress(r), ago(r.created_at, now), ago(r.updated_at, now),
                Text(short(r.error, 60), style="red") if r.error else "",
            )))
        self.sync(rows)


def _progress(r: JobRecord) -> str:
    """The running attempt's last progress report (``current_job().progress``), as a percentage."""
    p = r.progress
    if p is None or p.attempt != r.attempt:
        return ""
    return f"{p.fraction * 100:.0f}%"
