"""Delayed jobs under the shipped roles: a scheduler started after a job was parked promotes it.

The stager loads parked jobs by scanning the delayed stream's minute subjects; nats-py creates
that scan's consumer on the seven-token subject, which the scheduler role must be allowed
(a red-team run found every parked job stuck after a scheduler restart).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from chronos.client import Client
from chronos.runtime import SchedulerMain, WorkerMain, run_service
from chronos.worker.registry import Registry

from ..deploy.authserver import auth_server, role_settings, violations

NS = "dly"


async def test_a_parked_job_is_promoted_by_a_scheduler_started_after_it(tmp_path: Path) -> None:
    server = auth_server(tmp_path, NS).start()
    try:
        admin = await Client.connect(role_settings(server, NS, "admin"))
        await admin.close()
        console = await Client.connect(role_settings(server, NS, "console"), ensure=False)
        reg = Registry()
        reg.register(lambda: "late but ran", name="dly.ok")
        console._known_tasks.add("dly.ok")  # no worker has registered it yet
        job_id = await console.submit("dly.ok", delay=2.0)
        # Only now a scheduler (and a worker): the parked job is found by the scan alone.
        sched = {"archive_path": str(tmp_path / "archive.sqlite3"), "lease_ttl": 3.0}
        scheduler = SchedulerMain(role_settings(server, NS, "scheduler", scheduler=sched), node_id="dly-1")
        worker = WorkerMain(role_settings(server, NS, "worker"), reg, concurrency=2)
        stop = asyncio.Event()
        services = asyncio.ensure_future(run_service(scheduler, worker, grace=5, stop=stop, signals=()))
        try:
            rec = await console.wait(job_id, timeout=30)
            assert rec.state.value == "completed" and rec.result == "late but ran"
        finally:
            stop.set()
            await asyncio.wait_for(services, 30)
            await console.close()
        assert [v for v in violations(server) if v[1] == "chronos-scheduler"] == []
    finally:
        server.cleanup()
