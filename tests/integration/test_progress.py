"""Progress (issue 16): ``current_job().progress(fraction, message)`` is stored on the record and
sent as a ``progress`` event, rate-limited per job, and never lost to (or written after) the outcome.

Real nats-server and worker; the tests wait on record writes and events, never on sleeps."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from chronos import Registry, current_job
from chronos.errors import ValidationError
from chronos.models import JobRecord
from chronos.states import JobState


async def _record_where(client, job_id: str, pred, timeout: float = 20.0) -> JobRecord:
    """The first version of the record (by its KV updates) for which ``pred`` holds."""
    store = await client.ops.store()

    async def go() -> JobRecord:
        async for entry in store.watch(job_id, include_existing=True):
            if entry.value is None:
                continue
            rec = await client.get(job_id)
            if pred(rec):
                return rec
        raise AssertionError("watch ended")

    return await asyncio.wait_for(go(), timeout)


def _registry() -> tuple[Registry, dict[str, Any]]:
    reg = Registry()
    seen: dict[str, Any] = {"release": asyncio.Event(), "thread_release": threading.Event(), "calls": 0}

    async def steps(n: int) -> str:
        job = current_job()
        for i in range(n):
            await job.progress((i + 1) / n, f"step {i + 1} of {n}")
            seen["calls"] += 1
        await seen["release"].wait()
        return "done"

    async def ends_at_once() -> str:
        job = current_job()
        await job.progress(0.25, "a quarter")
        await job.progress(1.0, "all of it")
        return "quick"

    def sync_steps(n: int) -> str:
        job = current_job()
        for i in range(n):
            job.progress((i + 1) / n, f"sync {i + 1}")  # called plainly from the task's thread
        seen["thread_release"].wait(30)
        return "sync done"

    async def bad_fraction() -> str:
        try:
            await current_job().progress(1.5)
        except ValidationError as exc:
            return str(exc)
        return "accepted"

    for fn in (steps, ends_at_once, sync_steps, bad_fraction):
        reg.register(fn, name=fn.__name__)
    return reg, seen


async def test_progress_in_the_record_and_as_an_event_rate_limited(client, start_worker):
    reg, seen = _registry()
    await start_worker(reg)
    events: list[Any] = []
    got_last = asyncio.Event()

    async def follow() -> None:
        async for ev in client.watch(kinds=["progress"]):
            events.append(ev)
            if ev.progress == 1.0:
                got_last.set()

    follower = asyncio.create_task(follow())
    try:
        await asyncio.sleep(0)  # the subscription is made before the job exists
        started = time.monotonic()
        job_id = await client.submit("steps", [2000])
        rec = await _record_where(client, job_id, lambda r: r.progress is not None and r.progress.fraction == 1.0)
        elapsed = time.monotonic() - started
        assert rec.state == JobState.RUNNING
        assert rec.progress.message == "step 2000 of 2000" and rec.progress.attempt == 1
        await asyncio.wait_for(got_last.wait(), 20)
        assert seen["calls"] == 2000
        # 2000 reports, a handful of writes: at most one per 0.5 s (plus the first at once).
        assert 1 <= len(events) <= elapsed / 0.5 + 2, (len(events), elapsed)
        assert all(e.job_id == job_id and e.task == "steps" for e in events)
        fractions = [e.progress for e in events]
        assert fractions == sorted(fractions)
        seen["release"].set()
        done = await client.wait(job_id, timeout=20)
        assert done.state == JobState.COMPLETED and done.progress.fraction == 1.0
    finally:
        follower.cancel()


async def test_the_outcome_is_not_lost_and_the_last_report_is_kept(client, start_worker):
    reg, _ = _registry()
    await start_worker(reg)
    ids = [await client.submit("ends_at_once") for _ in range(20)]
    for job_id in ids:
        done = await client.wait(job_id, timeout=30)
        assert done.state == JobState.COMPLETED and done.result == "quick"
        # The second report came within the rate limit: written before (or with) the outcome anyway.
        assert done.progress is not None and done.progress.fraction == 1.0 and done.progress.message == "all of it"


async def test_sync_task_reports_from_its_thread(client, start_worker):
    reg, seen = _registry()
    await start_worker(reg)
    job_id = await client.submit("sync_steps", [50])
    try:
        rec = await _record_where(client, job_id, lambda r: r.progress is not None and r.progress.fraction == 1.0)
        assert rec.state == JobState.RUNNING and rec.progress.message == "sync 50"
    finally:
        seen["thread_release"].set()
    done = await client.wait(job_id, timeout=20)
    assert done.state == JobState.COMPLETED and done.progress.fraction == 1.0


async def test_a_fraction_outside_0_1_is_refused_naming_the_field(client, start_worker):
    reg, _ = _registry()
    await start_worker(reg)
    done = await client.wait(await client.submit("bad_fraction"), timeout=20)
    assert done.result.startswith("progress: fraction must be a number from 0 to 1")
    assert done.progress is None


def test_progress_outside_a_worker_is_a_no_op_and_still_checks_its_input():
    from chronos.worker.context import JobContext

    ctx = JobContext("j", "t", 1, 3, "w")
    ctx.progress(0.5, "half")  # no worker behind it: nothing happens
    for bad in (-0.1, 1.01, float("nan"), "0.5", True):
        with pytest.raises(ValidationError, match="^progress: fraction"):
            ctx.progress(bad)  # type: ignore[arg-type]


async def test_wait_shows_the_terminal_record_and_its_last_report(client, start_worker):
    """``wait(on_update=...)`` (what ``submit --wait`` prints from) also sees the terminal record:
    a waiter that came late, or whose watch skipped the versions in between, still gets the last
    report, which the outcome's record carries."""
    reg = Registry()

    async def reports() -> str:
        await current_job().progress(1.0, "all done")
        return "ok"

    reg.register(reports, name="reports")
    await start_worker(reg)
    job_id = await client.submit("reports")
    await _record_where(client, job_id, lambda r: r.state is JobState.COMPLETED)
    shown: list[JobRecord] = []
    rec = await client.wait(job_id, timeout=10, on_update=shown.append)
    assert rec.state is JobState.COMPLETED
    assert shown and shown[-1].state is JobState.COMPLETED
    assert shown[-1].progress is not None and shown[-1].progress.message == "all done"
