"""Pruner: deletes finished job records from the jobs KV once archived. Leader only.

Every ``tick`` it asks this node's job index (readmodel.py) for the rows that
finished more than ``scheduler.retention`` ago (an index range, oldest first)
and reads only those records from the KV, so a pass costs what expires, not
what the bucket holds: an idle leader with a million finished jobs reads
nothing. (Until the index has caught up, e.g. when called by hand on an archive
without one, it streams the whole bucket instead, see ``_scan.py``.) For each
batch of expired records:

1. the records go into this node's archive (an upsert in one transaction; most
   are there already from the events, but events are a best-effort view, so a
   record whose event was lost is archived from the KV copy in hand);
2. the archive is asked which of them it now holds at that version or newer;
3. only those are deleted, each guarded by the revision it was read at, so a
   job retried by hand meanwhile (its record moved) is left alone; the key's
   delete marker is then deleted by its sequence, so no marker piles up and
   the id can be created again (DLQ replay of a pruned job).

Other nodes' archives may still be catching up on events when a record goes;
they then keep the partial record their event describes (scheduler/archiver.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import nats.js.errors

from .. import codec
from .archiver import Archiver
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ChronosError, ConflictError
from ..jobs import JobOps
from ..models import JobRecord
from ..publisher import is_wrong_last_sequence
from ..states import TERMINAL
from ..store.base import Entry
from ._scan import paced_passes, scan_entries

log = logging.getLogger(__name__)

_MARKER_TTL = 60  # seconds a delete marker can outlive its delete (see _delete)


class Pruner:
    def __init__(
        self,
        ops: JobOps,
        archiver: Archiver,
        *,
        clock: Clock = SYSTEM_CLOCK,
        tick: float = 60.0,
        retention: float | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        keep: Callable[[str], bool] | None = None,
    ) -> None:
        self.ops = ops
        self.archiver = archiver
        self.clock = clock
        self.tick = tick
        self.retention = ops.conn.settings.scheduler.retention if retention is None else retention
        self.is_leader = is_leader
        # Ids kept past the retention: nodes of a workflow whose record still exists (scheduler/workflows.py).
        self.keep = keep or (lambda _id: False)
        self.pruned = 0
        self.pruned_event = asyncio.Event()  # pulsed after each step that deleted something

    async def run(self) -> None:
        await self.archiver.ready.wait()
        await self.archiver.index.caught_up.wait()
        await paced_passes("pruner", self.step, self.clock, self.tick)

    async def step(self) -> int:
        """One pass; returns how many records it deleted."""
        cutoff = self.clock.now() - self.retention
        n = 0
        async for old in self._expired(cutoff):
            if not old:
                continue
            await self.archiver.db.add(old)
            held = await self.archiver.db.has([(r.id, r.updated_at) for r in old])
            deleted = []
            for rec in old:
                if rec.id not in held:
                    continue
                if not self.is_leader():
                    return n
                try:
                    await self._delete(rec)
                except ConflictError:
                    continue  # moved since we read it (retried by hand): not ours to delete
                deleted.append(rec.id)
            n += len(deleted)
            if self._indexed():
                await self.archiver.index.forget(deleted)  # its delete marker is gone already
        if n:
            log.info("pruner: deleted %d archived job record(s) finished before the %gs retention", n,
                     self.retention)
            self.pruned += n
            self.pruned_event.set()
            self.pruned_event.clear()
        return n

    def _indexed(self) -> bool:
        return self.archiver.index.caught_up.is_set()

    async def _expired(self, cutoff: float) -> AsyncIterator[list[JobRecord]]:
        """Batches of terminal records finished before ``cutoff``, read from the KV."""
        if not self._indexed():
            async for entries in scan_entries(self.ops.conn, self.ops.names.jobs_bucket):
                yield [r for r in map(_decode, entries) if r is not None and _expired(r, cutoff)
                       and not self.keep(r.id)]
            return
        index = self.archiver.index
        mark: tuple[float, str] | None = None
        while True:
            rows = await index.expired(cutoff, mark, limit=256)
            if not rows:
                return
            mark = (rows[-1][1], rows[-1][0])
            rows = [row for row in rows if not self.keep(row[0])]
            found = await asyncio.gather(*(self.ops.read_or_none(i) for i, _ in rows))
            await index.forget([i for (i, _), rec in zip(rows, found) if rec is None])
            # The KV's copy decides: a job retried since the index saw it is not expired.
            yield [r for r in found if r is not None and _expired(r, cutoff)]

    async def _delete(self, rec: JobRecord) -> None:
        """Delete marker guarded by the revision, then delete that marker message.

        No marker is left behind: a million pruned jobs would otherwise leave a million
        markers in the bucket's stream, and a marker blocks creating the key again (DLQ replay
        of a pruned job re-creates its record). Deleting only our marker's sequence keeps
        anything written after it.
        """
        names = self.ops.names
        subject = names.kv_subject(names.jobs_bucket, rec.id)
        # The TTL is a backstop: a bucket made before chronos allowed message deletes refuses ours,
        # and the marker then expires by itself.
        headers = {"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(rec.revision),
                   "Nats-TTL": f"{_MARKER_TTL}s"}
        try:
            ack = await self.ops.publisher.request(subject, b"", headers)
        except Exception as exc:
            if is_wrong_last_sequence(exc):
                raise ConflictError(f"record {rec.id} changed since it was read") from None
            raise
        # Remove our marker by its sequence (history is 1, so it is the key's only message). One
        # message per request: the scheduler may not purge the bucket (chronos/permissions.py).
        try:
            await self.ops.conn.js.delete_msg(names.kv_stream(names.jobs_bucket), ack.seq)
        except nats.js.errors.NotFoundError:
            pass  # replaced meanwhile (a re-created record): that write removed our marker already
        except nats.js.errors.APIError as exc:
            log.debug("pruner: marker of %s stays until its TTL: %s", rec.id, exc)


def _decode(e: Entry) -> JobRecord | None:
    try:
        rec = codec.decode(e.value or b"", JobRecord)
    except ChronosError:
        return None
    rec.revision = e.revision
    return rec


def _expired(rec: JobRecord, cutoff: float) -> bool:
    finished = rec.finished_at if rec.finished_at is not None else rec.updated_at
    return rec.state in TERMINAL and finished < cutoff
