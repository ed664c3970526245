"""Workflows against a real server: chain, group, chord (with a failed child), DAG order,
fail-fast and continue, retry of a failed node, cancel of a running workflow, bad input,
and the leader's repair of a node a worker left unadvanced."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import chronos
from chronos.client import Client
from chronos.errors import UnknownTaskError, ValidationError
from chronos.states import JobState, WorkflowState
from chronos.worker.context import current_job
from chronos.worker.registry import Registry
from chronos.workflows import Failure, Workflow, chain, chord, group, node_job_id
from chronos.workflowstore import WorkflowStore

reg = Registry()
order: list[str] = []
calls: dict[str, int] = {}
gate = asyncio.Event()
attempts_left: dict[str, int] = {}


def _count(name: str) -> None:
    ctx = current_job()
    key = ctx.job_id if ctx else name
    calls[key] = calls.get(key, 0) + 1


@chronos.task(name="wf.add", registry=reg, queue="wfq")
async def add(x: int, y: int) -> int:
    _count("add")
    order.append(f"add{x},{y}")
    return x + y


@chronos.task(name="wf.mul", registry=reg, queue="wfq")
async def mul(x: int, y: int) -> int:
    _count("mul")
    order.append(f"mul{x},{y}")
    return x * y


@chronos.task(name="wf.collect", registry=reg, queue="wfq")
async def collect(results: list) -> list:  # type: ignore[type-arg]
    _count("collect")
    return [r if Failure.of(r) is None else "FAILED" for r in results]


@chronos.task(name="wf.step", registry=reg, queue="wfq")
async def step(label: str) -> str:
    order.append(label)
    return label


@chronos.task(name="wf.flaky", registry=reg, queue="wfq", max_attempts=1)
async def flaky(key: str) -> str:
    """Fails while attempts_left[key] > 0 (each call spends one)."""
    _count(key)
    if attempts_left.get(key, 0) > 0:
        attempts_left[key] -= 1
        raise RuntimeError(f"{key} failed on purpose")
    return key


@chronos.task(name="wf.block", registry=reg, queue="wfq")
async def block() -> str:
    await gate.wait()
    return "unblocked"


@chronos.task(name="wf.tostr", registry=reg, queue="wfq")
async def tostr(x: int) -> str:
    return str(x)


@pytest.fixture
async def running(client: Client, start_worker: Any, settings: Any):
    """A worker on the workflow queue and a leading scheduler (fast repair tick)."""
    from chronos.scheduler import SchedulerService

    order.clear()
    calls.clear()
    attempts_left.clear()
    gate.clear()
    chronos.set_client(client)
    await start_worker(reg, queues=["wfq"])
    svc = SchedulerService(settings, log_events=False, workflow_tick=0.3)
    task = asyncio.get_running_loop().create_task(svc.run())
    await asyncio.wait_for(svc.leading.wait(), 20)
    yield client
    gate.set()  # never leave a blocked task behind
    chronos.set_client(None)
    svc.stop()
    await asyncio.wait_for(task, 30)


async def test_chain_passes_results(running: Client) -> None:
    ref = await running.submit_workflow(Workflow(chain(add.s(1, 2), mul.s(10), add.s(5))))
    # add(1,2)=3 -> mul(10, 3)=30 -> add(5, 30)=35
    assert await ref.result(timeout=20) == 35
    rec = await ref.status()
    assert rec.state is WorkflowState.COMPLETED
    assert order == ["add1,2", "mul10,3", "add5,30"]


async def test_group_runs_all(running: Client) -> None:
    ref = await running.submit_workflow(Workflow(group(add.s(i, i) for i in range(5))))
    assert sorted(await ref.result(timeout=20)) == [0, 2, 4, 6, 8]


async def test_chord_callback_once_with_a_failed_child(running: Client) -> None:
    attempts_left["bad"] = 1
    wf = Workflow(chord(group(add.s(1, 1), flaky.s("bad"), add.s(2, 2)), collect.s()))
    ref = await running.submit_workflow(wf)
    rec = await ref.wait(timeout=20)
    # the callback ran once and saw the failure in its place; the workflow failed (a node failed)
    cb = await running.get(node_job_id(ref.id, 3))
    assert cb.state is JobState.COMPLETED and cb.result == [2, "FAILED", 4]
    assert calls[cb.id] == 1
    assert rec.state is WorkflowState.FAILED and rec.failed == [1]


async def test_dag_order(running: Client) -> None:
    wf = Workflow()
    a = wf.add(step.s("a"))
    b = wf.add(step.s("b"), depends_on=[a])
    c = wf.add(step.s("c"), depends_on=[a])
    wf.add(step.s("d"), depends_on=[b, c])
    ref = await running.submit_workflow(wf)
    await ref.result(timeout=20)
    assert order[0] == "a" and order[-1] == "d" and set(order[1:3]) == {"b", "c"}


async def test_continue_skips_dependents_and_retry_resumes(running: Client) -> None:
    attempts_left["x"] = 1
    wf = Workflow(name="resume")
    first = wf.add(step.s("first"))
    mid = wf.add(flaky.s("x"), depends_on=[first])
    last = wf.add(step.s("last"), depends_on=[mid])
    other = wf.add(step.s("other"), depends_on=[first])
    ref = await running.submit_workflow(wf)
    rec = await ref.wait(timeout=20)
    assert rec.state is WorkflowState.FAILED and rec.failed == [mid.index]
    skipped = await running.get(node_job_id(ref.id, last.index))
    assert skipped.state is JobState.CANCELLED and "skipped" in (skipped.error or "")
    assert (await running.get(node_job_id(ref.id, other.index))).state is JobState.COMPLETED
    # retry the failed node: it completes, the skipped dependent runs, the workflow completes
    assert await running.retry_workflow(ref.id, node=mid.index) == [mid.index]
    rec = await ref.wait(timeout=20)
    assert rec.state is WorkflowState.COMPLETED, rec
    assert (await running.get(node_job_id(ref.id, last.index))).state is JobState.COMPLETED
    assert order.count("last") == 1


async def test_fail_fast_cancels_pending_and_signals_running(running: Client) -> None:
    attempts_left["ff"] = 1
    wf = Workflow(policy="fail_fast")
    blocker = wf.add(block.s())
    bad = wf.add(flaky.s("ff"))
    after = wf.add(step.s("after-block"), depends_on=[blocker])
    ref = await running.submit_workflow(wf)
    rec = await ref.wait(timeout=20)
    assert rec.state is WorkflowState.FAILED and "fail_fast" in (rec.reason or "")
    # the running blocker is signalled through the cancel path; its dependent is never run
    blk = await _wait_job(running, node_job_id(ref.id, blocker.index), {JobState.CANCELLED})
    assert blk.error and blk.error.startswith("workflow:")
    dep = await _wait_job(running, node_job_id(ref.id, after.index), {JobState.CANCELLED})
    assert dep.state is JobState.CANCELLED
    assert "after-block" not in order
    assert bad.index == 1


async def test_cancel_a_running_workflow(running: Client) -> None:
    ref = await running.submit_workflow(Workflow(chain(block.s(), step.s())))
    await _wait_job(running, node_job_id(ref.id, 0), {JobState.RUNNING})
    rec = await running.cancel_workflow(ref.id)
    assert rec.state is WorkflowState.CANCELLED
    first = await _wait_job(running, node_job_id(ref.id, 0), {JobState.CANCELLED})
    assert first.state is JobState.CANCELLED
    second = await _wait_job(running, node_job_id(ref.id, 1), {JobState.CANCELLED})
    assert second.error and second.error.startswith("workflow:")
    view = await running.workflow(ref.id)
    assert [n.state for n in view.nodes] == ["cancelled", "cancelled"]


async def test_leader_repairs_a_node_left_unadvanced(running: Client, client: Client) -> None:
    """A node ended with nobody to advance it (its worker killed after the commit): the leader's
    repair starts the child. Simulated by submitting a chain whose first node we finish by hand."""
    ref = await running.submit_workflow(Workflow(chain(add.s(1, 1).set(queue="nobody"), mul.s(3))))
    job_id = node_job_id(ref.id, 0)
    # finish node 0 as a worker would, without the worker's advance
    rec = await client.ops.read(job_id)
    rec = await client.ops.move(rec, JobState.RUNNING, worker="ghost")
    await client.ops.move(rec, JobState.COMPLETED, result=2)
    assert await ref.result(timeout=20) == 6


async def test_bad_input_is_refused_with_nothing_stored(running: Client) -> None:
    store = WorkflowStore(running.ops)
    wf = Workflow()
    a = wf.add(step.s("a"))
    b = wf.add(step.s("b"), depends_on=[a])
    a.depends_on.append(b)  # a cycle
    with pytest.raises(ValidationError, match="cycle"):
        await running.submit_workflow(wf)
    with pytest.raises(ValidationError, match="expects str"):
        await running.submit_workflow(Workflow(chain(add.s(1, 2), step.s())))  # int into str
    with pytest.raises(ValidationError, match="returns str"):
        await running.submit_workflow(Workflow(chain(tostr.s(1), mul.s(2))))
    with pytest.raises(ValidationError, match="positional argument"):
        await running.submit_workflow(Workflow(chain(add.s(1, 2), add.s(1, 2))))  # no room for the result
    from chronos.workflows import Signature

    with pytest.raises(UnknownTaskError):
        await running.submit_workflow(Workflow(chain(add.s(1, 2), Signature("wf.no_such_task"))))
    assert await (await store.kv()).entries(">") == []


async def _wait_job(client: Client, job_id: str, states: set[JobState], timeout: float = 20.0) -> Any:
    store = await client.ops.store()

    async def _wait() -> Any:
        async for entry in store.watch(job_id, include_existing=True):
            if entry.value is None:
                continue
            rec = await client.get(job_id)
            if rec.state in states:
                return rec
        return None

    return await asyncio.wait_for(_wait(), timeout)


async def test_fan_out_then_fan_in(running: Client) -> None:
    """One parent, 50 children each given its result, then one callback over all 50."""
    wf = Workflow(chain(add.s(1, 1), group(mul.s(i) for i in range(50)), collect.s()))
    ref = await running.submit_workflow(wf)
    assert await ref.result(timeout=30) == [2 * i for i in range(50)]
    assert calls[node_job_id(ref.id, 51)] == 1
