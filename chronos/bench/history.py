"""``chronos bench history``: history queries on a big archive file.

Rows are written straight into an archive file (the archive's own schema, indexes
and FTS5 triggers; big transactions): 20 tasks, 5 queues, finished over the last
30 days, 1 % discarded with an error and a short traceback (49 kinds of error
text), the rest completed, written in finish order as a node's archive fills. Then each query is timed as the archive answers it
(``ArchiveDB.query``, median and max of ``repeat``), and the same queries once
end to end through NATS (``Client.history`` -> the node's responder -> reply).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from .. import codec
from ..archive import ArchiveDB, HistoryQuery, history_cursor
from ..scheduler.archiver import Archiver
from ..client import Client
from ..config import load_settings
from ..connection import ensure_topology
from ..embedded import EmbeddedServer
from ..ids import new_job_id
from ..models import JobRecord, JobSpec
from ..states import JobState


class HistoryQueryTime(msgspec.Struct):
    query: str
    rows: int
    median_ms: float
    max_ms: float
    end_to_end_ms: float | None = None


class HistoryResult(msgspec.Struct):
    rows: int
    build_seconds: float
    file_mb: float
    queries: list[HistoryQueryTime]


def _rows(start: int, n: int, now: float, rng: random.Random, ns: str, total: int) -> list[tuple[Any, ...]]:
    out = []
    step = 30 * 86400 / total
    for i in range(start, start + n):
        # In finish order, as an archive fills (rows arrive as jobs finish), over the last 30 days.
        finished = now - 30 * 86400 + i * step + rng.uniform(0, step)
        failed = i % 100 == 0
        state = JobState.DISCARDED if failed else JobState.COMPLETED
        error = f"ValueError: bad input {i % 49} in step {i % 7}" if failed else None
        tb = (f"Traceback (most recent call last):\n  File \"tasks.py\", line {i % 300}, in run\n{error}"
              if failed else None)
        spec = JobSpec(task=f"bench.t{i % 20}", args=[i], queue=f"q{i % 5}")
        rec = JobRecord(id=new_job_id(finished - 1), spec=spec, state=state, created_at=finished - 1,
                        updated_at=finished, finished_at=finished, attempt=1, error=error)
        out.append((ns, rec.id, spec.task, str(state), spec.queue, rec.created_at, finished, finished, error, tb, 0,
                    codec.encode(rec)))
    return out


async def build(path: Path, rows: int, ns: str, chunk: int = 100_000) -> float:
    db = ArchiveDB(path, ns)
    await db.open()  # the schema, indexes and FTS triggers, as a node makes them
    await db.close()
    t0 = time.monotonic()
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-262144")
    rng = random.Random(11)
    now = time.time()
    sql = ("INSERT INTO jobs (ns, id, task, state, queue, created_at, updated_at, finished_at, error, traceback, "
           "partial, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    for start in range(0, rows, chunk):
        con.executemany(sql, _rows(start, min(chunk, rows - start), now, rng, ns, rows))
        con.commit()
        await asyncio.sleep(0)
    con.execute("ANALYZE")
    con.commit()
    con.close()
    return time.monotonic() - t0


def _queries(now: float) -> dict[str, HistoryQuery]:
    return {
        "newest 50": HistoryQuery(limit=50),
        "task": HistoryQuery(task="bench.t7", limit=50),
        "state=discarded": HistoryQuery(state="discarded", limit=50),
        "queue": HistoryQuery(queue="q3", limit=50),
        "1 h window 10 days ago": HistoryQuery(since=now - 10 * 86400 - 3600, until=now - 10 * 86400, limit=50),
        "task + state + 1 day": HistoryQuery(task="bench.t0", state="discarded", since=now - 86400, limit=50),
        "text, rare (FTS)": HistoryQuery(text="bad input 42 in step 0", limit=50),
        "text, common": HistoryQuery(text="ValueError", limit=50),
        "text + task": HistoryQuery(text="bad input 3", task="bench.t0", limit=50),
        "no match": HistoryQuery(text="no such text anywhere", limit=50),
    }


async def run_history(rows: int = 10_000_000, *, repeat: int = 5, end_to_end: bool = True,
                      path: str | None = None) -> HistoryResult:
    ns = "benchhist"
    with tempfile.TemporaryDirectory(prefix="chronos-bench-history-") as tmp:
        file = Path(path) if path else Path(tmp) / "archive.sqlite3"
        built = 0.0
        if not file.exists():
            built = await build(file, rows, ns)
        db = ArchiveDB(file, ns)
        await db.open()
        now = time.time()
        results = []
        try:
            for name, q in _queries(now).items():
                times = []
                found: list[JobRecord] = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    found = await db.query(q)
                    times.append((time.perf_counter() - t0) * 1000)
                results.append(HistoryQueryTime(name, len(found), round(statistics.median(times), 1),
                                                round(max(times), 1)))
            # The second page of a task (the cursor of the listing envelope).
            first = await db.query(HistoryQuery(task="bench.t7", limit=50))
            q2 = HistoryQuery(task="bench.t7", limit=50, cursor=history_cursor(first, 50))
            t0 = time.perf_counter()
            second = await db.query(q2)
            results.append(HistoryQueryTime("task, page 2 (cursor)", len(second),
                                            round((time.perf_counter() - t0) * 1000, 1), 0.0))
        finally:
            await db.close()
        if end_to_end:
            await _end_to_end(file, ns, now, results, Path(tmp))
        size = sum(p.stat().st_size for p in file.parent.glob(file.name + "*")) / 1024**2
    return HistoryResult(rows=rows, build_seconds=round(built, 1), file_mb=round(size, 1), queries=results)


async def _end_to_end(file: Path, ns: str, now: float, results: list[HistoryQueryTime], tmp: Path) -> None:
    with EmbeddedServer(tmp / "js") as server:
        settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url}}, read_env=False)
        client = await Client.connect(settings)
        await ensure_topology(client.conn)
        archiver = Archiver(client.conn, path=file)
        task = asyncio.create_task(archiver.run())
        try:
            await asyncio.wait_for(archiver.ready.wait(), 60)
            by_name = {r.query: r for r in results}
            for name, q in _queries(now).items():
                kw = {k: v for k, v in msgspec.structs.asdict(q).items() if k not in ("op", "v", "cursor")}
                await client.history(**kw)  # warm
                t0 = time.perf_counter()
                await client.history(**kw)
                by_name[name].end_to_end_ms = round((time.perf_counter() - t0) * 1000, 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
