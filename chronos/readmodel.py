"""Job index: each scheduler node's read model of the live jobs, for listings and counts.

::

    jobs KV stream ($KV.<ns>_jobs.*, every write of every record, revision = stream sequence)
        --(ephemeral pull consumer from the last applied sequence + 1, no acks)--> JobIndex
        -> upsert (id, revision, state, queue, priority, task, tags, created/finished) in SQLite
           in one transaction per fetched batch, with the applied sequence in the same commit
        -> args and annotations as JSON text in live_args, written once per job (a record's
           spec does not change, so the many state writes of a job do not rewrite them)
        -> triggers keep per (queue, priority, state) counts and per-10s finish buckets

    Client.list / Client.counts --request <ns>.api.history (op "jobs" / "counts"), queue group-->
        one caught-up node answers: a page of job ids (keyset cursor) or the counts;
        the client reads the page's records from the KV (the truth) and re-checks the filter.

Why the KV stream and not the events stream: the KV stream is the authoritative change log. A
record's write *is* its message, so nothing the index needs can be lost the way best-effort
events can, and each message carries the whole record (no read per event). The KV keeps one
message per key, so a node that lagged still gets the newest version of every key.

Correctness:

* **Replay** is harmless: a row changes only when the message's revision is newer than the row's
  (the stream sequence is the revision), and a delete removes only rows older than it.
* **Lost deletes**: the pruner removes a record's delete marker right after writing it; a node
  that was not reading at that moment never sees the delete. ``reconcile`` reads from the KV
  only the rows that are past the retention (the ones the pruner deletes) and drops those whose
  record is gone, so its cost follows expiring jobs, not all jobs.
* **Rebuild**: the applied sequence and the stream's creation time are kept in the file. A
  bucket that was re-created (sequence went back, or another creation time), or a new file,
  clears this namespace's rows and reads the stream from its first message: one scan of the KV.
  Deleting the archive file rebuilds too.
* **Read your writes**: a query first waits (up to ``sync_wait``) until the index has applied
  the stream's last sequence as of the request, so a job submitted before a listing is in it.
* A node joins the responders' queue group only once it has caught up; with none (no scheduler,
  or all still catching up) the client falls back to scanning the KV itself.

Search (``--where``, chronos/where.py): a JSON path into args or annotations has no index of its
own (any path may be asked). The node walks the index the other filters choose, newest first,
in windows, and evaluates the path with SQLite's JSON1 on ``live_args``; it stops when the page
is full or the request's time ``budget`` is spent, and then answers the matches so far with a
cursor at the position it reached (``partial``). So a page costs bounded work however selective
the path is; a path that matches little, with no other filter, costs a scan that pages resume.
Args or annotations over ``MAX_ARGS_TEXT`` are not stored (``big``): such a row is a candidate for
every path, and the client's check against the KV's record decides.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
import nats.errors
import nats.js.errors
from nats.js import api

from . import codec
from .connection import Connection
from .errors import ChronosError, ValidationError
from .models import JobRecord
from .publisher import is_transient
from .states import TERMINAL, JobState
from .where import Where, compiled, matches_all, parse_all

log = logging.getLogger(__name__)

NOT_READY = "not ready"  # the error a node whose index is still catching up answers with
COUNT_CAP = 10_000  # a filtered total is counted up to this many (the index walk stays bounded)
MAX_PAGE = 1_000
BUCKET = 10.0  # seconds per finish bucket (the dashboard's 5 min and 1 h windows)
_STATES = tuple(s.value for s in JobState)
_TERMINAL = tuple(str(s) for s in TERMINAL)
_SEP = "\x1f"  # between tags in the row (for deleting their index entries)
SCHEMA_VERSION = "2"  # 2: live_args (a file built before it is rebuilt from the stream)
MAX_ARGS_TEXT = 4096  # args or annotations JSON longer than this is not stored (the row is "big")
DEFAULT_BUDGET = 0.15  # seconds a --where page may scan before it answers what it found
MAX_BUDGET = 2.0  # a node answers one request at a time: no request may hold it longer
_WINDOW = 512  # rows per step of a --where scan (doubles up to _MAX_WINDOW)
_MAX_WINDOW = 16384


# --- wire types -----------------------------------------------------------------------------------------
# Requests share the archive's subject (<ns>.api.history, which every role that reads history may
# use already); ``op`` tells them apart, and old archives ignore ops they do not know.


class Op(msgspec.Struct):
    op: str = "history"


class JobsQuery(msgspec.Struct):  # no omit_defaults: ``op`` must travel
    op: str = "jobs"
    states: list[str] = msgspec.field(default_factory=list)
    queue: str | None = None
    task: str | None = None
    tag: str | None = None
    since: float | None = None  # created_at >= since
    until: float | None = None  # created_at < until
    cursor: str | None = None  # "<created_at>:<id>" of the last row of the previous page
    offset: int = 0
    limit: int = 50
    v: int = 1
    where: list[str] = msgspec.field(default_factory=list)  # chronos/where.py filters, ANDed
    budget: float = DEFAULT_BUDGET  # seconds a --where scan may take before it answers (partial)
    count_only: bool = False  # --where: count matches from the cursor (no ids); ``next`` resumes


class JobsReply(msgspec.Struct, omit_defaults=True):
    ids: list[str] = msgspec.field(default_factory=list)
    next: str | None = None
    total: int = 0
    exact: bool = True
    partial: bool = False  # the time budget ran out before the page filled: ``next`` resumes the scan
    scanned: int = 0  # rows a --where scan looked at
    node: str = ""
    error: str | None = None
    v: int = 1


class CountsQuery(msgspec.Struct):
    op: str = "counts"
    window: float = 3600.0  # finish buckets this far back
    v: int = 1


class CountsReply(msgspec.Struct, omit_defaults=True):
    rows: list[tuple[str, str, str, int]] = msgspec.field(default_factory=list)  # queue, priority, state, n
    # queue, priority, state, bucket start, n: jobs that finished in each BUCKET seconds
    finished: list[tuple[str, str, str, float, int]] = msgspec.field(default_factory=list)
    at: float = 0.0
    node: str = ""
    error: str | None = None
    v: int = 1


class Counts(msgspec.Struct):
    """What ``Client.counts()`` returns: records per state, per queue and per (queue, priority, state)."""

    by_state: dict[str, int]
    by_queue: dict[str, dict[str, int]]
    rows: list[tuple[str, str, str, int]]
    finished: list[tuple[str, str, str, float, int]]
    at: float
    total: int
    source: str = "scan"  # "index <node>" when a scheduler's job index answered, "scan" when the KV was read


for _t in (Op, JobsQuery, JobsReply, CountsQuery, CountsReply):
    codec._decoders.setdefault(_t, msgspec.msgpack.Decoder(_t))


def make_cursor(created_at: float, job_id: str) -> str:
    return f"{created_at!r}:{job_id}"


def parse_cursor(cursor: str) -> tuple[float, str]:
    at, sep, job_id = cursor.partition(":")
    try:
        value = float(at)
    except ValueError:
        value = float("nan")
    if not sep or not job_id or value != value:
        raise ValidationError(f"cursor: {cursor!r} is not a cursor of a job listing (a 'next' value it printed)")
    return value, job_id


def validate_jobs_query(q: JobsQuery) -> None:
    for s in q.states:
        if s not in _STATES:
            raise ValidationError(f"state: {s!r} is not one of {', '.join(_STATES)}")
    if not isinstance(q.limit, int) or not 1 <= q.limit <= MAX_PAGE:
        raise ValidationError(f"limit: must be between 1 and {MAX_PAGE} per page")
    if q.offset < 0:
        raise ValidationError("offset: must be >= 0")
    if q.cursor is not None:
        parse_cursor(q.cursor)
    if q.since is not None and q.until is not None and q.since >= q.until:
        raise ValidationError("since: must be earlier than until")
    parse_all(q.where)
    if not isinstance(q.budget, (int, float)) or not math.isfinite(q.budget) or q.budget <= 0:
        raise ValidationError("budget: must be a positive number of seconds")
    if q.count_only and not q.where:
        raise ValidationError("count_only: only for a --where query")


def record_matches(rec: JobRecord, q: JobsQuery) -> bool:
    """The query's filter on one record (the KV's copy is re-checked: the index may be a moment old)."""
    if q.states and str(rec.state) not in q.states:
        return False
    if q.queue is not None and rec.spec.queue != q.queue:
        return False
    if q.task is not None and rec.spec.task != q.task:
        return False
    if q.tag is not None and q.tag not in rec.spec.tags:
        return False
    if q.since is not None and rec.created_at < q.since:
        return False
    if q.until is not None and rec.created_at >= q.until:
        return False
    if q.where and not matches_all(compiled(tuple(q.where)), rec.spec.args, rec.spec.annotations):
        return False
    return True


def scan_page(records: list[JobRecord], q: JobsQuery) -> tuple[list[JobRecord], str | None, int]:
    """The same page from records in hand (the fallback when no index answers): page, next, total."""
    rows = [r for r in records if record_matches(r, q)]
    rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
    total = len(rows)
    if q.cursor is not None:
        key = parse_cursor(q.cursor)
        rows = [r for r in rows if (r.created_at, r.id) < key]
    page = rows[q.offset:q.offset + q.limit]
    more = len(rows) > q.offset + q.limit
    nxt = make_cursor(page[-1].created_at, page[-1].id) if page and more else None
    return page, nxt, total


# --- the SQLite tables -------------------------------------------------------------------------------------

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS live (
    ns TEXT NOT NULL,
    id TEXT NOT NULL,
    rev INTEGER NOT NULL,
    state TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority TEXT NOT NULL,
    task TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    tags TEXT,
    PRIMARY KEY (ns, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS live_created ON live (ns, created_at, id);
CREATE INDEX IF NOT EXISTS live_state ON live (ns, state, created_at, id);
CREATE INDEX IF NOT EXISTS live_queue ON live (ns, queue, created_at, id);
CREATE INDEX IF NOT EXISTS live_task ON live (ns, task, created_at, id);
CREATE INDEX IF NOT EXISTS live_expiry ON live (ns, finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS live_tags (
    ns TEXT NOT NULL, tag TEXT NOT NULL, created_at REAL NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY (ns, tag, created_at, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS live_args (
    ns TEXT NOT NULL, created_at REAL NOT NULL, id TEXT NOT NULL,
    args TEXT, annotations TEXT, big INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ns, created_at, id)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS live_args_moved AFTER UPDATE OF created_at ON live
    WHEN old.created_at != new.created_at BEGIN
    DELETE FROM live_args WHERE ns = old.ns AND created_at = old.created_at AND id = old.id;
END;
CREATE TABLE IF NOT EXISTS live_counts (
    ns TEXT NOT NULL, queue TEXT NOT NULL, priority TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (ns, queue, priority, state)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS live_finished (
    ns TEXT NOT NULL, queue TEXT NOT NULL, priority TEXT NOT NULL, state TEXT NOT NULL, bucket REAL NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (ns, bucket, queue, priority, state)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS live_ins AFTER INSERT ON live BEGIN
    INSERT INTO live_counts VALUES (new.ns, new.queue, new.priority, new.state, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
    INSERT INTO live_finished SELECT new.ns, new.queue, new.priority, new.state,
        new.finished_at - (new.finished_at % {BUCKET}), 1 WHERE new.finished_at IS NOT NULL
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS live_del AFTER DELETE ON live BEGIN
    UPDATE live_counts SET n = n - 1
        WHERE ns = old.ns AND queue = old.queue AND priority = old.priority AND state = old.state;
END;
CREATE TRIGGER IF NOT EXISTS live_upd AFTER UPDATE ON live BEGIN
    UPDATE live_counts SET n = n - 1
        WHERE ns = old.ns AND queue = old.queue AND priority = old.priority AND state = old.state;
    INSERT INTO live_counts VALUES (new.ns, new.queue, new.priority, new.state, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
    INSERT INTO live_finished SELECT new.ns, new.queue, new.priority, new.state,
        new.finished_at - (new.finished_at % {BUCKET}), 1
        WHERE new.finished_at IS NOT NULL AND (old.finished_at IS NULL OR old.finished_at != new.finished_at)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
"""

_UPSERT = """
INSERT INTO live (ns, id, rev, state, queue, priority, task, created_at, updated_at, finished_at, tags)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (ns, id) DO UPDATE SET
    rev = excluded.rev, state = excluded.state, queue = excluded.queue, priority = excluded.priority,
    task = excluded.task, created_at = excluded.created_at, updated_at = excluded.updated_at,
    finished_at = excluded.finished_at, tags = excluded.tags
WHERE excluded.rev > live.rev
"""


async def close_db(db: aiosqlite.Connection) -> None:
    """Close ``db``; if the close fails or is cancelled (a shutdown cancels twice), still stop its
    worker thread. aiosqlite's threads are not daemons: one left running keeps the process from
    exiting (a `chronos dev` stopped by Ctrl-C hung at interpreter shutdown)."""
    try:
        await db.close()
    except BaseException:
        db.stop()
        raise


async def open_db(path: str) -> aiosqlite.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA busy_timeout=10000")
        await db.execute("PRAGMA cache_size=-65536")  # 64 MB: the listing indexes of a million rows stay hot
    except BaseException:
        db.stop()  # its thread is not a daemon (see close_db)
        raise
    return db


class JobIndex:
    """One node's index of the jobs bucket, in its archive file (two connections: writer and reader)."""

    def __init__(self, conn: Connection, path: str, *, batch: int = 1000, fetch_wait: float = 1.0,
                 sync_wait: float = 1.0, reconcile_every: float = 60.0, retention: float | None = None) -> None:
        self.conn = conn
        self.names = conn.names
        self.ns = conn.names.ns
        self.path = path
        self.batch = batch
        self.fetch_wait = fetch_wait
        self.sync_wait = sync_wait
        self.reconcile_every = reconcile_every
        self.retention = conn.settings.scheduler.retention if retention is None else retention
        self.bucket = conn.names.jobs_bucket
        self.stream = conn.names.kv_stream(self.bucket)
        self.prefix = conn.names.kv_subject(self.bucket, "")
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self.applied = 0  # the last stream sequence written to the file
        self.caught_up = asyncio.Event()  # the stream was read to its end at least once
        self.unanswered = 0  # consumer creations the server did not answer (an outage), asked again
        self.applied_event = asyncio.Event()  # pulsed after each committed batch
        self._sub: Any = None
        self._inbox = ""
        self._consumer = ""
        self._buf: list[Any] = []
        self._wake = asyncio.Event()
        self._ended = False
        self._outstanding = 0
        self._deadline = 0.0
        self._idle = False
        self._lost = False
        self.ingested = 0  # messages applied since start
        self.dropped = 0  # rows removed by reconcile (their delete was never seen)
        self.rebuilds = 0

    # --- life cycle ---------------------------------------------------------------------------------
    async def open(self) -> JobIndex:
        self._w = await open_db(self.path)
        await self._w.executescript(SCHEMA)
        await self._w.commit()
        self._r = await open_db(self.path)
        return self

    async def close(self) -> None:
        dbs, self._w, self._r = (self._w, self._r), None, None
        try:
            if dbs[0] is not None:
                await close_db(dbs[0])
        finally:
            if dbs[1] is not None:
                await close_db(dbs[1])

    @property
    def w(self) -> aiosqlite.Connection:
        if self._w is None:
            raise ChronosError("job index is not open")
        return self._w

    @property
    def r(self) -> aiosqlite.Connection:
        if self._r is None:
            raise ChronosError("job index is not open")
        return self._r

    async def _meta(self, key: str) -> str | None:
        async with self.w.execute("SELECT value FROM meta WHERE key = ?", (f"{key}:{self.ns}",)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def _set_meta(self, key: str, value: str) -> None:
        await self.w.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"{key}:{self.ns}", value))

    async def clear(self) -> None:
        """Forget this namespace's rows: the next run reads the whole stream again (a rebuild)."""
        for table in ("live", "live_tags", "live_args", "live_counts", "live_finished"):
            await self.w.execute(f"DELETE FROM {table} WHERE ns = ?", (self.ns,))
        await self._set_meta("index_seq", "0")
        await self.w.commit()
        self.applied = 0
        self.rebuilds += 1

    async def _check_stream(self) -> None:
        """Rebuild when the bucket is not the one the file was built from."""
        info = await self.conn.js.stream_info(self.stream)
        created = str(getattr(info, "created", "") or "")
        seq = int(await self._meta("index_seq") or 0)
        if seq and (await self._meta("index_stream") != created or info.state.last_seq < seq):
            log.warning("job index: the jobs bucket was re-created; rebuilding the index from it")
            await self.clear()
            seq = 0
        if seq and await self._meta("index_schema") != SCHEMA_VERSION:
            log.warning("job index: the file predates the args index; rebuilding the index from the stream")
            await self.clear()
            seq = 0
        await self._set_meta("index_schema", SCHEMA_VERSION)
        await self._set_meta("index_stream", created)
        await self.w.commit()
        self.applied = seq
        if info.state.last_seq <= seq:
            self.caught_up.set()

    async def run(self) -> None:
        """Follow the jobs KV stream forever (and reconcile now and then)."""
        await self._check_stream()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._reconcile_loop(), name="index-reconcile")
            await self._follow()

    # --- following the stream -------------------------------------------------------------------------
    # Raw pull requests (CONSUMER.MSG.NEXT) answered into a callback: at most one batch is in
    # flight, so memory stays bounded when SQLite is slower than the server (a push consumer's
    # flow control does not wait for our writes: its messages piled up and were dropped), and
    # no timer per message (nats-py's fetch awaits each message with wait_for, about 2,000/s).

    async def _subscribe(self) -> None:
        """``_subscribe_once``, again until the server answers: a scheduler lost its index, and with
        it the process (an unguarded timeout), on any outage of 10 s or more (red-team finding)."""
        backoff = 0.25
        failing = False
        while True:
            try:
                await self._subscribe_once()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.unanswered += 1
                if not failing:
                    log.warning("job index: the server does not answer (%s); asking again until it does",
                                type(exc).__name__)
                    failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if failing:
                log.info("job index: following the stream again from sequence %d", self.applied + 1)
            return

    async def _subscribe_once(self) -> None:
        """A new ephemeral consumer from the next sequence to apply, and the inbox for its batches."""
        cfg = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.applied + 1,
            filter_subject=self.prefix + ">",
            inactive_threshold=60.0,
            mem_storage=True,
        )
        info = await self.conn.js.add_consumer(self.stream, cfg)
        self._consumer = info.name
        if self._sub is None:
            self._inbox = self.conn.nc.new_inbox()
            self._sub = await self.conn.nc.subscribe(self._inbox, cb=self._on_msg)

    async def _request(self) -> None:
        self._outstanding = self.batch
        self._ended = False
        self._deadline = time.monotonic() + self.fetch_wait + 2.0
        body = json.dumps({"batch": self.batch, "expires": int(self.fetch_wait * 1e9)}).encode()
        await self.conn.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}", body,
                                   reply=self._inbox)

    async def _on_msg(self, msg: Any) -> None:
        headers = msg.headers
        if headers and "Status" in headers and not msg.data:
            status = headers.get("Status")
            if status == "100":
                return  # idle heartbeat
            if status in ("404", "408"):
                self._idle = True  # the request ended with nothing more to deliver
            else:
                log.debug("job index: pull ended with %s %s", status, headers.get("Description", ""))
                self._lost = status == "409"  # e.g. the consumer was deleted
            self._ended = True
            self._wake.set()
            return
        self._buf.append(msg)
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._ended = True
        self._wake.set()  # the loop applies what has come (while it writes, more gathers: a batch)

    async def _follow(self) -> None:
        self._buf = []
        await self._subscribe()
        await self._request()
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                except TimeoutError:
                    pass
                self._wake.clear()
                _raise_if_cancelling()
                ended = self._ended
                idle, self._idle = self._idle, False
                if ended:
                    if self._lost or time.monotonic() > self._deadline:
                        # No answer (a reconnect outlived the consumer): a new one from where we are.
                        self._lost = False
                        await self._apply_buffered()
                        log.info("job index: consumer lost; resubscribing from sequence %d", self.applied + 1)
                        await self._subscribe()
                    else:
                        # Ask for the next batch before writing this one: the network and SQLite overlap.
                        msgs, self._buf = self._buf, []
                        await self._request()
                        await self._apply_msgs(msgs, idle)
                        continue
                    await self._request()
                elif time.monotonic() > self._deadline:
                    self._lost = True
                    self._ended = True
                    self._wake.set()
                else:
                    # Mid-request: apply what came so far, so a few new records are listed at once.
                    await self._apply_buffered()
        finally:
            if self._sub is not None:
                await _unsubscribe(self._sub)
                self._sub = None

    async def _apply_buffered(self) -> None:
        if self._buf:
            msgs, self._buf = self._buf, []
            await self._apply_msgs(msgs, False)

    async def _apply_msgs(self, msgs: list[Any], idle: bool) -> None:
        if msgs:
            await self.apply(msgs)
            if msgs[-1].metadata.num_pending == 0:
                self.caught_up.set()
        elif idle:
            self.caught_up.set()  # a request expired with nothing for us: we hold the whole stream

    async def apply(self, msgs: Sequence[Any]) -> None:
        """One fetched batch -> one transaction (rows, tags, the applied sequence)."""
        rows: list[tuple[Any, ...]] = []
        tags: list[tuple[str, str, float, str]] = []
        args: list[tuple[Any, ...]] = []
        deletes: list[tuple[str, int]] = []
        last = self.applied
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            last = max(last, seq)
            key = msg.subject[len(self.prefix):]
            headers = msg.headers or {}
            if headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers:
                deletes.append((key, seq))
                continue
            try:
                rec = codec.decode(msg.data, JobRecord)
            except ChronosError:
                continue
            rows.append(self.row(rec, seq))
            args.append(self.args_row(rec))
            for t in rec.spec.tags:
                tags.append((self.ns, t, rec.created_at, rec.id))
        db = self.w
        if deletes:
            await self._delete(deletes)
        if rows:
            await db.executemany(_UPSERT, rows)
        if tags:
            await db.executemany("INSERT OR IGNORE INTO live_tags VALUES (?, ?, ?, ?)", tags)
        if args:
            # Once per job: a spec does not change with its state (a state write finds the row).
            await db.executemany("INSERT OR IGNORE INTO live_args VALUES (?, ?, ?, ?, ?, ?)", args)
        await self._set_meta("index_seq", str(last))
        await db.commit()
        self.applied = last
        self.ingested += len(msgs)
        self.applied_event.set()
        self.applied_event.clear()

    def row(self, rec: JobRecord, rev: int) -> tuple[Any, ...]:
        state = str(rec.state)
        finished = (rec.finished_at if rec.finished_at is not None else rec.updated_at) \
            if state in _TERMINAL else None
        return (self.ns, rec.id, rev, state, rec.spec.queue, rec.spec.priority, rec.spec.task, rec.created_at,
                rec.updated_at, finished, _SEP.join(rec.spec.tags) or None)

    def args_row(self, rec: JobRecord) -> tuple[Any, ...]:
        spec = rec.spec
        args = _json(spec.args)
        ann = _json(spec.annotations) if spec.annotations else None
        if len(args) > MAX_ARGS_TEXT or (ann is not None and len(ann) > MAX_ARGS_TEXT):
            return (self.ns, rec.created_at, rec.id, None, None, 1)  # a candidate for every path
        return (self.ns, rec.created_at, rec.id, args, ann, 0)

    async def _delete(self, items: Sequence[tuple[str, int]]) -> int:
        """Remove rows older than the given revisions (a replayed old delete leaves a newer row alone)."""
        db = self.w
        gone = 0
        for start in range(0, len(items), 500):
            chunk = dict(items[start:start + 500])
            marks = ",".join("?" * len(chunk))
            async with db.execute(f"SELECT id, rev, created_at, tags FROM live WHERE ns = ? AND id IN ({marks})",
                                  (self.ns, *chunk)) as cur:
                found = [r async for r in cur if r[1] < chunk[r[0]]]
            if not found:
                continue
            await db.executemany("DELETE FROM live WHERE ns = ? AND id = ? AND rev = ?",
                                 [(self.ns, i, rev) for i, rev, _, _ in found])
            await db.executemany("DELETE FROM live_args WHERE ns = ? AND created_at = ? AND id = ?",
                                 [(self.ns, at, i) for i, _, at, _ in found])
            tag_rows = [(self.ns, t, at, i) for i, _, at, tags in found if tags for t in tags.split(_SEP)]
            if tag_rows:
                await db.executemany("DELETE FROM live_tags WHERE ns = ? AND tag = ? AND created_at = ? AND id = ?",
                                     tag_rows)
            gone += len(found)
        return gone

    # --- reconcile: rows whose delete this node never saw -----------------------------------------------
    async def _reconcile_loop(self) -> None:
        await self.caught_up.wait()
        while True:
            await asyncio.sleep(self.reconcile_every)
            try:
                await self.reconcile()
            except (ChronosError, aiosqlite.Error, nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("job index: reconcile failed: %r", exc)

    async def expired(self, cutoff: float, after: tuple[float, str] | None = None,
                      limit: int = 500) -> list[tuple[str, float]]:
        """(id, finished_at) of finished rows older than ``cutoff``, oldest first, after a keyset mark."""
        sql = "SELECT id, finished_at FROM live WHERE ns = ? AND finished_at IS NOT NULL AND finished_at < ?"
        args: list[Any] = [self.ns, cutoff]
        if after is not None:
            sql += " AND (finished_at, id) > (?, ?)"
            args += list(after)
        sql += " ORDER BY finished_at, id LIMIT ?"
        args.append(limit)
        async with self.r.execute(sql, args) as cur:
            return [(r[0], r[1]) async for r in cur]

    async def forget(self, ids: Sequence[str]) -> int:
        """Drop rows whose record is gone from the KV (seen by a reader of the KV, not by the stream)."""
        if not ids:
            return 0
        n = await self._delete([(i, 1 << 62) for i in ids])
        await self.w.commit()
        self.dropped += n
        return n

    async def reconcile(self, limit: int = 5000) -> int:
        """Past the retention the pruner deletes records; drop the rows of those that are gone.

        Only rows finished before ``now - retention`` are read back from the KV, so the cost
        follows the jobs that expire, not the bucket. Also drops finish buckets older than two hours.
        """
        from .jobs import JobOps

        ops = JobOps(self.conn)
        cutoff = time.time() - self.retention
        mark: tuple[float, str] | None = None
        dropped = 0
        seen = 0
        while seen < limit:
            rows = await self.expired(cutoff, mark)
            if not rows:
                break
            seen += len(rows)
            mark = (rows[-1][1], rows[-1][0])
            found = await asyncio.gather(*(ops.read_or_none(i) for i, _ in rows))
            dropped += await self.forget([i for (i, _), rec in zip(rows, found) if rec is None])
        await self.w.execute("DELETE FROM live_finished WHERE ns = ? AND bucket < ?", (self.ns, time.time() - 7200))
        await self.w.commit()
        if dropped:
            log.info("job index: dropped %d row(s) of pruned jobs whose delete this node did not see", dropped)
        return dropped

    # --- queries ------------------------------------------------------------------------------------------
    async def _pending(self) -> tuple[int, int] | None:
        """(messages pending at the server, last stream sequence delivered) of our consumer."""
        if not self._consumer:
            return None
        try:
            info = await self.conn.js.consumer_info(self.stream, self._consumer)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.debug("job index: consumer info failed: %s", exc)
            return None
        return int(info.num_pending or 0), int(info.delivered.stream_seq if info.delivered else 0)

    async def sync(self) -> None:
        """Wait until the index holds every write made before this call (bounded by ``sync_wait``).

        Done when the stream's last sequence as of the call is applied, or when the consumer has
        nothing pending and all it delivered is applied (the stream can end on a message no
        consumer delivers: a pruned record's delete marker is removed right away). Writes made
        after the call do not hold the answer back.
        """
        deadline = time.monotonic() + self.sync_wait
        try:
            target = (await self.conn.js.stream_info(self.stream)).state.last_seq
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.debug("job index: stream info for a sync failed: %s", exc)
            return
        while self.applied < target:
            state = await self._pending()
            if state is None:
                return
            pending, delivered = state
            if not pending and self.applied >= delivered:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                log.debug("job index: answering %d sequence(s) behind", target - self.applied)
                return
            try:
                await asyncio.wait_for(self.applied_event.wait(), min(left, 0.02))
            except TimeoutError:
                pass

    async def page(self, q: JobsQuery) -> JobsReply:
        validate_jobs_query(q)
        if q.where:
            return await self._search(q, parse_all(q.where))
        states = q.states or [None]
        per: list[list[tuple[float, str]]] = []
        for s in states:
            per.append(await self._select(q, s))
        if len(per) == 1:
            rows = per[0]
        else:  # one ordered walk per state, merged: an IN over states would sort every match
            rows = list(heapq.merge(*per, reverse=True))[:q.offset + q.limit + 1]
        rows = rows[q.offset:] if len(per) > 1 else rows
        more = len(rows) > q.limit
        rows = rows[:q.limit]
        nxt = make_cursor(*rows[-1]) if rows and more else None
        total, exact = await self._total(q)
        return JobsReply(ids=[i for _, i in rows], next=nxt, total=total, exact=exact)

    # --- search: a JSON path over args or annotations (chronos/where.py) --------------------------------
    def _search_sql(self, q: JobsQuery, filters: list[Where]) -> tuple[str, list[Any], str, list[Any], str]:
        # -> (match, its JSON-test arguments (they come last), edge, the filters' arguments, key)
        """One window of the scan, as two statements with an ``{after}`` slot for its bounds: the
        window's last row (``window`` rows on in listing order, no JSON read; none: the rows end),
        then the matches between the cursor and that row (the JSON test runs in SQLite; only
        matches come back). Bounds, not a LIMIT, tie the two: a row written between them is
        examined in this window or the next, never twice."""
        other = q.states or q.queue is not None or q.task is not None
        if q.tag is not None:
            key = "t"
            walk = "live_tags AS t" + (" JOIN live ON live.ns = t.ns AND live.id = t.id" if other else "")
            src = walk + " JOIN live_args AS a ON a.ns = t.ns AND a.created_at = t.created_at AND a.id = t.id"
        elif other:
            key = "live"
            walk = "live"
            src = "live JOIN live_args AS a ON a.ns = live.ns AND a.created_at = live.created_at AND a.id = live.id"
        else:
            # The args table is in listing order itself (and holds exactly the live rows: a row goes
            # with its job's, and moves with a changed created_at, see the live_args_moved trigger).
            key = "a"
            walk = src = "live_args AS a"
        where = [f"{key}.ns = ?"]
        args: list[Any] = [self.ns]
        if q.tag is not None:
            where.append("t.tag = ?")
            args.append(q.tag)
        if q.states:
            where.append(f"live.state IN ({','.join('?' * len(q.states))})")
            args += q.states
        for column, value in (("queue", q.queue), ("task", q.task)):
            if value is not None:
                where.append(f"live.{column} = ?")
                args.append(value)
        if q.since is not None:
            where.append(f"{key}.created_at >= ?")
            args.append(q.since)
        if q.until is not None:
            where.append(f"{key}.created_at < ?")
            args.append(q.until)
        preds: list[str] = []
        pargs: list[Any] = []
        for f in filters:
            expr, a = f.sql("a.args" if f.root == "args" else "a.annotations")
            preds.append(expr)
            pargs += a
        order = f"ORDER BY {key}.created_at DESC, {key}.id DESC"
        cond = " AND ".join(where)
        match = f"SELECT {key}.created_at, {key}.id FROM {src} WHERE {cond} {{after}}AND (a.big OR ({' AND '.join(preds)})) {order}"
        edge = f"SELECT {key}.created_at, {key}.id FROM {walk} WHERE {cond} {{after}}{order} LIMIT 1 OFFSET ?"
        return match, pargs, edge, args, key

    async def _search(self, q: JobsQuery, filters: list[Where]) -> JobsReply:
        """Walk the rows the other filters select, newest first, in growing windows, until the page
        is full (one extra match says there is more), the rows end, or ``budget`` is spent."""
        deadline = time.monotonic() + min(q.budget, MAX_BUDGET)
        match_sql, json_args, edge_sql, cond_args, key = self._search_sql(q, filters)
        after = f"AND ({key}.created_at, {key}.id) < (?, ?) "
        upto = f"AND ({key}.created_at, {key}.id) >= (?, ?) "
        pos = parse_cursor(q.cursor) if q.cursor is not None else None
        skip = q.offset
        found: list[tuple[float, str]] = []
        count = 0
        scanned = 0
        window = min(_WINDOW, max(2 * (q.limit + 1), 64))  # an unselective path fills a page at once
        ended = False
        while True:
            slot, at = ("", []) if pos is None else (after, list(pos))
            async with self.r.execute(edge_sql.replace("{after}", slot), [*cond_args, *at, window - 1]) as cur:
                edge = await cur.fetchone()
            bound, to = ("", []) if edge is None else (upto, [edge[0], edge[1]])
            async with self.r.execute(match_sql.replace("{after}", slot + bound), [*cond_args, *at, *to, *json_args]) as cur:
                rows = await cur.fetchall()
            scanned += window  # at most
            full = False
            for row in rows:
                if skip:
                    skip -= 1
                    continue
                count += 1
                if not q.count_only:
                    found.append((row[0], row[1]))
                    if len(found) > q.limit:
                        full = True
                        break
            if full:
                break
            if edge is None:
                ended = True
                break
            pos = (edge[0], edge[1])
            if time.monotonic() >= deadline:
                break
            window = min(window * 2, _MAX_WINDOW)
        from_start = q.cursor is None
        if q.count_only:
            return JobsReply(total=count, exact=ended, partial=not ended,
                             next=None if ended or pos is None else make_cursor(*pos), scanned=scanned)
        page = found[:q.limit]
        if len(found) > q.limit:
            nxt, partial = make_cursor(*page[-1]), False
        elif ended:
            nxt, partial = None, False
        else:  # out of time: resume where the walk stopped, not after the last match
            nxt, partial = (make_cursor(*pos) if pos is not None else None), True
        seen = q.offset - skip + len(page)
        exact = from_start and ended and len(found) <= q.limit
        return JobsReply(ids=[i for _, i in page], next=nxt, total=seen + (1 if len(found) > q.limit else 0),
                         exact=exact, partial=partial, scanned=scanned)

    def _where(self, q: JobsQuery, state: str | None, table: str = "live") -> tuple[str, list[Any]]:
        where = [f"{table}.ns = ?"]
        args: list[Any] = [self.ns]
        if q.tag is not None:
            where.append("t.tag = ?")
            args.append(q.tag)
        for column, value in (("state", state), ("queue", q.queue), ("task", q.task)):
            if value is not None:
                where.append(f"live.{column} = ?")
                args.append(value)
        key = "t" if q.tag is not None else "live"
        if q.since is not None:
            where.append(f"{key}.created_at >= ?")
            args.append(q.since)
        if q.until is not None:
            where.append(f"{key}.created_at < ?")
            args.append(q.until)
        return " AND ".join(where), args

    def _from(self, q: JobsQuery, state: str | None = None) -> str:
        if q.tag is not None:
            if state is None and q.queue is None and q.task is None:
                return "live_tags AS t"  # the tag table alone has (created_at, id): no row lookups
            return "live_tags AS t JOIN live ON live.ns = t.ns AND live.id = t.id"
        return "live"

    async def _select(self, q: JobsQuery, state: str | None) -> list[tuple[float, str]]:
        key = "t" if q.tag is not None else "live"
        where, args = self._where(q, state, key)
        if q.cursor is not None:
            where += f" AND ({key}.created_at, {key}.id) < (?, ?)"
            args += list(parse_cursor(q.cursor))
        sql = (f"SELECT {key}.created_at, {key}.id FROM {self._from(q, state)} WHERE {where} "
               f"ORDER BY {key}.created_at DESC, {key}.id DESC LIMIT ?")
        # Several states are merged after: each walk brings offset + limit + 1 rows.
        args.append(q.offset + q.limit + 1 if len(q.states) > 1 else q.limit + 1)
        if len(q.states) <= 1 and q.offset:
            sql += " OFFSET ?"
            args.append(q.offset)
        async with self.r.execute(sql, args) as cur:
            return [(r[0], r[1]) async for r in cur]

    async def _total(self, q: JobsQuery) -> tuple[int, bool]:
        if q.task is None and q.tag is None and q.since is None and q.until is None:
            sql = "SELECT COALESCE(SUM(n), 0) FROM live_counts WHERE ns = ?"
            args: list[Any] = [self.ns]
            if q.states:
                sql += f" AND state IN ({','.join('?' * len(q.states))})"
                args += q.states
            if q.queue is not None:
                sql += " AND queue = ?"
                args.append(q.queue)
            async with self.r.execute(sql, args) as cur:
                row = await cur.fetchone()
            return int(row[0] if row else 0), True
        total = 0
        for s in q.states or [None]:
            key = "t" if q.tag is not None else "live"
            where, args = self._where(q, s, key)
            sql = f"SELECT count(*) FROM (SELECT 1 FROM {self._from(q, s)} WHERE {where} LIMIT ?)"
            async with self.r.execute(sql, [*args, COUNT_CAP + 1 - total]) as cur:
                row = await cur.fetchone()
            total += int(row[0] if row else 0)
            if total > COUNT_CAP:
                return COUNT_CAP, False
        return total, True

    async def counts(self, window: float = 3600.0) -> CountsReply:
        async with self.r.execute("SELECT queue, priority, state, n FROM live_counts WHERE ns = ? AND n > 0",
                                  (self.ns,)) as cur:
            rows = [(r[0], r[1], r[2], int(r[3])) async for r in cur]
        now = time.time()
        async with self.r.execute(
                "SELECT queue, priority, state, bucket, n FROM live_finished WHERE ns = ? AND bucket >= ?",
                (self.ns, now - window - BUCKET)) as cur:
            finished = [(r[0], r[1], r[2], float(r[3]), int(r[4])) async for r in cur]
        return CountsReply(rows=rows, finished=finished, at=now)

    async def ids_in_state(self, state: str, *, limit: int = 1000, after: str | None = None,
                           updated_before: float | None = None) -> list[str]:
        """Ids of rows in ``state`` (an index range), in id order after ``after``: for loops whose
        work follows a few states (running jobs, say) rather than the whole bucket.
        ``updated_before``: only rows whose indexed version was written before then."""
        # INDEXED BY: for ORDER BY id SQLite otherwise walks the primary key over every row of the
        # namespace (146 ms a pass at a million rows); the state index holds just these rows.
        sql = "SELECT id FROM live INDEXED BY live_state WHERE ns = ? AND state = ?"
        args: list[Any] = [self.ns, state]
        if updated_before is not None:
            sql += " AND updated_at < ?"
            args.append(updated_before)
        if after is not None:
            sql += " AND id > ?"
            args.append(after)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        async with self.r.execute(sql, args) as cur:
            return [r[0] async for r in cur]

    async def row_count(self) -> int:
        async with self.r.execute("SELECT count(*) FROM live WHERE ns = ?", (self.ns,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def summarize(reply: CountsReply) -> Counts:
    by_state: dict[str, int] = {s: 0 for s in _STATES}
    by_queue: dict[str, dict[str, int]] = {}
    for queue, _prio, state, n in reply.rows:
        by_state[state] = by_state.get(state, 0) + n
        q = by_queue.setdefault(queue, {})
        q[state] = q.get(state, 0) + n
    return Counts(by_state=by_state, by_queue=by_queue, rows=list(reply.rows), finished=list(reply.finished),
                  at=reply.at, total=sum(by_state.values()), source=f"index {reply.node}".strip())


def counts_from_records(records: Sequence[JobRecord], now: float, window: float = 3600.0) -> Counts:
    """The same counts from records in hand (the fallback when no index answers)."""
    rows: dict[tuple[str, str, str], int] = {}
    fin: dict[tuple[str, str, str, float], int] = {}
    for rec in records:
        key = (rec.spec.queue, rec.spec.priority, str(rec.state))
        rows[key] = rows.get(key, 0) + 1
        if rec.state in TERMINAL:
            at = rec.finished_at if rec.finished_at is not None else rec.updated_at
            if at >= now - window - BUCKET:
                b = (*key, at - at % BUCKET)
                fin[b] = fin.get(b, 0) + 1
    reply = CountsReply(rows=[(*k, n) for k, n in rows.items()], finished=[(*k, n) for k, n in fin.items()], at=now)
    return msgspec.structs.replace(summarize(reply), source="scan")


def _raise_if_cancelling() -> None:
    me = asyncio.current_task()
    if me is not None and me.cancelling():  # nats-py's fetch may have swallowed a cancel
        raise asyncio.CancelledError


async def _unsubscribe(psub: Any) -> None:
    try:
        await psub.unsubscribe()
    except Exception as exc:  # connection gone: nothing to release
        log.debug("job index unsubscribe: %s", exc)
