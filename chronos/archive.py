"""History archive: every scheduler node keeps finished jobs in its own SQLite file.

::

    events stream --(durable consumer per archive file, terminal kinds only)--> Archiver
        completed / cancelled / discarded event
          -> read the job's final record from the jobs KV (one batch of reads at a time)
          -> upsert the batch into SQLite in one transaction -> commit -> ack the messages

    Client.history() --request <ns>.api.history--> every node's Archiver (no queue group)
          <-- one HistoryReply per node; the client merges them, newest record per job

Why read the KV instead of carrying the record in the event: events are a
lean, best-effort view sent on the worker's hot path; the KV record is the
truth and holds the attempts, tracebacks and result. If the record is gone
when the event is read (pruned by the leader while this node lagged), the
archive keeps a partial record built from the event (task, queue, state,
error, finish time), so no finished job silently disappears from history.

The archive is keyed by (namespace, job id) and keeps the newest record of a
job (a job retried by hand and finished again replaces its older row). The
durable consumer's name comes from the host name and the archive file's
absolute path, so a restarted node resumes where it stopped; a new or
deleted archive file starts its consumer over from the start of the events
stream (``streams.events_max_age``). Acks happen only after the commit, so a
crash replays at most one batch (upserts are idempotent).

Queries: filters task, state, queue, since/until (on finish time), text
(substring of the error or any attempt's traceback, case-insensitive for
ASCII), limit; newest first. A reply is capped below the server's max
payload; ``truncated`` says rows were left out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from . import codec
from .clock import SYSTEM_CLOCK, Clock
from .connection import Connection
from .errors import ChronosError, ValidationError
from .events import decode_events
from .jobs import JobOps
from .models import JobRecord, JobSpec
from .readmodel import (
    CountsQuery,
    CountsReply,
    JobIndex,
    JobsQuery,
    JobsReply,
    Op,
    NOT_READY,
    make_cursor,
    parse_cursor,
)
from .states import TERMINAL, JobState

log = logging.getLogger(__name__)

TERMINAL_KINDS: tuple[str, ...] = tuple(s.value for s in (JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED))
MAX_LIMIT = 10_000
_REPLY_SLACK = 4096  # room for the reply envelope under the server's max payload


class NoArchiveError(ChronosError):
    """No scheduler archive answered a history request."""


# --- wire types (msgpack via codec) -------------------------------------------------------------


class HistoryQuery(msgspec.Struct, omit_defaults=True):
    op: str = "history"  # the subject also carries the job index's requests (readmodel.py)
    task: str | None = None
    state: str | None = None
    queue: str | None = None
    since: float | None = None  # finished_at >= since
    until: float | None = None  # finished_at < until
    text: str | None = None
    limit: int = 100
    cursor: str | None = None  # "<finished_at>:<id>" of the last row of the previous page
    v: int = 1


class HistoryReply(msgspec.Struct, omit_defaults=True):
    records: list[JobRecord] = msgspec.field(default_factory=list)
    node: str = ""
    truncated: bool = False
    error: str | None = None
    v: int = 1


# codec.py owns the decoders; these two types belong to the archive, so they are registered from here.
codec._decoders.setdefault(HistoryQuery, msgspec.msgpack.Decoder(HistoryQuery))
codec._decoders.setdefault(HistoryReply, msgspec.msgpack.Decoder(HistoryReply))


def validate_query(q: HistoryQuery) -> None:
    """Every problem names its field (the CLI and Client show the message as is)."""
    if q.state is not None and q.state not in TERMINAL_KINDS:
        raise ValidationError(f"state: the archive holds finished jobs only; one of {', '.join(TERMINAL_KINDS)}")
    if not isinstance(q.limit, int) or not 1 <= q.limit <= MAX_LIMIT:
        raise ValidationError(f"limit: must be between 1 and {MAX_LIMIT}")
    if q.since is not None and q.until is not None and q.since >= q.until:
        raise ValidationError("since: must be earlier than until")
    if q.text is not None and not q.text:
        raise ValidationError("text: must not be empty")
    if q.cursor is not None:
        parse_cursor(q.cursor)


async def query_history(
    conn: Connection,
    *,
    task: str | None = None,
    state: str | None = None,
    queue: str | None = None,
    since: float | None = None,
    until: float | None = None,
    text: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    timeout: float = 5.0,
    gather: float = 0.25,
) -> list[JobRecord]:
    """Ask every scheduler node's archive on ``<ns>.api.history`` and merge the answers; newest finished first.

    Nodes' archives differ (a node added later, a follower that lagged while the leader
    pruned), so one node's answer is not the history. After the first reply, the others get
    as long again as it took (at least 30 ms, at most ``gather`` seconds): the nodes run the same
    query on similar files, so their answers come close together, and a query does not pay a
    fixed wait. Without any reply, ``timeout``. Per job the newest record wins.
    """
    q = HistoryQuery(task=task, state=str(state) if state is not None else None, queue=queue, since=since,
                     until=until, text=text, limit=limit, cursor=cursor)
    validate_query(q)
    subject = conn.names.history_api()
    nc = conn.nc
    inbox = nc.new_inbox()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_reply(msg: Msg) -> None:
        if msg.data:  # an empty message with headers is a "no responders" status
            replies.put_nowait(msg.data)
        elif msg.headers and msg.headers.get("Status") == "503":
            replies.put_nowait(b"")

    sub = await nc.subscribe(inbox, cb=on_reply)
    answers: list[HistoryReply] = []
    try:
        loop = asyncio.get_running_loop()
        await nc.publish(subject, codec.encode(q), reply=inbox)
        sent = loop.time()
        deadline = sent + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                data = await asyncio.wait_for(replies.get(), left)
            except TimeoutError:
                break
            if not data:
                break  # no responders
            answers.append(codec.decode(data, HistoryReply))
            if len(answers) == 1:
                first = loop.time() - sent
                deadline = loop.time() + min(gather, max(0.03, first))
    finally:
        await sub.unsubscribe()
    if not answers:
        raise NoArchiveError(
            f"history needs the scheduler archive, and no scheduler archive answered on {subject} within "
            f"{timeout:g}s: is a scheduler (chronos serve scheduler) running for namespace {conn.names.ns!r}?")
    failed = [a for a in answers if a.error]
    if len(failed) == len(answers):
        a = failed[0]
        raise ChronosError(f"history query failed on {a.node or 'a scheduler'}: {a.error}")
    newest: dict[str, JobRecord] = {}
    for a in answers:
        if a.error:
            log.warning("history: %s could not answer: %s", a.node or "a scheduler", a.error)
            continue
        if a.truncated:
            log.warning("history reply from %s was cut to %d rows to fit the server's max payload; "
                        "narrow the query for more", a.node, len(a.records))
        for rec in a.records:
            have = newest.get(rec.id)
            if have is None or (rec.updated_at, len(rec.attempts)) > (have.updated_at, len(have.attempts)):
                newest[rec.id] = rec
    merged = sorted(newest.values(), key=finish_key, reverse=True)
    return merged[:limit]


def finish_key(rec: JobRecord) -> tuple[float, str]:
    """The archive's order (newest finished first) and its cursor: (finished time, id)."""
    return (rec.finished_at if rec.finished_at is not None else rec.updated_at, rec.id)


def history_cursor(rows: Sequence[JobRecord], limit: int) -> str | None:
    """The cursor of the page after ``rows`` (None when the page was not full: nothing more)."""
    if len(rows) < limit or not rows:
        return None
    return make_cursor(*finish_key(rows[-1]))


# --- the SQLite file -------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    ns TEXT NOT NULL,
    id TEXT NOT NULL,
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    queue TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    error TEXT,
    traceback TEXT,
    partial INTEGER NOT NULL DEFAULT 0,
    record BLOB NOT NULL,
    PRIMARY KEY (ns, id)
);
CREATE INDEX IF NOT EXISTS jobs_finished_id ON jobs (ns, finished_at, id);
CREATE INDEX IF NOT EXISTS jobs_task_finished_id ON jobs (ns, task, finished_at, id);
CREATE INDEX IF NOT EXISTS jobs_state_finished ON jobs (ns, state, finished_at, id);
CREATE INDEX IF NOT EXISTS jobs_queue_finished ON jobs (ns, queue, finished_at, id);
DROP INDEX IF EXISTS jobs_finished;
DROP INDEX IF EXISTS jobs_task_finished;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Error text search: an FTS5 trigram index (substring match, case-insensitive) kept by triggers on
# the jobs table's own rows (external content, so the text is stored once).
_FTS = """
CREATE VIRTUAL TABLE IF NOT EXISTS jobs_fts USING fts5(
    error, traceback, content='jobs', content_rowid='rowid', tokenize='trigram');
CREATE TRIGGER IF NOT EXISTS jobs_fts_ins AFTER INSERT ON jobs BEGIN
    INSERT INTO jobs_fts (rowid, error, traceback) VALUES (new.rowid, new.error, new.traceback);
END;
CREATE TRIGGER IF NOT EXISTS jobs_fts_del AFTER DELETE ON jobs BEGIN
    INSERT INTO jobs_fts (jobs_fts, rowid, error, traceback) VALUES ('delete', old.rowid, old.error, old.traceback);
END;
CREATE TRIGGER IF NOT EXISTS jobs_fts_upd AFTER UPDATE OF error, traceback ON jobs BEGIN
    INSERT INTO jobs_fts (jobs_fts, rowid, error, traceback) VALUES ('delete', old.rowid, old.error, old.traceback);
    INSERT INTO jobs_fts (rowid, error, traceback) VALUES (new.rowid, new.error, new.traceback);
END;
"""
_FTS_CAP = 20_000  # more text matches than this: walk the time index instead (matches are dense)

# Newest record wins; an older event replayed after a newer one changes nothing.
_UPSERT = """
INSERT INTO jobs (ns, id, task, state, queue, created_at, updated_at, finished_at, error, traceback, partial, record)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (ns, id) DO UPDATE SET
    task = excluded.task, state = excluded.state, queue = excluded.queue, created_at = excluded.created_at,
    updated_at = excluded.updated_at, finished_at = excluded.finished_at, error = excluded.error,
    traceback = excluded.traceback, partial = excluded.partial, record = excluded.record
WHERE excluded.updated_at > jobs.updated_at OR (jobs.partial = 1 AND excluded.partial = 0)
"""


def _phrase(text: str) -> str:
    """An FTS5 phrase (a substring, with the trigram tokenizer) of arbitrary user text."""
    return '"' + text.replace('"', '""') + '"'


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class ArchiveDB:
    """One node's archive file (WAL). Writes come in batches, one transaction each."""

    def __init__(self, path: str | Path, namespace: str) -> None:
        self.path = str(path)
        self.ns = namespace
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> ArchiveDB:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoint, no fsync per commit
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA cache_size=-65536")
        await db.executescript(_SCHEMA)
        fresh_fts = not await (await db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'jobs_fts'")).fetchone()
        await db.executescript(_FTS)
        if fresh_fts:  # an archive made before the text index: index what it holds once
            await db.execute("INSERT INTO jobs_fts (jobs_fts) VALUES ('rebuild')")
        await db.commit()
        self._db = db
        return self

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise ChronosError("archive is not open")
        return self._db

    async def get_meta(self, key: str) -> str | None:
        async with self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        await self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        await self.db.commit()

    def _row(self, rec: JobRecord, partial: bool) -> tuple[Any, ...]:
        tbs = [a.traceback for a in rec.attempts if a.traceback]
        stored = msgspec.structs.replace(rec, revision=0)
        return (self.ns, rec.id, rec.spec.task, str(rec.state), rec.spec.queue, rec.created_at, rec.updated_at,
                rec.finished_at if rec.finished_at is not None else rec.updated_at, rec.error,
                "\n".join(tbs) or None, int(partial), codec.encode(stored))

    async def add(self, records: Iterable[JobRecord], partial: Iterable[JobRecord] = ()) -> int:
        """Upsert finished records in one transaction; returns how many rows were offered."""
        rows = [self._row(r, False) for r in records] + [self._row(r, True) for r in partial]
        if not rows:
            return 0
        await self.db.executemany(_UPSERT, rows)
        await self.db.commit()
        return len(rows)

    async def has(self, items: Sequence[tuple[str, float]]) -> set[str]:
        """Ids among (id, updated_at) whose full record (at least that new) is archived."""
        out: set[str] = set()
        for start in range(0, len(items), 500):
            chunk = items[start:start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, updated_at FROM jobs WHERE ns = ? AND partial = 0 AND id IN ({marks})"
            async with self.db.execute(sql, (self.ns, *(i for i, _ in chunk))) as cur:
                stored = {row[0]: row[1] async for row in cur}
            out.update(i for i, at in chunk if i in stored and stored[i] >= at)
        return out

    async def count(self) -> int:
        async with self.db.execute("SELECT count(*) FROM jobs WHERE ns = ?", (self.ns,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def query(self, q: HistoryQuery) -> list[JobRecord]:
        """Newest finished first; every filter has an index (time, task, state, queue, FTS5 for text)."""
        where = ["jobs.ns = ?"]
        args: list[Any] = [self.ns]
        for column, value in (("task", q.task), ("state", q.state), ("queue", q.queue)):
            if value is not None:
                where.append(f"jobs.{column} = ?")
                args.append(value)
        if q.since is not None:
            where.append("jobs.finished_at >= ?")
            args.append(q.since)
        if q.until is not None:
            where.append("jobs.finished_at < ?")
            args.append(q.until)
        if q.cursor is not None:
            where.append("(jobs.finished_at, jobs.id) < (?, ?)")
            args += list(parse_cursor(q.cursor))
        source = "jobs"
        if q.text:
            if len(q.text) >= 3 and await self._fts_matches(q.text) < _FTS_CAP:
                # Few matches: take them from the text index, then order them by time.
                source = "jobs_fts JOIN jobs ON jobs.rowid = jobs_fts.rowid"
                where.append("jobs_fts MATCH ?")
                args.append(_phrase(q.text))
            else:
                # Short text, or so many matches that walking the time index finds a page soon.
                where.append("(jobs.error LIKE ? ESCAPE '\\' OR jobs.traceback LIKE ? ESCAPE '\\')")
                args += [_like(q.text)] * 2
        sql = (f"SELECT jobs.record FROM {source} WHERE {' AND '.join(where)} "
               "ORDER BY jobs.finished_at DESC, jobs.id DESC LIMIT ?")
        args.append(q.limit)
        out = []
        async with self.db.execute(sql, args) as cur:
            async for (blob,) in cur:
                out.append(codec.decode(blob, JobRecord))
        return out

    async def _fts_matches(self, text: str) -> int:
        sql = "SELECT count(*) FROM (SELECT rowid FROM jobs_fts WHERE jobs_fts MATCH ? LIMIT ?)"
        async with self.db.execute(sql, (_phrase(text), _FTS_CAP)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def expire(self, before: float, batch: int = 5000) -> int:
        """Delete rows finished before ``before`` (archive retention), a batch per transaction."""
        n = 0
        while True:
            cur = await self.db.execute(
                "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs WHERE ns = ? AND finished_at < ? "
                "ORDER BY finished_at LIMIT ?)", (self.ns, before, batch))
            await self.db.commit()
            n += cur.rowcount
            if cur.rowcount < batch:
                return n
            await asyncio.sleep(0)  # let requests in between batches


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
        await self.db.open()
        self.durable = self.names.archive_consumer(await archive_node_key(self.db))
        await self.index.open()
        subs: list[Any] = []
        try:
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
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except nats.errors.Error as exc:
                    log.debug("archive responder unsubscribe: %s", exc)
            await self.index.close()
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
