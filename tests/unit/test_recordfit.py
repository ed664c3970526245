"""chronos/recordfit.py: a record gives up the least needed parts first, and only as much as it must."""

from __future__ import annotations

from chronos import codec
from chronos.jobs import new_record
from chronos.models import Attempt, DLQEntry, JobSpec
from chronos.recordfit import fit_dlq_entry, fit_record
from chronos.states import JobState


def record(n_attempts: int, tb: str, result=None):
    rec = new_record("j1", JobSpec(task="t", args=["x" * 10_000]), 1.0, JobState.RETRYABLE, attempt=n_attempts)
    rec.attempts = [Attempt(number=i + 1, started_at=1.0, ended_at=2.0, outcome="error", error="E" * 3000,
                            traceback=tb) for i in range(n_attempts)]
    rec.result = result
    return rec


def test_a_record_that_fits_is_untouched():
    rec = record(2, "tb")
    new, data = fit_record(rec, 1 << 20, codec.encode)
    assert new is rec and data == codec.encode(rec)


def test_earlier_tracebacks_go_first_and_nothing_more_when_that_is_enough():
    rec = record(20, "€" * 16_000)  # 48 KB a traceback
    limit = len(codec.encode(record(20, None))) + 48_100
    new, data = fit_record(rec, limit, codec.encode)
    assert len(data) <= limit and len(new.attempts) == 20 and new.attempt == 20
    assert [a.traceback for a in new.attempts[:-1]] == [None] * 19
    assert new.attempts[-1].traceback == "€" * 16_000 and new.attempts[0].error == "E" * 3000


def test_then_attempts_then_the_result_and_the_spec_is_never_touched():
    rec = record(20, "€" * 16_000, result="r" * 60_000)
    limit = len(codec.encode(rec.spec)) + 6_000
    new, data = fit_record(rec, limit, codec.encode)
    assert len(data) <= limit
    assert new.spec == rec.spec and new.attempt == 20 and len(new.attempts) == 3
    assert new.result_truncated and "result dropped" in new.result
    assert codec.decode(data, type(rec)).attempts[-1].number == 20


def test_a_dlq_entry_keeps_its_spec_and_cuts_its_traceback():
    entry = DLQEntry(reason="R" * 5000, at=1.0, job_id="j1", spec=JobSpec(task="t", args=["x" * 10_000]),
                     traceback="€" * 16_000)
    limit = len(codec.encode(entry.spec)) + 5_000
    data = fit_dlq_entry(entry, limit, codec.encode)
    out = codec.decode(data, DLQEntry)
    assert len(data) <= limit and out.spec == entry.spec and len(out.traceback.encode()) <= 2_004
