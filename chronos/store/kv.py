"""JetStream KV implementation of Store: the authoritative job and schedule records.

Compare-and-set is a publish to ``$KV.<bucket>.<key>`` with
``Nats-Expected-Last-Subject-Sequence``; sending it through the pipelined
Publisher lets many run at once (13k/s gathered vs 30k/s pipelined, NATS-FACTS).

``update_cb`` (the worker's completed writes) gathers the writes of one event-loop turn
into one atomic batch: under ``sync_interval: always`` each stored message costs the server
an fsync, a batch about one (NATS-FACTS.md "Durability"). A batch is all or nothing, so
when it fails (one compare-and-set lost, the stream made before batches were allowed)
each write is sent again alone and its own outcome reaches its own callback, exactly as
if it had never been batched.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable

import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from ..errors import ConflictError
from ..publisher import (ATOMIC_DISABLED, MAX_BATCH, AckCallback, PublishError, PubAck, Publisher, cas_header,
                         is_wrong_last_sequence)
from .base import Entry

_DELETE_OPS = ("DEL", "PURGE")
log = logging.getLogger(__name__)


class KVStore:
    def __init__(self, kv: KeyValue, publisher: Publisher, bucket: str) -> None:
        self._kv = kv
        self._pub = publisher
        self._bucket = bucket
        self._prefix = f"$KV.{bucket}."
        self._js: JetStreamContext | None = None  # for ordered consumers; made on first use
        self._batcher = CasBatcher(publisher)

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            self._js = self._pub.nc.jetstream(timeout=10.0)
        return self._js

    @property
    def bucket(self) -> str:
        return self._bucket

    def subject(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> Entry | None:
        try:
            e = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if e.value is None and e.operation in _DELETE_OPS:
            return None
        return Entry(key, e.value or b"", e.revision or 0)

    async def put(self, key: str, value: bytes) -> int:
        ack = await self._pub.request(self.subject(key), value)
        return ack.seq

    async def put_nowait(self, key: str, value: bytes) -> Awaitable[int]:
        return self._rev_of(await self._pub.publish(self.subject(key), value), key)

    async def create(self, key: str, value: bytes) -> int:
        fut = await self.create_nowait(key, value)
        return await fut

    async def create_nowait(self, key: str, value: bytes) -> Awaitable[int]:
        """Create-if-absent. (A key deleted earlier cannot be re-created this way; job ids never repeat.)"""
        fut = await self._pub.publish(self.subject(key), value, hdr=cas_header(0))
        return self._rev_of(fut, key)

    def create_cb(self, key: str, value: bytes, callback: AckCallback) -> bool:
        """Create-if-absent with its outcome passed to ``callback`` (see ``update_cb``)."""
        return self._pub.publish_cb(self.subject(key), value, cas_header(0), callback)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        return await (await self.update_nowait(key, value, revision))

    async def update_nowait(self, key: str, value: bytes, revision: int) -> Awaitable[int]:
        fut = await self._pub.publish(self.subject(key), value, hdr=cas_header(revision))
        return self._rev_of(fut, key)

    def update_cb(self, key: str, value: bytes, revision: int, callback: AckCallback) -> bool:
        """Compare-and-set whose outcome reaches ``callback`` from the read loop (see
        ``Publisher.publish_cb``); False, nothing sent, when the caller must use ``update_nowait``.

        Gathered with the other writes of this loop turn into one atomic batch (``CasBatcher``)."""
        if len(value) + 64 > self._pub.nc.max_payload or self._pub.in_flight >= self._pub.window:
            return False  # the awaitable path raises PayloadTooLargeError or waits for room
        if not self._pub.atomic:  # nats.atomic_batches off: each write goes at once, as a plain publish
            return self._pub.publish_cb(self.subject(key), value, cas_header(revision), callback)
        self._batcher.add(self.subject(key), value, cas_header(revision), callback)
        return True

    @property
    def batches(self) -> "CasBatcher":
        return self._batcher

    async def _await_rev(self, fut: asyncio.Future, key: str) -> int:
        try:
            ack = await self._pub.wait(fut)
        except Exception as exc:
            if is_wrong_last_sequence(exc):
                raise ConflictError(f"record {key} changed since it was read") from None
            raise
        return ack.seq

    def _rev_of(self, fut: asyncio.Future, key: str) -> Awaitable[int]:
        return self._await_rev(fut, key)

    async def delete(self, key: str, revision: int | None = None) -> None:
        try:
            # A delete marker, never kv.purge: buckets refuse the rollup header purge needs.
            await self._kv.delete(key) if revision is None else await self._kv.delete(key, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ConflictError(f"record {key} changed since it was read") from None
        except nats.js.errors.APIError as exc:
            if is_wrong_last_sequence(exc):
                raise ConflictError(f"record {key} changed since it was read") from None
            raise

    async def entries(self, pattern: str = ">") -> list[Entry]:
        """Every current entry matching ``pattern``: one ordered consumer, last value per key.

        Not ``kv.keys()``/``kv.watch()``: nats-py decides "no more entries" from
        consumer info (num_pending 0, nothing *processed* yet), which races with a
        message already delivered but still in the callback queue, and returns an
        empty list for a non-empty bucket. Here "empty" needs the consumer to have
        delivered nothing at all, and otherwise we read until a message reports
        num_pending 0.
        """
        sub = await self._jetstream().subscribe(
            self._prefix + pattern, stream=f"KV_{self._bucket}", ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT, inactive_threshold=60.0,
        )
        out: dict[str, Entry] = {}
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                return []
            async for msg in sub.messages:
                meta = msg.metadata
                key = msg.subject[len(self._prefix):]
                op = (msg.headers or {}).get("KV-Operation")
                if op is None and msg.headers and "Nats-Marker-Reason" in msg.headers:
                    op = "PURGE"
                if op in _DELETE_OPS:
                    out.pop(key, None)
                else:
                    out[key] = Entry(key, msg.data, meta.sequence.stream)
                if meta.num_pending == 0:
                    break
        except nats.js.errors.NotFoundError:
            return []
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection already closed
                log.debug("entries unsubscribe: %s", exc)
        return [out[k] for k in sorted(out)]

    async def watch(self, pattern: str = ">", *, include_existing: bool = False) -> AsyncIterator[Entry]:
        """Changes to keys matching ``pattern`` (a key, or NATS wildcards like ``cancel.>``)."""
        policy = api.DeliverPolicy.LAST_PER_SUBJECT if include_existing else api.DeliverPolicy.NEW
        sub = await self._jetstream().subscribe(
            self._prefix + pattern, stream=f"KV_{self._bucket}", ordered_consumer=True,
            deliver_policy=policy, inactive_threshold=300.0,
        )
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            # nats-py's subscribe can swallow a cancel that lands inside its requests; without
            # this check the loop below would wait for messages forever (a stuck shutdown).
            await self._unsubscribe(sub)
            raise asyncio.CancelledError
        try:
            async for msg in sub.messages:
                op = (msg.headers or {}).get("KV-Operation")
                if op is None and msg.headers and "Nats-Marker-Reason" in msg.headers:
                    op = "PURGE"
                deleted = op in _DELETE_OPS
                yield Entry(msg.subject[len(self._prefix):], None if deleted else msg.data,
                            msg.metadata.sequence.stream)
        finally:
            await self._unsubscribe(sub)

    @staticmethod
    async def _unsubscribe(sub: object) -> None:
        try:
            await sub.unsubscribe()  # type: ignore[attr-defined]
        except Exception as exc:  # connection already closed
            log.debug("watch unsubscribe: %s", exc)


class CasBatcher:
    """Compare-and-set writes gathered into atomic batches (group commit); alone again on failure.

    ``add`` queues a write and, the first time in a turn, schedules ``flush`` with
    ``call_soon``: everything added before the loop comes round again goes in one batch. While
    ``MAX_IN_FLIGHT`` batches wait for their commit (under ``sync_interval: always``, for its
    fsync) the next writes wait too, so batches grow with the load instead of each costing the server a batch's
    fixed work for a handful of writes; a write alone with nothing in flight goes at once as a
    plain publish (a single job's latency). The commit's PubAck gives each write its revision
    (a batch's sequences are consecutive). A failed batch (one compare-and-set lost: error
    10071 for all, nothing stored) is re-sent one write at a time, so each callback hears its
    own write's fate, as without batching. A stream without ``allow_atomic`` (10174) switches
    batching off for this process.
    """

    # Batches awaiting their commit at once. Every atomic batch costs a one-replica file stream a
    # staging store of its own, made and removed (nats-server newBatchStore, 15-35 % of its CPU
    # in `perf`), so one at a time: what finishes meanwhile joins the next. That was slower while
    # a worker's slot stayed held until its commit (each batch waited out the one before); since a
    # job awaiting its commit frees its slot (WorkerService.completing), the worker runs on and
    # batches grow: 82 batches for 20,000 jobs against 128 with 4 in flight, 15 % less server CPU
    # per job (bench throughput under `always`, interleaved).
    MAX_IN_FLIGHT = 1

    def __init__(self, publisher: Publisher) -> None:
        self._pub = publisher
        self._queued: list[tuple[str, bytes, bytes, AckCallback]] = []
        self._scheduled = False
        self._in_flight = 0
        self.enabled = True
        self.batches = 0  # atomic batches committed
        self.fallbacks = 0  # batches that failed and were re-sent one write at a time

    def add(self, subject: str, value: bytes, hdr: bytes, callback: AckCallback) -> None:
        self._queued.append((subject, value, hdr, callback))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._queued:
            return
        if not self.enabled or not self._pub.atomic:  # off here, or nats.atomic_batches says so
            queued, self._queued = self._queued, []
            for item in queued:
                self._alone(item)
            return
        if self._in_flight >= self.MAX_IN_FLIGHT and len(self._queued) < MAX_BATCH:
            return  # joins the next batch, sent when the one in flight settles
        queued, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
        if self._queued and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        if len(queued) == 1 and self._in_flight == 0:
            self._alone(queued[0])
            return
        items = [(subject, value, hdr) for subject, value, hdr, _ in queued]
        if self._pub.publish_batch_cb(items, lambda ack, exc, part=queued: self._settled(part, ack, exc)):
            self._in_flight += 1
            return
        for item in queued:
            self._alone(item)

    def _settled(self, part: list[tuple[str, bytes, bytes, AckCallback]], ack: PubAck | None,
                 exc: BaseException | None) -> None:
        self._in_flight -= 1
        if self._queued and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        if exc is not None or ack is None:
            if isinstance(exc, PublishError) and exc.err_code == ATOMIC_DISABLED:
                if self.enabled:
                    log.warning("the jobs bucket does not allow atomic batches (made before this version): "
                                "each write costs its own fsync; run `chronos admin init` to allow them")
                self.enabled = False
            self.fallbacks += 1
            for item in part:
                self._alone(item)
            return
        self.batches += 1
        first = ack.seq - len(part) + 1
        for i, (_, _, _, callback) in enumerate(part):
            try:
                callback(PubAck(ack.stream, first + i), None)
            except Exception:  # one callback's bug must not keep the others from their outcome
                log.exception("compare-and-set callback failed")

    def _alone(self, item: tuple[str, bytes, bytes, AckCallback]) -> None:
        subject, value, hdr, callback = item
        if self._pub.publish_cb(subject, value, hdr, callback):
            return
        task = asyncio.get_running_loop().create_task(self._awaited(subject, value, hdr, callback))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _awaited(self, subject: str, value: bytes, hdr: bytes, callback: AckCallback) -> None:
        """The window is full or the connection down: wait for room or a reconnect, like ``update_nowait``."""
        try:
            ack = await self._pub.wait(await self._pub.publish(subject, value, hdr=hdr))
        except Exception as exc:
            callback(None, exc)
        else:
            callback(ack, None)


_background: set[asyncio.Task[None]] = set()  # strong references until done
