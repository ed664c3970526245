"""Tally fed by a job index's counts (no records): the rows come from the counters."""

from __future__ import annotations

from chronos.models import Event
from chronos.readmodel import CountsReply, summarize
from chronos.tui.tally import Tally


def test_index_counts_replace_record_counts_and_events_still_give_rates():
    t = Tally()
    t.add(Event(kind="available", at=100.0, job_id="x", task="t", queue="q"))  # counted from events meanwhile
    reply = CountsReply(
        rows=[("q", "default", "available", 7), ("q", "default", "running", 2), ("q", "default", "completed", 900),
              ("mail", "high", "retryable", 3)],
        finished=[("q", "default", "completed", 90.0, 40), ("q", "default", "discarded", 80.0, 2),
                  ("q", "default", "completed", 100.0 - 3000, 5)],  # 50 min ago: in the hour, not in 5 min
        at=100.0, node="n1")
    counts = summarize(reply)
    assert counts.by_state["completed"] == 900 and counts.by_queue["mail"] == {"retryable": 3}
    assert counts.total == 912 and counts.source == "index n1"
    t.set_counts(counts)
    snap = t.snapshot(100.5)
    assert snap.seeded
    rows = {(r.queue, r.priority): r for r in snap.rows}
    q = rows[("q", "default")]
    assert (q.available, q.running, q.completed_5m, q.completed_1h, q.failed_5m) == (7, 2, 40, 45, 2)
    assert rows[("mail", "high")].retrying == 3
    t.add(Event(kind="completed", at=100.2, job_id="x", task="t", queue="q"))
    assert t.snapshot(101.5).completed_per_s[-1] == 1.0  # rates still come from events
    t.set_counts(None)  # the index went away: back to what records and events say
    back = {(r.queue, r.priority): r for r in t.snapshot(101.5).rows}
    assert back[("q", "default")].available == 0 and back[("q", "default")].completed_5m == 1
