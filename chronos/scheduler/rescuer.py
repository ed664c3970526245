"""Rescuer: returns jobs whose worker went silent to retryable, or discards them. Leader only.

Every ``tick`` it reads the running records and the worker heartbeats (workers
KV bucket). A running job is lost when its worker's heartbeat is missing or
older than ``rescue_after`` and the record itself has not moved for that long.
A lost job with attempts left becomes ``retryable`` with ``gen + 1`` and a
fresh work message (the old message, if it is ever redelivered, is stale by
its gen and acked away); one whose attempts are spent becomes ``discarded``
with a DLQ entry. Both are compare-and-set writes: if the worker wrote
meanwhile, the rescuer leaves the job alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec

from .. import codec
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ChronosError, ConflictError
from ..jobs import JobOps, job_event
from ..models import DLQEntry, Event, JobRecord, WorkerHeartbeat
from ..states import JobState, transition
from ..store.kv import KVStore
from ._scan import paced_passes, scan_entries

log = logging.getLogger(__name__)

LOST = "worker lost: no heartbeat"


class Rescuer:
    def __init__(
        self,
        ops: JobOps,
        *,
        clock: Clock = SYSTEM_CLOCK,
        tick: float = 5.0,
        is_leader: Callable[[], bool] = lambda: True,
        rescue_after: float | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.ops = ops
        self.clock = clock
        self.tick = tick
        self.is_leader = is_leader
        self.rescue_after = ops.conn.settings.scheduler.rescue_after if rescue_after is None else rescue_after
        self.rescued: list[tuple[str, str]] = []  # (job id, new state)
        self.rescued_event = asyncio.Event()
        self.on_event = on_event  # the rescue's outcome as an event (the archive learns of discards from it)

    async def run(self) -> None:
        await paced_passes("rescuer", self.step, self.clock, self.tick)

    async def _heartbeats(self) -> dict[str, float]:
        conn = self.ops.conn
        store = KVStore(await conn.kv(conn.names.workers_bucket), conn.publisher, conn.names.workers_bucket)
        out: dict[str, float] = {}
        for e in await store.entries():
            try:
                hb = codec.decode(e.value or b"", WorkerHeartbeat)
            except ChronosError:
                continue
            out[hb.id] = hb.heartbeat_at
        return out

    async def step(self) -> int:
        """One pass; returns how many jobs it rescued."""
        now = self.clock.now()
        beats = await self._heartbeats()
        n = 0
        lost: list[JobRecord] = []
        # Streamed in batches: the bucket may hold a million parked jobs (see _scan.py).
        async for entries in scan_entries(self.ops.conn, self.ops.names.jobs_bucket):
            for e in entries:
                try:
                    rec = codec.decode(e.value or b"", JobRecord)
                except ChronosError:
                    continue
                if rec.state is not JobState.RUNNING or now - rec.updated_at <= self.rescue_after:
                    continue
                beat = beats.get(rec.worker or "")
                if beat is not None and now - beat <= self.rescue_after:
                    continue
                rec.revision = e.revision
                lost.append(rec)
        for rec in lost:
            if not self.is_leader():
                return n
            try:
                await self.rescue(rec, now)
                n += 1
            except ConflictError:
                continue  # the worker (or an operator) wrote meanwhile: not lost after all
        return n

    async def rescue(self, rec: JobRecord, now: float) -> JobRecord:
        attempts = list(rec.attempts)
        if attempts and attempts[-1].ended_at is None:
            attempts[-1] = msgspec.structs.replace(attempts[-1], ended_at=now, outcome="lost", error=LOST)
        if rec.attempt >= rec.spec.max_attempts:
            reason = f"attempts exhausted ({rec.attempt}/{rec.spec.max_attempts}): {LOST}"
            new = transition(rec, JobState.DISCARDED, now, attempts=attempts, error=reason, worker=None)
            new = await self.ops.write(new, rec.revision)
            await self.ops.publish_dlq(
                DLQEntry(reason=reason, at=now, job_id=rec.id, spec=rec.spec, attempts=rec.attempt),
                rec.spec.queue,
            )
        else:
            new = transition(rec, JobState.RETRYABLE, now, attempts=attempts, error=LOST, worker=None,
                             gen=rec.gen + 1)
            new = await self.ops.write(new, rec.revision)
            await self.ops.publish_work(new, new.revision)
        log.warning("rescuer: job %s lost with worker %s -> %s", rec.id, rec.worker, new.state)
        if self.on_event is not None:
            self.on_event(job_event(new, error=new.error))
        self.rescued.append((rec.id, str(new.state)))
        self.rescued_event.set()
        self.rescued_event.clear()
        return new
