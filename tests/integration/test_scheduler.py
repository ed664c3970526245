"""The scheduler against a real nats-server: stager promotion, leadership, schedules."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chronos import Registry
from chronos.jobs import JobOps
from chronos.scheduler import SchedulerService, Stager
from chronos.states import JobState


class SchedHandle:
    def __init__(self, service: SchedulerService, task: asyncio.Task[None]) -> None:
        self.service = service
        self.task = task

    async def stop(self, timeout: float = 15.0) -> None:
        self.service.stop()
        await asyncio.wait_for(self.task, timeout)


@pytest.fixture
async def start_scheduler(settings) -> AsyncIterator[Callable[..., Awaitable[SchedHandle]]]:
    handles: list[SchedHandle] = []

    async def start(*, lead: bool = True, **kwargs: Any) -> SchedHandle:
        svc = SchedulerService(settings, log_events=False, **kwargs)
        task = asyncio.get_running_loop().create_task(svc.run())
        waiter = asyncio.ensure_future((svc.leading if lead else svc.ready).wait())
        done, _ = await asyncio.wait({waiter, task}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiter.cancel()
            task.result()
        assert waiter in done, "scheduler did not start"
        if lead:
            assert svc.stager is not None
            await asyncio.wait_for(svc.stager.ready.wait(), 10)
        h = SchedHandle(svc, task)
        handles.append(h)
        return h

    yield start
    for h in handles:
        if not h.task.done():
            await h.stop()


def recording_registry() -> tuple[Registry, dict[str, Any]]:
    reg = Registry()
    seen: dict[str, Any] = {"at": {}, "calls": Counter(), "event": asyncio.Event()}

    async def stamp(tag: str = "") -> str:
        from chronos import current_job

        job = current_job()
        seen["at"].setdefault(job.job_id, time.time())
        seen["calls"][job.job_id] += 1
        seen["event"].set()
        return tag

    reg.register(stamp, name="stamp")
    return reg, seen


async def test_delayed_job_runs_after_its_time_not_before(client, start_worker, start_scheduler):
    reg, seen = recording_registry()
    await start_worker(reg)
    sched = await start_scheduler()
    job = await client.submit("stamp", ["later"], delay=1.0)  # room for a slow host between submit and get
    rec = await client.get(job)
    assert rec.state == JobState.SCHEDULED
    done = await client.wait(job, timeout=15)
    assert done.state == JobState.COMPLETED
    assert seen["at"][job] >= rec.spec.run_at
    stats = sched.service.stager.stats

    async def counted() -> None:
        # The stager counts a promotion once its publish is acked, which can be after the
        # (fast) job already finished: wait for the count rather than race it.
        while stats.promoted < 1:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(counted(), 10)
    assert stats.promoted == 1
    assert stats.lateness[0] >= 0

    # The promotion is announced like any transition (the TUI and `chronos logs` follow it).
    async def promoted() -> Any:
        async for ev in client.watch(job_id=job, history=60):
            if ev.kind == "available":
                return ev

    ev = await asyncio.wait_for(promoted(), 10)
    assert "after run_at" in (ev.message or "")


async def test_run_at_in_the_past_runs_at_once(client, start_worker, start_scheduler):
    reg, _seen = recording_registry()
    await start_worker(reg)
    await start_scheduler()
    # run_at in the past at submit: available at once, no stager round.
    job2 = await client.submit("stamp", run_at=time.time() - 30)
    assert (await client.wait(job2, timeout=15)).state == JobState.COMPLETED


async def test_jobs_parked_before_the_scheduler_started_are_promoted(client, start_worker, start_scheduler):
    reg, seen = recording_registry()
    await start_worker(reg)
    jobs = [await client.submit("stamp", delay=0.2) for _ in range(5)]
    await asyncio.sleep(0)  # nothing to wait for: the jobs are parked durably
    for j in jobs:
        assert (await client.get(j)).state == JobState.SCHEDULED
    await start_scheduler()
    for j in jobs:
        assert (await client.wait(j, timeout=15)).state == JobState.COMPLETED
        assert seen["calls"][j] == 1


async def test_cancelled_scheduled_job_never_runs(client, start_worker, start_scheduler):
    reg, seen = recording_registry()
    await start_worker(reg)
    sched = await start_scheduler()
    cancelled = await client.submit("stamp", delay=0.4)
    marker = await client.submit("stamp", delay=0.6)
    await client.cancel(cancelled)
    assert (await client.wait(marker, timeout=15)).state == JobState.COMPLETED
    # The marker was due later and has run, so the cancelled one has been considered and skipped.
    stager = sched.service.stager
    await _until(lambda: stager.stats.skipped >= 1, 10)
    assert cancelled not in seen["calls"]
    assert (await client.get(cancelled)).state == JobState.CANCELLED


async def test_run_now_on_a_scheduled_job(client, start_worker, start_scheduler):
    reg, seen = recording_registry()
    await start_worker(reg)
    sched = await start_scheduler()
    job = await client.submit("stamp", delay=3600)
    await client.run_now(job)
    assert (await client.wait(job, timeout=15)).state == JobState.COMPLETED
    assert seen["calls"][job] == 1
    assert sched.service.stager.stats.promoted == 0


async def test_two_stagers_promote_each_job_once(client, start_worker, settings):
    """Two stagers that both believe they lead: the compare-and-set gives one run per job."""
    reg, seen = recording_registry()
    await start_worker(reg)
    stagers = [Stager(JobOps(client.conn), tick=0.5) for _ in range(2)]
    tasks = [asyncio.create_task(s.run()) for s in stagers]
    try:
        for s in stagers:
            await asyncio.wait_for(s.ready.wait(), 10)
        jobs = [await client.submit("stamp", [str(i)], delay=0.3 + i * 0.01) for i in range(20)]
        for j in jobs:
            assert (await client.wait(j, timeout=15)).state == JobState.COMPLETED
        assert all(seen["calls"][j] == 1 for j in jobs)

        async def counted() -> None:  # promotions are counted once their publish is acked
            while sum(s.stats.promoted for s in stagers) < 20:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(counted(), 10)
        assert sum(s.stats.promoted for s in stagers) == 20
        lateness = [x for s in stagers for x in s.stats.lateness]
        assert min(lateness) >= 0
        fired = [x for s in stagers for x in s.stats.fire_lateness]
        print(f"\nlateness ms: promoted p50={statistics.median(lateness) * 1000:.2f} max={max(lateness) * 1000:.2f}; "
              f"timer p50={statistics.median(fired) * 1000:.3f} max={max(fired) * 1000:.3f}")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_two_scheduler_services_run_a_delayed_job_once(client, start_worker, start_scheduler):
    reg, seen = recording_registry()
    await start_worker(reg)
    a = await start_scheduler()
    b = await start_scheduler(lead=False)
    assert a.service.is_leader and not b.service.is_leader
    jobs = [await client.submit("stamp", delay=0.3) for _ in range(5)]
    for j in jobs:
        assert (await client.wait(j, timeout=15)).state == JobState.COMPLETED
        assert seen["calls"][j] == 1


async def test_follower_takes_over_parked_jobs(client, start_worker, start_scheduler):
    reg, seen = recording_registry()
    await start_worker(reg)
    a = await start_scheduler()
    b = await start_scheduler(lead=False)
    job = await client.submit("stamp", delay=1.0)
    await a.stop()  # resigns: the follower wins at once
    await asyncio.wait_for(b.service.leading.wait(), 10)
    assert (await client.wait(job, timeout=15)).state == JobState.COMPLETED
    assert seen["calls"][job] == 1


async def _until(pred: Callable[[], bool], timeout: float) -> None:
    async def loop() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


# --- schedules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "tz"),
        ({"every": 0}, "every"),
        ({"every": "soon"}, "every"),
        ({"every": 5, "queue": "no spaces"}, "queue"),
        ({"every": 5, "overlap": "sometimes"}, "overlap"),
        ({"every": 5, "misfire": "never"}, "misfire"),
    ],
)
async def test_bad_schedules_are_refused_and_nothing_is_stored(client, start_worker, kwargs, field):
    from chronos.errors import ValidationError

    reg, _ = recording_registry()
    await start_worker(reg)
    await client.register_tasks(["stamp"])  # known to this client without a catalog read
    with pytest.raises(ValidationError) as err:
        await client.add_schedule("bad", "stamp", **kwargs)
    assert field in str(err.value) or "tz" in str(err.value)
    assert await client.list_schedules() == []


async def test_schedule_crud(client, start_worker):
    from chronos.errors import ScheduleNotFoundError, ValidationError

    reg, _ = recording_registry()
    await start_worker(reg)
    await client.register_tasks(["stamp"])  # known to this client without a catalog read
    s = await client.add_schedule("nightly", "stamp", ["x"], cron="0 3 * * *", tz="Europe/Berlin")
    assert s.revision > 0 and s.cron == "0 3 * * *"
    with pytest.raises(ValidationError):
        await client.add_schedule("nightly", "stamp", every=5)
    assert [x.name for x in await client.list_schedules()] == ["nightly"]
    paused = await client.pause_schedule("nightly", until=time.time() + 60)
    assert paused.paused and paused.paused_until is not None
    resumed = await client.resume_schedule("nightly")
    assert not resumed.paused
    await client.remove_schedule("nightly")
    with pytest.raises(ScheduleNotFoundError):
        await client.get_schedule("nightly")
    # The name can be used again after removal.
    assert (await client.add_schedule("nightly", "stamp", every=60)).every == 60


async def test_every_second_schedule_fires(client, start_worker, start_scheduler):
    reg, seen = recording_registry()
    await start_worker(reg)
    await client.register_tasks(["stamp"])  # known to this client without a catalog read
    sched = await start_scheduler()
    await client.add_schedule("tick", "stamp", every=1)
    enq = sched.service.enqueuer

    async def two_fires() -> None:
        while len(enq.fired) < 2:
            await enq.fired_event.wait()

    await asyncio.wait_for(two_fires(), 10)
    (_, t1, j1), (_, t2, j2) = enq.fired[:2]
    assert t2 - t1 == 1 and j1 != j2
    rec = await client.wait(j1, timeout=15)
    assert rec.state == JobState.COMPLETED and rec.schedule_id == "tick" and rec.fire_time == t1
    assert seen["at"][j1] >= t1
    stored = await client.get_schedule("tick")
    assert stored.last_fire_time is not None and stored.last_fire_time >= t1

    # Each fire is announced like a submit, so `chronos logs` and the TUI see it.
    async def announced() -> Any:
        async for ev in client.watch(job_id=j1, history=60):
            if ev.kind == "available":
                return ev

    ev = await asyncio.wait_for(announced(), 10)
    assert ev.task == "stamp" and "schedule tick" in (ev.message or "")


async def test_two_enqueuers_make_one_job_per_fire(client, start_worker):
    """Two enqueuers that both believe they lead: derived ids and message ids give one job per fire."""
    from chronos.scheduler.enqueuer import Enqueuer

    reg, seen = recording_registry()
    await start_worker(reg)
    await client.register_tasks(["stamp"])  # known to this client without a catalog read
    await client.add_schedule("dup", "stamp", every=1)
    enqs = [Enqueuer(JobOps(client.conn), tick=0.2) for _ in range(2)]
    tasks = [asyncio.create_task(e.run()) for e in enqs]
    try:
        async def fires(n: int) -> None:
            while len({t for e in enqs for _, t, _ in e.fired}) < n:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(fires(3), 10)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    by_time: dict[float, set[str]] = {}
    for e in enqs:
        for _, t, j in e.fired:
            by_time.setdefault(t, set()).add(j)
    assert all(len(ids) == 1 for ids in by_time.values())
    for ids in by_time.values():
        (j,) = ids
        assert (await client.wait(j, timeout=15)).state == JobState.COMPLETED
        assert seen["calls"][j] == 1


async def test_paused_schedule_does_not_fire(client, start_worker, start_scheduler):
    reg, _seen = recording_registry()
    await start_worker(reg)
    await client.register_tasks(["stamp"])  # known to this client without a catalog read
    await client.add_schedule("quiet", "stamp", every=1, paused=True)
    await client.add_schedule("marker", "stamp", every=1)
    sched = await start_scheduler()
    enq = sched.service.enqueuer

    async def marker_fired_twice() -> None:
        while sum(1 for name, _, _ in enq.fired if name == "marker") < 2:
            await enq.fired_event.wait()

    await asyncio.wait_for(marker_fired_twice(), 10)
    assert not any(name == "quiet" for name, _, _ in enq.fired)


# --- rescuer ---------------------------------------------------------------------------


async def test_rescuer_returns_lost_jobs_and_discards_spent_ones(client, start_worker):
    from chronos.jobs import new_record
    from chronos.models import Attempt
    from chronos.scheduler.rescuer import Rescuer

    reg, seen = recording_registry()
    worker = await start_worker(reg)
    ops = JobOps(client.conn)
    now = time.time()

    async def running(job_id: str, worker_id: str, max_attempts: int) -> None:
        spec = client.build_spec("stamp", max_attempts=max_attempts)
        rec = new_record(job_id, spec, now - 100, JobState.RUNNING, worker=worker_id, attempt=1,
                         attempts=[Attempt(number=1, started_at=now - 100, worker=worker_id)])
        await (await ops.create_nowait(rec))

    await running("lost1", "ghost", 3)
    await running("spent1", "ghost", 1)
    await running("alive1", worker.service.id, 3)  # its worker heartbeats: not lost
    # The live worker's heartbeat must be in the bucket before the rescuer looks.
    await _until_async(lambda: _has_heartbeat(client, worker.service.id), 10)
    rescuer = Rescuer(ops, rescue_after=5)
    assert await rescuer.step() == 2
    assert dict(rescuer.rescued) == {"lost1": "retryable", "spent1": "discarded"}
    done = await client.wait("lost1", timeout=15)
    assert done.state == JobState.COMPLETED and done.gen == 2 and seen["calls"]["lost1"] == 1
    assert done.attempts[0].outcome == "lost"
    spent = await client.get("spent1")
    assert spent.state == JobState.DISCARDED
    assert any(e.job_id == "spent1" for e in await client.dlq_list())
    assert (await client.get("alive1")).state == JobState.RUNNING


async def _has_heartbeat(client, worker_id: str) -> bool:
    return any(w.id == worker_id for w in await client.workers())


async def _until_async(pred: Callable[[], Awaitable[bool]], timeout: float) -> None:
    async def loop() -> None:
        while not await pred():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), timeout)


async def test_a_leader_that_died_between_promote_and_publish_loses_nothing(client, start_worker, start_scheduler):
    reg, seen = recording_registry()
    await start_worker(reg)
    job = await client.submit("stamp", ["orphan"], delay=0.3)
    rec = await client.get(job)
    # What a leader leaves when it dies after its compare-and-set and before its publish:
    # the record says available, no work message exists, the parked message is still there.
    await client.ops.move(rec, JobState.AVAILABLE)
    sched = await start_scheduler()
    done = await client.wait(job, timeout=15)
    assert done.state == JobState.COMPLETED and seen["at"][job] >= rec.spec.run_at
    # Counted once the publish is acked, which can be after the job finished: wait for it.
    await _until(lambda: sched.service.stager.stats.republished >= 1, 10)
    assert sched.service.stager.stats.republished == 1 and seen["calls"][job] == 1
