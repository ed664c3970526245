"""nats-server SIGKILLed and restarted on the same store: nothing lost, services reconnect by themselves."""

from __future__ import annotations

import asyncio

from chronos.client import Client
from chronos.embedded import EmbeddedServer
from chronos.runtime import Outcome, SchedulerMain, WorkerMain, run_service
from chronos.states import JobState
from chronos.worker.registry import Registry

from .conftest import fault_settings, restart_on_same_store, wait_until

N_NOW = 400
N_DELAYED = 20


async def test_server_sigkill_and_restart_loses_nothing(tmp_path):
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    restarted: EmbeddedServer | None = None
    ran: set[str] = set()
    reg = Registry()
    done_some = asyncio.Event()

    async def work(i: int) -> int:
        await asyncio.sleep(0.01)
        from chronos.worker.context import current_job

        ctx = current_job()
        if ctx is not None:
            ran.add(ctx.job_id)
        if len(ran) >= N_NOW // 4:
            done_some.set()
        return i

    reg.register(work, name="f.work")
    settings = fault_settings(server.url, "restart",
                              scheduler={"lease_ttl": 3.0, "archive_path": str(tmp_path / "archive.sqlite3")})
    worker = WorkerMain(settings, reg, concurrency=4)
    scheduler = SchedulerMain(settings, node_id="restart-node")
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, scheduler, grace=10, stop=stop, signals=()))
    client = await Client.connect(settings)
    try:
        await asyncio.wait_for(asyncio.gather(worker.ready.wait(), scheduler.service.leading.wait()), 30)
        ids = await client.submit_specs([client.build_spec("f.work", [i]) for i in range(N_NOW)])
        # Delayed jobs come due while the server is down or just after: the scheduler must promote them.
        delayed = [await client.submit("f.work", [i], delay=2.0) for i in range(N_DELAYED)]
        await asyncio.wait_for(done_some.wait(), 30)

        server.kill()  # SIGKILL, mid-flood
        await asyncio.sleep(1.0)  # down for a second (the fault itself, not a wait for a result)
        restarted = restart_on_same_store(server)

        everything = [*ids, *delayed]

        async def all_completed() -> bool:
            try:
                records = [await client.get(j) for j in everything]
            except Exception:  # the client is still reconnecting
                return False
            return all(r.state == JobState.COMPLETED for r in records)

        await wait_until(all_completed, 90, "every job to complete after the restart", every=0.5)
        # Same service objects throughout: they reconnected, nobody restarted them.
        assert not services.done()
        assert worker.service.conn.nc.is_connected
        await wait_until(lambda: scheduler.service.is_leader, 30, "the scheduler to lead again")
        assert set(everything) <= ran
    finally:
        await client.close()
        stop.set()
        outcome = await asyncio.wait_for(services, 60)
        for s in (restarted, server):
            if s is not None:
                s.cleanup()
    assert outcome in (Outcome.STOPPED, Outcome.FORCED)
