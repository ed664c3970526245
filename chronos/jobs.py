"""Job record operations shared by the Client, the worker and the scheduler.

Reads and compare-and-set writes of JobRecords, publishing work messages,
and moving a job to the DLQ. Every state change passes through
``states.transition`` before it is written here with the record's revision.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable

import msgspec

from . import codec
from .clock import SYSTEM_CLOCK, Clock
from .connection import Connection
from .errors import ConflictError, JobNotFoundError
from .models import DLQEntry, Event, JobMessage, JobRecord, JobSpec
from .publisher import AckCallback, PubAck, encode_headers
from .states import JobState, transition
from .store.kv import KVStore

log = logging.getLogger(__name__)


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

    # --- records --------------------------------------------------------------
    async def read(self, job_id: str) -> JobRecord:
        entry = await (await self.store()).get(job_id)
        if entry is None or entry.value is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        record = codec.decode(entry.value, JobRecord)
        record.revision = entry.revision
        return record

    async def read_or_none(self, job_id: str) -> JobRecord | None:
        try:
            return await self.read(job_id)
        except JobNotFoundError:
            return None

    async def create_nowait(self, record: JobRecord) -> Awaitable[int]:
        return await (await self.store()).create_nowait(record.id, codec.encode(record))

    async def write_nowait(self, record: JobRecord, revision: int) -> Awaitable[int]:
        """Compare-and-set ``record`` over ``revision``; the awaitable raises ConflictError if it moved."""
        store = self._store or await self.store()  # hot path: skip a coroutine once bound
        return await store.update_nowait(record.id, codec.encode(record), revision)

    def write_cb(self, record: JobRecord, revision: int, callback: AckCallback) -> bool:
        """Compare-and-set with its outcome passed to ``callback`` from the read loop; False, with
        nothing sent, when ``write_nowait`` must be used (store not bound yet, window full, offline)."""
        store = self._store
        return store is not None and store.update_cb(record.id, codec.encode(record), revision, callback)

    async def write(self, record: JobRecord, revision: int) -> JobRecord:
        rev = await (await self.write_nowait(record, revision))
        record.revision = rev
        return record

    async def move(self, record: JobRecord, to: JobState, **changes: Any) -> JobRecord:
        """transition() then compare-and-set at the revision ``record`` was read at."""
        new = transition(record, to, self.clock.now(), **changes)
        return await self.write(new, record.revision)

    async def move_with_retry(self, job_id: str, decide: Any, attempts: int = 5) -> JobRecord:
        """Read, let ``decide(record)`` return (state, changes) or None, write; re-read on conflict."""
        for _ in range(attempts):
            record = await self.read(job_id)
            decision = decide(record)
            if decision is None:
                return record
            to, changes = decision
            try:
                return await self.move(record, to, **changes)
            except ConflictError:
                continue
        raise ConflictError(f"job {job_id} kept changing; try again")

    # --- work messages ------------------------------------------------------------
    def work_message(self, record: JobRecord, revision: int,
                     encode: bool = True) -> tuple[str, bytes, dict[str, str] | None]:
        spec = record.spec
        headers = None
        if spec.unique_key is not None:
            headers = {"Nats-Msg-Id": f"u:{spec.unique_key}"}
        elif record.schedule_id is not None:
            headers = {"Nats-Msg-Id": f"j:{record.id}:{record.gen}"}
        data = codec.encode(JobMessage(record=record, rev=revision)) if encode else b""
        return self.names.job_subject(spec.priority, spec.queue), data, headers

    def work_frame(self, record: JobRecord, revision: int,
                   encoded_record: bytes | None = None) -> tuple[str, bytes, bytes | None]:
        """``work_message`` with the header block encoded; ``encoded_record`` (the bytes just written
        to the KV) is spliced in as is rather than encoded a second time."""
        subject, _, headers = self.work_message(record, revision, encode=False)
        if encoded_record is None:
            data = codec.encode(JobMessage(record=record, rev=revision))
        else:
            data = codec.encode(_JobMessageOut(record=msgspec.Raw(encoded_record), rev=revision))
        return subject, data, encode_headers(headers) if headers else None

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
        return await self.publisher.request(self.names.dlq_subject(queue), codec.encode(entry), headers)


class _JobMessageOut(msgspec.Struct, omit_defaults=True):
    """The wire form of ``JobMessage`` with the record already encoded (same field names)."""

    record: msgspec.Raw
    rev: int = 0
    v: int = 1


def new_record(job_id: str, spec: JobSpec, now: float, state: JobState, **extra: Any) -> JobRecord:
    return JobRecord(id=job_id, spec=spec, state=state, created_at=now, updated_at=now, **extra)
