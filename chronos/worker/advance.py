"""The worker's side of workflows: advance a node's workflow once its job has ended here, and
fill a node's parents' results into its arguments just before its call.

The executor's lifecycle events are the trigger: a node's terminal event is emitted only after
its record is committed (compare-and-set), so advancing then never runs ahead of the record. A
worker killed between the two leaves a node ended but not advanced; the leader's repair loop
(scheduler/workflows.py) advances it within seconds. Advancing is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine

from ..errors import Cancel, ChronosError
from ..events import EventPublisher
from ..jobs import JobOps
from ..models import Event, JobRecord
from ..states import TERMINAL, JobState, WorkflowState
from ..workflows import (
    AFTER_KEY, MODE_KEY, SLOT_KEY, WF_KEY, WORKFLOW_REASON, Failure, NodeDef, WorkflowRecord, after_digest,
    node_job_id, split_job_id,
)
from ..workflowstore import WorkflowNotFoundError, WorkflowStore

log = logging.getLogger(__name__)

ATTEMPTS = 4
CONCURRENT = 8  # workflows advancing at once per worker
MAX_BATCH = 1024
_ENDED = {"completed": JobState.COMPLETED, "cancelled": JobState.CANCELLED, "discarded": JobState.DISCARDED}


class NodeRefused(ChronosError):
    """A workflow node's job that may not run yet (or ever): the executor discards it unrun."""


def result_or_failure(job: JobRecord | None, job_id: str) -> Any:
    if job is not None and job.state is JobState.COMPLETED:
        return job.result
    state = "missing" if job is None else str(job.state)
    return Failure(job=job_id, state=state, error=None if job is None else job.error).encode()


class Advancer:
    def __init__(self, ops: JobOps, events: EventPublisher,
                 spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.store = WorkflowStore(ops, emit=events.emit)
        self.ops = ops
        self._spawn = spawn
        self.advanced = 0
        self._gate = asyncio.Semaphore(CONCURRENT)
        self._pending: dict[str, list[tuple[int, JobState, str | None]]] = {}
        self._draining: set[str] = set()
        self._reading: dict[str, asyncio.Future[WorkflowRecord]] = {}
        events.bus.subscribe(self.on_event)

    def on_event(self, ev: Event) -> None:
        """A job's lifecycle event (the executor's, after its write is committed)."""
        state = _ENDED.get(ev.kind)
        if state is None or ev.job_id is None or ev.message is not None or "." not in ev.job_id:
            return  # events with a message are announcements by other paths (starting a node, a cancel)
        node = split_job_id(ev.job_id)
        if node is None:
            return
        wf, i = node
        self._pending.setdefault(wf, []).append((i, state, ev.error))
        if wf not in self._draining:
            self._draining.add(wf)
            self._spawn(self._drain(wf))

    async def _drain(self, wf: str) -> None:
        """Advance what ended of ``wf``, a batch at a time: nodes that end while a batch is being
        advanced go together in the next (their shared fan-in records are written once)."""
        try:
            while True:
                await asyncio.sleep(0)  # the events of this loop turn join the batch
                batch = self._pending.pop(wf, [])
                if not batch:
                    return
                if len(batch) > MAX_BATCH:
                    self._pending[wf] = batch[MAX_BATCH:] + self._pending.get(wf, [])
                    batch = batch[:MAX_BATCH]
                # several workflows advance side by side, a few at a time
                async with self._gate:
                    await self._advance(wf, batch)
        finally:
            self._draining.discard(wf)

    async def _advance(self, wf: str, batch: list[tuple[int, JobState, str | None]]) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await self.store.advance_many(wf, batch)
                self.advanced += len(batch)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a timeout on a loaded server: again (advancing is idempotent)
                if attempt == ATTEMPTS:  # the leader's repair loop finishes it
                    log.error("workflow %s: advancing nodes %s failed (%s); the leader will repair them",
                              wf, ",".join(str(b[0]) for b in batch[:10]), exc)
                    return
                await asyncio.sleep(0.05 * attempt)

    async def call_args(self, record: JobRecord, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """``(args, kwargs)`` with the parents' results in the node's slot (workflows.py has the rules),
        once the node's workflow allows it to run at all.

        A node's signed spec proves who submitted it, not that its turn has come: its spec and
        auth sit in the workflows bucket and a worker credential can create its job. So, on the
        read this makes anyway for the parents' results: every parent must have ended as the
        node's rule asks (completed; any end for a chord callback / ``run_on_failure``), else
        ``NodeRefused`` (discarded, DLQ); a cancelled or failed-fast workflow cancels the node
        (``Cancel``), as the leader would."""
        ann = record.spec.annotations
        node = split_job_id(record.id)
        if node is None or ann.get(WF_KEY) != node[0]:
            raise NodeRefused(f"refused: job {record.id}: its workflow annotation does not match its id")
        wf, i = node

        async def parents() -> tuple[NodeDef, dict[int, JobRecord]]:
            nodes = (await self.store.shape(wf)).defn.nodes
            if i >= len(nodes):
                raise NodeRefused(f"refused: workflow {wf} has no node {i}")
            nd = nodes[i]
            signed = ann.get(AFTER_KEY)
            if signed is not None and signed != after_digest(nd.parents, nd.run_on_failure):
                raise NodeRefused(f"refused: workflow {wf}: the definition of node {i} differs from what was signed")
            return nd, (await self.store.jobs(wf, nd.parents) if nd.parents else {})

        try:  # the workflow record alongside the parents: no added wait
            (nd, jobs), rec = await asyncio.gather(parents(), self._record(wf))
        except WorkflowNotFoundError:
            raise NodeRefused(f"refused: workflow node {record.id} of a workflow that does not exist") from None
        stop = stop_reason(rec, i)
        if stop is not None:
            raise Cancel(stop)
        for p in nd.parents:
            job = jobs.get(p)
            if job is None or job.state not in TERMINAL:
                raise NodeRefused("refused: workflow node started before its parents finished "
                                  f"(node {p} is {'missing' if job is None else job.state})")
            if job.state is not JobState.COMPLETED and not nd.run_on_failure:
                raise NodeRefused("refused: workflow node started though a node it depends on did not complete "
                                  f"(node {p} is {job.state})")
        slot, mode = ann.get(SLOT_KEY), ann.get(MODE_KEY)
        if slot is None or not mode:
            return args, kwargs
        values = [result_or_failure(jobs.get(p), node_job_id(wf, p)) for p in nd.parents]
        value = values[0] if mode == "one" else values
        if isinstance(args, list) and slot.isdigit():
            out = list(args)
            out[int(slot)] = value
            return out, kwargs
        return args, {**kwargs, slot: value}

    async def _record(self, wf: str) -> WorkflowRecord:
        """The workflow record; nodes of one workflow starting together share one read in flight."""
        fut = self._reading.get(wf)
        if fut is None:
            fut = self._reading[wf] = asyncio.ensure_future(self.store.record(wf))
            fut.add_done_callback(lambda _f: self._reading.pop(wf, None))
        return await asyncio.shield(fut)


def stop_reason(rec: WorkflowRecord, i: int) -> str | None:
    """Why node ``i`` may not run in its workflow's present state (cancelled; failed fast, unless
    it is one of the failed nodes being retried), else None."""
    if rec.state is WorkflowState.CANCELLED or (
            rec.state is WorkflowState.FAILED and rec.policy == "fail_fast" and i not in rec.failed):
        return f"{WORKFLOW_REASON} workflow {rec.state}" + (f" ({rec.reason})" if rec.reason else "")
    return None
