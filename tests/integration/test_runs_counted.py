"""Every run is counted: a worker killed in a job's first moments, and a task that blocks the loop.

The worker under test runs in a process of its own (this module run as a script), so it
can be SIGKILLed, or have its event loop blocked, without touching the test's loop.
Each run of a task leaves a file (``<dir>/<job>.<pid>.<n>``) when it starts, so runs are
counted from the task's side, not from the record under test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chronos import Registry
from chronos.states import JobState, is_terminal

from ..conftest import wait_for_state

REPO = Path(__file__).resolve().parents[2]


def spawn(settings, run_dir: Path, *, block: float = 0.0, sleep: float = 0.0, **worker: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for key, value in {"ack_wait": settings.worker.ack_wait, "heartbeat_interval": 0.5, **worker}.items():
        env[f"CHRONOS_WORKER__{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    args = [sys.executable, "-m", "tests.integration.test_runs_counted", "--url", settings.nats.url,
            "--namespace", settings.namespace, "--dir", str(run_dir), "--block", str(block), "--sleep", str(sleep)]
    return subprocess.Popen(args, env=env, cwd=REPO, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def runs_of(run_dir: Path, job_id: str) -> list[Path]:
    return sorted(run_dir.glob(f"{job_id}.*"))


async def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def mark_run(run_dir: Path) -> None:
    from chronos import current_job

    ctx = current_job()
    n = len(list(run_dir.glob(f"{ctx.job_id}.*")))
    (run_dir / f"{ctx.job_id}.{os.getpid()}.{n}").write_text(str(time.time()))


def here_registry(run_dir: Path) -> Registry:
    reg = Registry()

    async def counted():
        mark_run(run_dir)
        return "done"

    reg.register(counted, name="counted")
    return reg


async def test_a_worker_killed_in_the_first_moments_shows_two_runs(client, settings, start_worker, tmp_path):
    # running_write_after is long here so the kill surely lands before the running write: the
    # record still says available, and only the delivery count knows the job ran.
    proc = spawn(settings, tmp_path, sleep=30.0, running_write_after=20.0)
    try:
        from chronos.bench._common import wait_for_workers

        await wait_for_workers(client, 1, timeout=30)
        job = await client.submit("counted", max_attempts=3)
        await wait_until(lambda: len(runs_of(tmp_path, job)) == 1, 20, "the first run to start")
        kill(proc)
    finally:
        kill(proc)
    rec = await client.get(job)
    assert rec.state == JobState.AVAILABLE and rec.attempt == 0, "the kill was meant to precede any write"

    await start_worker(here_registry(tmp_path))
    rec = await client.wait(job, timeout=30)
    assert rec.state == JobState.COMPLETED
    assert len(runs_of(tmp_path, job)) == 2
    assert rec.attempt == 2
    assert [a.outcome for a in rec.attempts] == ["lost", "completed"]
    assert [a.delivery for a in rec.attempts] == [1, 2]
    assert "never recorded" in rec.attempts[0].error


async def test_a_blocked_loop_does_not_run_a_job_twice(client, settings, start_worker, tmp_path):
    # ack_wait 2 s, the task blocks the loop 5 s: without the watchdog thread's in-progress acks
    # the job would be redelivered to the second worker while it still runs here.
    blocker = spawn(settings, tmp_path, block=5.0)
    try:
        from chronos.bench._common import wait_for_workers

        await wait_for_workers(client, 1, timeout=30)
        job = await client.submit("counted", max_attempts=3)
        await wait_until(lambda: len(runs_of(tmp_path, job)) == 1, 20, "the blocking run to start")
        await start_worker(here_registry(tmp_path))
        rec = await client.wait(job, timeout=30)
    finally:
        kill(blocker)
    assert rec.state == JobState.COMPLETED
    assert len(runs_of(tmp_path, job)) == 1, "the job ran twice"
    assert rec.attempt == 1 and [a.outcome for a in rec.attempts] == ["completed"]
    assert str(blocker.pid) in rec.worker


async def test_without_the_watchdog_a_double_run_is_recorded(client, settings, start_worker, tmp_path):
    # The same blocked loop with the watchdog off: the job is redelivered and runs twice, and the
    # record shows both runs, the blocked one marked as concurrent.
    # One slot: while the blocked run holds it the process asks for nothing more, so the redelivery
    # goes to the second worker, not to a pull request the blocked loop left open (3 runs, flaky).
    blocker = spawn(settings, tmp_path, block=5.0, loop_watchdog=False, concurrency=1)
    try:
        from chronos.bench._common import wait_for_workers

        await wait_for_workers(client, 1, timeout=30)
        job = await client.submit("counted", max_attempts=3)
        await wait_until(lambda: len(runs_of(tmp_path, job)) == 1, 20, "the blocking run to start")
        await start_worker(here_registry(tmp_path))
        await client.wait(job, timeout=30)
        store = await client.ops.store()

        async def both_recorded():
            async for entry in store.watch(job, include_existing=True):
                rec = await client.get(job)
                if len(rec.attempts) == 2 and rec.attempts[0].worker:  # the blocked run wrote its own
                    return rec

        rec = await asyncio.wait_for(both_recorded(), 20)
    finally:
        kill(blocker)
    assert len(runs_of(tmp_path, job)) == 2
    assert rec.state == JobState.COMPLETED and rec.attempt == 2
    first, second = rec.attempts
    assert first.delivery == 1 and str(blocker.pid) in first.worker
    assert "ran concurrently with a redelivery" in first.error
    assert second.delivery == 2 and second.outcome == "completed"


async def test_blocked_past_its_timeout_on_two_workers_the_record_tells_the_runs_as_they_were(
        client, settings, tmp_path):
    # Each worker's watchdog lets the job go once it is past its timeout (a job blocked for ever
    # must not be held for ever), so it is redelivered while it still runs: two workers, both
    # blocked, each run to completion. The record must say exactly that: two runs, both completed,
    # marked concurrent, the job completed, and no third delivery counted as a run (red team: the
    # job ended discarded, "ran 3 times", with an open third attempt that never ran).
    procs = [spawn(settings, tmp_path, block=12.0, concurrency=1) for _ in range(2)]
    try:
        from chronos.bench._common import wait_for_workers

        await wait_for_workers(client, 2, timeout=30)
        job = await client.submit("counted", max_attempts=2, timeout=3)
        await wait_until(lambda: len(runs_of(tmp_path, job)) == 2, 30, "the redelivered run to start")
        store = await client.ops.store()

        async def settled():
            async for _ in store.watch(job, include_existing=True):
                rec = await client.get(job)
                if is_terminal(rec.state) and sum(1 for a in rec.attempts if a.outcome == "completed") >= 2:
                    return rec

        rec = await asyncio.wait_for(settled(), 40)
    finally:
        for p in procs:
            kill(p)
    assert len(runs_of(tmp_path, job)) == 2
    told = [(a.delivery, a.outcome, a.error) for a in rec.attempts]
    assert [a.outcome for a in rec.attempts] == ["completed", "completed"], told
    assert rec.attempt == 2 and all(a.ended_at is not None for a in rec.attempts), told
    assert any("concurrently" in (a.error or "") for a in rec.attempts), told
    if rec.state == JobState.DISCARDED:
        # The third delivery came while the second run was still blocked: it was not run, and the
        # discard counts the two runs there were.
        assert "ran 2 times, max_attempts 2" in rec.error, rec.error
    else:
        assert rec.state == JobState.COMPLETED, rec.state


# --- the worker process ------------------------------------------------------------------------------
async def _worker_main(args: argparse.Namespace) -> None:
    import logging

    from chronos.config import load_settings
    from chronos.worker.service import WorkerService

    logging.basicConfig(level=logging.WARNING)
    run_dir = Path(args.dir)
    reg = Registry()

    async def counted():
        mark_run(run_dir)
        if args.block:
            time.sleep(args.block)  # blocks the event loop: the defect under test
        if args.sleep:
            await asyncio.sleep(args.sleep)
        return "done"

    reg.register(counted, name="counted")
    settings = load_settings(overrides={"namespace": args.namespace, "nats": {"url": args.url}})
    svc = WorkerService(settings, reg, log_events=False, worker_id=f"proc-{os.getpid()}")
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, svc.stop)
    await svc.run()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--block", type=float, default=0.0)
    ap.add_argument("--sleep", type=float, default=0.0)
    asyncio.run(_worker_main(ap.parse_args()))
