"""A worker keeps fetching after nats-server goes away and comes back on the same port and store.

The worker serves 8 consumers (4 priorities x 2 queues) with one sync task and 8 threads, so
when idle its standing pull requests hold every slot it may fetch with. Those requests die with
the server: a SIGKILL leaves them unanswered (the worker used to count them forever and never
fetch again, while its heartbeat looked fine); a SIGTERM answers them with 409 but races the
worker's next requests into the closing socket.
"""

from __future__ import annotations

import asyncio
import threading

from chronos.client import Client
from chronos.embedded import EmbeddedServer
from chronos.runtime import WorkerMain, run_service
from chronos.states import JobState
from chronos.worker.registry import Registry

import pytest

from .conftest import fault_settings, restart_on_same_store, wait_until, wind_down

N = 200


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
async def test_worker_fetches_again_after_server_restart(tmp_path, how):
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    restarted: EmbeddedServer | None = None
    reg = Registry()
    ran: set[int] = set()
    lock = threading.Lock()

    def mark(i: int) -> None:  # a sync task: the fetch is also capped by free threads
        with lock:
            ran.add(i)

    reg.register(mark, name="f.mark")
    settings = fault_settings(server.url, "reconnect", worker={"poll_expires": 2.0})
    worker = WorkerMain(settings, reg, concurrency=16, queues=["default", "mail"])
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, grace=10, stop=stop, signals=()))
    client = await Client.connect(settings)
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        svc = worker.service
        # Idle: a long poll stands on each consumer, and together they hold every free thread.
        await wait_until(lambda: svc.free() <= 0 and all(p.outstanding for p in svc.pullers), 10,
                         "standing pull requests holding every slot")
        if how == "sigkill":
            server.kill()  # the open requests are never answered
            await asyncio.sleep(1.0)  # down for a second (the fault itself, not a wait for a result)
        else:
            server.stop()  # SIGTERM: the server answers open pulls with 409 Server Shutdown
            await asyncio.sleep(8.0)  # down as long as in the report
        restarted = restart_on_same_store(server)

        async def connected() -> bool:
            return client.conn.nc.is_connected and svc.conn.nc.is_connected

        await wait_until(connected, 30, "both connections to come back")
        ids = await client.submit_specs([client.build_spec("f.mark", [i]) for i in range(N)])

        async def all_completed() -> bool:
            for j in ids:
                if (await client.get(j)).state != JobState.COMPLETED:
                    return False
            return True

        try:
            await wait_until(all_completed, 30, "every job submitted after the restart to complete", every=0.5)
        except AssertionError:
            state = [(p.consumer, p.outstanding) for p in svc.pullers]
            raise AssertionError(f"stuck: free={svc.free()} used={svc.used} pullers={state} ran={len(ran)}")
        assert ran == set(range(N))
    finally:
        await wind_down(client, stop, services, restarted, server)
