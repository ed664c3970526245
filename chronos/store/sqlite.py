"""SQLite implementation of Store (aiosqlite, WAL): a local, offline store.

What it is for: tests that want a persistent store without a server, and
single-box use (one machine, no NATS needed for the records themselves). In a
deployment the JetStream KV store (kv.py) remains the authority for job and
schedule records; this file is not a replica of it and nothing syncs the two.
(The schedulers' history archive is a different thing: see chronos/archive.py.)

Semantics match the KV and memory stores, checked by the one conformance suite
(tests/integration/test_store_conformance.py):

* A revision is a per-store counter: every write (put, create, update, delete)
  takes ``max(revision) + 1``, so revisions only increase.
* ``update`` and ``delete(key, revision)`` are compare-and-set: one SQL
  statement that writes only if the row is at that revision, so it is atomic
  even with several processes on one file. A lost race raises ConflictError.
* A delete leaves a tombstone row (value NULL) at a new revision, as a KV
  delete leaves a marker; watchers see it as an Entry with ``value=None``.
  ``get`` and ``entries`` skip tombstones, and ``create`` may write over one
  (as ``MemoryStore`` and nats-py's ``kv.create`` allow).
* ``entries(pattern)`` and ``watch(pattern)`` take NATS-style wildcards over
  dot-separated keys (``*`` one token, ``>`` the rest), via base.matches().

Watch reads rows with ``revision > last seen`` in revision order. A write
through this store wakes its watchers at once; writes by another process on
the same file are seen within ``poll_interval``. Like a KV bucket keeping one
value per key, a watcher that falls behind sees a key's latest value, not each
value it passed through.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Iterable
from pathlib import Path
from typing import Any, Self

import aiosqlite

from ..errors import ConflictError
from .base import Entry, done_future, matches

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key      TEXT PRIMARY KEY,
    value    BLOB,              -- NULL: deleted (a tombstone kept for watchers)
    revision INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_by_revision ON entries (revision);
"""

_NEXT = "(SELECT COALESCE(MAX(revision), 0) + 1 FROM entries)"

# Each write is one statement in autocommit mode, so the check and the write are one transaction.
_PUT = (f"INSERT INTO entries (key, value, revision) VALUES (?, ?, {_NEXT}) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision "
        "RETURNING revision")
_CREATE = (f"INSERT INTO entries (key, value, revision) VALUES (?, ?, {_NEXT}) "
           "ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision "
           "WHERE entries.value IS NULL RETURNING revision")
_UPDATE = (f"UPDATE entries SET value = ?, revision = {_NEXT} "
           "WHERE key = ? AND revision = ? AND value IS NOT NULL RETURNING revision")
_DELETE_AT = (f"UPDATE entries SET value = NULL, revision = {_NEXT} "
              "WHERE key = ? AND revision = ? AND value IS NOT NULL RETURNING revision")
_DELETE = f"UPDATE entries SET value = NULL, revision = {_NEXT} WHERE key = ? AND value IS NOT NULL RETURNING revision"


class SQLiteStore:
    """A Store on one SQLite file (or ``":memory:"``). Open with ``await SQLiteStore.open(path)``."""

    def __init__(self, db: aiosqlite.Connection, *, poll_interval: float = 0.5) -> None:
        self._db = db
        self.poll_interval = poll_interval
        self._wakers: set[asyncio.Event] = set()
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path, *, poll_interval: float = 0.5) -> SQLiteStore:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, so each statement below is its own transaction.
        db = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.executescript(_SCHEMA)
        except BaseException:
            await db.close()
            raise
        return cls(db, poll_interval=poll_interval)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()  # watchers notice the close and end
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- reads ----------------------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        rows = await self._db.execute_fetchall(
            "SELECT value, revision FROM entries WHERE key = ? AND value IS NOT NULL", (key,))
        for value, revision in rows:
            return Entry(key, bytes(value), revision)
        return None

    async def entries(self, pattern: str = ">") -> list[Entry]:
        """Current entries (no tombstones) whose keys match ``pattern``, in key order."""
        prefix = _literal_prefix(pattern)
        rows = await self._db.execute_fetchall(
            "SELECT key, value, revision FROM entries WHERE value IS NOT NULL AND substr(key, 1, ?) = ? "
            "ORDER BY key", (len(prefix), prefix))
        return [Entry(k, bytes(v), r) for k, v, r in rows if matches(pattern, k)]

    # --- writes ---------------------------------------------------------------------------
    async def _write(self, sql: str, params: Iterable[Any]) -> int | None:
        """Run one write statement; its new revision, or None when its condition did not hold."""
        rows = await self._db.execute_fetchall(sql, tuple(params))
        rev = next((r[0] for r in rows), None)
        if rev is not None:
            self._wake()
        return rev

    async def put(self, key: str, value: bytes) -> int:
        rev = await self._write(_PUT, (key, value))
        assert rev is not None  # an unconditional upsert always returns its row
        return rev

    async def create(self, key: str, value: bytes) -> int:
        """Write only if the key does not exist (or was deleted); ConflictError otherwise."""
        try:
            rev = await self._write(_CREATE, (key, value))
        except sqlite3.IntegrityError as exc:  # pragma: no cover - only on a corrupt revision index
            raise ConflictError(f"key {key}: {exc}") from None
        if rev is None:
            raise ConflictError(f"key {key} already exists")
        return rev

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Compare-and-set: write only if the key is at ``revision``; ConflictError otherwise."""
        rev = await self._write(_UPDATE, (value, key, revision))
        if rev is None:
            raise ConflictError(f"key {key} is not at revision {revision}")
        return rev

    async def update_nowait(self, key: str, value: bytes, revision: int) -> Awaitable[int]:
        """The write happens now; the returned awaitable holds its revision or its ConflictError."""
        try:
            return done_future(await self.update(key, value, revision))
        except ConflictError as exc:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
            return fut

    async def delete(self, key: str, revision: int | None = None) -> None:
        """Delete; with ``revision``, only if the key is at it (ConflictError otherwise)."""
        if revision is None:
            await self._write(_DELETE, (key,))  # deleting a missing key is a no-op
            return
        if await self._write(_DELETE_AT, (key, revision)) is None:
            raise ConflictError(f"key {key} is not at revision {revision}")

    # --- watch ----------------------------------------------------------------------------
    def _wake(self) -> None:
        for ev in self._wakers:
            ev.set()

    async def watch(self, pattern: str = ">", *, include_existing: bool = False) -> AsyncIterator[Entry]:
        """Changes to keys matching ``pattern`` from the first iteration on (deletes have ``value=None``).

        With ``include_existing`` the current entries come first (in revision order, as a KV
        watcher delivers the last value per key), then the changes after them. Ends when the
        store is closed.
        """
        wake = asyncio.Event()
        self._wakers.add(wake)
        try:
            # One statement, so the existing entries and the starting revision are one snapshot.
            rows = await self._db.execute_fetchall("SELECT key, value, revision FROM entries ORDER BY revision")
            last = rows[-1][2] if rows else 0
            if include_existing:
                for k, v, r in rows:
                    if v is not None and matches(pattern, k):
                        yield Entry(k, bytes(v), r)
            del rows
            while not self._closed:
                wake.clear()  # before the read, so a write during it wakes the next wait
                try:
                    changes = await self._db.execute_fetchall(
                        "SELECT key, value, revision FROM entries WHERE revision > ? ORDER BY revision", (last,))
                except (ValueError, sqlite3.ProgrammingError):  # the connection was closed under us
                    if self._closed:
                        return
                    raise
                for k, v, r in changes:
                    last = r
                    if matches(pattern, k):
                        yield Entry(k, None if v is None else bytes(v), r)
                if not changes and not self._closed:
                    try:
                        await asyncio.wait_for(wake.wait(), self.poll_interval)
                    except TimeoutError:
                        pass  # look for writes by other processes
        finally:
            self._wakers.discard(wake)


def _literal_prefix(pattern: str) -> str:
    """The part of a pattern before its first wildcard token, for a cheap SQL pre-filter."""
    out: list[str] = []
    for token in pattern.split("."):
        if token in ("*", ">"):
            return ".".join(out) + "." if out else ""
        out.append(token)
    return pattern
