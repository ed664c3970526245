"""Workflows for the client: submit (checked whole before anything is written), read, list, wait,
cancel and retry. The advance itself is chronos/workflowstore.py, shared with workers and the leader.

Submit order, so that a process dying at any point leaves nothing the leader cannot finish:
definition and node specs first (inert without a record), then the workflow record in state
``running``, then the root nodes' jobs (pipelined, under pending markers). The leader's repair
starts any root whose job is missing.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Generic, TypeVar

import msgspec

from .. import codec
from ..audit import audited
from ..clock import Clock
from ..connection import Connection
from ..errors import ChronosError, IllegalTransitionError, ValidationError
from ..events import EventPublisher
from ..ids import new_job_id
from ..jobs import JobOps, new_record
from ..models import JobRecord
from ..states import TERMINAL, WORKFLOW_TERMINAL, JobState, WorkflowState, workflow_transition
from ..workflows import (
    AFTER_KEY, MODE_KEY, NODE_KEY, SLOT_KEY, WF_KEY, WORKFLOW_REASON, NodeDef, NodeSpec, Workflow, WorkflowDef,
    WorkflowRecord, after_digest, compile_workflow, node_args, node_job_id, sinks_of,
)
from ..subjects import is_valid_token
from ..workflowstore import WorkflowNotFoundError, WorkflowStore, node_failed, node_state
from .catalog import TaskCatalog
from .submit import Submitter

R = TypeVar("R")
_NOT_FOR_NODES = ("run_at", "delay", "unique_key")


def check_id(wf_id: object) -> str:
    """A workflow id is one key token: anything else (``../..``, ``a*``, ``a>``) is a user's mistake,
    said in one line, never a KV error."""
    if not isinstance(wf_id, str) or not wf_id or not is_valid_token(wf_id):
        raise ValidationError(f"workflow id: {wf_id!r} is not a workflow id (letters, digits, '-' and '_')")
    return wf_id


class WorkflowFailedError(ChronosError):
    def __init__(self, record: WorkflowRecord) -> None:
        self.record = record
        super().__init__(f"workflow {record.id} ended {record.state}" + (f": {record.reason}" if record.reason else ""))


class NodeView(msgspec.Struct):
    index: int
    task: str
    parents: list[int]
    state: str  # pending | running | completed | failed | cancelled
    job_id: str
    label: str = ""
    error: str | None = None
    result: Any = None


class WorkflowView(msgspec.Struct):
    record: WorkflowRecord
    nodes: list[NodeView]


class WorkflowRef(Generic[R]):
    """A submitted workflow: its id, its state, and a wait for its result (the sink's, or the list
    of the sinks' results when it has several)."""

    __slots__ = ("id", "_api", "_sinks")

    def __init__(self, wf_id: str, api: "Workflows", sinks: list[Any] | None = None) -> None:
        self.id = wf_id
        self._api = api
        self._sinks = sinks  # the sinks' task handles, for typed results (None when not known)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"WorkflowRef({self.id!r})"

    async def status(self) -> WorkflowRecord:
        return await self._api.record(self.id)

    async def wait(self, timeout: float | None = None) -> WorkflowRecord:
        return await self._api.wait(self.id, timeout)

    async def result(self, timeout: float | None = None) -> R:
        rec = await self.wait(timeout)
        if rec.state is not WorkflowState.COMPLETED:
            raise WorkflowFailedError(rec)
        return await self._api.result(self.id, self._sinks)  # type: ignore[no-any-return]


class Workflows:
    def __init__(self, conn: Connection, clock: Clock, ops: JobOps, events: EventPublisher,
                 catalog: TaskCatalog, submitter: Submitter) -> None:
        self.conn = conn
        self.settings = conn.settings
        self.clock = clock
        self.ops = ops
        self.events = events
        self.catalog = catalog
        self.submitter = submitter
        self.store = WorkflowStore(ops, emit=events.emit)

    # --- submit ---------------------------------------------------------------------------------------------
    async def submit(self, wf: Workflow) -> WorkflowRef[Any]:
        """Check the whole workflow, then write it; one ValidationError and nothing stored on bad input."""
        if not isinstance(wf, Workflow):
            raise ValidationError(f"submit_workflow: expected a Workflow, not {type(wf).__name__}")
        plan = compile_workflow(wf)  # cycles, arity and result types
        now = self.clock.now()
        wf_id = "w" + new_job_id(now)
        records: list[JobRecord] = []
        defs: list[NodeDef] = []
        for i, p in enumerate(plan.nodes):
            sig = p.sig
            name = sig.name
            await self.catalog.check_task(name)
            args, slot = node_args(p, i)
            task = sig.task
            opts = task._merged(sig.options) if hasattr(task, "_merged") else dict(sig.options)
            bad = [k for k in _NOT_FOR_NODES if opts.get(k) is not None]
            if bad:
                raise ValidationError(f"node {i} ({name}): option {bad[0]!r} is not available in a workflow")
            for k in _NOT_FOR_NODES:
                opts.pop(k, None)
            ann = dict(opts.pop("annotations", None) or {})
            ann.update({WF_KEY: wf_id, NODE_KEY: str(i)})
            if slot is not None:
                ann.update({SLOT_KEY: str(slot), MODE_KEY: p.mode})
            if p.parents:  # signed with the spec: workers check the definition they read against it
                ann[AFTER_KEY] = after_digest(p.parents, p.run_on_failure)
            if opts.get("queue") is None:
                opts["queue"] = await self.catalog.task_queue(name)
            try:
                spec = self.submitter.build_spec(name, args, annotations=ann, **opts)
            except ValidationError as exc:
                raise ValidationError(f"node {i} ({name}): {exc}") from None
            records.append(new_record(node_job_id(wf_id, i), spec, now, JobState.AVAILABLE, scheduled_at=now))
            defs.append(NodeDef(task=name, parents=p.parents, mode=p.mode, run_on_failure=p.run_on_failure,
                                label=p.label))
        self.ops.auth.sign_records(records)
        encoded = [self.submitter._encode_checked(r) for r in records]
        defn = WorkflowDef(id=wf_id, nodes=defs)
        def_data = codec.encode(defn)
        server_max = getattr(self.conn.nc, "max_payload", 0) or 1024 * 1024
        if len(def_data) > server_max - 4096:
            raise ValidationError(f"workflow: its definition is {len(def_data)} bytes, over the server's "
                                  f"{server_max} byte message limit (fewer nodes, or shorter task names)")
        record = WorkflowRecord(id=wf_id, state=WorkflowState.RUNNING, created_at=now, updated_at=now,
                                nodes=len(records), name=wf.name, policy=wf.policy)
        # Everything is checked: now write.
        kv = await self.store.kv()
        await kv.create(f"d.{wf_id}", def_data)
        pub = self.conn.publisher
        futs = []
        for i, r in enumerate(records):
            if pub.in_flight >= pub.window // 2:
                await pub.wait_for_room(pub.window // 4)
            futs.append(await kv.put_nowait(f"n.{wf_id}.{i}", codec.encode(NodeSpec(spec=r.spec, auth=r.auth))))
        await asyncio.gather(*futs)
        await kv.create(f"w.{wf_id}", codec.encode(record))
        roots = [k for k, p in enumerate(plan.nodes) if not p.parents]
        await self.submitter._submit_pipelined([records[k] for k in roots], encoded=[encoded[k] for k in roots])
        sinks = [plan.nodes[k].sig.task for k in sinks_of(defn)]
        return WorkflowRef(wf_id, self, sinks)

    # --- reading ----------------------------------------------------------------------------------------------
    async def record(self, wf_id: str) -> WorkflowRecord:
        return await self.store.record(check_id(wf_id))

    async def listing(self, state: str | None = None, limit: int = 100) -> list[WorkflowRecord]:
        recs = await self.store.records()
        if state is not None:
            recs = [r for r in recs if r.state == state]
        recs.sort(key=lambda r: r.created_at, reverse=True)
        return recs[:limit]

    def follow(self) -> AsyncIterator[tuple[str, WorkflowRecord | None, bool]]:
        """Every workflow record, then each change: ``(id, record or None when pruned, caught up)``
        (an empty id with caught up True when there is none). For consoles that keep the list
        live without reading every record again."""
        return self.store.watch_records()

    async def view(self, wf_id: str) -> WorkflowView:
        rec = await self.store.record(check_id(wf_id))
        shape = await self.store.shape(wf_id)
        jobs = await self.store.jobs(wf_id, None, rec.nodes)
        nodes = []
        for i, n in enumerate(shape.defn.nodes):
            job = jobs.get(i)
            nodes.append(NodeView(index=i, task=n.task, parents=list(n.parents), state=node_state(job),
                                  job_id=node_job_id(wf_id, i), label=n.label,
                                  error=job.error if job is not None else None,
                                  result=job.result if job is not None and job.state is JobState.COMPLETED else None))
        return WorkflowView(record=rec, nodes=nodes)

    async def wait(self, wf_id: str, timeout: float | None = None) -> WorkflowRecord:
        check_id(wf_id)
        async def _wait() -> WorkflowRecord:
            kv = await self.store.kv()
            watcher = kv.watch(f"w.{wf_id}", include_existing=True)
            rec = await self.store.record(wf_id)
            if rec.state in WORKFLOW_TERMINAL:
                return rec
            async for entry in watcher:
                if entry.value is None:
                    continue
                rec = msgspec.msgpack.decode(entry.value, type=WorkflowRecord)
                if rec.state in WORKFLOW_TERMINAL:
                    return rec
            raise WorkflowNotFoundError(f"workflow {wf_id} disappeared")

        return await asyncio.wait_for(_wait(), timeout)

    async def result(self, wf_id: str, sinks: list[Any] | None = None) -> Any:
        shape = await self.store.shape(wf_id)
        ends = sinks_of(shape.defn)
        jobs = await self.store.jobs(wf_id, ends)
        values = []
        for k, i in enumerate(ends):
            job = jobs[i]
            handle = sinks[k] if sinks is not None and k < len(sinks) else None
            values.append(handle.result_of(job) if handle is not None and hasattr(handle, "result_of") else job.result)
        return values[0] if len(values) == 1 else values

    # --- operator actions ----------------------------------------------------------------------------------------
    @audited("workflow_cancel")
    async def cancel(self, wf_id: str, reason: str = "cancelled by operator") -> WorkflowRecord:
        """Pending nodes are cancelled (now, or as soon as they would start); running ones are signalled."""
        check_id(wf_id)
        now = self.clock.now()

        def decide(rec: WorkflowRecord) -> WorkflowRecord | None:
            if rec.state is WorkflowState.CANCELLED:
                return None
            if rec.state in (WorkflowState.COMPLETED,):
                raise IllegalTransitionError(f"workflow {wf_id} is already {rec.state}; nothing to cancel")
            return workflow_transition(rec, WorkflowState.CANCELLED, now, reason=reason, settled=False)

        rec = await self.store.update_record(wf_id, decide)
        await self.store.stop_live_nodes(wf_id, f"{WORKFLOW_REASON} workflow cancelled ({reason})")
        return rec

    @audited("workflow_retry")
    async def retry(self, wf_id: str, node: int | None = None) -> list[int]:
        """Run failed nodes again (one, or every failed one and every node the workflow stopped that
        is ready); the workflow is running again and goes on from there. The nodes retried."""
        await self.store.record(check_id(wf_id))  # exists
        shape = await self.store.shape(wf_id)
        n = len(shape.defn.nodes)
        if node is not None and not 0 <= node < n:
            raise ValidationError(f"node: workflow {wf_id} has nodes 0-{n - 1}, not {node}")
        jobs = await self.store.jobs(wf_id, None, n)

        def may_run(i: int) -> bool:  # what workers check before the call (worker/advance.py)
            nd = shape.defn.nodes[i]
            ok = TERMINAL if nd.run_on_failure else (JobState.COMPLETED,)
            return all(p in jobs and jobs[p].state in ok for p in nd.parents)

        if node is not None:
            job = jobs.get(node)
            if job is None or job.state not in (JobState.CANCELLED, JobState.DISCARDED, JobState.RETRYABLE):
                state = node_state(job)
                raise IllegalTransitionError(f"workflow {wf_id} node {node} is {state}; only failed or cancelled nodes "
                                   "can be retried")
            if not may_run(node):
                raise IllegalTransitionError(f"workflow {wf_id} node {node}: the nodes it depends on have not all "
                                             "completed; retry those first")
            targets = [node]
        else:
            def ready(i: int) -> bool:
                return all(p in jobs and jobs[p].state is JobState.COMPLETED for p in shape.defn.nodes[i].parents)

            targets = [i for i, j in jobs.items()
                       if j.state in (JobState.CANCELLED, JobState.DISCARDED)
                       and ((node_failed(j.state, j.error) and may_run(i)) or ready(i))]
            if not targets:
                raise IllegalTransitionError(f"workflow {wf_id}: no failed or stopped node to retry")
        now = self.clock.now()
        targets.sort()

        def decide(cur: WorkflowRecord) -> WorkflowRecord | None:
            failed = [f for f in cur.failed if f not in targets]
            if cur.state is WorkflowState.RUNNING:
                return msgspec.structs.replace(cur, failed=failed, updated_at=now, resumed=cur.resumed + 1)
            return workflow_transition(cur, WorkflowState.RUNNING, now, failed=failed, reason=None, settled=False,
                                       resumed=cur.resumed + 1, resumed_at=now)

        await self.store.update_record(wf_id, decide)
        for i in targets:
            await self.store.rerun_job(node_job_id(wf_id, i), "retried with its workflow")
        return targets
