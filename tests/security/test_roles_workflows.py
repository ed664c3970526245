"""Workflows and least privilege (issue 17): the console submits and cancels workflows, a worker
advances them (fan-in records, the workflow record, the next node's job and work message); a
viewer reads them and can neither advance a workflow nor forge or start one of its nodes."""

from __future__ import annotations

from chronos import codec
from chronos.client import Client
from chronos.errors import PermissionDeniedError
from chronos.models import JobSpec
from chronos.workflows import Bits, NodeSpec, Signature, Workflow, chain, node_job_id

from .conftest import NAMES, raw, settings_for
from .test_nats_attacks import refused

N = NAMES


async def test_viewer_cannot_advance_or_forge_a_workflow_node(server, seeded):
    console = await Client.connect(settings_for(server, "console"), ensure=False)
    try:
        ref = await console.submit_workflow(Workflow(chain(Signature("t.ok", (1,)), Signature("t.ok"))))
        view = await console.workflow(ref.id)
        assert [n.state for n in view.nodes] == ["pending", "pending"]

        r = await raw(server, "viewer")
        try:
            # reading is allowed
            entry = await (await r.js.key_value(N.workflows_bucket)).get(f"w.{ref.id}")
            assert entry.value
            child = node_job_id(ref.id, 1)
            forged = codec.encode(NodeSpec(spec=JobSpec(task="t.ok", args=["rm -rf /"])))
            attempts = [
                # set the parent's bit in the child's fan-in, or the workflow's end
                (N.kv_subject(N.workflows_bucket, f"f.{ref.id}.1.0.0"), codec.encode(Bits(1, b"\x01"))),
                (N.kv_subject(N.workflows_bucket, f"f.{ref.id}.end.0.0"), codec.encode(Bits(1, b"\x01"))),
                # rewrite the child's stored spec, or the workflow record
                (N.kv_subject(N.workflows_bucket, f"n.{ref.id}.1"), forged),
                (N.kv_subject(N.workflows_bucket, f"w.{ref.id}"), b"{}"),
                # create the child's job, or publish its work message
                (N.kv_subject(N.jobs_bucket, child), b"forged"),
                (N.job_subject("default", "default"), b"forged"),
            ]
            for subject, data in attempts:
                exc = await refused(r.js.publish(subject, data))
                assert isinstance(exc, PermissionDeniedError), (subject, exc)
        finally:
            await r.nc.close()
        # nothing moved: the child was never started, the spec is the submitted one
        view = await console.workflow(ref.id)
        assert [n.state for n in view.nodes] == ["pending", "pending"] and view.record.state == "running"
        spec = await console.workflow_api.store.node_spec(ref.id, 1)
        assert spec.spec.args == [{"chronos_slot": "result"}]
        await console.cancel_workflow(ref.id)
    finally:
        await console.close()


async def test_worker_may_advance_a_workflow(server, seeded):
    """The worker role holds what advancing needs: the workflows bucket, pending markers, work messages."""
    r = await raw(server, "worker")
    try:
        await r.js.publish(N.kv_subject(N.workflows_bucket, "f.wprobe.1.0.0"), codec.encode(Bits(2, b"\x01")))
        await r.js.publish(N.kv_subject(N.control_bucket, "pending.probe.0"), b"")
        # but not the control bucket's other keys (cancel requests are the console's and the scheduler's)
        exc = await refused(r.js.publish(N.kv_subject(N.control_bucket, "cancel.someone"), b"x"))
        assert isinstance(exc, PermissionDeniedError)
    finally:
        await r.nc.close()


async def test_a_chord_runs_with_the_shipped_least_privilege_roles(server, seeded):
    """The console submits, a worker-role worker runs and advances it (its fan-in, the callback's job
    and work message, the callback's read of its parents): the shipped permissions suffice."""
    import asyncio

    from chronos.worker.registry import Registry
    from chronos.worker.service import WorkerService
    from chronos.workflows import chord, group

    reg = Registry()

    async def part(i: int) -> int:
        return i

    async def add_up(values: list) -> int:  # type: ignore[type-arg]
        return sum(values)

    reg.register(part, name="sec.part", queue="secwf")
    reg.register(add_up, name="sec.add_up", queue="secwf")
    worker = WorkerService(settings_for(server, "worker"), reg, queues=["secwf"])
    admin = await Client.connect(settings_for(server, "admin"))
    console = await Client.connect(settings_for(server, "console"), ensure=False)
    try:
        await admin.ensure_queue("secwf")  # the admin makes the queue's consumers
        task = asyncio.get_running_loop().create_task(worker.run())
        await asyncio.wait_for(worker.ready.wait(), 20)
        console._known_tasks.update({"sec.part", "sec.add_up"})
        ref = await console.submit_workflow(Workflow(chord(group(Signature("sec.part", (i,)).set(queue="secwf")
                                                                 for i in range(20)),
                                                           Signature("sec.add_up").set(queue="secwf"))))
        rec = await ref.wait(30)
        assert rec.state == "completed", rec.reason
        assert (await console.get(node_job_id(ref.id, 20))).result == sum(range(20))
        worker.stop()
        await asyncio.wait_for(task, 30)
    finally:
        await console.close()
        await admin.close()


async def test_no_role_may_purge_the_workflows_bucket(server, seeded):
    """A purge is not compare-and-set, and one without a filter erases every workflow: no role
    may (the leader prunes finished workflows key by key with expiring delete markers). The
    scheduler, the worker, the console and a viewer are refused, and the workflow is untouched."""
    console = await Client.connect(settings_for(server, "console"), ensure=False)
    stream = N.kv_stream(N.workflows_bucket)
    try:
        ref = await console.submit_workflow(Workflow(chain(Signature("t.ok", (1,)), Signature("t.ok"))))
        for role in ("scheduler", "worker", "console", "viewer"):
            r = await raw(server, role)
            try:
                for key in (f"w.{ref.id}", f"n.{ref.id}.>", ">"):
                    exc = await refused(r.js.purge_stream(stream, subject=N.kv_subject(N.workflows_bucket, key)))
                    assert isinstance(exc, PermissionDeniedError), (role, key, exc)
                exc = await refused(r.js.purge_stream(stream))
                assert isinstance(exc, PermissionDeniedError), (role, exc)
            finally:
                await r.nc.close()
        assert (await console.workflow_record(ref.id)).state == "running"
        assert (await console.workflow_api.store.node_spec(ref.id, 1)).spec.task == "t.ok"
        await console.cancel_workflow(ref.id)
    finally:
        await console.close()
