"""Bulk submit in atomic batches: a chunk of jobs costs the server two fsyncs, not two per job.

Under ``sync_interval: always`` every stored message is an fsync (NATS-FACTS.md "Durability"),
which capped a pipelined bulk submit near 1,000 jobs/s. Here a chunk of up to ``CHUNK`` new jobs
goes as two atomic batches (``Publisher.publish_batch_cb``), each one fsync:

1. the pending marker naming the chunk's jobs, acknowledged first (as in the per-message path:
   a writer that dies after a record and before its work message leaves the marker, and the
   leader's rescuer republishes what is missing);
2. one batch of record creates on the jobs bucket, each with
   ``Nats-Expected-Last-Subject-Sequence: 0`` (create-if-absent is honoured inside a batch); the
   commit's PubAck gives the last sequence, and a batch's sequences are consecutive, so each
   record's revision is known without a read;
3. one batch of work messages (each with its ``Nats-Msg-Id``), carrying those revisions;
4. the marker's delete, once the work batch is acknowledged.

A batch is all or nothing. When the creates' batch fails (a create conflict fails all of it
with nothing stored), the chunk goes through the per-message path (``Submitter._submit_pipelined``
with ``batched=False``), so dedupe and compare-and-set give exactly the results they gave before.
When it got no answer, the chunk's last record decides: present with our bytes, the batch
landed (all of it); absent, nothing did. A failed work batch (a republish inside the duplicate
window fails a whole batch, error 10201) is re-sent one message at a time; ``Nats-Msg-Id`` makes
that safe whatever part of it landed. A stream made before batches were allowed (10174) turns
batching off for the rest of this process, one warning.

Chunks run ``IN_FLIGHT`` at a time: while one chunk's batches wait for their fsync, the next
one's are on the wire.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Sequence

from .. import codec
from ..jobs import job_event
from ..models import JobRecord, PendingWrite
from ..publisher import ATOMIC_DISABLED, MAX_BATCH, PubAck, PublishError
from ..states import JobState

log = logging.getLogger("chronos.client")

# Jobs per chunk: the server's cap. On a one-replica file stream every atomic batch is staged in
# a file store of its own, made and removed per batch (nats-server newBatchStore; 15-20 % of the
# server's CPU in `perf` under bench throughput), so fewer, larger batches cost less.
CHUNK = 1000
IN_FLIGHT = 4  # chunks in flight at once
MIN_CHUNK = 25  # the smallest chunk a bulk submit is cut into for progress steps
assert CHUNK <= MAX_BATCH

_no_atomic: set[str] = set()  # streams found without allow_atomic in this process


class _BatchFailed(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _batch(publisher: Any, items: Sequence[tuple[str, bytes, bytes | None]]) -> "asyncio.Future[PubAck]":
    """Send one atomic batch; a future for its commit PubAck (raises _BatchFailed if not sent)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[PubAck] = loop.create_future()

    def settled(ack: PubAck | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(ack)  # type: ignore[arg-type]

    if not publisher.publish_batch_cb(items, settled):
        fut.set_exception(_BatchFailed(RuntimeError("batch not sent (window full or disconnected)")))
    return fut


def _atomic_off(stream: str, exc: BaseException) -> None:
    if isinstance(exc, PublishError) and exc.err_code == ATOMIC_DISABLED and stream not in _no_atomic:
        _no_atomic.add(stream)
        log.warning("stream %s does not allow atomic batches (made before this version): bulk submit sends "
                    "one message at a time, an fsync each; run `chronos admin init` to allow them", stream)


async def submit_batched(sub: Any, records: list[JobRecord], progress: Callable[[int], None] | None,
                         encoded: list[bytes] | None) -> list[str]:
    """``Submitter._submit_pipelined`` for many jobs, in atomic batches (see the module doc)."""
    ops = sub.ops
    store = await ops.store()
    names = sub.names
    if store.batches.enabled is False or f"KV_{store.bucket}" in _no_atomic or names.jobs_stream in _no_atomic \
            or not getattr(sub.conn.publisher, "atomic", True):  # nats.atomic_batches off (or auto, lazy fsync)
        return await sub._submit_pipelined(records, progress, encoded=encoded, batched=False)
    publisher = sub.conn.publisher
    datas = encoded if encoded is not None else [codec.encode(r) for r in records]
    gate = asyncio.Semaphore(IN_FLIGHT)
    errors: list[BaseException] = []
    done = 0
    # A smaller submit still reports progress in about 16 steps (a CLI bar moves), at no less than
    # MIN_CHUNK jobs per batch; from 8,000 jobs on, every chunk is CHUNK.
    size = min(CHUNK, max(MIN_CHUNK, -(-len(records) // 16)))

    async def chunk(start: int) -> None:
        nonlocal done
        recs = records[start:start + size]
        data = datas[start:start + size]
        async with gate:
            try:
                await _chunk(sub, store, publisher, recs, data)
            except Exception as exc:
                errors.append(exc)
            done += len(recs)
            if progress is not None:
                progress(done)

    await asyncio.gather(*(chunk(i) for i in range(0, len(records), size)))
    if errors:
        raise errors[0]
    return [r.id for r in records]


async def _chunk(sub: Any, store: Any, publisher: Any, recs: list[JobRecord], data: list[bytes]) -> None:
    ops = sub.ops
    key, marked = await ops.mark_pending([PendingWrite(r.id, r.gen, r.attempt) for r in recs], "submit")
    marker_rev = (await publisher.wait(marked)).seq  # stored before any record it covers
    kv_stream = f"KV_{store.bucket}"
    try:
        revs = await _create_batch(store, publisher, recs, data)
    except _BatchFailed as failed:
        _atomic_off(kv_stream, failed.cause)
        # The per-message path, exactly as without batches (under its own marker); ours then goes.
        try:
            await sub._submit_pipelined(recs, encoded=data, batched=False)
        finally:
            (await ops.unmark(key, marker_rev)).add_done_callback(_quiet)
        return
    for rec in recs:
        sub.events.emit(job_event(rec))
    work = [(rec, rev, d) for rec, rev, d in zip(recs, revs, data) if rec.state is JobState.AVAILABLE]
    later = [(rec, rev) for rec, rev in zip(recs, revs) if rec.state is not JobState.AVAILABLE]
    failures: list[BaseException] = []
    if later:  # for later: parked in the delayed stream, one by one (the stager promotes them)
        results = await asyncio.gather(*(sub._park_scheduled(r, rev) for r, rev in later), return_exceptions=True)
        failures += [r for r in results if isinstance(r, BaseException)]
    if work:
        failures += await _work_batch(ops, publisher, sub.names.jobs_stream, work)
    if failures:
        raise failures[0]  # the marker stays: the leader republishes what is missing
    (await ops.unmark(key, marker_rev)).add_done_callback(_quiet)


async def _create_batch(store: Any, publisher: Any, recs: list[JobRecord], data: list[bytes]) -> list[int]:
    """The records' revisions, or _BatchFailed when nothing of the batch is stored."""
    cas0 = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 0\r\n\r\n"
    items = [(store.subject(r.id), d, cas0) for r, d in zip(recs, data)]
    n = len(items)
    try:
        ack = await _batch(publisher, items)
    except _BatchFailed:
        raise
    except PublishError as exc:
        raise _BatchFailed(exc) from None
    except Exception as exc:  # no answer: did it land? All or nothing, so the last record tells
        try:
            entry = await store.get(recs[-1].id)
        except Exception:
            raise _BatchFailed(exc) from None
        if entry is None or entry.value != data[-1]:
            raise _BatchFailed(exc) from None
        return list(range(entry.revision - n + 1, entry.revision + 1))
    return list(range(ack.seq - n + 1, ack.seq + 1))


async def _work_batch(ops: Any, publisher: Any, stream: str,
                      work: list[tuple[JobRecord, int, bytes]]) -> list[BaseException]:
    """Publish the work messages as one batch; one by one when it fails. Returns the failures."""
    if stream not in _no_atomic:
        items = [ops.work_frame(rec, rev, d) for rec, rev, d in work]
        try:
            await _batch(publisher, items)
            return []
        except _BatchFailed:
            pass
        except Exception as exc:  # a duplicate id (a republish), no answer, atomic off: one by one
            _atomic_off(stream, exc)
            log.debug("work batch failed (%s); publishing its %d messages one by one", exc, len(work))
    results = await asyncio.gather(*(ops.publish_work(rec, rev) for rec, rev, _ in work), return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException)]


def _quiet(fut: "asyncio.Future[PubAck]") -> None:
    """A marker's delete settled; a failure leaves the marker for the leader to look at."""
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("deleting a pending marker: %s", fut.exception())
