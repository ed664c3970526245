"""Sync (def) tasks: never more fetched than free threads, honest timeouts and cancels, process kills."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import msgspec

from chronos import Registry
from chronos.states import JobState

from ..conftest import wait_for_state


def with_worker(settings, **changes):
    return msgspec.structs.replace(settings, worker=msgspec.structs.replace(settings.worker, **changes))


# Module-level: the process executor finds a task function in its child by module and name.
def write_pid_then_sleep(path: str, seconds: float) -> str:
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(path + ".done").write_text("finished")
    return "slept"


def pid_of(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_full_pool_never_times_out_a_job_that_has_not_started(client, settings, start_worker):
    # One thread, four slots: each job takes 0.5 s of a 0.8 s timeout. Fetched all at once, the
    # third would wait 1 s for the thread and "time out" without having run.
    reg = Registry()
    spans: list[tuple[float, float]] = []

    def half_second(i):
        t0 = time.monotonic()
        time.sleep(0.5)
        spans.append((t0, time.monotonic()))
        return i

    reg.register(half_second, name="half_second")
    handle = await start_worker(reg, with_worker(settings, thread_pool_size=1), concurrency=4)
    ids = await client.submit_specs([client.build_spec("half_second", [i], timeout=0.8, max_attempts=1)
                                     for i in range(3)])
    for job_id in ids:
        rec = await client.wait(job_id, timeout=30)
        assert rec.state == JobState.COMPLETED, rec.error
    spans.sort()
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), "one thread: runs never overlap"
    # A slot is released when the worker reads the completed write's PubAck, after the record says so.
    await handle.service.changed.until(lambda: handle.service.sync_held == 0, 10)  # the sync slots released


async def test_a_timed_out_thread_is_reported_and_keeps_its_slot(client, settings, start_worker):
    reg = Registry()
    ended = threading.Event()
    starts: dict[int, float] = {}

    def stubborn(i, seconds):
        starts[i] = time.monotonic()
        time.sleep(seconds)
        if i == 1:
            ended.set()
        return i

    reg.register(stubborn, name="stubborn")
    await start_worker(reg, with_worker(settings, thread_pool_size=1), concurrency=4)
    first = await client.submit("stubborn", [1, 3.0], timeout=0.3, max_attempts=1)
    rec = await client.wait(first, timeout=30)
    assert rec.state == JobState.DISCARDED
    assert rec.attempts[-1].outcome == "timeout"
    assert "timed out after 0.3s; the thread could not be stopped and may still be running" in rec.error
    assert not ended.is_set(), "reported while the thread still ran"
    second = await client.submit("stubborn", [2, 0.0], max_attempts=1)
    rec2 = await client.wait(second, timeout=30)
    assert rec2.state == JobState.COMPLETED
    assert ended.is_set()
    # The only thread was still busy: the second job was not fetched until it was free.
    assert starts[2] >= starts[1] + 2.9


async def test_cancel_of_a_running_thread_says_the_thread_still_runs(client, settings, start_worker):
    reg = Registry()
    started = threading.Event()

    def ignores_cancel():
        started.set()
        time.sleep(4.0)

    reg.register(ignores_cancel, name="ignores_cancel")
    handle = await start_worker(reg, with_worker(settings, thread_pool_size=2))
    handle.service.cancels.grace = 0.2
    job = await client.submit("ignores_cancel", max_attempts=1)
    await wait_until(started.is_set, 15, "the thread to start")
    await wait_for_state(client, job, "running")
    await client.cancel(job, reason="stop it")
    rec = await client.wait(job, timeout=15)
    assert rec.state == JobState.CANCELLED
    assert rec.error == "stop it; the thread could not be stopped and may still be running"
    assert handle.service.sync.stuck == 1
    beat = handle.service.heartbeat()  # what `chronos workers` shows: no slot, one stuck thread
    assert beat.slots_used == 0 and beat.stuck_threads == 1

    await handle.service.changed.until(lambda: not handle.service.sync.stuck, 10)  # the thread returned
    assert handle.service.heartbeat().stuck_threads == 0


async def test_the_process_executor_kills_a_timed_out_task(client, settings, start_worker, tmp_path):
    reg = Registry()
    reg.register(write_pid_then_sleep, name="write_pid_then_sleep")
    await start_worker(reg, with_worker(settings, sync_executor="process", thread_pool_size=2))
    marker = tmp_path / "pid"
    job = await client.submit("write_pid_then_sleep", [str(marker), 30.0], timeout=1.0, max_attempts=1)
    rec = await client.wait(job, timeout=30)
    assert rec.state == JobState.DISCARDED
    assert rec.attempts[-1].outcome == "timeout"
    assert "timed out after 1s; its process was killed" in rec.error
    pid = pid_of(marker)
    assert pid is not None and pid != os.getpid()
    await wait_until(lambda: not alive(pid), 5, "the task's process to be gone")
    assert not (tmp_path / "pid.done").exists()


async def test_the_process_executor_runs_and_cancels(client, settings, start_worker, tmp_path):
    reg = Registry()
    reg.register(write_pid_then_sleep, name="write_pid_then_sleep")
    handle = await start_worker(reg, with_worker(settings, sync_executor="process", thread_pool_size=2))
    handle.service.cancels.grace = 0.2
    quick = await client.submit("write_pid_then_sleep", [str(tmp_path / "quick"), 0.0], max_attempts=1)
    rec = await client.wait(quick, timeout=30)
    assert rec.state == JobState.COMPLETED and rec.result == "slept"
    marker = tmp_path / "pid"
    job = await client.submit("write_pid_then_sleep", [str(marker), 30.0], max_attempts=1)
    await wait_until(lambda: pid_of(marker) is not None, 20, "the task's process to start")
    await wait_for_state(client, job, "running")
    await client.cancel(job, reason="enough")
    rec = await client.wait(job, timeout=15)
    assert rec.state == JobState.CANCELLED
    assert rec.error == "enough; its process was killed"
    await wait_until(lambda: not alive(pid_of(marker)), 5, "the task's process to be gone")
