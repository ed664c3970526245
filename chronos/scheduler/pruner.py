"""Pruner: deletes finished job records from the jobs KV once archived. Leader only.

Every ``tick`` it streams the jobs bucket (bounded memory, see ``_scan.py``)
and picks terminal records (completed, cancelled, discarded) that finished more
than ``scheduler.retention`` ago. For each batch:

1. the records go into this node's archive (an upsert in one transaction; most
   are there already from the events, but events are a best-effort view, so a
   record whose event was lost is archived from the KV copy in hand);
2. the archive is asked which of them it now holds at that version or newer;
3. only those are deleted, each guarded by the revision it was read at, so a
   job retried by hand meanwhile (its record moved) is left alone; the key's
   delete marker is then deleted by its sequence, so no marker piles up and
   the id can be created again (DLQ replay of a pruned job).

Other nodes' archives may still be catching up on events when a record goes;
they then keep the partial record their event describes (archive.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import nats.js.errors

from .. import codec
from ..archive import Archiver
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ChronosError, ConflictError
from ..jobs import JobOps
from ..models import JobRecord
from ..publisher import is_wrong_last_sequence
from ..states import TERMINAL
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
    ) -> None:
        self.ops = ops
        self.archiver = archiver
        self.clock = clock
        self.tick = tick
        self.retention = ops.conn.settings.scheduler.retention if retention is None else retention
        self.is_leader = is_leader
        self.pruned = 0
        self.pruned_event = asyncio.Event()  # pulsed after each step that deleted something

    async def run(self) -> None:
        await self.archiver.ready.wait()
        await paced_passes("pruner", self.step, self.clock, self.tick)

    async def step(self) -> int:
        """One pass over the bucket; returns how many records it deleted."""
        cutoff = self.clock.now() - self.retention
        n = 0
        async for entries in scan_entries(self.ops.conn, self.ops.names.jobs_bucket):
            old: list[JobRecord] = []
            for e in entries:
                try:
                    rec = codec.decode(e.value or b"", JobRecord)
                except ChronosError:
                    continue
                finished = rec.finished_at if rec.finished_at is not None else rec.updated_at
                if rec.state in TERMINAL and finished < cutoff:
                    rec.revision = e.revision
                    old.append(rec)
            if not old:
                continue
            await self.archiver.db.add(old)
            held = await self.archiver.db.has([(r.id, r.updated_at) for r in old])
            for rec in old:
                if rec.id not in held:
                    continue
                if not self.is_leader():
                    return n
                try:
                    await self._delete(rec)
                except ConflictError:
                    continue  # moved since we read it (retried by hand): not ours to delete
                n += 1
        if n:
            log.info("pruner: deleted %d archived job record(s) finished before the %gs retention", n,
                     self.retention)
            self.pruned += n
            self.pruned_event.set()
            self.pruned_event.clear()
        return n

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
