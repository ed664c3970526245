"""A scheduler rides a nats-server outage of over 10 s: its job index asks for a new consumer
until the server answers, and the process goes on (red team: it exited with "nats: timeout" on
any outage of 10 s or more, the index's consumer creation unguarded)."""

from __future__ import annotations

import asyncio
import os
import signal

from chronos.client import Client
from chronos.embedded import EmbeddedServer
from chronos.runtime import SchedulerMain, run_service
from chronos.worker.registry import Registry

from .conftest import fault_settings, stall, wait_until, wind_down


async def test_a_scheduler_rides_a_long_server_stall(tmp_path):
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    settings = fault_settings(server.url, "schedstall", scheduler={"archive_path": str(tmp_path / "archive.sqlite3")})
    scheduler = SchedulerMain(settings, node_id="stall-1")
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(scheduler, grace=5, stop=stop, signals=()))
    client = await Client.connect(settings)
    try:
        await asyncio.wait_for(scheduler.service.leading.wait(), 30)
        index = scheduler.service.archiver.index
        await asyncio.wait_for(index.caught_up.wait(), 30)
        assert server.proc is not None
        stall(server.proc.pid)
        # Its pull goes unanswered, then a new consumer's creation times out (10 s): asked again.
        await wait_until(lambda: index.unanswered >= 1 or services.done(), 60, "the index to ask again")
        os.kill(server.proc.pid, signal.SIGCONT)
        assert not services.done(), services
        client._known_tasks.add("f.later")
        job_id = await client.submit("f.later")

        async def indexed() -> bool:
            return job_id in await index.ids_in_state("available")

        await wait_until(indexed, 60, "the index to follow the stream again")
        assert not services.done(), services
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        await wind_down(client, stop, services, server)
