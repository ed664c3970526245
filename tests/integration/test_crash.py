"""A worker process SIGKILLed mid-job: the job completes on another worker, nothing lost."""

import asyncio
import os
import signal

from chronos import Registry
from chronos.bench._common import spawn_worker, wait_for_workers
from chronos.states import JobState

from ..conftest import wait_for_state


async def test_sigkilled_worker_job_completes_elsewhere(client, settings, start_worker, tmp_path):
    env = {"CHRONOS_WORKER__ACK_WAIT": str(settings.worker.ack_wait)}
    proc = spawn_worker(settings.nats.url, settings.namespace, concurrency=4, stats_file=tmp_path / "w.json",
                        sleep=30.0, extra_env=env)
    try:
        await wait_for_workers(client, 1, timeout=30)
        job = await client.submit("bench.sleep", max_attempts=3)
        running = await wait_for_state(client, job, "running", timeout=20)
        assert running.worker and str(proc.pid) in running.worker
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    reg = Registry()
    ran = asyncio.Event()

    async def sleep_task():
        ran.set()
        return "finished elsewhere"

    reg.register(sleep_task, name="bench.sleep")
    survivor = await start_worker(reg)
    rec = await client.wait(job, timeout=30)
    assert rec.state == JobState.COMPLETED
    assert rec.result == "finished elsewhere"
    assert rec.worker == survivor.service.id
    assert [a.outcome for a in rec.attempts] == ["lost", "completed"]
    assert rec.attempt == 2
