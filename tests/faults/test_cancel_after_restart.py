"""A cancel written after a nats-server SIGKILL and restart reaches a job running across it at once.

The worker follows cancels with a KV watch. nats-py's ordered consumer noticed the restarted
server only after missing its idle heartbeats (about 18 s), so a cancel issued in that time
reached the job that late; the watch now starts over on the reconnect (worker/follow.py)."""

from __future__ import annotations

import asyncio

from chronos.client import Client
from chronos.embedded import EmbeddedServer
from chronos.runtime import WorkerMain, run_service
from chronos.states import JobState
from chronos.worker.context import current_job
from chronos.worker.registry import Registry

from .conftest import fault_settings, restart_on_same_store, wait_until, wind_down


async def test_a_cancel_after_a_server_restart_reaches_the_running_job(tmp_path):
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    restarted: EmbeddedServer | None = None
    reg = Registry()

    async def waits() -> str:
        await asyncio.wait_for(current_job().cancel_requested.wait(), 60)
        return "saw the cancel"

    reg.register(waits, name="f.waits")
    settings = fault_settings(server.url, "cancelrestart")
    worker = WorkerMain(settings, reg, concurrency=4)
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, grace=10, stop=stop, signals=()))
    client = await Client.connect(settings)
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        svc = worker.service
        job_id = await client.submit("f.waits")
        await wait_until(lambda: svc.is_running_here(job_id, besides=None), 30,  # type: ignore[arg-type]
                         "the job to run")
        server.kill()
        await asyncio.sleep(1.0)  # down for a second (the fault itself, not a wait for a result)
        restarted = restart_on_same_store(server)
        await wait_until(lambda: client.conn.nc.is_connected and svc.conn.nc.is_connected, 30,
                         "both connections to come back")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await client.cancel(job_id, "stop it")
        rec = await client.wait(job_id, timeout=30)
        # Within 5 s (about 0.1 s here); nats-py alone noticed the restarted server 18 s late.
        assert loop.time() - t0 < 5, f"the cancel took {loop.time() - t0:.1f}s to reach the job"
        assert rec.state in (JobState.CANCELLED, JobState.COMPLETED), rec.state
        assert getattr(svc.cancels, "restarts", 0) >= 1
    finally:
        await wind_down(client, stop, services, restarted, server)
