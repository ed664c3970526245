"""History archive: every scheduler node keeps finished jobs in its own SQLite file.

This module is the archive's database and its query language: the wire types of a history
request and reply, the file's schema (an FTS5 trigram index for error text) and ``ArchiveDB``.
The service that fills the file from the events stream and answers requests is
``chronos/scheduler/archiver.py``; the client side that asks every node and merges the
answers is ``chronos/history.py``.

The archive is keyed by (namespace, job id) and keeps the newest record of a job (a job
retried by hand and finished again replaces its older row); upserts are idempotent, so a
replayed batch of events changes nothing.

Queries: filters task, state, queue, since/until (on finish time), text (substring of the
error or any attempt's traceback, case-insensitive for ASCII), limit and a cursor; newest
first. A reply is capped below the server's max payload; ``truncated`` says rows were left out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from . import codec
from .errors import ChronosError, ValidationError
from .models import JobRecord
from .readmodel import close_db, make_cursor, parse_cursor
from .states import JobState

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
        self._db = db  # closed by close() whatever happens below (its thread is not a daemon)
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
        db, self._db = self._db, None
        if db is not None:
            await close_db(db)

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
