"""The archiver: on every scheduler node, leader or not, events -> its own SQLite archive.

::

    events stream --(durable consumer per archive file, terminal kinds only)--> Archiver
        completed / cancelled / discarded event
          -> read the job's final record from the jobs KV (one batch of reads at a time)
          -> upsert the batch into SQLite in one transaction -> commit -> ack the messages

It also answers history requests (``chronos/history.py`` asks) and the job index's listing
and count requests (``chronos/readmodel.py``) on ``<ns>.api.history``.

Why read the KV instead of carrying the record in the event: events are a lean, best-effort
view sent on the worker's hot path; the KV record is the truth and holds the attempts,
tracebacks and result. If the record is gone when the event is read (pruned by the leader
while this node lagged), the archive keeps a partial record built from the event (task,
queue, state, error, finish time), so no finished job silently disappears from history.

The durable consumer is named by a token kept in the archive file (``archive_node_key``), so
a restarted node resumes where it stopped; a new or deleted archive file starts its consumer
over from the start of the events stream (``streams.events_max_age``). Acks happen only after
the commit, so a crash replays at most one batch (upserts are idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from .. import codec
from ..archive import _REPLY_SLACK, TERMINAL_KINDS, ArchiveDB, HistoryQuery, HistoryReply, validate_query
from ..clock import SYSTEM_CLOCK, Clock
from ..connection import Connection
from ..errors import ChronosError
from ..events import decode_events
from ..jobs import JobOps
from ..models import JobRecord, JobSpec
from ..readmodel import (
    CountsQuery,
    CountsReply,
    JobIndex,
    JobsQuery,
    JobsReply,
    Op,
    NOT_READY,
)
from ..states import TERMINAL, JobState

log = logging.getLogger(__name__)


def partial_record(event: Any) -> JobRecord:
    """What an event alone says about a finished job whose record is gone from the KV."""
    spec = JobSpec(task=event.task or "?", queue=event.queue or "default", priority=event.priority or "default")
    return JobRecord(id=event.job_id, spec=spec, state=JobState(event.kind), created_at=event.at,
                     updated_at=event.at, finished_at=event.at, attempt=event.attempt, error=event.error,
                     worker=event.worker)


async def archive_node_key(db: "ArchiveDB") -> str:
    """The consumer-name token of one archive file, kept in the file itself.

    Not derived from the host name: where that changes on every restart (containers), each
    restart would look like a new archive, replay the whole events stream and leave an
    orphaned durable behind for a day. The token follows the file instead.
    """
    key = await db.get_meta("node_key")
    if not key:
        key = os.urandom(8).hex()
        await db.set_meta("node_key", key)
    return key


# --- the service -------------------------------------------------------------------------------------


def _raise_if_cancelling() -> None:
    # nats-py's fetch (a wait_for inside) can swallow a cancel on Python 3.11; stop anyway.
    me = asyncio.current_task()
    if me is not None and me.cancelling():
        raise asyncio.CancelledError


class Archiver:
    """Runs on every scheduler node: events -> SQLite, and answers history requests."""

    def __init__(
        self,
        conn: Connection,
        *,
        path: str | Path | None = None,
        clock: Clock = SYSTEM_CLOCK,
        batch: int = 256,
        fetch_wait: float = 1.0,
        node: str | None = None,
    ) -> None:
        self.conn = conn
        self.names = conn.names
        self.path = str(path if path is not None else conn.settings.scheduler.archive_path)
        self.clock = clock
        self.batch = batch
        self.fetch_wait = fetch_wait
        self.node = node or socket.gethostname()
        self.ops = JobOps(conn, clock)
        self.db = ArchiveDB(self.path, conn.names.ns)
        self.durable = ""  # set in run(): the file's own token (archive_node_key)
        self.ready = asyncio.Event()  # archive open, consumer bound, responder subscribed
        self.archived = 0  # rows written (full and partial)
        self.written = asyncio.Event()  # pulsed after each committed batch, for tests
        # The live jobs' index (listings and counts) lives in the same file: readmodel.py.
        self.index = JobIndex(conn, self.path)
        self.index_serving = asyncio.Event()  # caught up and answering listings
        self.retention = conn.settings.scheduler.archive_retention  # 0: keep finished jobs forever
        self.expired = 0  # rows removed by the archive retention

    async def run(self) -> None:
        subs: list[Any] = []
        try:
            # Opened inside the try: a cancel between the opens still closes what was opened.
            await self.db.open()
            self.durable = self.names.archive_consumer(await archive_node_key(self.db))
            await self.index.open()
            psub = await self._bind()
            # No queue group: every node answers and the client merges (see query_history).
            subs.append(await self.conn.nc.subscribe(self.names.history_api(), cb=self._on_request))
            self.ready.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.index.run(), name="archive-index")
                tg.create_task(self._serve_index(subs), name="archive-index-serve")
                if self.retention > 0:
                    tg.create_task(self._expire_loop(), name="archive-expire")
                await self._consume(psub)
        finally:
            try:
                for sub in subs:
                    try:
                        await sub.unsubscribe()
                    except nats.errors.Error as exc:
                        log.debug("archive responder unsubscribe: %s", exc)
            finally:
                try:
                    await self.index.close()
                finally:
                    await self.db.close()

    async def _serve_index(self, subs: list[Any]) -> None:
        """Answer listings and counts once the index has caught up (queue group: one node answers)."""
        await self.index.caught_up.wait()
        subs.append(await self.conn.nc.subscribe(self.names.history_api(), queue=f"{self.names.ns}_index",
                                                 cb=self._on_index_request))
        self.index_serving.set()
        log.info("job index caught up (%d rows); answering listings", await self.index.row_count())

    async def _expire_loop(self) -> None:
        """Archive retention: rows finished longer ago than ``scheduler.archive_retention`` go."""
        while True:
            try:
                n = await self.db.expire(self.clock.now() - self.retention)
                if n:
                    self.expired += n
                    log.info("archive: removed %d row(s) past the %gs archive retention", n, self.retention)
            except aiosqlite.Error as exc:
                log.warning("archive: retention pass failed: %r", exc)
            await asyncio.sleep(min(3600.0, max(1.0, self.retention / 10)))

    # --- consuming ---------------------------------------------------------------------------------
    def _consumer_config(self) -> api.ConsumerConfig:
        s = self.conn.settings.streams
        return api.ConsumerConfig(
            durable_name=self.durable,
            filter_subjects=[self.names.events_filter(kind) for kind in TERMINAL_KINDS],
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_ack_pending=4 * self.batch,
            deliver_policy=api.DeliverPolicy.ALL,
            # A node gone for longer than events are kept has lost them anyway; let its consumer go too.
            inactive_threshold=max(3600.0, s.events_max_age),
        )

    async def _bind(self) -> Any:
        js = self.conn.js
        stream = self.names.events_stream
        fresh = await self.db.get_meta("consumer") != self.durable
        if fresh:
            # A new (or replaced) archive file: its consumer starts over from the first stored event.
            try:
                await js.delete_consumer(stream, self.durable)
            except nats.js.errors.NotFoundError:
                pass
        cfg = self._consumer_config()
        try:
            await js.add_consumer(stream, cfg)
        except nats.js.errors.BadRequestError as exc:
            log.info("archive consumer %s exists with other settings (%s); recreating it", self.durable, exc)
            await js.delete_consumer(stream, self.durable)
            await js.add_consumer(stream, cfg)
        if fresh:
            await self.db.set_meta("consumer", self.durable)
        return await js.pull_subscribe_bind(self.durable, stream)

    async def _consume(self, psub: Any) -> None:
        while True:
            _raise_if_cancelling()
            try:
                msgs = await psub.fetch(self.batch, timeout=self.fetch_wait)
            except TimeoutError:  # nats-py raises its own subclass or, at times, the builtin one
                continue
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("archive: fetching events failed, retrying: %r", exc)
                await asyncio.sleep(1.0)
                continue
            _raise_if_cancelling()
            try:
                await self.archive_messages(msgs)
            except (ChronosError, aiosqlite.Error, nats.errors.Error, nats.js.errors.Error) as exc:
                # Unacked: redelivered after ack_wait and written again (upserts are idempotent).
                log.warning("archive: batch of %d event messages not archived: %r", len(msgs), exc)
                await asyncio.sleep(1.0)

    async def archive_messages(self, msgs: Sequence[Msg]) -> int:
        latest: dict[str, Any] = {}
        for msg in msgs:
            try:
                events = decode_events(msg.data)
            except ChronosError as exc:
                log.debug("archive: skipping unreadable event message: %s", exc)
                continue
            for ev in events:
                if ev.kind in TERMINAL_KINDS and ev.job_id:
                    latest[ev.job_id] = ev
        full, partial = await self._records(latest)
        n = await self.db.add(full, partial)
        for msg in msgs:
            await msg.ack()  # only after the commit
        if n:
            self.archived += n
            self.written.set()
            self.written.clear()
        return n

    async def _records(self, latest: dict[str, Any]) -> tuple[list[JobRecord], list[JobRecord]]:
        ids = list(latest)
        found = await asyncio.gather(*(self.ops.read_or_none(i) for i in ids))
        full, partial = [], []
        for job_id, rec in zip(ids, found):
            if rec is None:
                partial.append(partial_record(latest[job_id]))
            elif rec.state in TERMINAL:
                full.append(rec)
            # else: run again since (retried by hand); its next terminal event brings it back.
        return full, partial

    # --- answering ---------------------------------------------------------------------------------
    async def _on_index_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            op = codec.decode(msg.data, Op).op
        except (ChronosError, msgspec.DecodeError):
            return
        if op not in ("jobs", "counts"):
            return  # a history request: every node's plain subscription answers those
        reply: JobsReply | CountsReply
        try:
            await self.index.sync()
            if op == "jobs":
                reply = await self.index.page(codec.decode(msg.data, JobsQuery))
            else:
                reply = await self.index.counts(codec.decode(msg.data, CountsQuery).window)
        except ChronosError as exc:
            reply = (JobsReply if op == "jobs" else CountsReply)(error=str(exc))
        except aiosqlite.Error as exc:
            log.warning("job index: query failed: %r", exc)
            reply = (JobsReply if op == "jobs" else CountsReply)(error=f"index error: {exc}")
        reply.node = self.node
        try:
            await msg.respond(codec.encode(reply))
        except nats.errors.Error as exc:
            log.debug("job index: reply failed: %s", exc)

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            op = codec.decode(msg.data, Op).op
        except (ChronosError, msgspec.DecodeError):
            op = "history"  # answered below with the decode error
        if op != "history":
            # A listing or count: the index's queue group answers it once caught up; until then this
            # node says so, and the client falls back to a scan unless a caught-up node answers.
            if not self.index_serving.is_set():
                reply_cls = CountsReply if op == "counts" else JobsReply
                try:
                    await msg.respond(codec.encode(reply_cls(node=self.node, error=NOT_READY)))
                except nats.errors.Error as exc:
                    log.debug("job index: reply failed: %s", exc)
            return
        try:
            q = codec.decode(msg.data, HistoryQuery)
            validate_query(q)
            records = await self.db.query(q)
            reply = self._fit(records)
        except ChronosError as exc:
            reply = HistoryReply(node=self.node, error=str(exc))
        except aiosqlite.Error as exc:
            log.warning("archive: history query failed: %r", exc)
            reply = HistoryReply(node=self.node, error=f"archive error: {exc}")
        try:
            await msg.respond(codec.encode(reply))
        except nats.errors.Error as exc:
            log.debug("archive: reply failed: %s", exc)

    def _fit(self, records: list[JobRecord]) -> HistoryReply:
        budget = (self.conn.nc.max_payload or 1024 * 1024) - _REPLY_SLACK
        used, kept = 0, []
        for rec in records:
            size = len(codec.encode(rec))
            if used + size > budget:
                return HistoryReply(records=kept, node=self.node, truncated=True)
            used += size
            kept.append(rec)
        return HistoryReply(records=kept, node=self.node)
