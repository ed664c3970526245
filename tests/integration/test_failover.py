"""Failover on a real nats-server: a leader that dies, a lease that lapses, a SIGKILLed process,
and delayed jobs that run in order and never early."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest

from chronos import codec
from chronos.config import Settings
from chronos.models import JobMessage
from chronos.scheduler import SchedulerService
from chronos.states import JobState

from .test_scheduler import SchedHandle, recording_registry

TTL = 2.0  # the shortest lease NATS can express (whole seconds; settings require >= 2)


def short_lease(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, scheduler=msgspec.structs.replace(settings.scheduler, lease_ttl=TTL))


@pytest.fixture
async def start_node(settings, tmp_path) -> AsyncIterator[Callable[..., Awaitable[SchedHandle]]]:
    """Scheduler services with a 2 s lease, each with its own archive file."""
    handles: list[SchedHandle] = []

    async def start(name: str, *, lead: bool) -> SchedHandle:
        svc = SchedulerService(short_lease(settings), log_events=False, node_id=name,
                               archive_path=str(tmp_path / f"{name}.sqlite3"))
        task = asyncio.get_running_loop().create_task(svc.run())
        waiter = asyncio.ensure_future((svc.leading if lead else svc.ready).wait())
        done, _ = await asyncio.wait({waiter, task}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiter.cancel()
            task.result()
        assert waiter in done, f"scheduler {name} did not start"
        h = SchedHandle(svc, task)
        handles.append(h)
        return h

    yield start
    for h in handles:
        if not h.task.done():
            await h.stop()


async def crash(h: SchedHandle) -> None:
    """Stop a scheduler the way a crash would: its loops end, but it never resigns the lease."""
    assert h.service.lease is not None

    async def no_resign() -> bool:
        return False

    h.service.lease.resign = no_resign  # type: ignore[method-assign]
    h.task.cancel()
    await asyncio.gather(h.task, return_exceptions=True)


async def test_follower_takes_over_without_duplicate_or_missed_fires(client, start_worker, start_node):
    reg, seen = recording_registry()
    await start_worker(reg)
    await client.register_tasks(["stamp"])
    a = await start_node("node-a", lead=True)
    b = await start_node("node-b", lead=False)
    await client.add_schedule("tick", "stamp", every=1)
    enq_a = a.service.enqueuer
    assert enq_a is not None

    async def fires(enq: Any, n: int) -> None:
        while len(enq.fired) < n:
            await enq.fired_event.wait()

    await asyncio.wait_for(fires(enq_a, 2), 15)
    await crash(a)
    # The lease key expires by its TTL; the follower then wins it.
    await asyncio.wait_for(b.service.leading.wait(), TTL + 5)
    assert b.service.is_leader
    enq_b = b.service.enqueuer
    assert enq_b is not None
    await asyncio.wait_for(fires(enq_b, 3), 15)
    await client.pause_schedule("tick")

    jobs = [r for r in (await client.list(limit=1000)).jobs if r.schedule_id == "tick"]
    per_fire = Counter(int(r.fire_time or 0) for r in jobs)
    times = sorted(per_fire)
    assert all(c == 1 for c in per_fire.values()), per_fire  # no duplicate fire
    assert times == list(range(times[0], times[-1] + 1)), times  # no missed fire
    for rec in jobs:
        assert (await client.wait(rec.id, timeout=15)).state == JobState.COMPLETED
        assert seen["calls"][rec.id] == 1  # each fire ran once


async def test_a_lease_not_renewed_in_time_stops_the_loops_before_the_ttl(start_node):
    a = await start_node("node-a", lead=True)
    lease = a.service.lease
    assert lease is not None
    backend = lease._backend
    real_renew = backend.renew
    started: list[float] = []

    async def renew_then_hang(value: bytes, revision: int, ttl: int) -> int:
        started.append(time.monotonic())
        if len(started) == 1:
            return await real_renew(value, revision, ttl)
        await asyncio.Event().wait()  # the server never answers this renewal
        raise AssertionError("unreachable")

    backend.renew = renew_then_hang  # type: ignore[method-assign]
    await asyncio.wait_for(lease.following.wait(), 3 * TTL)

    async def loops_stopped() -> None:
        while a.service.leading.is_set():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loops_stopped(), TTL + 6)
    stopped = time.monotonic()
    assert a.service.stager is not None and a.service.enqueuer is not None
    # The key was last written by the first (successful) renewal, sent at started[0]; the server
    # expires it no earlier than TTL after that. The loops were gone before then.
    assert len(started) >= 2
    assert stopped < started[0] + TTL
    assert not a.service.is_leader


async def test_sigkilled_leader_process_failover_bench():
    """The real thing: two scheduler processes, the leader SIGKILLed by its PID."""
    from chronos.bench.failover import run_failover

    result = await run_failover(before=2.5, after=3.0, lease_ttl=TTL)
    assert result.duplicate_fires == 0 and result.missed_fires == 0, result
    assert result.fires >= 4 and result.runs == result.fires, result
    assert result.takeover_seconds == result.takeover_seconds  # not NaN: the follower took over


async def test_delayed_jobs_are_published_in_order_and_never_early(client, start_node):
    """Precision smoke test: order and no early job; no timing thresholds."""
    await client.register_tasks(["stamp"])
    await start_node("node-a", lead=True)
    seen: list[tuple[str, float]] = []
    done = asyncio.Event()
    n = 40

    async def on_work(msg: Any) -> None:
        seen.append((codec.decode(msg.data, JobMessage).record.id, time.time()))
        if len(seen) >= n:
            done.set()

    sub = await client.conn.nc.subscribe(client.names.jobs_wildcard(), cb=on_work)
    try:
        start = time.time() + 1.0
        # 25 ms apart, submitted in reverse so arrival order cannot explain the result.
        run_at = {await client.submit("stamp", run_at=start + i * 0.025): start + i * 0.025
                  for i in reversed(range(n))}
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await sub.unsubscribe()
    assert [job for job, _ in seen] == sorted(run_at, key=run_at.__getitem__)
    assert all(at >= run_at[job] for job, at in seen), [(at - run_at[job]) for job, at in seen]
