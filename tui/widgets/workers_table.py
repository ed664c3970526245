"""Live workers: slots, heartbeat age, and each running job with the age of its last progress heartbeat."""

from __future__ import annotations

from rich.text import Text

from chronos.models import WorkerHeartbeat

from ..format import duration
from .text_table import TextTable


def stale_after(heartbeat_interval: float) -> float:
    return max(3 * heartbeat_interval, 10.0)


class WorkersTable(TextTable):
    RIGHT = frozenset({"slots", "done", "failed"})
    COLUMNS = (
        ("id", "WORKER"), ("host", "HOST"), ("queues", "QUEUES"), ("slots", "SLOTS"), ("beat", "HEARTBEAT"),
        ("state", "STATE"), ("done", "DONE"), ("failed", "FAILED"), ("jobs", "RUNNING (last progress)"),
    )

    def show(self, workers: tuple[WorkerHeartbeat, ...], now: float, heartbeat_interval: float) -> None:
        limit = stale_after(heartbeat_interval)
        rows = []
        for w in workers:
            age = now - w.heartbeat_at
            state = Text("stale", style="bold red") if age > limit else Text(
                w.state, style="yellow" if w.state == "draining" else "green")
            jobs = ", ".join(f"{r.id[-8:]} {r.task} ({duration(now - r.progress_at)})" for r in w.running[:3])
            if len(w.running) > 3:
                jobs += f" +{len(w.running) - 3}"
            beat = Text(f"{duration(age)} ago", style="red" if age > limit else "")
            rows.append((w.id, (w.id, f"{w.host}:{w.pid}", ",".join(w.queues), f"{w.slots_used}/{w.slots_total}",
                                beat, state, f"{w.processed:,}", f"{w.failed:,}", jobs)))
        self.sync(rows)
