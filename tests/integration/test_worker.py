"""The job lifecycle end to end, against a real nats-server."""

import asyncio
from typing import Any

import msgspec
import pytest

from chronos import Cancel, Registry, Retry, current_job
from chronos.models import Backoff
from chronos.states import JobState

from ..conftest import wait_for_state

FAST = Backoff(base=0.05, cap=0.1)


def registry() -> tuple[Registry, dict]:
    reg = Registry()
    seen: dict = {"calls": 0, "started": asyncio.Event(), "release": asyncio.Event()}

    async def ok(x=1):
        seen["calls"] += 1
        return {"x": x}

    async def flaky(fail_times):
        seen["calls"] += 1
        if current_job().attempt <= fail_times:
            raise RuntimeError(f"boom {current_job().attempt}")
        return "finally"

    async def always_fails():
        seen["calls"] += 1
        raise ValueError("broken for good")

    async def cancels():
        seen["calls"] += 1
        raise Cancel("not worth it")

    async def snoozes():
        seen["calls"] += 1
        if current_job().attempt == 1:
            raise Retry(delay=0.05, reason="later")
        return "done"

    async def slow(seconds):
        seen["started"].set()
        await asyncio.sleep(seconds)
        return "slow done"

    async def blocks_until_released():
        seen["started"].set()
        await seen["release"].wait()
        return "released"

    def sync_task(a, b):
        return a * b

    for fn in (ok, flaky, always_fails, cancels, snoozes, slow, blocks_until_released, sync_task):
        reg.register(fn, name=fn.__name__)
    return reg, seen


async def test_sync_tasks_run_in_threads(client, start_worker):
    reg, _ = registry()
    await start_worker(reg)
    job = await client.submit("sync_task", [6, 7])
    rec = await client.wait(job, timeout=15)
    assert rec.state == JobState.COMPLETED and rec.result == 42


async def test_kwargs_and_result(client, start_worker):
    reg, _ = registry()
    await start_worker(reg)
    rec = await client.wait(await client.submit("ok", {"x": 9}), timeout=15)
    assert rec.result == {"x": 9}
    assert rec.attempts[-1].outcome == "completed"


async def test_retry_then_success(client, start_worker):
    reg, seen = registry()
    await start_worker(reg)
    job = await client.submit("flaky", [2], max_attempts=5, backoff=FAST)
    rec = await client.wait(job, timeout=20)
    assert rec.state == JobState.COMPLETED
    assert rec.result == "finally"
    assert rec.attempt == 3
    assert [a.outcome for a in rec.attempts] == ["error", "error", "completed"]
    assert "boom 1" in rec.attempts[0].error
    assert "RuntimeError" in rec.attempts[0].traceback


async def test_exhausted_attempts_go_to_the_dlq_with_traceback(client, start_worker):
    reg, seen = registry()
    await start_worker(reg)
    job = await client.submit("always_fails", max_attempts=3, backoff=FAST)
    rec = await client.wait(job, timeout=20)
    assert rec.state == JobState.DISCARDED
    assert seen["calls"] == 3
    assert "attempts exhausted (3/3)" in rec.error
    entry = await client.dlq_get(job)
    assert entry.job_id == job
    assert "broken for good" in entry.reason
    assert "ValueError: broken for good" in entry.traceback
    assert entry.spec.task == "always_fails"


async def test_cancel_outcome_means_no_retry(client, start_worker):
    reg, seen = registry()
    await start_worker(reg)
    rec = await client.wait(await client.submit("cancels", max_attempts=5), timeout=15)
    assert rec.state == JobState.CANCELLED
    assert rec.error == "not worth it"
    assert seen["calls"] == 1


async def test_retry_signal_snoozes(client, start_worker):
    reg, _ = registry()
    await start_worker(reg)
    rec = await client.wait(await client.submit("snoozes", max_attempts=3), timeout=15)
    assert rec.state == JobState.COMPLETED
    assert [a.outcome for a in rec.attempts] == ["retry", "completed"]


async def test_timeout_counts_as_a_failure(client, start_worker):
    reg, _ = registry()
    await start_worker(reg)
    job = await client.submit("slow", [30], timeout=0.3, max_attempts=1)
    rec = await client.wait(job, timeout=15)
    assert rec.state == JobState.DISCARDED
    assert rec.attempts[-1].outcome == "timeout"
    assert "timed out after 0.3s" in rec.error


async def test_unique_key_dedupes(client, start_worker):
    await client.register_tasks(["ok"])
    first = await client.submit("ok", [1], unique_key="report:2026-11-23")
    second = await client.submit("ok", [2], unique_key="report:2026-11-23")
    other = await client.submit("ok", [3], unique_key="report:2026-11-24")
    assert first == second
    assert other != first
    reg, seen = registry()
    await start_worker(reg)
    await client.wait(first, timeout=15)
    await client.wait(other, timeout=15)
    assert seen["calls"] == 2


async def test_cancel_pending_job_never_runs(client, start_worker):
    await client.register_tasks(["ok"])
    job = await client.submit("ok", [1])
    rec = await client.cancel(job)
    assert rec.state == JobState.CANCELLED
    reg, seen = registry()
    handle = await start_worker(reg)
    # A later job on the same queue completing proves the cancelled one was delivered first and skipped.
    marker = await client.submit("ok", [2])
    await client.wait(marker, timeout=15)
    assert seen["calls"] == 1
    assert (await client.get(job)).state == JobState.CANCELLED
    await handle.stop()


async def test_cancel_running_job(client, start_worker):
    reg, seen = registry()
    handle = await start_worker(reg)
    handle.service.cancels.grace = 0.2
    job = await client.submit("blocks_until_released", max_attempts=3)
    await asyncio.wait_for(seen["started"].wait(), 15)
    await wait_for_state(client, job, "running")
    await client.cancel(job, reason="operator said stop")
    rec = await client.wait(job, timeout=15)
    assert rec.state == JobState.CANCELLED
    assert rec.error == "operator said stop"
    assert rec.attempts[-1].outcome == "cancelled"


async def test_cancelling_a_finished_job_is_an_error(client, start_worker):
    reg, _ = registry()
    await start_worker(reg)
    job = await client.submit("ok")
    await client.wait(job, timeout=15)
    with pytest.raises(Exception, match="already completed"):
        await client.cancel(job)


async def test_graceful_shutdown_naks_in_flight_jobs(client, settings, start_worker):
    reg, seen = registry()
    handle = await start_worker(reg)
    job = await client.submit("blocks_until_released", max_attempts=5)
    await asyncio.wait_for(seen["started"].wait(), 15)
    await handle.stop()  # grace is 2 s in tests; the job never finishes on its own
    rec = await client.get(job)
    assert rec.state == JobState.AVAILABLE
    assert rec.attempts[-1].outcome == "shutdown"
    # Another worker picks it up at once (nak without delay) and finishes it.
    reg2, seen2 = registry()
    seen2["release"].set()
    await start_worker(reg2)
    rec = await client.wait(job, timeout=15)
    assert rec.state == JobState.COMPLETED and rec.result == "released"


async def test_manual_retry_of_a_discarded_job(client, start_worker):
    reg, seen = registry()
    await start_worker(reg)
    job = await client.submit("always_fails", max_attempts=1)
    await client.wait(job, timeout=15)
    rec = await client.retry(job)
    assert rec.state == JobState.AVAILABLE and rec.gen == 2
    rec = await client.wait(job, timeout=15)
    assert rec.state == JobState.DISCARDED
    assert rec.attempt == 2 and seen["calls"] == 2


async def test_malformed_messages_go_to_the_dlq_and_the_worker_lives_on(client, settings, start_worker):
    reg, seen = registry()
    # An unknown task is discarded once no live worker has had it for unknown_task_after.
    s = msgspec.structs.replace(settings, worker=msgspec.structs.replace(settings.worker, unknown_task_after=1.0))
    await start_worker(reg, s)
    subject = client.names.job_subject("default", "default")
    js = client.conn.js
    await js.publish(subject, b"\xc1 definitely not msgpack")
    await js.publish(subject, msgspec.msgpack.encode({"rev": 3}))  # missing the record
    ghost = client.build_spec("no_such_task")
    from chronos.ids import new_job_id
    from chronos.jobs import new_record
    from chronos.models import JobMessage
    from chronos import codec

    rec = new_record(new_job_id(), ghost, 1.0, JobState.AVAILABLE)
    rev = await (await client.ops.create_nowait(rec))
    await js.publish(subject, codec.encode(JobMessage(record=rec, rev=rev)))
    # The worker keeps running: a normal job after them completes.
    done = await client.wait(await client.submit("ok"), timeout=15)
    assert done.state == JobState.COMPLETED

    async def three_entries():
        while len(entries := await client.dlq_list()) < 3:
            await asyncio.sleep(0.05)
        return entries

    entries = await asyncio.wait_for(three_entries(), 15)
    reasons = sorted(e.reason for e in entries)
    assert any("not a msgpack JobMessage" in r for r in reasons)
    assert any("missing required field `record`" in r for r in reasons)
    assert any("unknown task 'no_such_task'" in r and "worker.unknown_task_after = 1s" in r for r in reasons)

    async def ghost_discarded():
        # The DLQ entry is written before the record moves to discarded.
        while (await client.get(rec.id)).state != JobState.DISCARDED:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(ghost_discarded(), 10)

    # The discard is announced like any other, so every scheduler's archive and the TUI see it.
    async def discarded_event() -> Any:
        async for ev in client.watch(job_id=rec.id, history=60):
            if ev.kind == "discarded":
                return ev

    ev = await asyncio.wait_for(discarded_event(), 10)
    assert "unknown task" in (ev.error or "")


async def test_dlq_replay_runs_the_job_again(client, start_worker):
    reg, seen = registry()
    await start_worker(reg)
    job = await client.submit("always_fails", max_attempts=1)
    await client.wait(job, timeout=15)
    entry = await client.dlq_get(job)
    rec = await client.dlq_replay(entry.seq)
    assert rec.state == JobState.AVAILABLE
    rec = await client.wait(job, timeout=15)
    assert rec.attempt == 2
    # the replayed entry is gone; the second failure wrote a new one
    entries = await client.dlq_list()
    assert [e.job_id for e in entries] == [job]
    assert entries[0].seq != entry.seq


async def test_priorities_are_served_in_order(client, settings, start_worker):
    reg = Registry()
    order: list[str] = []

    async def record(tag):
        order.append(tag)

    reg.register(record, name="record")
    await client.register_tasks(["record"])
    for prio in ("low", "default", "high", "critical"):
        await client.submit("record", [prio], priority=prio)
    handle = await start_worker(reg, concurrency=1)
    await handle.service.changed.until(lambda: len(order) >= 4, 15)
    assert order == ["critical", "high", "default", "low"]


async def test_burst_mode_exits_when_the_queue_is_empty(client, settings):
    from chronos.worker.service import WorkerService

    reg, seen = registry()
    await client.register_tasks(reg.names())
    ids = [await client.submit("ok", [i]) for i in range(5)]
    svc = WorkerService(settings, reg, burst=True)
    await asyncio.wait_for(svc.run(), 20)
    assert seen["calls"] == 5
    for job in ids:
        assert (await client.get(job)).state == JobState.COMPLETED


async def test_worker_heartbeat_is_visible(client, start_worker):
    reg, seen = registry()
    handle = await start_worker(reg)

    await handle.service.changed.until(lambda: handle.service.beat is not None and handle.service.beat.sent > 0, 10)
    workers = await client.workers()  # the heartbeat's write was acknowledged: it is there
    assert workers[0].id == handle.service.id
    assert workers[0].slots_total == handle.service.slots
    assert "ok" in workers[0].tasks


async def test_retry_after_cancel_runs(client, start_worker):
    await client.register_tasks(["ok"])
    job = await client.submit("ok", [5])
    await client.cancel(job)
    await client.retry(job)
    reg, seen = registry()
    await start_worker(reg)
    rec = await client.wait(job, timeout=15)
    assert rec.state == JobState.COMPLETED and seen["calls"] == 1


async def test_jobs_ending_as_their_running_write_starts_never_crash_the_worker(client, settings, start_worker):
    # Regression: the deferred running write was read when its task first ran; a job that
    # ended in between left nothing to write and an assert took the worker down. Jobs as
    # long as the deferral hit that window often.
    defer = 0.02
    s = msgspec.structs.replace(settings, worker=msgspec.structs.replace(settings.worker, running_write_after=defer))
    reg, _ = registry()
    handle = await start_worker(reg, s, concurrency=16)
    ids = await client.submit_specs([client.build_spec("slow", [defer]) for _ in range(300)])
    for job_id in ids:
        assert (await client.wait(job_id, timeout=30)).state == JobState.COMPLETED
    assert not handle.task.done(), "the worker stopped"


async def _past_replay_margin(client: Any) -> None:
    """Until the server's clock is past the default queue consumer's creation plus the margin."""
    import time

    from chronos.worker.replay import MARGIN

    names = client.names
    info = await client.conn.js.consumer_info(names.jobs_stream, names.consumer_name("default", "default"))
    created = info.created
    created_at = created.timestamp() if hasattr(created, "timestamp") else float(created)
    while time.time() < created_at + MARGIN * 2:
        await asyncio.sleep(0.01)


async def test_a_record_that_moved_under_a_finished_job_keeps_its_state(client, settings, start_worker):
    # The completed write goes out from a PubAck callback; when the record moved meanwhile (here a
    # cancel of a job whose running state was never written) the compare-and-set fails and the
    # outcome is re-decided in a task: the cancel stands, the message is acked, the slot is freed.
    s = msgspec.structs.replace(settings, worker=msgspec.structs.replace(settings.worker, running_write_after=60.0))
    reg, seen = registry()
    handle = await start_worker(reg, s, concurrency=2)
    # Only a message stored REPLAY_MARGIN after its consumer was made takes the deferred path
    # (worker/replay.py); a submit within that margin of the worker's start would be written running.
    await _past_replay_margin(client)
    job = await client.submit("blocks_until_released", max_attempts=3)
    await asyncio.wait_for(seen["started"].wait(), 15)
    rec = await client.cancel(job, reason="changed my mind")
    assert rec.state == JobState.CANCELLED  # the record still said available: cancelled at once
    seen["release"].set()
    marker = await client.submit("ok", [7])
    assert (await client.wait(marker, timeout=15)).state == JobState.COMPLETED
    assert (await client.get(job)).state == JobState.CANCELLED
    service = handle.service
    await service.changed.until(lambda: not service.running, 5)
    assert not service.running and service.used == 0
    assert service.executor.processed == 1  # the marker; the cancelled job's outcome was dropped
