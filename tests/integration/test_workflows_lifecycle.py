"""Workflows over time, against a real server: the leader's loop reads only active workflows,
finished ones are pruned past the retention (fan-in records and all, no marker left), their node
jobs stay while their workflow record does, and a plain `chronos retry` of a failed node resumes
its workflow (continue and fail-fast)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import msgspec
import pytest

from chronos.client import Client
from chronos.clock import SYSTEM_CLOCK
from chronos.errors import JobNotFoundError
from chronos.jobs import JobOps
from chronos.scheduler.pruner import Pruner
from chronos.scheduler.workflows import WorkflowRepair
from chronos.states import JobState, WorkflowState
from chronos.workflows import Workflow, WorkflowRecord, chain, chord, group, node_job_id
from chronos.workflowstore import WorkflowNotFoundError

from .test_pruner import ShiftedClock, _archiver_without_events
from .test_workflows import _wait_job, add, attempts_left, block, collect, flaky, gate, order, running, step  # noqa: F401


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for an in-memory condition the watch makes true (checked as the loop turns)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def _repair(client: Client, clock: Any = SYSTEM_CLOCK, retention: float | None = None, min_age: float = 1.0
                  ) -> tuple[WorkflowRepair, asyncio.Task[None]]:
    """A repair loop of our own (the fixture's scheduler runs the real one), its watches started."""
    r = WorkflowRepair(client.ops, clock=clock, tick=0.1, is_leader=lambda: True, retention=retention,
                       min_age=min_age)
    follow = asyncio.get_running_loop().create_task(r._follow())
    await asyncio.wait_for(r.loaded.wait(), 10)
    return r, follow


async def _stop(follow: asyncio.Task[None]) -> None:
    follow.cancel()
    await asyncio.gather(follow, return_exceptions=True)


async def _wait_state(client: Client, wf: str, state: WorkflowState, timeout: float = 20.0) -> WorkflowRecord:
    kv = await client.workflow_api.store.kv()

    async def _wait() -> WorkflowRecord:
        async for e in kv.watch(f"w.{wf}", include_existing=True):
            if e.value is not None:
                rec = msgspec.msgpack.decode(e.value, type=WorkflowRecord)
                if rec.state is state:
                    return rec
        raise AssertionError("watch ended")

    return await asyncio.wait_for(_wait(), timeout)


async def test_loop_reads_only_active_workflows(running: Client) -> None:
    done = [await running.submit_workflow(Workflow(chain(add.s(i, 1), add.s(1)))) for i in range(3)]
    for ref in done:
        await ref.wait(20)
    r, follow = await _repair(running, min_age=0.0)
    try:
        # three finished workflows: a round reads none of them
        assert r.active() == [] and await r.round() == 0 and r.looked == 0
        assert r.holds(node_job_id(done[0].id, 1)) and not r.holds("0123abcd")
        # a new one is seen by the watch and read; while nothing in it changes, it is not read again
        wf = Workflow()
        wf.add(step.s("after"), depends_on=[wf.add(block.s())])
        idle = wf.add(add.s(1, 1).set(queue="nobody"))  # never taken: a node we can change by hand
        live = await running.submit_workflow(wf)
        await _wait_job(running, node_job_id(live.id, 0), {JobState.RUNNING})
        await _until(lambda: live.id in r.active())
        await r.round()
        assert r.looked >= 1
        await asyncio.sleep(0.2)  # writes in flight (the running node's) reach the watch
        await r.round()
        looked = r.looked
        for _ in range(3):
            await r.round()
        assert r.looked == looked
        # a write to one of its jobs: read once more
        await running.cancel(node_job_id(live.id, idle.index))
        await _until(lambda: live.id in r._changed)
        await r.round()
        assert r.looked == looked + 1
        gate.set()
        await live.wait(20)
        await _until(lambda: r.active() == [])
        looked = r.looked
        await r.round()
        assert r.looked == looked
    finally:
        await _stop(follow)


async def test_finished_workflows_are_pruned_and_node_jobs_kept_while_their_workflow_lives(
        running: Client, tmp_path: Any) -> None:
    done = await running.submit_workflow(Workflow(chord(group(add.s(i, i) for i in range(3)), collect.s())))
    assert (await done.wait(20)).state is WorkflowState.COMPLETED
    lw = Workflow()
    lw.add(block.s(), depends_on=[lw.add(add.s(1, 1))])
    live = await running.submit_workflow(lw)
    first = await _wait_job(running, node_job_id(live.id, 0), {JobState.COMPLETED})
    assert first.state is JobState.COMPLETED
    store = running.workflow_api.store
    kv = await store.kv()
    assert any(e.key.startswith(f"f.{done.id}.") for e in await kv.entries(">")), "a chord has fan-in records"

    later = ShiftedClock(120.0)  # two minutes on, with a one-minute retention: every job has expired
    r, follow = await _repair(running, clock=later, retention=60.0)
    r.store.marker_ttl = 1  # the shortest the server takes: the test waits for the markers to go
    archiver = await _archiver_without_events(running, tmp_path / "p.sqlite3")
    pruner = Pruner(JobOps(running.conn), archiver, clock=later, retention=60.0, keep=r.holds)
    try:
        # while both workflow records exist, the job pruner keeps every node job
        assert await pruner.step() == 0
        assert await r.round() == 0 and r.pruned == 1
        with pytest.raises(WorkflowNotFoundError):
            await running.workflow_record(done.id)
        left = [e.key for e in await kv.entries(">") if done.id in e.key]
        assert left == []  # definition, node specs, fan-in records, record: all gone
        # and no delete marker stays behind: each expires by itself (no purge right needed)
        names = running.conn.names
        stream, prefix = names.kv_stream(names.workflows_bucket), names.kv_subject(names.workflows_bucket, "")

        async def markers() -> int:
            info = await running.conn.js.stream_info(stream, subjects_filter=f"{prefix}*.{done.id}.>")
            last = await running.conn.js.stream_info(stream, subjects_filter=f"{prefix}*.{done.id}")
            return len(info.state.subjects or {}) + len(last.state.subjects or {})

        assert await markers() >= 8  # 4 specs, the definition, the record, fan-in records
        deadline = asyncio.get_running_loop().time() + 10
        while await markers() and asyncio.get_running_loop().time() < deadline:  # 1 s TTL, checked every 0.1 s
            await asyncio.sleep(0.1)
        assert await markers() == 0, "the pruned workflow's delete markers did not expire"
        await _until(lambda: not r.holds(node_job_id(done.id, 0)))
        # now the finished workflow's nodes go; the running one's completed node stays
        assert await pruner.step() == 4
        for i in range(4):
            with pytest.raises(JobNotFoundError):
                await running.get(node_job_id(done.id, i))
        assert (await running.get(node_job_id(live.id, 0))).state is JobState.COMPLETED
        assert (await running.workflow_record(live.id)).state is WorkflowState.RUNNING
        gate.set()
        assert await live.result(20) == "unblocked"  # its node 0 was there for it
        # finished, but not a minute ago yet: kept; a minute and more later: pruned
        await _until(lambda: live.id not in r.active())
        later.ahead = 0.0
        await r.round()
        assert r.pruned == 1 and (await running.workflow_record(live.id)).state is WorkflowState.COMPLETED
        later.ahead = 61.0
        await r.round()
        assert r.pruned == 2
        with pytest.raises(WorkflowNotFoundError):
            await running.workflow_record(live.id)
    finally:
        await _stop(follow)
        await archiver.db.close()


@pytest.mark.parametrize("how", ["retry", "dlq_replay"])
async def test_plain_retry_of_a_failed_node_resumes_its_workflow(running: Client, how: str) -> None:
    attempts_left["pr"] = 1
    wf = Workflow(name="plain-retry")
    first = wf.add(step.s("first"))
    mid = wf.add(flaky.s("pr"), depends_on=[first])
    wf.add(step.s("last"), depends_on=[mid])
    ref = await running.submit_workflow(wf)
    rec = await ref.wait(20)
    assert rec.state is WorkflowState.FAILED and rec.failed == [mid.index]
    # `chronos retry <job>` or `chronos dlq replay <job>`: job paths only, nothing about workflows
    await getattr(running, how)(node_job_id(ref.id, mid.index))
    rec = await _wait_state(running, ref.id, WorkflowState.COMPLETED)
    assert rec.failed == [] and rec.resumed == 1
    assert order.count("last") == 1 and (await running.get(node_job_id(ref.id, 2))).state is JobState.COMPLETED


async def test_plain_retry_resumes_a_failed_fast_workflow(running: Client) -> None:
    attempts_left["pf"] = 1
    wf = Workflow(policy="fail_fast")
    blocker = wf.add(block.s())
    bad = wf.add(flaky.s("pf"))
    after = wf.add(step.s("after-block"), depends_on=[blocker])
    ref = await running.submit_workflow(wf)
    assert (await ref.wait(20)).state is WorkflowState.FAILED
    stopped = await _wait_job(running, node_job_id(ref.id, after.index), {JobState.CANCELLED})
    assert stopped.error and stopped.error.startswith("workflow:")
    await _wait_job(running, node_job_id(ref.id, blocker.index), {JobState.CANCELLED})
    gate.set()
    await running.retry(node_job_id(ref.id, bad.index))
    # the failed node completes: running again; the leader reruns what the failure stopped
    rec = await _wait_state(running, ref.id, WorkflowState.COMPLETED, timeout=30)
    assert rec.failed == []
    assert order.count("after-block") == 1
    assert (await running.get(node_job_id(ref.id, blocker.index))).result == "unblocked"


async def test_plain_retry_while_the_workflow_still_runs(running: Client) -> None:
    """continue policy: a node fails while a sibling still runs; retried by hand and completed before
    their common child's fan-in is complete, it leaves the failed list, so the child runs and the
    workflow completes (not failed on a node that did complete)."""
    attempts_left["rr"] = 1
    wf = Workflow()
    x = wf.add(flaky.s("rr"))
    y = wf.add(block.s())
    wf.add(step.s("joined"), depends_on=[x, y])
    ref = await running.submit_workflow(wf)
    await _wait_job(running, node_job_id(ref.id, x.index), {JobState.DISCARDED})
    await _wait_job(running, node_job_id(ref.id, y.index), {JobState.RUNNING})
    await running.retry(node_job_id(ref.id, x.index))
    await _wait_job(running, node_job_id(ref.id, x.index), {JobState.COMPLETED})

    async def failed_list_empty() -> None:
        while (await running.workflow_record(ref.id)).failed:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(failed_list_empty(), 10)
    gate.set()
    rec = await ref.wait(20)
    assert rec.state is WorkflowState.COMPLETED, rec
    assert order.count("joined") == 1
