"""Red team: the scheduler role's purge right on the jobs stream (for the leader's purger) lets a
stolen scheduler credential drop queued work messages; the records stay ``available`` forever and
nothing repairs them (the rescuer repairs only jobs named by a pending marker, and markers are
deleted once the message is acknowledged). docs/security.md says this "adds no power it lacked";
the jobs are lost silently: no state says so, `jobs get` shows them waiting.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats

from chronos.client import Client
from chronos.runtime import SchedulerMain, WorkerMain, run_service
from chronos.states import JobState
from chronos.subjects import inbox_prefix
from chronos.worker.registry import Registry

from ..deploy.authserver import PASSWORDS, auth_server, role_settings
from ..faults.conftest import wait_until

NS = "rtp"


# Was xfail (red team): the leader now republishes jobs whose queue lost its messages (scheduler/purger.py repair_lost).
async def test_purged_queued_jobs_still_run_or_are_visibly_failed(tmp_path: Path):
    server = auth_server(tmp_path, NS).start()
    try:
        admin = await Client.connect(role_settings(server, NS, "admin"))
        await admin.register_tasks(["rt.ok"])
        await admin.close()
        console = await Client.connect(role_settings(server, NS, "console"), ensure=False)
        jobs = [await console.submit("rt.ok", [i]) for i in range(5)]

        thief = await nats.connect(server.url, user="chronos-scheduler", password=PASSWORDS["scheduler"],
                                   inbox_prefix=inbox_prefix("chronos-scheduler"))
        reply = await thief.request(f"$JS.API.STREAM.PURGE.{NS.upper()}_JOBS", json.dumps({}).encode(), timeout=5)
        assert json.loads(reply.data).get("purged") == 5  # the server lets it
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

            try:  # several rescue_after periods: time for any repair to act
                await wait_until(settled, 15, "every purged job to run or be visibly failed")
            except AssertionError:
                pass
            states = [(await console.get(j)).state for j in jobs]
            assert all(s is JobState.COMPLETED or s in (JobState.DISCARDED, JobState.CANCELLED) for s in states), states
        finally:
            stop.set()
            await asyncio.wait_for(services, 30)
            await console.close()
    finally:
        server.cleanup()


# Was xfail (red team): the scheduler role no longer has the workflows bucket's purge right; the
# leader prunes key by key with expiring delete markers (workflowstore.purge_keys). Deleting keys
# one by one is still open to any role that writes the bucket (docs/security.md, "Limits").
async def test_a_scheduler_credential_cannot_erase_running_workflows(tmp_path: Path):
    """The workflow pruner's purge right (scheduler role) had no subject restriction either: one
    request without a filter removed every workflow, running ones included; their remaining nodes
    then never started (the advance cannot read the workflow's shape)."""
    from chronos.workflows import Signature, Workflow, chain

    server = auth_server(tmp_path, NS).start()
    try:
        admin = await Client.connect(role_settings(server, NS, "admin"))
        await admin.register_tasks(["rt.ok"])
        await admin.close()
        console = await Client.connect(role_settings(server, NS, "console"), ensure=False)
        try:
            ref = await console.submit_workflow(Workflow(chain(Signature("rt.ok", (1,)), Signature("rt.ok"))))
            thief = await nats.connect(server.url, user="chronos-scheduler", password=PASSWORDS["scheduler"],
                                       inbox_prefix=inbox_prefix("chronos-scheduler"))
            try:
                try:
                    reply = await thief.request(f"$JS.API.STREAM.PURGE.KV_{NS}_workflows", b"{}", timeout=3)
                    assert b'"error"' in reply.data, reply.data
                except nats.errors.TimeoutError:
                    pass  # a denied publish gets no answer (the server tells the connection)
            finally:
                await thief.close()
            view = await console.workflow(ref.id)
            assert view.record.state == "running" and len(view.nodes) == 2
        finally:
            await console.close()
    finally:
        server.cleanup()
