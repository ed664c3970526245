"""Workflow faults with real processes: parents finishing together on two worker processes, a
worker SIGKILLed in the middle of a chord, and the leading scheduler killed during a fan-in.
Runs are counted from the tasks' side (each worker process appends what it ran to a file)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import msgspec

from chronos.bench._common import stop_process, wait_for_workers
from chronos.bench.workflows import leaf, read_runs, spawn_wf_worker
from chronos.bench.workflows import callback as cb_task
from chronos.client import Client
from chronos.scheduler import SchedulerService
from chronos.states import JobState, WorkflowState
from chronos.workflows import Workflow, chord, group, node_job_id

from .conftest import wait_until, wind_down


async def _scheduler(settings: Any, lease_ttl: float | None = None, node: str = "s1") -> tuple[Any, Any]:
    s = settings
    if lease_ttl is not None:
        s = msgspec.structs.replace(s, scheduler=msgspec.structs.replace(s.scheduler, lease_ttl=lease_ttl))
    svc = SchedulerService(s, log_events=False, workflow_tick=0.3, node_id=node)
    task = asyncio.get_running_loop().create_task(svc.run())
    return svc, task


def _workers(settings: Any, tmp: Path, n: int, concurrency: int = 64) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    stats = [tmp / f"w{i}.log" for i in range(n)]
    procs = [spawn_wf_worker(settings.nats.url, settings.namespace, concurrency=concurrency, stats_file=p,
                             ack_wait=2.0) for p in stats]
    return procs, stats


async def test_parents_racing_on_two_workers_start_each_child_once(settings: Any, client: Client,
                                                                   tmp_path: Path) -> None:
    """Twenty chords of 40 parents each, every parent finishing at about the same moment on one
    of two worker processes: each callback runs exactly once, with all 40 results."""
    svc, stask = await _scheduler(settings)
    procs, stats = _workers(settings, tmp_path, 2)
    try:
        await wait_for_workers(client, 2, timeout=60)
        client._known_tasks.update({"wfb.leaf", "wfb.cb"})
        refs = [await client.submit_workflow(Workflow(chord(group(leaf.s(i, 0.2) for i in range(40)), cb_task.s())))
                for _ in range(20)]
        recs = await asyncio.gather(*(r.wait(60) for r in refs))
        assert all(r.state is WorkflowState.COMPLETED for r in recs), [r.reason for r in recs]
        cbs = [node_job_id(r.id, 40) for r in refs]
        for job_id in cbs:
            rec = await client.get(job_id)
            assert rec.result == 40 and rec.attempt == 1

        async def flushed() -> bool:
            return sum(1 for k, j, _ in read_runs(stats) if k == "cb") >= len(cbs)

        await wait_until(flushed, 10, "the workers' run files")
        runs = [j for k, j, _ in read_runs(stats) if k == "cb"]
        assert sorted(runs) == sorted(cbs), "a callback ran twice or not at all"
        ran_on = {p for p in stats if any(k == "leaf" for k, _, _ in read_runs([p]))}
        assert len(ran_on) == 2, "both workers should have run parents"
    finally:
        for p in procs:
            stop_process(p)
        svc.stop()
        await asyncio.wait_for(stask, 30)


async def test_worker_sigkilled_in_the_middle_of_a_chord(settings: Any, client: Client, tmp_path: Path) -> None:
    """One of two worker processes is SIGKILLed with a chord half done (and its advances in
    flight): its jobs are redelivered, what it left unadvanced the leader repairs, and the
    callback runs once with every result."""
    svc, stask = await _scheduler(settings)
    procs, stats = _workers(settings, tmp_path, 2, concurrency=32)
    n = 600
    try:
        await wait_for_workers(client, 2, timeout=60)
        client._known_tasks.update({"wfb.leaf", "wfb.cb"})
        ref = await client.submit_workflow(Workflow(chord(group(leaf.s(i, 0.1) for i in range(n)), cb_task.s())))

        async def part_done() -> bool:
            return sum(1 for k, _, _ in read_runs(stats) if k == "leaf") >= n * 0.4

        await wait_until(part_done, 60, "40 % of the chord's children")
        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        rec = await ref.wait(90)
        assert rec.state is WorkflowState.COMPLETED, rec.reason
        cb_id = node_job_id(ref.id, n)
        cb = await client.get(cb_id)
        assert cb.state is JobState.COMPLETED and cb.result == n and cb.attempt == 1

        async def flushed() -> bool:
            return any(k == "cb" for k, _, _ in read_runs(stats[1:]))

        await wait_until(flushed, 10, "the survivor's run file")
        assert [j for k, j, _ in read_runs(stats) if k == "cb"] == [cb_id]
        print(f"leader repaired {svc.workflow_repair.repaired if svc.workflow_repair else 0} node(s)")
    finally:
        for p in procs:
            stop_process(p)
        svc.stop()
        await asyncio.wait_for(stask, 30)


async def test_leader_killed_during_a_fan_in(settings: Any, client: Client, tmp_path: Path) -> None:
    """The chord's children end with nobody advancing them (no worker serves their queue; they are
    finished by hand), so the leader's repair is what starts the callback. The leader is crashed
    (no resign) half-way; the follower takes over and the callback starts exactly once."""
    from ..integration.test_failover import crash
    from ..integration.test_scheduler import SchedHandle

    a, atask = await _scheduler(settings, lease_ttl=2.0, node="a")
    await asyncio.wait_for(a.leading.wait(), 20)
    b, btask = await _scheduler(settings, lease_ttl=2.0, node="b")
    procs, stats = _workers(settings, tmp_path, 1)
    n = 64
    try:
        await wait_for_workers(client, 1, timeout=60)
        client._known_tasks.update({"wfb.leaf", "wfb.cb"})
        wf = Workflow(chord(group(leaf.s(i).set(queue="nobody") for i in range(n)), cb_task.s()))
        ref = await client.submit_workflow(wf)

        async def finish(i: int) -> None:
            rec = await client.ops.read(node_job_id(ref.id, i))
            rec = await client.ops.move(rec, JobState.RUNNING, worker="by-hand")
            await client.ops.move(rec, JobState.COMPLETED, result=i)

        await asyncio.gather(*(finish(i) for i in range(n // 2)))
        await crash(SchedHandle(a, atask))
        await asyncio.gather(*(finish(i) for i in range(n // 2, n)))
        rec = await ref.wait(60)
        assert rec.state is WorkflowState.COMPLETED, rec.reason
        assert b.is_leader
        cb = await client.get(node_job_id(ref.id, n))
        assert cb.result == n and cb.attempt == 1

        async def flushed() -> bool:
            return any(k == "cb" for k, _, _ in read_runs(stats))

        await wait_until(flushed, 10, "the worker's run file")
        assert [j for k, j, _ in read_runs(stats) if k == "cb"] == [node_job_id(ref.id, n)]
    finally:
        for p in procs:
            stop_process(p)
        b.stop()
        await asyncio.wait_for(btask, 30)
        if not atask.done():
            a.stop()
            await asyncio.wait_for(atask, 30)


async def test_server_sigkilled_mid_workflow(tmp_path: Path) -> None:
    """nats-server SIGKILLed and restarted on its store while chords and a chain are under way: every
    workflow completes, with one callback job per chord that gets all its results (advances cut
    short by the outage are retried or repaired by the leader; a callback running across the
    outage may run again, which its attempts show)."""
    from chronos.embedded import EmbeddedServer
    from chronos.runtime import SchedulerMain, WorkerMain, run_service
    from chronos.bench.workflows import registry, step
    from chronos.workflows import chain

    from .conftest import fault_settings, restart_on_same_store

    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    restarted = None
    settings = fault_settings(server.url, "wfrestart", worker={"queues": ["wfb"]},
                              scheduler={"lease_ttl": 3.0, "archive_path": str(tmp_path / "archive.sqlite3")})
    worker = WorkerMain(settings, registry, concurrency=16)
    scheduler = SchedulerMain(settings, node_id="wf-restart")
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, scheduler, grace=10, stop=stop, signals=()))
    client = await Client.connect(settings)
    try:
        await asyncio.wait_for(asyncio.gather(worker.ready.wait(), scheduler.service.leading.wait()), 30)
        client._known_tasks.update({"wfb.leaf", "wfb.cb", "wfb.step"})
        chords = [await client.submit_workflow(Workflow(chord(group(leaf.s(i, 0.05) for i in range(200)),
                                                              cb_task.s()))) for _ in range(3)]
        line = await client.submit_workflow(Workflow(chain(step.s(0), *(step.s() for _ in range(199)))))

        async def some_done() -> bool:
            return worker.service.executor is not None and worker.service.executor.processed >= 100

        await wait_until(some_done, 30, "part of the work")
        running = [r for r in [*chords, line] if (await client.workflow_record(r.id)).state is WorkflowState.RUNNING]
        server.kill()
        await asyncio.sleep(1.0)  # down for a second (the fault itself)
        restarted = restart_on_same_store(server)

        async def all_over() -> bool:
            try:
                recs = [await client.workflow_record(r.id) for r in [*chords, line]]
            except Exception:  # still reconnecting
                return False
            return all(r.state != WorkflowState.RUNNING for r in recs)

        assert len(running) == 4, "the server should go down with every workflow under way"
        await wait_until(all_over, 120, "every workflow to end after the restart", every=0.5)
        for r in chords:
            assert (await client.workflow_record(r.id)).state is WorkflowState.COMPLETED
            cb = await client.get(node_job_id(r.id, 200))
            assert cb.result == 200  # one callback job with every result (its attempts may be more than one)
        assert (await client.workflow_record(line.id)).state is WorkflowState.COMPLETED
        assert await line.result(10) == 200
    finally:
        await wind_down(client, stop, services, restarted, server)
