"""``chronos bench scale``: the cost curve of listings, counts, the console and the idle scheduler.

One embedded nats-server and one namespace, grown in place (100k, then 200k more,
then 700k more: generating a million records takes minutes, so the sizes share one
store). Records are finished jobs written straight into the jobs KV (``bench
listing``'s generator); ``schedules`` idle schedules (each fires once a day) and ``running``
jobs running on a live worker (a heartbeat the bench keeps fresh) are written before the
scheduler starts. One scheduler process (this module run as a
program) follows the store; it reports its rescuer's passes through a small stats
file. At each size:

* index catch-up: how long the scheduler's job index takes to hold the new records;
* ``Client.list`` first page (50), unfiltered and ``state=discarded``, median of
  ``repeat``; the Python memory one listing allocates (tracemalloc peak);
* ``Client.counts`` latency;
* the console's jobs view: key ``2`` to the first frame that shows the page's rows
  (headless, ``chronos.tui.measure``; passed in by the CLI, the core never imports Textual);
* then, with nothing happening: the scheduler process's CPU (and the server's) over
  ``windows`` consecutive windows of ``idle`` seconds, its RSS, and the rescuer's
  pass time (median of the passes inside the windows) and records read per pass.

The 1-minute load average is recorded at each size: the box is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
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
from ..models import Attempt, JobRecord, JobSpec, WorkerHeartbeat
from ..states import JobState
from ._common import cpu_seconds, stop_process
from .listing import _rss_mb, _timed, fill
from .schedules import _write_schedules

PAGE = 50


class ScalePoint(msgspec.Struct):
    records: int
    fill_seconds: float  # writing this size's new records into the KV (cumulative sizes)
    index_catch_up_seconds: float
    first_page_ms: float  # Client.list(limit=50), median
    first_page_discarded_ms: float  # Client.list(state="discarded", limit=50), median
    first_page_max_ms: float  # worst single call of both
    counts_ms: float
    client_peak_kb: float  # Python allocations of one listing call
    tui_paint_ms: float | None  # key `2` -> first frame with the jobs rows
    tui_paint_again_ms: float | None  # the same, the view already built once
    scheduler_cpu_percent: list[float]  # one per idle window
    server_cpu_percent: list[float]
    scheduler_rss_mb: float
    rescuer_pass_ms: float | None  # median wall time of a rescuer pass inside the windows
    rescuer_passes: int
    rescuer_records_read: int  # records the last pass read from the KV
    loadavg: str  # /proc/loadavg's 1, 5 and 15 minute averages when the point was done


class ScaleResult(msgspec.Struct):
    points: list[ScalePoint]
    schedules: int
    running: int  # jobs running on a live worker, besides the finished records
    idle_seconds: float
    note: str = ("scheduler CPU is the whole scheduler process (leader loops, archiver, job index) with nothing "
                 "happening; 100 % is one core; the box is shared, see loadavg")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _read_stats(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


async def _wait_indexed(client: Client, want: int, timeout: float) -> None:
    """Until a scheduler's index answers with ``want`` records (asking the index only: a fallback
    scan of the KV on every poll would load the box the benchmark measures)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = await client.counts(fallback=False, timeout=2.0)
        except Exception:  # the scheduler may still be starting  # noqa: BLE001
            c = None
        if c is not None and c.total >= want:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the index did not reach {want} rows within {timeout}s")


LIVE = "bench-live"  # the worker the running records belong to; its heartbeat is kept fresh


async def _write_running(client: Client, n: int, now: float) -> None:
    """``n`` jobs running on a live worker (started an hour ago): the rescuer reads each every pass."""
    js = client.conn.js
    pending = []
    for i in range(n):
        started = now - 3600 + i * 0.001
        spec = JobSpec(task="bench.run", args=[i], queue="q0")
        rec = JobRecord(id=new_job_id(started), spec=spec, state=JobState.RUNNING, created_at=started,
                        updated_at=started, attempt=1, worker=LIVE,
                        attempts=[Attempt(number=1, started_at=started, worker=LIVE)])
        pending.append(await js.publish_async(client.names.kv_subject(client.names.jobs_bucket, rec.id),
                                              codec.encode(rec)))
    await asyncio.gather(*pending)


async def _keep_alive(client: Client, started: float) -> None:
    subject = client.names.kv_subject(client.names.workers_bucket, LIVE)
    while True:
        hb = WorkerHeartbeat(id=LIVE, host="bench", pid=os.getpid(), queues=["q0"], slots_total=1_000_000,
                             slots_used=0, started_at=started, heartbeat_at=time.time())
        await client.conn.js.publish(subject, codec.encode(hb))
        await asyncio.sleep(5.0)


def spawn_child(url: str, namespace: str, *, archive: Path, stats: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "chronos.bench.scale", "--url", url, "--namespace", namespace,
            "--archive", str(archive), "--stats", str(stats)]
    return subprocess.Popen(args, start_new_session=True)


async def _idle_windows(proc: subprocess.Popen[bytes], server_pid: int | None, stats: Path, *, windows: int,
                        idle: float) -> tuple[list[float], list[float], list[float], int, int]:
    before = _read_stats(stats)
    sched: list[float] = []
    srv: list[float] = []
    for _ in range(windows):
        c0, s0, w0 = cpu_seconds(proc.pid), cpu_seconds(server_pid) if server_pid else 0.0, time.monotonic()
        await asyncio.sleep(idle)
        wall = time.monotonic() - w0
        sched.append(round((cpu_seconds(proc.pid) - c0) / wall * 100, 1))
        if server_pid:
            srv.append(round((cpu_seconds(server_pid) - s0) / wall * 100, 1))
    after = _read_stats(stats)
    n = int(after.get("passes", 0)) - int(before.get("passes", 0))
    times = list(after.get("pass_ms", []))[-n:] if n > 0 else []
    return sched, srv, times, n, int(after.get("scanned", 0))


async def run_scale(records: list[int], *, schedules: int = 10000, running: int = 0, repeat: int = 5,
                    idle: float = 60.0, windows: int = 2, namespace: str = "benchscale", tui: Any = None,
                    progress: Any = None) -> ScaleResult:
    """``tui``: an ``async (settings, client) -> dict`` with ``jobs_rows_ms`` and ``jobs_again_ms``
    (chronos.tui.measure.measure_paint). ``progress``: a ``(str) -> None`` told what is going on."""
    say = progress or (lambda _m: None)
    sizes = sorted(records)
    rng = random.Random(7)
    base = time.time() - 6 * 86400  # inside the 7-day retention: the pruner has nothing to do
    points: list[ScalePoint] = []
    with tempfile.TemporaryDirectory(prefix="chronos-bench-scale-") as tmp:
        server = EmbeddedServer(Path(tmp) / "js")
        server.start()
        proc = None
        stats = Path(tmp) / "stats.json"
        try:
            settings = load_settings(overrides={"namespace": namespace, "nats": {"url": server.url},
                                                "jobs": {"check_task_names": False}}, read_env=False)
            client = await Client.connect(settings)
            if schedules:
                await _write_schedules(client, schedules, time.time())
            keeper = None
            if running:
                keeper = asyncio.ensure_future(_keep_alive(client, time.time()))
                await _write_running(client, running, time.time())
            have = 0
            for size in sizes:
                say(f"writing records {have:,} -> {size:,}")
                t0 = time.monotonic()
                await fill(client, have, size - have, base, rng)
                fill_s = time.monotonic() - t0
                size_all = size + running
                say(f"  {size - have:,} records in {fill_s:.0f} s; waiting for the index")
                t1 = time.monotonic()
                if proc is None:
                    proc = spawn_child(server.url, namespace, archive=Path(tmp) / "node.sqlite3", stats=stats)
                await _wait_indexed(client, size_all, 3600)
                catch_up = time.monotonic() - t1
                have = size
                plain = await _timed(lambda: client.list(limit=PAGE), repeat)
                disc = await _timed(lambda: client.list(limit=PAGE, state="discarded"), repeat)
                counts = await _timed(client.counts, repeat)
                tracemalloc.start()
                await client.list(limit=PAGE, state="completed")
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                paint: dict[str, float] = await tui(settings, client) if tui is not None else {}
                say(f"  indexed in {catch_up:.0f} s; idle windows ({windows} x {idle:.0f} s)")
                await asyncio.sleep(5.0)  # let the listing's and the console's requests settle
                sched, srv, pass_ms, passes, scanned = await _idle_windows(
                    proc, server.proc.pid if server.proc else None, stats, windows=windows, idle=idle)
                points.append(ScalePoint(
                    records=size, fill_seconds=round(fill_s, 1), index_catch_up_seconds=round(catch_up, 1),
                    first_page_ms=round(statistics.median(plain), 1),
                    first_page_discarded_ms=round(statistics.median(disc), 1),
                    first_page_max_ms=round(max(plain + disc), 1), counts_ms=round(statistics.median(counts), 1),
                    client_peak_kb=round(peak / 1024, 1), tui_paint_ms=paint.get("jobs_rows_ms"),
                    tui_paint_again_ms=paint.get("jobs_again_ms"), scheduler_cpu_percent=sched,
                    server_cpu_percent=srv, scheduler_rss_mb=round(_rss_mb(proc.pid), 1),
                    rescuer_pass_ms=round(statistics.median(pass_ms), 2) if pass_ms else None,
                    rescuer_passes=passes, rescuer_records_read=scanned, loadavg=loadavg()))
                say(f"  {size:,}: scheduler CPU {sched} %, loadavg {points[-1].loadavg}")
            if keeper is not None:
                keeper.cancel()
            await client.close()
        finally:
            if proc is not None:
                stop_process(proc)
            server.cleanup()
    return ScaleResult(points=points, schedules=schedules, running=running, idle_seconds=idle)


# --- the scheduler process ---------------------------------------------------------------------------


async def _child(args: argparse.Namespace) -> None:
    from ..runtime import tune_gc_for_timers
    from ..scheduler import SchedulerService

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    settings = load_settings(overrides={"namespace": args.namespace, "nats": {"url": args.url},
                                        "scheduler": {"archive_path": args.archive}}, read_env=False)
    tune_gc_for_timers()  # as `chronos serve scheduler` does
    svc = SchedulerService(settings, node_id="bench-scale", log_events=False)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, svc.stop)
    stats = Path(args.stats)

    async def report() -> None:
        # Once a second, a few numbers of the rescuer (cheap: no effect on the CPU being measured).
        while True:
            r = svc.rescuer
            if r is not None:
                tmp = stats.with_suffix(".tmp")
                tmp.write_text(json.dumps({"passes": r.passes, "scanned": r.scanned,
                                           "pass_ms": [round(s * 1000, 2) for s in r.pass_seconds]}))
                os.replace(tmp, stats)
            await asyncio.sleep(1.0)

    teller = asyncio.ensure_future(report())
    try:
        await svc.run()
    finally:
        teller.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--archive", required=True)
    ap.add_argument("--stats", required=True)
    asyncio.run(_child(ap.parse_args()))
