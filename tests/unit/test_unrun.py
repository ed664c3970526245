"""Deliveries a worker knows never ran (their running write unanswered: held, or handed back after
holding) are counted as hand-backs, not runs, and shown as no ``lost`` attempt
(``Executor._running``); a held delivery takes a record as its own only if it shows one of its
own writes (``_started_here``). A wrong skip hides a run; a wrong count sends a job to the DLQ."""

from __future__ import annotations

from chronos.models import Attempt, JobRecord, JobSpec
from chronos.outcomes import Outcome
from chronos.states import JobState
from chronos.worker.executor import Alone, Executor, Running, _runs_in_gen, _started_here

ME = "w1"
T0 = 1000.0


class _Clock:
    def now(self) -> float:
        return T0 + 50

    def monotonic(self) -> float:
        return 0.0


class _Holding(Alone):
    """A host holding deliveries of job j (gen 1) for their running write."""

    def __init__(self, held: set[int]) -> None:
        super().__init__()
        self.held = held

    def held_unrun(self, job_id: str, gen: int, *, besides: Running) -> set[int]:
        return set(self.held) if (job_id, gen) == ("j", 1) else set()


def _executor(held: set[int] = frozenset(), unrun: set[int] | None = None) -> Executor:
    ex = Executor.__new__(Executor)  # only what _running reads
    ex.clock, ex.worker_id, ex.unrecorded = _Clock(), ME, {}
    ex.host = _Holding(set(held))
    ex.unrun = {("j", 1): set(unrun)} if unrun else {}
    return ex


def _run(delivered: int) -> Running:
    run = Running(msg=None, job_id="j", task="t", weight=1, started_mono=0.0,  # type: ignore[arg-type]
                  started_at=T0, progress_mono=0.0)
    run.delivered, run.msg_gen = delivered, 1
    return run


def _record(delivered: int = 1, attempts: list[Attempt] | None = None, state: JobState = JobState.RETRYABLE,
            handed_back: int = 0) -> JobRecord:
    attempts = attempts if attempts is not None else [
        Attempt(number=1, started_at=T0, worker=ME, delivery=1, ended_at=T0 + 1, outcome=Outcome.RETRY)]
    return JobRecord(id="j", spec=JobSpec(task="t"), state=state, created_at=0.0, updated_at=0.0,
                     attempts=attempts, attempt=len(attempts), gen=1, delivered=delivered, delivered_gen=1,
                     handed_back=handed_back)


def test_a_gap_of_unknown_deliveries_is_counted_as_runs():
    new = _executor()._running(_record(), 3, _run(3))
    assert [a.outcome for a in new.attempts] == [Outcome.RETRY, Outcome.LOST, None]
    assert _runs_in_gen(new) == 3


def test_a_delivery_held_here_is_a_hand_back_not_a_lost_run():
    new = _executor(held={2})._running(_record(), 3, _run(3))
    assert [a.outcome for a in new.attempts] == [Outcome.RETRY, None]
    assert (new.delivered, new.handed_back, new.attempt) == (3, 1, 2)
    assert _runs_in_gen(new) == 2


def test_a_delivery_handed_back_unrun_here_is_a_hand_back():
    new = _executor(unrun={2, 3})._running(_record(), 4, _run(4))
    assert [a.outcome for a in new.attempts] == [Outcome.RETRY, None]
    assert _runs_in_gen(new) == 2


def test_a_remembered_delivery_1_still_counts():
    """A restarted server that lost its consumer state counts from 1 again: the delivery 1 this
    worker once handed back is not the new delivery 1, which may have run elsewhere unrecorded."""
    new = _executor(unrun={1})._running(_record(delivered=0, attempts=[], state=JobState.AVAILABLE), 2, _run(2))
    assert [a.outcome for a in new.attempts] == [Outcome.LOST, None]
    assert _runs_in_gen(new) == 2


def test_its_own_landed_running_write_handed_back_unrun_is_not_a_lost_run():
    attempts = [Attempt(number=1, started_at=T0, worker=ME, delivery=1, ended_at=T0 + 1, outcome=Outcome.RETRY),
                Attempt(number=2, started_at=T0 + 2, worker=ME, delivery=2)]  # landed; its answer lost
    rec = _record(delivered=2, attempts=attempts, state=JobState.RUNNING)
    new = _executor(unrun={2})._running(rec, 3, _run(3))
    assert [(a.number, a.outcome, a.delivery) for a in new.attempts] == [(1, Outcome.RETRY, 1), (2, None, 3)]
    assert _runs_in_gen(new) == 2
    # Another worker's open attempt, or one not known unrun, is a lost run as before.
    other = _executor(unrun={2})._running(_record(delivered=2, state=JobState.RUNNING, attempts=[
        attempts[0], Attempt(number=2, started_at=T0 + 2, worker="w2", delivery=2)]), 3, _run(3))
    assert [a.outcome for a in other.attempts] == [Outcome.RETRY, Outcome.LOST, None]
    assert [a.outcome for a in _executor()._running(rec, 3, _run(3)).attempts] == [Outcome.RETRY, Outcome.LOST, None]


def test_started_here_only_for_its_own_write():
    mine = Attempt(number=2, started_at=T0 + 2, worker=ME, delivery=2)
    rec = _record(delivered=2, attempts=[mine], state=JobState.RUNNING)
    assert _started_here(rec, ME, 2, [T0 + 1, T0 + 2])
    assert not _started_here(rec, ME, 2, [T0 + 1])  # the same delivery, another start: not this try's
    assert not _started_here(rec, "w2", 2, [T0 + 2])
    assert not _started_here(rec, ME, 3, [T0 + 2])
    ended = _record(delivered=2, attempts=[Attempt(number=2, started_at=T0 + 2, worker=ME, delivery=2,
                                                   ended_at=T0 + 3, outcome=Outcome.COMPLETED)],
                    state=JobState.COMPLETED)
    assert not _started_here(ended, ME, 2, [T0 + 2])
