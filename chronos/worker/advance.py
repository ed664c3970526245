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

from ..errors import ChronosError
from ..events import EventPublisher
from ..jobs import JobOps
from ..models import Event, JobRecord
from ..states import JobState
from ..workflows import MODE_KEY, SLOT_KEY, WF_KEY, Failure, node_job_id, split_job_id
from ..workflowstore import WorkflowStore

log = logging.getLogger(__name__)

ATTEMPTS = 4
CONCURRENT = 32  # advances in flight per worker
_ENDED = {"completed": JobState.COMPLETED, "cancelled": JobState.CANCELLED, "discarded": JobState.DISCARDED}


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
        events.bus.subscribe(self.on_event)

    def on_event(self, ev: Event) -> None:
        """A job's lifecycle event (the executor's, after its write is committed)."""
        state = _ENDED.get(ev.kind)
        if state is None or ev.job_id is None or ev.message is not None or "." not in ev.job_id:
            return  # events with a message are announcements by other paths (starting a node, a cancel)
        node = split_job_id(ev.job_id)
        if node is not None:
            self._spawn(self._advance(node[0], node[1], state, ev.error))

    async def _advance(self, wf: str, i: int, state: JobState, error: str | None) -> None:
        # A burst of finished children (a group) would otherwise put every advance on the fan-in
        # records at once: a few at a time keeps the compare-and-set conflicts (re-reads) rare.
        async with self._gate:
            await self._advance_now(wf, i, state, error)

    async def _advance_now(self, wf: str, i: int, state: JobState, error: str | None) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await self.store.advance(wf, i, state, error)
                self.advanced += 1
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a timeout on a loaded server: again (advancing is idempotent)
                if attempt == ATTEMPTS:  # the leader's repair loop finishes it
                    log.error("workflow %s: advancing node %d failed (%s); the leader will repair it", wf, i, exc)
                    return
                await asyncio.sleep(0.05 * attempt)

    async def call_args(self, record: JobRecord, args: Any) -> Any:
        """``args`` with the parents' results in the node's slot (workflows.py has the rules)."""
        ann = record.spec.annotations
        slot, mode = ann.get(SLOT_KEY), ann.get(MODE_KEY)
        node = split_job_id(record.id)
        if slot is None or not mode or node is None or not isinstance(args, list):
            return args
        wf, i = node
        if ann.get(WF_KEY) != wf:
            raise ChronosError(f"job {record.id}: its workflow annotation does not match its id")
        parents = (await self.store.shape(wf)).defn.nodes[i].parents
        jobs = await self.store.jobs(wf, parents)
        values = [result_or_failure(jobs.get(p), node_job_id(wf, p)) for p in parents]
        out = list(args)
        out[int(slot)] = values[0] if mode == "one" else values
        return out
