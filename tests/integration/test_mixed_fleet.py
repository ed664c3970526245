"""Mixed fleets: workers with different task sets on one queue never discard each other's jobs."""

from __future__ import annotations

import asyncio
import time

import msgspec

from chronos import Registry
from chronos.states import JobState


def registry(names: list[str], ran: dict[str, list[str]], who: str) -> Registry:
    reg = Registry()
    for name in names:
        async def fn(i, _name=name):
            ran.setdefault(who, []).append(f"{_name}:{i}")
            return who

        reg.register(fn, name=name)
    return reg


def with_worker(settings, **changes):
    return msgspec.structs.replace(settings, worker=msgspec.structs.replace(settings.worker, **changes))


async def test_two_workers_with_different_tasks_share_a_queue(client, settings, start_worker):
    ran: dict[str, list[str]] = {}
    # A short bound would discard jobs at once if the peers were not seen: they must be.
    s = with_worker(settings, unknown_task_after=3.0)
    demo = await start_worker(registry(["demo.hello"], ran, "demo"), s, worker_id="demo-worker")
    user = await start_worker(registry(["user.send", "user.report"], ran, "user"), s, worker_id="user-worker")
    await client.register_tasks(["demo.hello", "user.send", "user.report"])
    ids = []
    for i in range(12):
        ids.append(await client.submit("user.send", [i], max_attempts=1))
        ids.append(await client.submit("user.report", [i], max_attempts=1))
        ids.append(await client.submit("demo.hello", [i], max_attempts=1))
    for job_id in ids:
        rec = await client.wait(job_id, timeout=60)
        assert rec.state == JobState.COMPLETED, (rec.spec.task, rec.state, rec.error)
        owner = "demo" if rec.spec.task == "demo.hello" else "user"
        assert rec.result == owner
        assert rec.attempt == 1, "a hand-back must not spend an attempt"
        assert [a.outcome for a in rec.attempts] == ["completed"]
        assert rec.delivered - rec.handed_back == 1
    assert sorted(ran["demo"]) == sorted(f"demo.hello:{i}" for i in range(12))
    assert len(ran["user"]) == 24
    assert await client.dlq_list() == []
    handed = demo.service.executor.handed_back + user.service.executor.handed_back
    # Not guaranteed per run, but 36 jobs over two idle workers make it near certain; the record
    # checks above are what matter.
    assert handed >= 1


async def test_a_task_no_live_worker_has_is_discarded_after_the_bound(client, settings, start_worker):
    ran: dict[str, list[str]] = {}
    bound = 2.0
    handle = await start_worker(registry(["known"], ran, "w"), with_worker(settings, unknown_task_after=bound))
    await client.register_tasks(["known", "nobody.has.it"])
    started = time.monotonic()
    job = await client.submit("nobody.has.it", [1], max_attempts=5)
    rec = await client.wait(job, timeout=30)
    waited = time.monotonic() - started
    assert rec.state == JobState.DISCARDED
    assert "unknown task 'nobody.has.it'" in rec.error
    assert "worker.unknown_task_after = 2s" in rec.error
    assert waited >= bound
    assert rec.attempt == 0 and rec.attempts == []  # never ran, never spent an attempt
    assert rec.handed_back >= 1
    entry = await client.dlq_get(job)
    assert "no live worker on queue 'default'" in entry.reason
    assert handle.service.executor.handed_back >= 1


async def test_a_job_waits_for_a_worker_that_starts_within_the_bound(client, settings, start_worker):
    ran: dict[str, list[str]] = {}
    s = with_worker(settings, unknown_task_after=60.0)
    first = await start_worker(registry(["other"], ran, "first"), s)
    await client.register_tasks(["other", "late.task"])
    job = await client.submit("late.task", [1], max_attempts=1)

    await first.service.changed.until(lambda: first.service.executor.handed_back > 0, 15)
    assert (await client.get(job)).state == JobState.AVAILABLE
    await start_worker(registry(["late.task"], ran, "late"), s)
    rec = await client.wait(job, timeout=40)
    assert rec.state == JobState.COMPLETED and rec.result == "late"
    assert rec.attempt == 1
