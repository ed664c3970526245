"""After a nats-server restart, a first delivery of a message stored before it is checked
against the record before its task runs (worker/replay.py).

A server killed before its consumer state reached disk delivers messages again as first
deliveries, jobs that already ran or were cancelled among them. A first delivery took the fast
path on the record its message carried (``available``): a cancelled job ran a second time
(seen in tests/faults/test_rt_bulk_cancel_server_kill.py). Here the observable is the path
itself: a job whose task finds its record ``running`` was checked (written running first); one
that finds it ``available`` took the fast path (its running write deferred)."""

from __future__ import annotations

import asyncio

from chronos.client import Client
from chronos.embedded import EmbeddedServer
from chronos.runtime import WorkerMain, run_service
from chronos.states import JobState
from chronos.worker.context import current_job
from chronos.worker.registry import Registry

from .conftest import fault_settings, reconnected, restart_on_same_store, wait_until, wind_down


async def _past_replay_margin(client: Client) -> None:
    import time

    from chronos.worker.replay import MARGIN

    names = client.names
    info = await client.conn.js.consumer_info(names.jobs_stream, names.consumer_name("default", "default"))
    created = info.created
    created_at = created.timestamp() if hasattr(created, "timestamp") else float(created)  # type: ignore[union-attr]
    while time.time() < created_at + MARGIN * 2:
        await asyncio.sleep(0.01)


async def test_first_deliveries_stored_before_a_restart_are_checked(tmp_path):
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    restarted: EmbeddedServer | None = None
    seen: dict[str, JobState] = {}
    release = asyncio.Event()
    reg = Registry()
    client: Client | None = None

    async def blocks() -> None:
        await asyncio.wait_for(release.wait(), 60)

    async def probe() -> None:
        job = current_job()
        assert job is not None and client is not None
        seen[job.job_id] = (await client.get(job.job_id)).state

    reg.register(blocks, name="f.blocks")
    reg.register(probe, name="f.probe")
    settings = fault_settings(server.url, "replayrestart")
    worker = WorkerMain(settings, reg, concurrency=1)
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, grace=10, stop=stop, signals=()))
    client = await Client.connect(settings)
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        ex = worker.service.executor
        assert ex is not None
        await _past_replay_margin(client)  # past the consumer's first 50 ms: the fast path is open
        warm = await client.submit("f.probe")
        await client.wait(warm, timeout=30)
        assert seen[warm] is JobState.AVAILABLE, "the control case: a fresh first delivery takes the fast path"
        blocker = await client.submit("f.blocks")
        await wait_until(lambda: worker.service.is_running_here(blocker, besides=None), 30,  # type: ignore[arg-type]
                         "the blocker to hold the only slot")
        before = await client.submit("f.probe")  # stored before the restart, not yet delivered
        server.kill()
        restarted = restart_on_same_store(server)
        await reconnected(client.conn.nc, worker.service.conn.nc)
        release.set()
        await client.wait(before, timeout=30)
        after = await client.submit("f.probe")
        await client.wait(after, timeout=30)
        assert seen[before] is JobState.RUNNING, "stored before the restart: checked before it ran"
        assert seen[after] is JobState.AVAILABLE, "stored after it: the fast path again"
        assert ex.replay.floors >= 1
    finally:
        await wind_down(client, stop, services, restarted, server)
