"""The enqueuer's heap: only due schedules are handled; edits reach it through the watch at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from chronos.jobs import JobOps
from chronos.scheduler.enqueuer import Enqueuer


async def _fires(enq: Enqueuer, name: str, n: int, timeout: float = 15.0) -> list[float]:
    async def wait() -> list[float]:
        while True:
            got = [t for s, t, _ in enq.fired if s == name]
            if len(got) >= n:
                return got
            await enq.fired_event.wait()

    return await asyncio.wait_for(wait(), timeout)


async def _running(client: Any) -> tuple[Enqueuer, asyncio.Task[None]]:
    enq = Enqueuer(JobOps(client.conn))
    return enq, asyncio.create_task(enq.run())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_idle_schedules_are_never_handled_between_their_fires(client):
    await client.register_tasks(["stamp"])
    for i in range(200):
        await client.add_schedule(f"idle{i}", "stamp", cron="0 0 1 1 *")  # once a year
    await client.add_schedule("busy", "stamp", every=1)
    enq, task = await _running(client)
    try:
        fired = await _fires(enq, "busy", 3)
        # Handled: the busy schedule per fire (and at most once more each, e.g. an own write racing
        # the watch); the 200 yearly schedules not once. A loop over every schedule would count 200+ per pass.
        assert enq.handled <= 2 * len(enq.fired) + 2, enq.handled
        assert all(s == "busy" for s, _, _ in enq.fired)
        assert fired == sorted(fired) and len(set(fired)) == len(fired)
    finally:
        await _stop(task)


async def test_edits_reach_the_heap_at_once(client):
    await client.register_tasks(["stamp"])
    enq, task = await _running(client)
    try:
        await client.add_schedule("a", "stamp", every=1)
        await _fires(enq, "a", 1)
        # Removed: no fire after the removal is acknowledged.
        await client.remove_schedule("a")
        removed_at = time.time()
        await client.add_schedule("b", "stamp", every=1)
        await _fires(enq, "b", 2)
        assert all(t <= removed_at + 0.5 for s, t, _ in enq.fired if s == "a")
        # Paused: nothing fires; resumed: it fires again.
        await client.pause_schedule("b")
        paused_at = time.time()
        await client.add_schedule("c", "stamp", every=1)
        await _fires(enq, "c", 2)
        assert all(t <= paused_at + 0.5 for s, t, _ in enq.fired if s == "b")
        n_b = len([1 for s, _, _ in enq.fired if s == "b"])
        await client.resume_schedule("b")
        await _fires(enq, "b", n_b + 1)
    finally:
        await _stop(task)


async def test_a_fire_is_on_time(client):
    """The loop sleeps until the heap's earliest time: a fire is made within a few tens of ms."""
    await client.register_tasks(["stamp"])
    for i in range(100):
        await client.add_schedule(f"idle{i}", "stamp", every=86400)
    await client.add_schedule("tick", "stamp", every=1)
    enq, task = await _running(client)
    late: list[float] = []
    try:
        seen = 0
        while len(late) < 3:
            await _fires(enq, "tick", seen + 1)
            now = time.time()
            for s, t, _ in enq.fired[seen:]:
                if s == "tick":
                    late.append(now - t)
            seen = len(enq.fired)
    finally:
        await _stop(task)
    assert max(late[1:]) < 0.25, late  # the first may be a catch-up at start
