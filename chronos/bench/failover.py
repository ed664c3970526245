"""``chronos bench failover``: SIGKILL the leading scheduler under an every-second schedule.

An embedded nats-server, one bench worker process and two scheduler processes
(A and B). A schedule fires ``bench.noop`` every second. Once a few fires have
run under A, A is killed with SIGKILL by its PID (no resign: its lease must
expire by its TTL). Reported:

* takeover: seconds from the kill until the lease names B (polled every 20 ms);
  the target is at most ``scheduler.lease_ttl`` + 1 s;
* duplicate fires: fire times with more than one job, or a job the worker ran
  more than once;
* missed fires: whole seconds between the first and the last fire with no job;
* the worst delay of a fire (job created minus fire time): the fires due
  during the takeover are made late by the new leader, not skipped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgspec

from ..client import Client
from ..config import load_settings
from ..embedded import EmbeddedServer
from ..leadership import read_leader
from ._common import read_stats, spawn_worker, stop_process, wait_for_workers
from ._scheduler import spawn_scheduler
from .precision import _line


class FailoverResult(msgspec.Struct):
    lease_ttl: float
    takeover_seconds: float
    fires: int
    duplicate_fires: int
    missed_fires: int
    max_fire_delay_seconds: float
    runs: int
    killed_pid: int
    passed: bool


async def run_failover(before: float = 4.0, after: float = 6.0, lease_ttl: float = 5.0,
                       timeout: float = 60.0) -> FailoverResult:
    with tempfile.TemporaryDirectory(prefix="chronos-bench-") as tmp, EmbeddedServer(Path(tmp) / "js") as server:
        ns = "bench"
        settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url},
                                            "scheduler": {"lease_ttl": lease_ttl}}, read_env=False)
        client = await Client.connect(settings)
        stats_file = Path(tmp) / "worker.ids"
        worker = spawn_worker(server.url, ns, concurrency=8, stats_file=stats_file)
        ttl = {"lease_ttl": str(lease_ttl)}
        a = spawn_scheduler(server.url, ns, archive=Path(tmp) / "a.sqlite3", node_id="sched-a", overrides=ttl)
        b = None
        try:
            await wait_for_workers(client, 1)
            await _line(a, "LEADING", 30)
            b = spawn_scheduler(server.url, ns, archive=Path(tmp) / "b.sqlite3", node_id="sched-b", overrides=ttl)
            await _line(b, "READY", 30)
            await client.add_schedule("tick", "bench.noop", every=1)
            await asyncio.sleep(before)  # a few fires under A (the bench measures wall time, so it waits)
            leader = await read_leader(client.conn)
            assert leader is not None and leader.node == "sched-a", leader
            os.kill(a.pid, signal.SIGKILL)
            killed = time.time()
            a.wait()
            takeover = float("nan")
            deadline = killed + timeout
            while time.time() < deadline:
                info = await read_leader(client.conn)
                if info is not None and info.node == "sched-b":
                    takeover = time.time() - killed
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(after)
            await client.remove_schedule("tick")
            jobs = [r for r in (await client.list(limit=100_000)).jobs if r.schedule_id == "tick"]
            # Let the last jobs finish so the run counts are complete.
            for rec in jobs:
                try:
                    await client.wait(rec.id, timeout=10)
                except TimeoutError:
                    pass
        finally:
            for proc in (b, worker):
                if proc is not None:
                    stop_process(proc)
            if a.poll() is None:
                stop_process(a)
            await client.close()
        runs = read_stats(stats_file).get("runs", {})

    per_fire = Counter(int(r.fire_time or 0) for r in jobs)
    fire_times = sorted(per_fire)
    expected = set(range(fire_times[0], fire_times[-1] + 1)) if fire_times else set()
    duplicates = sum(1 for c in per_fire.values() if c > 1) + sum(1 for r in jobs if runs.get(r.id, 0) > 1)
    missed = len(expected - set(fire_times))
    delay = max((r.created_at - (r.fire_time or r.created_at) for r in jobs), default=0.0)
    return FailoverResult(
        lease_ttl=lease_ttl,
        takeover_seconds=round(takeover, 3),
        fires=len(fire_times),
        duplicate_fires=duplicates,
        missed_fires=missed,
        max_fire_delay_seconds=round(delay, 3),
        runs=sum(runs.get(r.id, 0) for r in jobs),
        killed_pid=a.pid,
        passed=takeover <= lease_ttl + 1 and duplicates == 0 and missed == 0,
    )


if __name__ == "__main__":
    print(msgspec.json.encode(asyncio.run(run_failover())).decode())
