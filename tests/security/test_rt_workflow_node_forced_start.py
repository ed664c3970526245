"""Red team: with signing on, a stolen worker credential starts a workflow node whose parents never
ended (or failed), so a step the signer made conditional runs anyway.

The node's signed spec and auth sit in the workflows bucket (``n.<wf>.<i>``, readable by workers),
and the signature covers (namespace, job id, spec), not "the parents completed". A worker may write
job records and publish work messages (workflow starts need it), so it can create ``<wf>.<i>``
itself, available, with that spec and auth: the worker that takes it verifies the signature and runs it.

Fixed at the worker, before the call (worker/advance.py): the node runs only once its parents'
records have ended as its rule asks and its workflow is neither cancelled nor failed fast; its
parents are checked against a digest in its signed spec, since the definition is writable too.
"""

from __future__ import annotations

import time

import msgspec

from chronos import codec
from chronos.models import JobMessage, JobRecord
from chronos.states import JobState
from chronos.workflows import NodeSpec, Signature, Workflow, WorkflowDef, node_job_id

from ..faults.conftest import wait_until
from .test_authenticity import NS, deployment  # noqa: F401  (the fixture)


async def force_start(attacker, wf_id: str, i: int) -> str:
    """What a worker credential may do: the node's signed spec into a fresh record, and a work message."""
    async def nothing() -> None:
        return None

    return await force_start_after(attacker, wf_id, i, nothing)


async def settled(console, job_id: str, states=(JobState.DISCARDED,)) -> JobRecord:
    async def done() -> bool:
        r = await console.ops.read_or_none(job_id)
        return r is not None and r.gen == 7 and r.state in (JobState.COMPLETED, JobState.DISCARDED,
                                                             JobState.CANCELLED)

    await wait_until(done, 15, f"the forced node {job_id} to settle")
    rec = await console.ops.read(job_id)
    assert rec.state in states, (rec.state, rec.error)
    return rec


def guarded(policy: str = "fail_fast") -> Workflow:
    wf = Workflow(policy=policy)
    # The gate sits on a queue no worker serves: it never ends unless cancelled, so the guarded step
    # must never run.
    gate = wf.add(Signature("sec.pwn", ("gate",)).set(queue="nobody"))
    wf.add(Signature("sec.pwn", ("deploy to production",)).set(queue="other"), depends_on=[gate])
    return wf


async def test_worker_credential_cannot_start_a_node_before_its_parents_end(deployment):  # noqa: F811
    server, console, attacker, ran, _ = deployment
    ref = await console.submit_workflow(guarded())
    job_id = await force_start(attacker, ref.id, 1)
    rec = await settled(console, job_id)
    assert rec.error is not None and rec.error.startswith("refused: workflow node started before its parents finished")
    assert job_id not in ran, "the guarded node ran though its parent never ended"
    assert (await console.dlq_get(job_id)).reason == rec.error


async def test_a_node_that_should_be_skipped_is_not_started_by_force(deployment):  # noqa: F811
    server, console, attacker, ran, _ = deployment
    ref = await console.submit_workflow(guarded(policy="continue"))
    await console.cancel(node_job_id(ref.id, 0))  # the parent ends, not completed: node 1 is skipped

    async def skipped() -> bool:
        r = await console.ops.read_or_none(node_job_id(ref.id, 1))
        return r is not None and r.state is JobState.CANCELLED

    await wait_until(skipped, 15, "node 1 to be skipped")
    job_id = await force_start(attacker, ref.id, 1)
    rec = await settled(console, job_id, (JobState.DISCARDED, JobState.CANCELLED))
    assert "did not complete" in (rec.error or "") or "workflow" in (rec.error or ""), rec.error
    assert job_id not in ran, "a node that should be skipped ran"


async def test_a_node_stopped_by_fail_fast_is_not_started_by_force(deployment):  # noqa: F811
    server, console, attacker, ran, _ = deployment
    ref = await console.submit_workflow(guarded(policy="fail_fast"))
    await console.cancel(node_job_id(ref.id, 0))  # a failure: the workflow fails fast

    async def failed() -> bool:
        return (await console.workflow_record(ref.id)).state == "failed"

    await wait_until(failed, 15, "the workflow to fail fast")
    job_id = await force_start(attacker, ref.id, 1)
    await settled(console, job_id, (JobState.DISCARDED, JobState.CANCELLED))
    assert job_id not in ran, "a node of a failed-fast workflow ran"


async def test_a_rewritten_definition_does_not_free_a_node(deployment):  # noqa: F811
    """The definition (``d.<wf>``) is writable by workers: drop the node's parent there, then force it."""
    server, console, attacker, ran, _ = deployment
    ref = await console.submit_workflow(guarded())
    kv = await attacker.jetstream().key_value(f"{NS}_workflows")
    defn = msgspec.msgpack.decode((await kv.get(f"d.{ref.id}")).value, type=WorkflowDef)
    nodes = [defn.nodes[0], msgspec.structs.replace(defn.nodes[1], parents=[])]
    await kv.put(f"d.{ref.id}", codec.encode(msgspec.structs.replace(defn, nodes=nodes)))
    job_id = await force_start(attacker, ref.id, 1)
    rec = await settled(console, job_id)
    assert "differs from what was signed" in (rec.error or ""), rec.error
    assert job_id not in ran, "a node freed by a rewritten definition ran"


async def test_a_node_of_an_erased_workflow_is_refused_visibly(deployment):  # noqa: F811
    """A worker credential may delete the workflows bucket's keys one by one (no purge right):
    a node of the erased workflow is then refused before its call, with a DLQ entry."""
    server, console, attacker, ran, _ = deployment
    ref = await console.submit_workflow(guarded())
    kv = await attacker.jetstream().key_value(f"{NS}_workflows")
    job_id = await force_start_after(attacker, ref.id, 1, lambda: _erase(kv, ref.id))
    rec = await settled(console, job_id)
    assert "of a workflow that does not exist" in (rec.error or ""), rec.error
    assert job_id not in ran


async def _erase(kv, wf_id: str) -> None:
    for key in (f"w.{wf_id}", f"d.{wf_id}"):
        await kv.delete(key)


async def force_start_after(attacker, wf_id: str, i: int, before) -> str:
    """``force_start``, with the node's spec read first and ``before`` run in between."""
    js = attacker.jetstream()
    kv = await js.key_value(f"{NS}_workflows")
    ns = msgspec.msgpack.decode((await kv.get(f"n.{wf_id}.{i}")).value, type=NodeSpec)
    await before()
    job_id = node_job_id(wf_id, i)
    now = time.time()
    rec = JobRecord(id=job_id, spec=ns.spec, state=JobState.AVAILABLE, created_at=now, updated_at=now,
                    scheduled_at=now, auth=ns.auth, gen=7)
    ack = await js.publish(f"$KV.{NS}_jobs.{job_id}", codec.encode(rec))
    await js.publish(f"{NS}.jobs.default.other", codec.encode(JobMessage(record=rec, rev=ack.seq)))
    return job_id
