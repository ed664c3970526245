"""Tally and filter parsing: pure, no server."""

from __future__ import annotations

from chronos.models import Event
from chronos.tui.data import JobQuery, job_matches, parse_filter
from chronos.tui.tally import Tally

from .fakes import NOW, RECORDS


def ev(kind: str, job: str, at: float, queue: str = "q", priority: str = "default", error: str | None = None) -> Event:
    return Event(kind=kind, at=at, job_id=job, task="t", queue=queue, priority=priority, error=error)


def row(t: Tally, now: float, queue: str = "q", priority: str = "default"):
    return next(r for r in t.snapshot(now).rows if (r.queue, r.priority) == (queue, priority))


def test_events_move_jobs_between_states():
    t = Tally()
    t.add(ev("available", "a", 100.0))
    t.add(ev("available", "b", 100.1))
    t.add(ev("running", "a", 100.2))
    r = row(t, 101.0)
    assert (r.available, r.running) == (1, 1)
    t.add(ev("completed", "a", 100.5))
    t.add(ev("retryable", "b", 100.6, error="boom"))
    r = row(t, 101.0)
    assert (r.available, r.running, r.retrying, r.completed_5m) == (0, 0, 1, 1)
    t.add(ev("discarded", "b", 100.9, error="boom"))
    r = row(t, 101.0)
    assert (r.retrying, r.failed_5m, r.failed_1h) == (0, 1, 1)
    assert t.last_failure is not None and t.last_failure.job_id == "b"


def test_late_and_repeated_events_are_ignored():
    t = Tally()
    t.add(ev("running", "a", 10.0))
    t.add(ev("completed", "a", 10.5))
    t.add(ev("available", "a", 9.0))  # the submitter's event arrives after the worker's
    t.add(ev("completed", "a", 10.5))  # the same event again (seed, then the stream)
    r = row(t, 11.0)
    assert (r.available, r.running, r.completed_5m) == (0, 0, 1)


def test_windows_and_rates_age_out():
    t = Tally()
    for i in range(10):
        t.add(ev("completed", f"j{i}", 1000.0 + i * 0.1))
    s = t.snapshot(1001.5)
    assert s.completed_per_s[-1] == 10 and len(s.completed_per_s) == 60
    assert row(t, 1001.5).completed_5m == 10
    assert row(t, 1000.0 + 400).completed_5m == 0 and row(t, 1000.0 + 400).completed_1h == 10
    assert row(t, 1000.0 + 3700).completed_1h == 0
    assert sum(t.snapshot(1000.0 + 120).completed_per_s) == 0


def test_seed_from_records_counts_live_and_finished():
    t = Tally()
    t.seed(RECORDS, NOW)
    rows = {(r.queue, r.priority): r for r in t.snapshot(NOW).rows}
    assert rows[("default", "default")].failed_1h == 1 and rows[("default", "default")].completed_1h == 1
    assert rows[("default", "low")].retrying == 1 and rows[("default", "low")].scheduled == 1
    assert rows[("mail", "high")].running == 1 and rows[("mail", "default")].available == 1
    assert t.seeded


def test_parse_filter():
    q = parse_filter("state:failed queue:mail task:emails.send tag:vip invoice 42")
    assert (q.state, q.queue, q.task, q.tag, q.text) == ("failed", "mail", "emails.send", "vip", "invoice 42")
    assert parse_filter("discarded").state == "discarded"
    assert parse_filter("", JobQuery(offset=100, sort="task")).offset == 0
    assert parse_filter("", JobQuery(sort="task")).sort == "task"


def test_job_matches_failed_alias_and_text():
    failed = [r.id for r in RECORDS if job_matches(r, JobQuery(state="failed"))]
    assert failed == ["job0002", "job0004"]
    assert [r.id for r in RECORDS if job_matches(r, JobQuery(text="TEMPLATE"))] == ["job0002"]


def test_seed_after_events_keeps_the_newer_fact():
    """The console subscribes first and scans after: what events already said must survive the scan."""
    from chronos.models import JobRecord, JobSpec
    from chronos.states import JobState

    t = Tally()
    t.add(ev("completed", "a", 50.0))  # finished while the scan ran
    t.add(ev("running", "b", 50.0))
    scanned = [
        JobRecord(id="a", spec=JobSpec(task="t", queue="q"), state=JobState.AVAILABLE, created_at=40, updated_at=40),
        JobRecord(id="b", spec=JobSpec(task="t", queue="q"), state=JobState.AVAILABLE, created_at=40, updated_at=40),
        JobRecord(id="c", spec=JobSpec(task="t", queue="q"), state=JobState.COMPLETED, created_at=40,
                  updated_at=45, finished_at=45),
    ]
    t.seed(scanned, 60.0)
    r = row(t, 60.0)
    assert (r.available, r.running, r.completed_5m) == (0, 1, 2)
    t.seed(scanned, 60.0, fresh=True)  # after a reconnect: the scan is the truth
    r = row(t, 60.0)
    assert (r.available, r.running, r.completed_5m) == (2, 0, 1)
