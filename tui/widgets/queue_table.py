"""Per queue and priority: waiting, scheduled, running, retrying, done and failed windows, DLQ, acks.

With the queues' operator settings loaded (``show_queues``), every queue is listed, a paused one is
flagged ``PAUSED`` and its limits are shown, and one queue is selected (up/down or j/k) for the
dashboard's queue actions; until then the table looks as it always did.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding

from chronos.subjects import PRIORITY_RANK

from ..data import Cluster, QueueRow, Stats
from ..format import count
from .text_table import TextTable


class QueueTable(TextTable):
    BINDINGS = [
        Binding("down", "move(1)", "Next queue", show=False),
        Binding("up", "move(-1)", "Previous queue", show=False),
        Binding("j", "move(1)", "Next queue", show=False),
        Binding("k", "move(-1)", "Previous queue", show=False),
    ]
    RIGHT = frozenset({"waiting", "scheduled", "running", "retrying", "done5", "done60", "fail5", "fail60", "dlq",
                       "acks"})
    COLUMNS = (
        ("queue", "QUEUE"), ("priority", "PRIORITY"), ("waiting", "WAITING"), ("scheduled", "SCHED"),
        ("running", "RUNNING"), ("retrying", "RETRYING"), ("done5", "DONE 5m"), ("done60", "DONE 1h"),
        ("fail5", "FAILED 5m"), ("fail60", "FAILED 1h"), ("dlq", "DLQ"), ("acks", "ACK PENDING"), ("flag", "FLAG"),
    )

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.queue_info: dict[str, Any] = {}  # queue -> chronos.console.QueueInfo, once loaded
        self.selected: str | None = None
        self.queue_names: list[str] = []  # in table order
        self._last: tuple[Stats | None, Cluster | None] = (None, None)

    def show_queues(self, queues: list[Any]) -> None:
        self.queue_info = {q.name: q for q in queues}
        self.show(*self._last)

    def action_move(self, delta: int) -> None:
        self.move(delta)

    def move(self, delta: int) -> None:
        """Select the next (``delta`` 1) or previous (-1) queue."""
        if not self.queue_names:
            return
        i = self.queue_names.index(self.selected) if self.selected in self.queue_names else -delta
        self.selected = self.queue_names[max(0, min(len(self.queue_names) - 1, i + delta))]
        self.show(*self._last)

    def show(self, stats: Stats | None, cluster: Cluster | None) -> None:
        self._last = (stats, cluster)
        rows: dict[tuple[str, str], QueueRow] = {}
        for r in stats.rows if stats else ():
            rows[(r.queue, r.priority)] = r
        consumers = {(c.queue, c.priority): c for c in (cluster.consumers if cluster else ())}
        keys = set(rows) | {k for k, c in consumers.items() if c.pending or c.ack_pending}
        dlq = dict(cluster.dlq) if cluster else {}
        for q in [*dlq, *self.queue_info]:
            if not any(k[0] == q for k in keys):
                keys.add((q, "default"))
        out = []
        seen_queue: set[str] = set()
        for key in sorted(keys, key=lambda k: (k[0], PRIORITY_RANK.get(k[1], 9))):
            r = rows.get(key) or QueueRow(queue=key[0], priority=key[1])
            c = consumers.get(key)
            waiting = c.pending if c is not None else r.available
            first = key[0] not in seen_queue
            seen_queue.add(key[0])
            acks = "-" if c is None else (f"{c.ack_pending:,}/{c.max_ack_pending:,}" if c.max_ack_pending > 0
                                         else f"{c.ack_pending:,}")
            flag = Text("STALLED", style="bold red") if c is not None and c.stalled else Text("")
            info = self.queue_info.get(key[0])
            if info is not None:
                flag = self._flag(flag, info, first)
            fail5 = Text(count(r.failed_5m), style="red" if r.failed_5m else "")
            name: str | Text = key[0] if first else ""
            if first and self.queue_info and key[0] == self.selected:
                name = Text(key[0], style="reverse bold")
            out.append((f"{key[0]}/{key[1]}", (
                name, key[1], count(waiting), count(r.scheduled), count(r.running),
                count(r.retrying), count(r.completed_5m), count(r.completed_1h), fail5, count(r.failed_1h),
                count(dlq.get(key[0], 0)) if first else "", acks, flag,
            )))
        self.queue_names = list(dict.fromkeys(k.split("/")[0] for k, _ in out))
        if self.queue_info and self.selected not in self.queue_names and self.queue_names:
            self.selected = self.queue_names[0]
            self.show(stats, cluster)
            return
        self.sync(out)

    @staticmethod
    def _flag(flag: Text, info: Any, first: bool) -> Text:
        parts = Text()
        if flag.plain:
            parts.append_text(flag)
        if info.paused:
            parts.append(" " if parts.plain else "")
            parts.append("PAUSED", style="bold yellow")
        lim = info.limits
        if first and lim is not None:
            text = ", ".join(t for t in (
                f"max {lim.concurrency}" if lim.concurrency is not None else "",
                f"{lim.rate}" if lim.rate else "") if t)
            if text:
                parts.append(" " if parts.plain else "")
                parts.append(text, style="cyan")
        return parts
