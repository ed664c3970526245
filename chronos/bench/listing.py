"""``chronos bench listing``: listing, counts and idle cost as the jobs bucket grows.

An embedded nats-server; finished job records written straight into the jobs KV
(pipelined publishes to ``$KV.<bucket>.<id>``, as a busy cluster's history would
leave them: 20 tasks, 5 queues, 100 tags, 1 % discarded, created in order one
every 0.4 s from six days ago, so nothing is past the retention). One scheduler process (its job index
builds from the KV stream). At each size (cumulative: 100k, then 200k more, ...):

* index catch-up: how long the index takes to hold the new records, and its rate;
* ``Client.list`` first page (50) per filter, median of ``repeat`` calls, and the
  Python memory the client allocated for one (tracemalloc peak);
* ``Client.counts`` latency;
* ``--where`` searches (a JSON path into args, ``SEARCHES``): first page, alone and bounded by
  another filter, and the rate of a scan no other filter bounds (a path that matches nothing);
* the scheduler process's CPU over ``idle`` seconds with nothing happening, and its RSS.

At the first size it also measures the archiver's ingest rate: terminal events
for records already in the KV, published in one burst, until the archive file
holds them all (the old path every listing used to need, for comparison).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec

from .. import codec
from ..client import Client
from ..config import load_settings
from ..embedded import EmbeddedServer
from ..ids import new_job_id
from ..models import Attempt, Event, EventBatch, JobRecord, JobSpec
from ..states import JobState
from ._common import cpu_seconds, stop_process
from ._scheduler import spawn_scheduler

FILTERS: dict[str, dict[str, Any]] = {
    "none": {},
    "state=discarded": {"state": "discarded"},
    "state=completed": {"state": "completed"},
    "queue=q3": {"queue": "q3"},
    "task=bench.t7": {"task": "bench.t7"},
    "tag=tag42": {"tag": "tag42"},
    "created in 1 h": {"since": 3600.0, "until": 7200.0},  # seconds after the first job: filled in at run time
    "failed (2 states)": {"states": ["retryable", "discarded"]},
}

# Args are {"customer_id": i % 5000, "n": i}: one job in 5,000 has a given customer.
SEARCHES: dict[str, dict[str, Any]] = {
    "unselective (args.n>=0)": {"where": ["args.n>=0"]},
    "selective (customer)": {"where": ["args.customer_id=4242"]},
    "selective + state=discarded": {"where": ["args.customer_id=4200"], "state": "discarded"},
    "selective + tag=tag42": {"where": ["args.customer_id=4242"], "tag": "tag42"},
    "selective + created in 1 h": {"where": ["args.customer_id=4242"], "since": 3600.0, "until": 7200.0},
}


class ListingPoint(msgspec.Struct):
    records: int
    fill_seconds: float
    index_catch_up_seconds: float
    index_rows_per_s: float
    first_page_ms: dict[str, float]  # filter -> median
    first_page_max_ms: float
    second_page_ms: float
    counts_ms: float
    client_peak_kb: float  # Python allocations of one listing call
    idle_cpu_percent: float
    scheduler_rss_mb: float
    archive_file_mb: float
    tui_ms: dict[str, float] | None = None  # counts shown, jobs rows shown (with --tui)
    search_ms: dict[str, float] | None = None  # --where first page (50) per case, median
    search_found: dict[str, int] | None = None  # jobs on that first page (fewer than 50: the budget ran out)
    scan_rows_per_s: float = 0.0  # an unbounded --where scan (a path nothing matches), rows per second


class ListingResult(msgspec.Struct):
    points: list[ListingPoint]
    archiver_events_per_s: float | None = None
    note: str = ("idle CPU is the whole scheduler process (every leader loop, the archiver and the index); "
                 "the listing's records are read from the KV, ids come from the index")


SPACING = 0.4  # seconds between two jobs' creation: a million jobs span 4.6 days, inside the retention


def _record(i: int, base: float, rng: random.Random) -> JobRecord:
    # Created in order (ids are time-ordered, as a real history's are), finished a few seconds later.
    created = base + i * SPACING
    finished = created + rng.uniform(0.01, 5)
    state = JobState.DISCARDED if i % 100 == 0 else JobState.COMPLETED
    spec = JobSpec(task=f"bench.t{i % 20}", args={"customer_id": i % 5000, "n": i}, queue=f"q{i % 5}",
                   tags=[f"tag{i % 100}"])
    attempt = Attempt(number=1, started_at=created, worker="bench", ended_at=finished,
                      outcome="completed" if state is JobState.COMPLETED else "error",
                      error=None if state is JobState.COMPLETED else f"ValueError: bad input {i % 37}")
    return JobRecord(id=new_job_id(created), spec=spec, state=state, created_at=created, updated_at=finished,
                     finished_at=finished, attempt=1, attempts=[attempt], result=i if state is JobState.COMPLETED
                     else None, error=attempt.error, worker="bench")


async def fill(client: Client, start: int, n: int, base: float, rng: random.Random, window: int = 3000) -> list[str]:
    """Write ``n`` finished records into the jobs KV with pipelined publishes; returns a sample of ids."""
    js = client.conn.js
    names = client.names
    sample: list[str] = []  # every 10th id (the archiver's ingest is measured on these)
    pending: list[asyncio.Future[Any]] = []
    for i in range(start, start + n):
        rec = _record(i, base, rng)
        if i % 10 == 0 and len(sample) < 20000:
            sample.append(rec.id)
        pending.append(await js.publish_async(names.kv_subject(names.jobs_bucket, rec.id), codec.encode(rec)))
        if len(pending) >= window:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return sample


async def _wait_indexed(client: Client, want: int, timeout: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            c = await client.counts()
            if c.source != "scan" and c.total >= want:
                return time.monotonic() - began
        except Exception:  # the scheduler may still be starting
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the index did not reach {want} rows within {timeout}s")


async def _scan_rate(client: Client, size: int) -> float:
    """Rows per second of a --where scan nothing bounds: a path no job has, counted to the end
    (budgeted requests resume by cursor, as `jobs cancel --all --dry-run` counts)."""
    from ..listing import count_matches

    q = client.jobs.query(where=["args.no_such_key=1"])
    t0 = time.perf_counter()
    n, complete = await count_matches(client.conn, client.ops, q, budget=600)
    took = time.perf_counter() - t0
    return size / took if complete and n == 0 and took > 0 else 0.0


async def _timed(coro_fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await coro_fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def _archiver_rate(client: Client, archive: Path, ids: list[str], before: int) -> float:
    """Terminal events for records in the KV, in one burst; events archived per second."""
    names = client.names
    nc = client.conn.nc
    t0 = time.monotonic()
    for start in range(0, len(ids), 50):
        batch = EventBatch([Event(kind="completed", at=time.time(), job_id=i, task="bench.t0", queue="q0")
                            for i in ids[start:start + 50]])
        await nc.publish(names.event_subject("completed", "q0"), codec.encode(batch))
    await nc.flush()
    want = before + len(set(ids))
    while time.monotonic() - t0 < 600:
        with sqlite3.connect(f"file:{archive}?mode=ro", uri=True) as db:
            n = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        if n >= want:
            return len(ids) / (time.monotonic() - t0)
        await asyncio.sleep(0.2)
    return 0.0


async def run_listing(records: list[int], *, repeat: int = 5, idle: float = 20.0, measure_archiver: bool = True,
                      namespace: str = "benchlist", tui: Any = None) -> ListingResult:
    """``tui``: an ``async (settings, client) -> dict`` that times the console (chronos.tui.measure; passed
    in by the CLI, since the core library never imports Textual)."""
    sizes = sorted(records)
    rng = random.Random(7)
    base = time.time() - 6 * 86400  # the first job's creation
    points: list[ListingPoint] = []
    archiver_rate: float | None = None
    with tempfile.TemporaryDirectory(prefix="chronos-bench-listing-") as tmp:
        server = EmbeddedServer(Path(tmp) / "js")
        server.start()
        proc = None
        try:
            settings = load_settings(overrides={"namespace": namespace, "nats": {"url": server.url},
                                                "streams": {"events_max_bytes": 256 * 1024**2}}, read_env=False)
            client = await Client.connect(settings)
            archive = Path(tmp) / "node.sqlite3"
            have = 0
            sample: list[str] = []
            for size in sizes:
                t0 = time.monotonic()
                sample += await fill(client, have, size - have, base, rng)
                fill_s = time.monotonic() - t0
                t1 = time.monotonic()
                if proc is None:
                    proc = spawn_scheduler(server.url, namespace, archive=archive, node_id="bench")
                await _wait_indexed(client, size, 3600)
                catch_up = time.monotonic() - t1
                rate = (size - have) / catch_up if catch_up > 0 else 0.0
                have = size
                assert proc is not None
                if measure_archiver and archiver_rate is None:
                    with sqlite3.connect(f"file:{archive}?mode=ro", uri=True) as db:
                        before = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
                    archiver_rate = await _archiver_rate(client, archive, sample[:20000] if len(sample) >= 20000
                                                         else [*sample], before)
                # Listings.
                medians: dict[str, float] = {}
                worst = 0.0
                for name, f in FILTERS.items():
                    kw = dict(f)
                    if "since" in kw:
                        kw["since"] += base
                        kw["until"] += base
                    times = await _timed(lambda kw=kw: client.list(limit=50, **kw), repeat)
                    medians[name] = round(statistics.median(times), 1)
                    worst = max(worst, max(times))
                # Searches (--where): the first page, and an unbounded scan's rate.
                search_ms: dict[str, float] = {}
                search_found: dict[str, int] = {}
                for name, f in SEARCHES.items():
                    kw = dict(f)
                    if "since" in kw:
                        kw["since"] += base
                        kw["until"] += base
                    times = await _timed(lambda kw=kw: client.list(limit=50, **kw), repeat)
                    search_ms[name] = round(statistics.median(times), 1)
                    search_found[name] = len((await client.list(limit=50, **kw)).jobs)
                scan_rate = await _scan_rate(client, size)
                first = await client.list(limit=50)
                second = await _timed(lambda: client.list(limit=50, cursor=first.next), repeat)
                counts = await _timed(client.counts, repeat)
                tracemalloc.start()
                await client.list(limit=50, state="completed")
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                # Idle cost.
                await asyncio.sleep(2.0)
                c0, w0 = cpu_seconds(proc.pid), time.monotonic()
                await asyncio.sleep(idle)
                cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - w0) * 100
                size_mb = sum(p.stat().st_size for p in Path(tmp).glob("node.sqlite3*")) / 1024**2
                tui_ms = await tui(settings, client) if tui is not None else None
                points.append(ListingPoint(
                    records=size, fill_seconds=round(fill_s, 1), index_catch_up_seconds=round(catch_up, 1),
                    index_rows_per_s=round(rate), first_page_ms=medians, first_page_max_ms=round(worst, 1),
                    second_page_ms=round(statistics.median(second), 1),
                    counts_ms=round(statistics.median(counts), 1), client_peak_kb=round(peak / 1024, 1),
                    idle_cpu_percent=round(cpu, 1), scheduler_rss_mb=round(_rss_mb(proc.pid), 1),
                    archive_file_mb=round(size_mb, 1), tui_ms=tui_ms, search_ms=search_ms,
                    search_found=search_found, scan_rows_per_s=round(scan_rate)))
            await client.close()
        finally:
            if proc is not None:
                stop_process(proc)
            server.cleanup()
    return ListingResult(points=points, archiver_events_per_s=None if archiver_rate is None else round(archiver_rate))
