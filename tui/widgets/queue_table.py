"""Per queue and priority: waiting, scheduled, running, retrying, done and failed windows, DLQ, acks."""

from __future__ import annotations

from rich.text import Text

from chronos.subjects import PRIORITY_RANK

from ..data import Cluster, QueueRow, Stats
from ..format import count
from .text_table import TextTable


class QueueTable(TextTable):
    RIGHT = frozenset({"waiting", "scheduled", "running", "retrying", "done5", "done60", "fail5", "fail60", "dlq",
                       "acks"})
    COLUMNS = (
        ("queue", "QUEUE"), ("priority", "PRIORITY"), ("waiting", "WAITING"), ("scheduled", "SCHED"),
        ("running", "RUNNING"), ("retrying", "RETRYING"), ("done5", "DONE 5m"), ("done60", "DONE 1h"),
        ("fail5", "FAILED 5m"), ("fail60", "FAILED 1h"), ("dlq", "DLQ"), ("acks", "ACK PENDING"), ("flag", "FLAG"),
    )

    def show(self, stats: Stats | None, cluster: Cluster | None) -> None:
        rows: dict[tuple[str, str], QueueRow] = {}
        for r in stats.rows if stats else ():
            rows[(r.queue, r.priority)] = r
        consumers = {(c.queue, c.priority): c for c in (cluster.consumers if cluster else ())}
        keys = set(rows) | {k for k, c in consumers.items() if c.pending or c.ack_pending}
        dlq = dict(cluster.dlq) if cluster else {}
        for q in dlq:
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
            fail5 = Text(count(r.failed_5m), style="red" if r.failed_5m else "")
            out.append((f"{key[0]}/{key[1]}", (
                key[0] if first else "", key[1], count(waiting), count(r.scheduled), count(r.running),
                count(r.retrying), count(r.completed_5m), count(r.completed_1h), fail5, count(r.failed_1h),
                count(dlq.get(key[0], 0)) if first else "", acks, flag,
            )))
        self.sync(out)
