"""``chronos bench schedules``: what N idle schedules cost the scheduler, and whether timing suffers.

For each count (0, then ``n``) a fresh namespace on one embedded nats-server:
``count`` schedules that fire once a day (written straight into the schedules KV,
pipelined) plus one that fires every second; one scheduler process. Then:

* idle CPU of the scheduler process over ``idle`` seconds (only the per-second
  schedule fires meanwhile);
* the per-second schedule's fire lateness (its work message, seen by an outside
  subscriber, minus the fire time);
* delayed-job precision: ``delayed`` jobs with ``run_at`` spread over ``spread``
  seconds, lateness of their work messages (as ``bench precision`` measures).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from .. import codec
from ..client import Client
from ..config import load_settings
from ..embedded import EmbeddedServer
from ..models import JobMessage, Schedule
from ._common import cpu_seconds, stop_process
from ._scheduler import spawn_scheduler
from .listing import _rss_mb
from .precision import _line, _pct


class SchedulesPoint(msgspec.Struct):
    schedules: int
    load_seconds: float  # scheduler start -> leading (its enqueuer then loads the schedules from the watch)
    idle_cpu_percent: float
    scheduler_rss_mb: float
    fire_p50_ms: float
    fire_max_ms: float
    fires: int
    delayed_p50_ms: float
    delayed_p99_ms: float
    delayed_max_ms: float
    delayed_observed: int


class SchedulesResult(msgspec.Struct):
    points: list[SchedulesPoint]
    note: str = "idle CPU is the whole scheduler process; lateness is seen by an outside subscriber"


async def _write_schedules(client: Client, count: int, now: float) -> None:
    js = client.conn.js
    bucket = client.names.schedules_bucket
    pending: list[Any] = []
    for i in range(count):
        s = Schedule(name=f"daily{i}", task="bench.noop", created_at=now, updated_at=now, every=86400.0,
                     anchor=now - random.uniform(0, 86400) + 600)  # next fires 10 min to a day away
        pending.append(await js.publish_async(client.names.kv_subject(bucket, s.name), codec.encode(s)))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def _point(server: EmbeddedServer, tmp: Path, count: int, *, idle: float, delayed: int,
                 spread: float) -> SchedulesPoint:
    ns = f"benchsched{count}"
    settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url},
                                        "jobs": {"check_task_names": False}}, read_env=False)
    client = await Client.connect(settings)
    now = time.time()
    await _write_schedules(client, count, now)
    await client.add_schedule("tick", "bench.noop", every=1)
    seen_fire: dict[str, float] = {}
    fire_time: dict[str, float] = {}
    seen_job: dict[str, float] = {}

    async def on_work(msg: Any) -> None:
        t = time.time()
        rec = codec.decode(msg.data, JobMessage).record
        if rec.fire_time is not None:
            seen_fire.setdefault(rec.id, t)
            fire_time[rec.id] = rec.fire_time
        else:
            seen_job.setdefault(rec.id, t)

    sub = await client.conn.nc.subscribe(client.names.jobs_wildcard(), cb=on_work)
    t0 = time.monotonic()
    proc = spawn_scheduler(server.url, ns, archive=tmp / f"{ns}.sqlite3", node_id=ns)
    try:
        await _line(proc, "LEADING", 120)
        load = time.monotonic() - t0
        await asyncio.sleep(3.0)  # the enqueuer's watch delivers the schedules
        seen_fire.clear()
        c0, w0 = cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(idle)
        cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - w0) * 100
        rss = _rss_mb(proc.pid)
        fires = sorted((seen_fire[i] - fire_time[i]) * 1000 for i in list(seen_fire))
        start = time.time() + 2.0
        rng = random.Random(7)
        specs = [client.build_spec("bench.noop", run_at=start + rng.uniform(0, spread)) for _ in range(delayed)]
        ids = await client.submit_specs(specs)
        run_at = {i: s.run_at or 0.0 for i, s in zip(ids, specs)}
        deadline = time.monotonic() + spread + 20
        while time.monotonic() < deadline and len([i for i in run_at if i in seen_job]) < delayed:
            await asyncio.sleep(0.2)
        late = sorted((seen_job[i] - run_at[i]) * 1000 for i in run_at if i in seen_job)
    finally:
        stop_process(proc)
        await sub.unsubscribe()
        await client.close()
    return SchedulesPoint(
        schedules=count, load_seconds=round(load, 2), idle_cpu_percent=round(cpu, 1), scheduler_rss_mb=round(rss, 1),
        fire_p50_ms=round(statistics.median(fires), 1) if fires else float("nan"),
        fire_max_ms=round(fires[-1], 1) if fires else float("nan"), fires=len(fires),
        delayed_p50_ms=_pct(late, 50), delayed_p99_ms=_pct(late, 99),
        delayed_max_ms=round(late[-1], 1) if late else float("nan"), delayed_observed=len(late))


async def run_schedules(n: int = 10000, *, idle: float = 20.0, delayed: int = 500, spread: float = 10.0,
                        counts: list[int] | None = None) -> SchedulesResult:
    points = []
    with tempfile.TemporaryDirectory(prefix="chronos-bench-sched-") as tmp:
        with EmbeddedServer(Path(tmp) / "js") as server:
            for count in counts if counts is not None else [0, n]:
                points.append(await _point(server, Path(tmp), count, idle=idle, delayed=delayed, spread=spread))
    return SchedulesResult(points=points)
