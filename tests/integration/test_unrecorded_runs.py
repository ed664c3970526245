"""A run on the worker's fast path (its running write deferred) whose record moves under it is
never a run nobody recorded (issue 13: every execution start is visible in the record).

Once seen under load in tests/faults/test_bulk_kill.py: 49 jobs ran and were acked, their
completed write hit a revision conflict, and the outcome was dropped: the records stayed
``available`` with no attempt. Here the record is moved by hand while the task runs, before
its deferred running write (``running_write_after`` is long), then the task finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from chronos import Registry
from chronos.states import JobState

from chronos.worker.replay import MARGIN

from ..conftest import make_settings


def gated() -> tuple[Registry, asyncio.Event, asyncio.Event, list[str]]:
    reg = Registry()
    started, release = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def gate(hold: bool = True) -> str:
        from chronos import current_job

        if not hold:
            return "warm"
        ctx = current_job()
        runs.append(ctx.job_id if ctx else "?")
        started.set()
        await release.wait()
        return "ran"

    reg.register(gate, name="gate")
    return reg, started, release, runs


async def record_where(client, job_id: str, ok, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """The record once ``ok(record)`` holds, read on each of its KV updates; None at the timeout."""
    store = await client.ops.store()
    rec = None

    async def watch() -> None:
        nonlocal rec
        async for entry in store.watch(job_id, include_existing=True):
            if entry.value is None:
                continue
            rec = await client.get(job_id)
            if ok(rec):
                return

    try:
        await asyncio.wait_for(watch(), timeout)
    except asyncio.TimeoutError:
        return None
    return rec


async def gated_worker(client, settings, start_worker):  # type: ignore[no-untyped-def]
    """A worker whose running write waits a minute, past its consumer's first moments: a message
    stored within MARGIN of its consumer's creation takes the checked path (replay.py)."""
    reg, started, release, runs = gated()
    # No loop watchdog: on a loaded machine it sees a late loop and sends first deliveries to the
    # checked path for a while (Executor.suspect); this is about the fast path.
    s = make_settings(settings.nats.url, settings.namespace, worker={"running_write_after": 60.0,
                                                                     "loop_watchdog": False},
                      scheduler={"archive_path": settings.scheduler.archive_path})
    worker = await start_worker(reg, s)
    warm = await client.submit("gate", {"hold": False})
    assert await record_where(client, warm, lambda r: r.state is JobState.COMPLETED, 20) is not None
    created = worker.service.executor.replay._created  # read for the warm-up's delivery
    assert created, "the worker did not read its consumer's creation time"
    deadline = max(created.values()) + 2 * MARGIN
    while time.time() <= deadline:  # wall time passing the consumer's creation (server times, one host)
        await asyncio.sleep(0.01)
    return started, release, runs


async def test_a_stale_carried_revision_still_records_the_run(client, settings, start_worker):
    started, release, runs = await gated_worker(client, settings, start_worker)
    job = await client.submit("gate")
    await asyncio.wait_for(started.wait(), 20)
    rec, rev = await client.ops.read_versioned(job)
    assert rec.state is JobState.AVAILABLE, "the run was meant to be on the fast path (running write deferred)"
    await client.ops.write(rec, rev)  # same record, new revision: the message's carried one is stale
    release.set()
    done = await record_where(client, job, lambda r: r.state is JobState.COMPLETED)
    assert done is not None, "the run's outcome was dropped: the record stayed available"
    assert [a.outcome for a in done.attempts] == ["completed"] and done.result == "ran"
    assert runs == [job]


async def test_a_run_superseded_by_a_new_generation_is_recorded(client, settings, start_worker, caplog):
    caplog.set_level(logging.WARNING, logger="chronos.worker.executor")
    started, release, runs = await gated_worker(client, settings, start_worker)
    job = await client.submit("gate")
    await asyncio.wait_for(started.wait(), 20)
    rec, rev = await client.ops.read_versioned(job)
    assert rec.state is JobState.AVAILABLE and rec.attempts == []
    # What a repair of a message thought lost does (purger.repair_lost, rescuer past the duplicate
    # window): the next generation, written while the first message's run is under way. No new
    # message is published here, so only the first run's own write can put a run in the record.
    await client.ops.write(msgspec.structs.replace(rec, gen=rec.gen + 1), rev)
    release.set()
    seen = await record_where(client, job, lambda r: bool(r.attempts))
    assert seen is not None, "a run that started is missing from the record"
    [attempt] = seen.attempts
    assert attempt.outcome == "completed" and "generation 1" in (attempt.error or ""), attempt
    assert seen.gen == rec.gen + 1 and seen.state is JobState.AVAILABLE  # the new generation is not ours to end
    assert seen.attempt == 1  # counted: the next run is attempt 2
    assert runs == [job]
    # Logged as what it is, not as an overlap with another delivery (red-team finding).
    logged = [r.getMessage() for r in caplog.records if job in r.getMessage()]
    assert any("recorded as an attempt of its own" in m for m in logged), logged
    assert not any("overlapped" in m for m in logged), logged
