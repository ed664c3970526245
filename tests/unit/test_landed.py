"""Which record shows that a run's outcome write landed although its answer was lost
(``executor._landed``): the worker then only settles the message, without running or writing
again. A wrong yes acks or naks a message on someone else's write."""

from __future__ import annotations

import msgspec

from chronos.models import Attempt, JobRecord, JobSpec
from chronos.outcomes import Outcome
from chronos.states import JobState
from chronos.worker.executor import Running, _landed, _Outcome

STARTED = 1000.0


def _run(gen: int = 1, delivered: int = 1, worker: str = "w1") -> Running:
    run = Running(msg=None, job_id="j", task="t", weight=1, started_mono=0.0,  # type: ignore[arg-type]
                  started_at=STARTED, progress_mono=0.0)
    run.gen, run.delivered = gen, delivered
    run.began = Attempt(number=1, started_at=STARTED, worker=worker, delivery=delivered)
    return run


def _record(state: JobState, last: Attempt, gen: int = 1) -> JobRecord:
    return JobRecord(id="j", spec=JobSpec(task="t"), state=state, created_at=0.0, updated_at=0.0,
                     attempts=[last], attempt=last.number, gen=gen)


def _ended(outcome: Outcome = Outcome.COMPLETED, **kw) -> Attempt:
    a = Attempt(number=1, started_at=STARTED, worker="w1", delivery=1, ended_at=STARTED + 1, outcome=outcome)
    return msgspec.structs.replace(a, **kw)


def test_its_own_ended_attempt_is_a_landed_write_for_each_outcome():
    for state, kind in [(JobState.COMPLETED, Outcome.COMPLETED), (JobState.RETRYABLE, Outcome.ERROR),
                        (JobState.CANCELLED, Outcome.CANCELLED), (JobState.DISCARDED, Outcome.ERROR),
                        (JobState.AVAILABLE, Outcome.SHUTDOWN)]:
        assert _landed(_record(state, _ended(kind)), _run(), _Outcome(kind)), state


def test_anything_else_is_not():
    done = _Outcome(Outcome.COMPLETED)
    assert not _landed(_record(JobState.RUNNING, _ended()), _run(), done)  # still running: not written
    assert not _landed(_record(JobState.COMPLETED, _ended(ended_at=None)), _run(), done)
    assert not _landed(_record(JobState.COMPLETED, _ended(worker="w2")), _run(), done)
    assert not _landed(_record(JobState.COMPLETED, _ended(delivery=2)), _run(), done)
    # A manual retry (gen 2) of a job this worker ran before: the gen-1 attempt is last, and
    # its delivery and worker match this gen-2 run's; the start time does not.
    retried = _record(JobState.AVAILABLE, _ended(Outcome.ERROR, started_at=STARTED - 50), gen=2)
    assert not _landed(retried, _run(gen=2), done)
    assert not _landed(_record(JobState.COMPLETED, _ended(), gen=1), _run(gen=2), done)
    # A rescuer ended the attempt (lost) and discarded the job: not this run's write.
    assert not _landed(_record(JobState.DISCARDED, _ended(Outcome.LOST)), _run(), done)
