"""Rescuer: returns jobs whose worker went silent to retryable, or discards them. Leader only.

Every ``tick`` it reads the running records and the worker heartbeats (workers
KV bucket). A running job is lost when its worker's heartbeat is missing or
older than ``rescue_after`` and the record itself has not moved for that long.
A lost job with attempts left becomes ``retryable`` with ``gen + 1`` and a
fresh work message (the old message, if it is ever redelivered, is stale by
its gen and acked away); one whose attempts are spent becomes ``discarded``
with a DLQ entry. Both are compare-and-set writes: if the worker wrote
meanwhile, the rescuer leaves the job alone.

It also repairs missing work messages (``repair``). Every writer that writes a
record and then its work message (submit, retry, run-now, this rescuer) first
stores a pending marker naming the jobs (control bucket, ``pending.<writer>.<slot>``)
and deletes it once the messages are acknowledged. A marker older than
``rescue_after`` means the writer died or failed in between; for each job it
names whose record is still as the writer left it (same gen and attempt, not
started), the rescuer publishes its work message again under the same message
id (``j:<id>:<gen>``: the server drops it if the first one went out, inside the
jobs stream's duplicate window; past the window it writes ``gen + 1`` first, so
a first message still waiting is stale), re-parks a scheduled job, and deletes
the marker. So a record
without its message lives at most ``rescue_after`` + one pass (``tick``, longer
while a pass over a big bucket rests) while a scheduler leads. Only markers are
read, never the whole bucket.

Nothing is republished unless its signature verifies (signing.py): a record a
worker credential forged is discarded with the reason, never handed to a worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from .. import codec
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ChronosError, ConflictError
from ..delayed import park
from ..jobs import PENDING_PREFIX, JobOps, decode_marker, job_event
from ..models import DLQEntry, Event, JobRecord, PendingWrite, WorkerHeartbeat
from ..outcomes import Outcome
from ..states import JobState, transition
from ..store.kv import KVStore
from ..subjects import PRIORITY_RANK, is_valid_token
from ._scan import paced_passes, scan_entries

log = logging.getLogger(__name__)

LOST = "worker lost: no heartbeat"
_REPAIR_AT_ONCE = 128  # jobs of one pending marker repaired concurrently


def _routing_problem(rec: JobRecord) -> str | None:
    """Why no work message can carry this record (a queue or priority written before submit checked
    them, or forged), else None. Publishing it anyway makes the server close the connection, so a
    repair of it would end every pass of the leader's loops."""
    if rec.spec.priority in PRIORITY_RANK and is_valid_token(rec.spec.queue):
        return None
    return f"queue {rec.spec.queue!r} or priority {rec.spec.priority!r} cannot name a work subject"


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
        index: Any = None,
    ) -> None:
        self.ops = ops
        # This node's job index (readmodel.JobIndex): once caught up, a pass reads only the
        # records the index says are running, so its cost follows running jobs, not all jobs.
        self.index = index
        self.scanned = 0  # records read by the last pass (for tests and benchmarks)
        self.passes = 0  # passes done, and the wall time of the latest ones (for `chronos bench scale`)
        self.pass_seconds: deque[float] = deque(maxlen=100)
        self.clock = clock
        self.tick = tick
        self.is_leader = is_leader
        self.rescue_after = ops.conn.settings.scheduler.rescue_after if rescue_after is None else rescue_after
        self.rescued: list[tuple[str, str]] = []  # (job id, new state)
        self.repaired: list[str] = []  # job ids whose missing work message was republished
        self.refused: list[str] = []  # job ids refused: their spec's signature does not verify
        self.rescued_event = asyncio.Event()
        self.on_event = on_event  # the rescue's outcome as an event (the archive learns of discards from it)

    async def run(self) -> None:
        await paced_passes("rescuer", self._timed_step, self.clock, self.tick)

    async def _timed_step(self) -> int:
        began = self.clock.monotonic()
        try:
            return await self.step()
        finally:
            self.passes += 1
            self.pass_seconds.append(self.clock.monotonic() - began)

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

        def consider(rec: JobRecord) -> None:
            if rec.state is not JobState.RUNNING or now - rec.updated_at <= self.rescue_after:
                return
            beat = beats.get(rec.worker or "")
            if beat is not None and now - beat <= self.rescue_after:
                return
            lost.append(rec)

        self.scanned = 0
        if self.index is None:
            # No index (a rescuer built by hand): the bucket, streamed in batches (see _scan.py).
            async for entries in scan_entries(self.ops.conn, self.ops.names.jobs_bucket):
                for e in entries:
                    self.scanned += 1
                    try:
                        rec = codec.decode(e.value or b"", JobRecord)
                    except ChronosError:
                        continue
                    rec.revision = e.revision
                    consider(rec)
        elif self.index.caught_up.is_set():
            after: str | None = None
            while True:
                # Only records the index saw unchanged for rescue_after: a job written since (started
                # or reporting progress lately) is not lost, and its read cost most of a pass (74 ms
                # per 1,000 running jobs). A later version the index has not seen yet only ever makes
                # a job younger; a writer's clock behind the index's row delays its rescue by a pass.
                ids = await self.index.ids_in_state(JobState.RUNNING.value, limit=1000, after=after,
                                                    updated_before=now - self.rescue_after)
                # The KV decides, the index points; the reads of one batch go out together.
                for rec in await asyncio.gather(*(self.ops.read_or_none(i) for i in ids)):
                    self.scanned += 1
                    if rec is not None:
                        consider(rec)
                if len(ids) < 1000:
                    break
                after = ids[-1]
        # else: the index is still reading the bucket (a new node: a million records take a minute
        # or two). Scanning the bucket meanwhile read every record once more and then rested 4x as
        # long (minutes without a pass); the pending markers are still repaired below.
        for rec in lost:
            if not self.is_leader():
                return n
            try:
                await self.rescue(rec, now)
                n += 1
            except ConflictError:
                continue  # the worker (or an operator) wrote meanwhile: not lost after all
        return n + await self.repair()

    # --- missing work messages ----------------------------------------------------------------
    async def repair(self) -> int:
        """One pass over the pending markers older than ``rescue_after``; returns jobs republished."""
        now = self.clock.now()
        conn = self.ops.conn
        due = []
        async for entries in scan_entries(conn, conn.names.control_bucket, keys=PENDING_PREFIX + ">"):
            for e in entries:
                marker = decode_marker(e.value or b"")
                if marker is None or now - marker.at > self.rescue_after:
                    due.append((e.key, e.revision, marker))
        n = 0
        control = await self.ops.control()
        for key, rev, marker in due:
            if not self.is_leader():
                break
            # A marker's jobs are repaired together (a read and a publish each, in flight at once):
            # a bulk submit cut short leaves whole chunks of 500 in atomic batches (clientapi/batched.py),
            # and one round trip after another took a loaded leader tens of seconds per marker.
            jobs = marker.jobs if marker is not None else []
            for start in range(0, len(jobs), _REPAIR_AT_ONCE):
                results = await asyncio.gather(*(self._repair_job(job, now, marker.at)  # type: ignore[union-attr]
                                                 for job in jobs[start:start + _REPAIR_AT_ONCE]),
                                               return_exceptions=True)
                for result in results:
                    if isinstance(result, ConflictError):
                        continue  # it moved meanwhile: someone took care of it
                    if isinstance(result, BaseException):
                        raise result
                    n += result
            try:
                await control.delete(key, revision=rev)
            except ConflictError:
                pass  # its writer finished (or reused the slot) meanwhile
        return n

    async def _repair_job(self, job: PendingWrite, now: float, marked_at: float) -> int:
        rec = await self.ops.read_or_none(job.id)
        if rec is None or rec.gen != job.gen or rec.attempt != job.attempt:
            return 0  # never written, or it moved on: its message went out
        if rec.state not in (JobState.AVAILABLE, JobState.RETRYABLE, JobState.SCHEDULED):
            return 0
        refusal = self.ops.auth.check(rec) or _routing_problem(rec)
        if refusal is not None:
            await self.refuse(rec, refusal, now)
            return 0
        if rec.state is JobState.SCHEDULED:
            # Re-park (the park message id dedupes; a second parked copy is promoted once anyway,
            # by compare-and-set on (id, gen)).
            await park(self.ops.conn, rec, rec.revision)
            log.warning("repair: job %s was scheduled but not parked; parked it again", rec.id)
            self.repaired.append(rec.id)
            return 1
        if rec.spec.unique_key is not None and rec.gen <= 1:  # later generations go as j:<id>:<gen> (jobs.py)
            return await self._repair_unique(rec)
        if now - marked_at < self.ops.conn.settings.jobs.duplicate_window - self.rescue_after:
            # Inside the duplicate window of the first publish: the same message again, with the
            # same id (j:<id>:<gen>). If the first one went out, the server drops this one.
            ack = await self.ops.publish_work(rec, rec.revision)
            if ack.duplicate:
                return 0
            log.warning("repair: job %s had no work message after %.0fs; published it", rec.id, self.rescue_after)
            self.repaired.append(rec.id)
            return 1
        # Past the window (no leader for that long): a new generation. A first message that did
        # go out and still waits is stale by its gen (a worker that takes it on its fast path
        # within the same instant may still run it: see docs/runbook.md). Not a state change,
        # so no transition(): the same state, one generation on.
        new = msgspec.structs.replace(rec, gen=rec.gen + 1, updated_at=now)
        new = await self.ops.write(new, rec.revision)
        await self.ops.publish_work(new, new.revision)
        log.warning("repair: job %s had no work message after %.0fs; republished as generation %d",
                    rec.id, self.rescue_after, new.gen)
        self.repaired.append(rec.id)
        return 1

    async def _repair_unique(self, rec: JobRecord) -> int:
        """A unique job's message id is its key (``u:<key>``), whatever its gen: publish the same
        generation again; a duplicate means a message for the key went out (this job's, or the
        job that holds the key, and then this record is a loser of the race: removed)."""
        from ..ids import key_digest

        ack = await self.ops.publish_work(rec, rec.revision)
        control = await self.ops.control()
        index = self.ops.names.unique_key(key_digest(rec.spec.unique_key or ""))
        holder = await control.get(index)
        holder_id = holder.value.decode() if holder is not None and holder.value else None
        if ack.duplicate and holder_id not in (None, rec.id):
            await (await self.ops.store()).delete(rec.id, revision=rec.revision)
            return 0
        if holder_id is None:
            await control.put(index, rec.id.encode())
        if not ack.duplicate:
            self.repaired.append(rec.id)
            return 1
        return 0

    async def refuse(self, rec: JobRecord, reason: str, now: float) -> None:
        """A record whose spec no trusted key signed, or that no work subject can carry: discarded
        with the reason, never republished."""
        if rec.state is JobState.SCHEDULED:
            new = transition(rec, JobState.CANCELLED, now, error=reason, worker=None)
        else:
            new = transition(rec, JobState.DISCARDED, now, error=reason, worker=None)
        await self.ops.write(new, rec.revision)
        log.error("job %s (%s on queue %s) %s; not republished", rec.id, rec.spec.task, rec.spec.queue, reason)
        self.refused.append(rec.id)
        if self.on_event is not None:
            self.on_event(job_event(new, error=reason))

    async def rescue(self, rec: JobRecord, now: float) -> JobRecord:
        refusal = self.ops.auth.check(rec) or _routing_problem(rec)
        if refusal is not None:
            await self.refuse(rec, refusal, now)
            return rec
        attempts = list(rec.attempts)
        if attempts and attempts[-1].ended_at is None:
            attempts[-1] = msgspec.structs.replace(attempts[-1], ended_at=now, outcome=Outcome.LOST, error=LOST)
        if rec.attempt >= rec.spec.max_attempts:
            reason = f"attempts exhausted ({rec.attempt}/{rec.spec.max_attempts}): {LOST}"
            new = transition(rec, JobState.DISCARDED, now, attempts=attempts, error=reason, worker=None)
            new = await self.ops.write(new, rec.revision)
            await self.ops.publish_dlq(
                DLQEntry(reason=reason, at=now, job_id=rec.id, spec=rec.spec, attempts=rec.attempt, auth=rec.auth),
                rec.spec.queue,
            )
        else:
            new = transition(rec, JobState.RETRYABLE, now, attempts=attempts, error=LOST, worker=None,
                             gen=rec.gen + 1)
            # Under a pending marker: a leader that dies between the write and the publish leaves
            # a marker the next leader's repair() acts on.
            key, marked = await self.ops.mark_pending([PendingWrite(new.id, new.gen, new.attempt)], "rescue")
            marker_rev = (await self.ops.publisher.wait(marked)).seq
            try:
                new = await self.ops.write(new, rec.revision)
            except ConflictError:
                await self.ops.publisher.wait(await self.ops.unmark(key, marker_rev))
                raise
            await self.ops.publish_work(new, new.revision)
            await self.ops.publisher.wait(await self.ops.unmark(key, marker_rev))
        log.warning("rescuer: job %s lost with worker %s -> %s", rec.id, rec.worker, new.state)
        if self.on_event is not None:
            self.on_event(job_event(new, error=new.error))
        self.rescued.append((rec.id, str(new.state)))
        self.rescued_event.set()
        self.rescued_event.clear()
        return new
