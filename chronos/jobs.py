"""Job record operations shared by the Client, the worker and the scheduler.

Reads and compare-and-set writes of JobRecords, publishing work messages,
and moving a job to the DLQ. Every state change passes through
``states.transition`` before it is written here with the record's revision.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any, Awaitable, Sequence

import msgspec

from . import cas, codec
from .clock import SYSTEM_CLOCK, Clock
from .connection import Connection
from .errors import ConflictError, JobNotFoundError
from .models import DLQEntry, Event, JobMessage, JobRecord, JobSpec, PendingMarker, PendingWrite
from .publisher import AckCallback, PubAck, encode_headers
from .recordfit import ENVELOPE_MARGIN, fit_dlq_entry, fit_record
from .signing import Authenticity, from_settings
from .states import JobState, transition
from .store.kv import KVStore

log = logging.getLogger(__name__)

# Markers are a control-bucket type of this module's own (codec.py knows the wire types of the
# streams); decoded here with one typed decoder like codec's.
_marker_decoder = msgspec.msgpack.Decoder(PendingMarker)
PENDING_PREFIX = "pending."


def decode_marker(data: bytes) -> PendingMarker | None:
    try:
        return _marker_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def job_event(record: JobRecord, kind: str | None = None, **extra: Any) -> Event:
    spec = record.spec
    return Event(
        kind=kind or str(record.state),
        at=record.updated_at,
        job_id=record.id,
        task=spec.task,
        queue=spec.queue,
        priority=spec.priority,
        attempt=record.attempt,
        worker=record.worker,
        **extra,
    )


class JobOps:
    def __init__(self, conn: Connection, clock: Clock = SYSTEM_CLOCK) -> None:
        self.conn = conn
        self.names = conn.names
        self.clock = clock
        self.publisher = conn.publisher
        self._store: KVStore | None = None
        self._control: KVStore | None = None
        self.auth: Authenticity = from_settings(conn.settings)
        # Marker keys are pending.<writer>.<slot>: a slot is reused once its marker is deleted, so
        # the control bucket holds at most one tombstone per slot, not one per job.
        self._writer = os.urandom(6).hex()
        self._free_slots: list[int] = []
        self._slots = itertools.count()

    async def store(self) -> KVStore:
        if self._store is None:
            kv = await self.conn.kv(self.names.jobs_bucket)
            self._store = KVStore(kv, self.publisher, self.names.jobs_bucket)
        return self._store

    async def control(self) -> KVStore:
        if self._control is None:
            kv = await self.conn.kv(self.names.control_bucket)
            self._control = KVStore(kv, self.publisher, self.names.control_bucket)
        return self._control

    # --- pending markers: no record outlives its missing work message (see rescuer.py) ---------
    async def mark_pending(self, jobs: Sequence[PendingWrite], by: str) -> tuple[str, asyncio.Future[PubAck]]:
        """Send a marker naming ``jobs`` (written before their records); await the future before
        writing them. Returns the marker key for ``unmark``."""
        slot = self._free_slots.pop() if self._free_slots else next(self._slots)
        key = f"{PENDING_PREFIX}{self._writer}.{slot}"
        data = codec.encode(PendingMarker(at=self.clock.now(), jobs=list(jobs), by=by))
        control = self._control or await self.control()
        return key, await self.publisher.publish(control.subject(key), data)

    async def unmark(self, key: str, revision: int) -> asyncio.Future[PubAck]:
        """Delete a marker (every message it covered is out), guarded by its revision."""
        control = self._control or await self.control()
        fut = await self.publisher.publish(
            control.subject(key), b"",
            {"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(revision)})
        slot = int(key.rsplit(".", 1)[1])
        if key.startswith(f"{PENDING_PREFIX}{self._writer}."):
            fut.add_done_callback(lambda f: None if f.cancelled() or f.exception() else self._free_slots.append(slot))
        return fut

    async def move_and_publish(self, job_id: str, decide: Any, by: str) -> JobRecord:
        """``move_with_retry`` whose result gets a fresh work message, under a pending marker:
        a writer that dies between the two writes leaves a marker the leader repairs from."""

        async def write(new: JobRecord, revision: int) -> JobRecord:
            key, marked = await self.mark_pending([PendingWrite(new.id, new.gen, new.attempt)], by)
            marker_rev = (await self.publisher.wait(marked)).seq
            try:
                new = await self.write(new, revision)
            except ConflictError:
                await self.publisher.wait(await self.unmark(key, marker_rev))
                raise
            await self.publish_work(new, new.revision)
            await self.publisher.wait(await self.unmark(key, marker_rev))
            return new

        return await cas.update(lambda: self.read_versioned(job_id), self._decider(decide), write,
                                what=f"job {job_id}")

    # --- records --------------------------------------------------------------
    async def read(self, job_id: str) -> JobRecord:
        entry = await (await self.store()).get(job_id)
        if entry is None or entry.value is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        record = codec.decode(entry.value, JobRecord)
        record.revision = entry.revision
        return record

    async def read_versioned(self, job_id: str) -> tuple[JobRecord, int]:
        """``read`` for ``cas.update``: the record and the revision it was read at."""
        record = await self.read(job_id)
        return record, record.revision

    async def read_or_none(self, job_id: str) -> JobRecord | None:
        try:
            return await self.read(job_id)
        except JobNotFoundError:
            return None

    async def create_nowait(self, record: JobRecord, *, sign: bool = True) -> Awaitable[int]:
        """Create-if-absent; an unsigned record is signed first when this process holds the key
        (cron fires and backfills come this way). ``sign=False`` for a spec that came from a
        place workers can write (a DLQ entry): it keeps the signature it had, or none."""
        if sign and record.auth is None:
            self.auth.sign_records([record])
        return await (await self.store()).create_nowait(record.id, codec.encode(record))

    def _limit(self) -> int:
        return (getattr(self.conn.nc, "max_payload", 0) or 1024 * 1024) - ENVELOPE_MARGIN

    def encode_fitted(self, record: JobRecord) -> bytes:
        """The record's bytes for a write; a record its runs grew past the server's message limit
        gives up tracebacks, old attempts and then its result to fit (chronos/recordfit.py)."""
        data = codec.encode(record)
        if len(data) > self._limit():
            _, data = fit_record(record, self._limit(), codec.encode)
            log.warning("job %s: its record grew past the server's message limit; older tracebacks, "
                        "attempts or the result were dropped from it (%d bytes now)", record.id, len(data))
        return data

    async def write_nowait(self, record: JobRecord, revision: int) -> Awaitable[int]:
        """Compare-and-set ``record`` over ``revision``; the awaitable raises ConflictError if it moved."""
        store = self._store or await self.store()  # hot path: skip a coroutine once bound
        return await store.update_nowait(record.id, self.encode_fitted(record), revision)

    def write_cb(self, record: JobRecord, revision: int, callback: AckCallback) -> bool:
        """Compare-and-set with its outcome passed to ``callback`` from the read loop; False, with
        nothing sent, when ``write_nowait`` must be used (store not bound yet, window full, offline)."""
        store = self._store
        return store is not None and store.update_cb(record.id, self.encode_fitted(record), revision, callback)

    async def write(self, record: JobRecord, revision: int) -> JobRecord:
        rev = await (await self.write_nowait(record, revision))
        record.revision = rev
        return record

    async def move(self, record: JobRecord, to: JobState, **changes: Any) -> JobRecord:
        """transition() then compare-and-set at the revision ``record`` was read at."""
        new = transition(record, to, self.clock.now(), **changes)
        return await self.write(new, record.revision)

    async def move_with_retry(self, job_id: str, decide: Any, attempts: int = cas.DEFAULT_ATTEMPTS) -> JobRecord:
        """Read, let ``decide(record)`` return (state, changes) or None, write; re-read on conflict."""
        return await cas.update(lambda: self.read_versioned(job_id), self._decider(decide), self.write,
                                attempts=attempts, what=f"job {job_id}")

    def _decider(self, decide: Any) -> Any:
        """(state, changes) or None -> the transitioned record to write, or Stop(record)."""

        def decision(record: JobRecord, revision: int) -> JobRecord | cas.Stop[JobRecord]:
            d = decide(record)
            if d is None:
                return cas.Stop(record)
            to, changes = d
            return transition(record, to, self.clock.now(), **changes)

        return decision

    # --- work messages ------------------------------------------------------------
    def work_message(self, record: JobRecord, revision: int,
                     encode: bool = True) -> tuple[str, bytes, dict[str, str] | None]:
        spec = record.spec
        headers = None
        if spec.unique_key is not None and record.gen <= 1:
            # The submit's message: its id is the key, so a second submit of the key inside the
            # duplicate window is dropped (the dedupe). Only the first generation: a later one
            # (a retry, a repair of a purged message) under the key would be dropped as well,
            # leaving the job available with no message.
            headers = {"Nats-Msg-Id": f"u:{spec.unique_key}"}
        else:
            # Every generation's message has its own id, so republishing one that may already
            # have gone out (the orphan repair, a second leader) is a no-op inside the stream's
            # duplicate window.
            headers = {"Nats-Msg-Id": f"j:{record.id}:{record.gen}"}
        data = codec.encode(JobMessage(record=record, rev=revision)) if encode else b""
        return self.names.job_subject(spec.priority, spec.queue), data, headers

    def work_frame(self, record: JobRecord, revision: int,
                   encoded_record: bytes | None = None) -> tuple[str, bytes, bytes | None]:
        """``work_message`` with the header block encoded; ``encoded_record`` (the bytes just written
        to the KV) is spliced in as is rather than encoded a second time."""
        spec = record.spec
        if spec.unique_key is None or record.gen > 1:  # the common case, without building and encoding a dict
            subject = self.names.job_subject(spec.priority, spec.queue)
            hdr: bytes | None = b"NATS/1.0\r\nNats-Msg-Id: j:%s:%d\r\n\r\n" % (record.id.encode(), record.gen)
        else:
            subject, _, headers = self.work_message(record, revision, encode=False)
            hdr = encode_headers(headers) if headers else None
        if encoded_record is None:
            data = codec.encode(JobMessage(record=record, rev=revision))
        else:
            data = codec.encode(_JobMessageOut(record=msgspec.Raw(encoded_record), rev=revision))
        return subject, data, hdr

    async def publish_work_nowait(self, record: JobRecord, revision: int) -> asyncio.Future[PubAck]:
        subject, data, headers = self.work_message(record, revision)
        return await self.publisher.publish(subject, data, headers)

    async def publish_work(self, record: JobRecord, revision: int) -> PubAck:
        return await self.publisher.wait(await self.publish_work_nowait(record, revision))

    # --- DLQ ------------------------------------------------------------------------
    async def publish_dlq(self, entry: DLQEntry, queue: str) -> PubAck:
        headers = {}
        if entry.job_id:
            headers["Chronos-Job-Id"] = entry.job_id
            # A worker that dies between the DLQ write and the ack retries it; dedupe the entry.
            headers["Nats-Msg-Id"] = f"dlq:{entry.job_id}:{entry.attempts}"
        data = fit_dlq_entry(entry, self._limit(), codec.encode)
        return await self.publisher.request(self.names.dlq_subject(queue), data, headers)


class _JobMessageOut(msgspec.Struct, omit_defaults=True):
    """The wire form of ``JobMessage`` with the record already encoded (same field names)."""

    record: msgspec.Raw
    rev: int = 0
    v: int = 1


def new_record(job_id: str, spec: JobSpec, now: float, state: JobState, **extra: Any) -> JobRecord:
    return JobRecord(id=job_id, spec=spec, state=state, created_at=now, updated_at=now, **extra)
