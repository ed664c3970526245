"""A worker whose consumer is gone (deleted by an admin) backs off instead of spinning, and
picks up again once the consumer is back.

Before, the fetch loop asked the missing consumer again at once: about 20 refused requests
(503) in 20 ms, each logged as a warning."""

from __future__ import annotations

import asyncio

from chronos import Registry
from chronos.connection import ensure_queue_consumers

from ..conftest import wait_for_state


async def test_a_refused_pull_backs_off_then_the_worker_resumes(client, start_worker):
    reg = Registry()

    async def noop() -> str:
        return "ok"

    reg.register(noop, name="noop")
    h = await start_worker(reg)
    conn, names = client.conn, client.conn.names
    puller = next(p for p in h.service.pullers if p.priority == "default" and p.queue == "default")
    await conn.js.delete_consumer(names.jobs_stream, names.consumer_name("default", "default"))
    loop = asyncio.get_running_loop()
    times: list[float] = []
    async with asyncio.timeout(15):
        while len(times) < 4:
            if puller.refused > len(times):
                times.extend([loop.time()] * (puller.refused - len(times)))
            await asyncio.sleep(0.005)
    # Backed off 0.1 s, then 0.2 s, then 0.4 s: three refusals take well over a tenth of a second
    # (asked again at once, they came in about a millisecond each).
    assert times[3] - times[0] >= 0.5, [round(t - times[0], 3) for t in times]
    await ensure_queue_consumers(conn, "default")
    job_id = await client.submit("noop")
    await wait_for_state(client, job_id, "completed", timeout=15)
    assert not puller.resting
