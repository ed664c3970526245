"""Slot accounting of a job that ran and awaits its outcome's commit, and the worker's GC tuning."""

from __future__ import annotations

import gc

from chronos.config import load_settings
from chronos.worker.executor import Running
from chronos.worker.registry import Registry
from chronos.gctune import tune_gc
from chronos.worker.service import WorkerService


def _service(slots: int) -> WorkerService:
    settings = load_settings(overrides={"namespace": "slots"}, read_env=False)
    return WorkerService(settings, Registry(), concurrency=slots)


def _hold(svc: WorkerService, key: int) -> Running:
    run = Running(msg=None, job_id=f"j{key}", task="t", weight=1, started_mono=0.0,  # type: ignore[arg-type]
                  started_at=0.0, progress_mono=0.0, key=key)
    svc.running[key] = run
    svc.used += 1
    return run


def test_a_job_awaiting_its_commit_frees_its_slot_but_stays_held_until_released():
    svc = _service(2)
    a, b = _hold(svc, 1), _hold(svc, 2)
    assert svc.free() == 0
    svc.completing(a)
    svc.completing(a)  # once only
    assert svc.free() == 1 and svc.used == 1 and svc.committing == 1
    assert a.key in svc.running  # still held: kept alive by in-progress acks until its commit
    svc.released(a)
    assert svc.free() == 1 and svc.used == 1 and svc.committing == 0 and a.key not in svc.running
    svc.released(b)
    assert svc.free() == 2 and svc.used == 0


def test_commits_past_a_backlog_of_slots_take_slots_again():
    svc = _service(2)
    runs = [_hold(svc, k) for k in range(1, 3)]
    for r in runs:
        svc.completing(r)
    assert svc.free() == 2  # a backlog of up to `slots` jobs awaiting commit costs nothing
    more = [_hold(svc, k) for k in range(3, 5)]
    for r in more:
        svc.completing(r)
    assert svc.committing == 4 and svc.free() == 0  # a stalled commit stops fetching
    svc.released(runs[0])
    assert svc.free() == 1


def test_gc_tuning_only_over_the_default_threshold():
    before = gc.get_threshold()
    try:
        gc.set_threshold(1234, 10, 10)
        tune_gc(100_000)
        assert gc.get_threshold() == (1234, 10, 10)  # the user's own setting is left alone
        gc.set_threshold(700, 10, 10)
        tune_gc(100_000)
        assert gc.get_threshold()[0] > 700 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
