"""Red team: the leader's repair of purged work messages (scheduler/purger.py ``repair_lost``)
republishes a lost job as a new generation through ``publish_work``, whose message id for a job
with a ``unique_key`` (the dedupe mode) is ``u:<key>``, not ``j:<id>:<gen>``: inside the jobs
stream's duplicate window (600 s by default) the server drops it as a duplicate and the job stays
``available`` with no message (the republish's ``duplicate`` answer is not looked at), while a
plain job and a unique-while-active one in the same purge run.

Fixed in ``JobOps.work_message``: only generation 0 (the submit's message) carries ``u:<key>``;
every later generation is ``j:<id>:<gen>``, which no earlier message can have used.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest

from chronos.client import Client
from chronos.runtime import SchedulerMain, WorkerMain, run_service
from chronos.states import JobState
from chronos.subjects import inbox_prefix
from chronos.worker.registry import Registry

from ..deploy.authserver import PASSWORDS, auth_server, role_settings
from ..faults.conftest import wait_until

NS = "rtu"


async def test_purged_unique_jobs_still_run_or_are_visibly_failed(tmp_path: Path):
    server = auth_server(tmp_path, NS).start()
    try:
        admin = await Client.connect(role_settings(server, NS, "admin"))
        await admin.register_tasks(["rt.ok"])
        await admin.close()
        console = await Client.connect(role_settings(server, NS, "console"), ensure=False)
        jobs = [await console.submit("rt.ok", [0], unique_key="dedupe-0"),
                await console.submit("rt.ok", [1], unique="while_active", unique_key="customer-1"),
                await console.submit("rt.ok", [2])]

        thief = await nats.connect(server.url, user="chronos-scheduler", password=PASSWORDS["scheduler"],
                                   inbox_prefix=inbox_prefix("chronos-scheduler"))
        reply = await thief.request(f"$JS.API.STREAM.PURGE.{NS.upper()}_JOBS", json.dumps({}).encode(), timeout=5)
        assert json.loads(reply.data).get("purged") == 3  # the server lets it
        await thief.close()

        ran: list[int] = []
        reg = Registry()

        async def ok(i: int) -> int:
            ran.append(i)
            return i

        reg.register(ok, name="rt.ok")
        sched = {"rescue_after": 3.0, "lease_ttl": 3.0, "archive_path": str(tmp_path / "a.sqlite3")}
        worker = WorkerMain(role_settings(server, NS, "worker"), reg, concurrency=4)
        scheduler = SchedulerMain(role_settings(server, NS, "scheduler", scheduler=sched), node_id="rt-1",
                                  rescuer_tick=0.5)
        stop = asyncio.Event()
        services = asyncio.ensure_future(run_service(worker, scheduler, grace=5, stop=stop, signals=()))
        try:
            await asyncio.wait_for(asyncio.gather(worker.ready.wait(), scheduler.service.leading.wait()), 30)

            async def settled() -> bool:
                recs = [await console.get(j) for j in jobs]
                return all(r.state not in (JobState.AVAILABLE, JobState.RETRYABLE, JobState.RUNNING) for r in recs)

            await wait_until(settled, 15, "every purged job to run or be visibly failed")
            recs = [await console.get(j) for j in jobs]
            assert [r.state for r in recs] == [JobState.COMPLETED] * 3, [(r.state, r.gen) for r in recs]
            assert sorted(ran) == [0, 1, 2]  # each once
        finally:
            stop.set()
            await asyncio.wait_for(services, 30)
            await console.close()
    finally:
        server.cleanup()
