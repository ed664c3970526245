"""A queue pause across a nats-server SIGKILL and restart on the same store: the flag is on disk,
the worker keeps honouring it, and a resume written after the restart reaches the worker's watch."""

from __future__ import annotations

import asyncio

from chronos.client import Client
from chronos.embedded import EmbeddedServer
from chronos.runtime import WorkerMain, run_service
from chronos.states import JobState
from chronos.worker.registry import Registry

from .conftest import fault_settings, restart_on_same_store, wait_until, wind_down


async def test_pause_survives_a_server_restart_and_a_later_resume_reaches_the_worker(tmp_path):
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    restarted: EmbeddedServer | None = None
    reg = Registry()
    ran: list[str] = []

    async def work(tag: str) -> None:
        ran.append(tag)

    reg.register(work, name="f.work")
    settings = fault_settings(server.url, "pauserestart", worker={"poll_expires": 1.0})
    worker = WorkerMain(settings, reg, concurrency=4, queues=["default", "other"])
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, grace=10, stop=stop, signals=()))
    client = await Client.connect(settings)
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        svc = worker.service
        await client.pause_queue("default", reason="before the restart")
        await wait_until(lambda: "default" in svc.pauses.paused, 10, "the worker to see the pause")

        server.kill()
        await asyncio.sleep(1.0)  # down for a second (the fault itself, not a wait for a result)
        restarted = restart_on_same_store(server)
        await wait_until(lambda: client.conn.nc.is_connected and svc.conn.nc.is_connected, 30,
                         "both connections to come back")

        held = await client.submit("f.work", ["paused"], queue="default")
        control = await client.submit("f.work", ["other"], queue="other")
        await client.wait(control, timeout=30)  # the worker fetches again, from the queue not paused
        assert ran == ["other"]
        assert (await client.get(held)).state == JobState.AVAILABLE
        flag = await client.queue_flag("default")
        assert flag is not None and flag.paused and flag.reason == "before the restart"

        seen = svc.pauses.seen
        await client.resume_queue("default")
        # Within 5 s (it takes ~0.1 s here): nats-py's ordered consumer alone noticed the restarted
        # server only after missing heartbeats, 18 s; the watch starts over on the reconnect.
        await wait_until(lambda: "default" not in svc.pauses.paused, 5,
                         f"the worker's watch to see the resume written after the restart (seen {seen})")
        assert svc.pauses.restarts >= 1
        assert (await client.wait(held, timeout=30)).state == JobState.COMPLETED
        assert ran == ["other", "paused"]
    finally:
        await wind_down(client, stop, services, restarted, server)
