"""``chronos bench precision``: how late delayed jobs are published, seen from outside the scheduler.

An embedded nats-server and one scheduler process. N jobs are submitted with
``run_at`` spread uniformly over ``spread`` seconds (starting ``lead`` seconds
after the submit finished, so every job is parked before the first is due).

Lateness = the moment a job's work message reaches an observer (a core
subscription on ``<ns>.jobs.>`` in this process, the same host and clock)
minus its ``run_at``. So it includes the stager's timer, its compare-and-set
``scheduled -> available`` and the publish: the moment the job becomes
available to workers, not the moment a worker starts it (that adds the
worker's own fetch latency, which ``bench throughput`` measures). A job seen
before its ``run_at`` counts as early. The scheduler's own view (timer
lateness, and lateness after the compare-and-set) is reported alongside.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import msgspec

from .. import codec
from ..client import Client
from ..config import load_settings
from ..embedded import EmbeddedServer
from ..models import JobMessage
from ._common import stop_process
from ._scheduler import spawn_scheduler


class PrecisionResult(msgspec.Struct):
    n: int
    spread_seconds: float
    observed: int
    missing: int
    early: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    timer_p50_ms: float  # the stager's timer vs run_at (scheduler's own clock reading)
    timer_p99_ms: float
    promoted_p50_ms: float  # after the compare-and-set, before the publish
    promoted_p99_ms: float
    in_order: bool  # observed in run_at order
    measured_at: str = "work message received by an outside subscriber (job available to workers)"


def _pct(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, round(p / 100 * len(sorted_ms) + 0.5) - 1))
    return round(sorted_ms[k], 3)


async def _line(proc, want: str, timeout: float) -> str:  # type: ignore[no-untyped-def]
    async def read() -> str:
        while True:
            raw = await asyncio.to_thread(proc.stdout.readline)
            if not raw:
                raise RuntimeError(f"scheduler process exited (code {proc.poll()}) before saying {want}")
            line = raw.decode().strip()
            if line.startswith(want):
                return line

    return await asyncio.wait_for(read(), timeout)


async def run_precision(n: int = 2000, spread: float = 10.0, lead: float = 2.0, seed: int = 7) -> PrecisionResult:
    with tempfile.TemporaryDirectory(prefix="chronos-bench-") as tmp, EmbeddedServer(Path(tmp) / "js") as server:
        ns = "bench"
        settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url},
                                            "jobs": {"check_task_names": False}}, read_env=False)
        client = await Client.connect(settings)
        stats_file = Path(tmp) / "scheduler.json"
        sched = spawn_scheduler(server.url, ns, archive=Path(tmp) / "archive.sqlite3", node_id="bench-precision",
                                stats_file=stats_file)
        seen: dict[str, float] = {}
        order: list[str] = []
        run_at: dict[str, float] = {}
        done = asyncio.Event()

        def on_raw(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            # Stamped in the read loop on the fast transport, as a worker's puller takes a job
            # (chronos/transport/fast.py): no Msg, no queue hop, so the number is the job's, not
            # this subscriber's. On the stock transport on_work stamps it, a queue hop later.
            t = time.time()
            job = codec.decode(data, JobMessage).record
            if job.id not in seen:
                seen[job.id] = t
                order.append(job.id)
                if len(seen) >= n:
                    done.set()
            return True

        async def on_work(msg) -> None:  # type: ignore[no-untyped-def]
            on_raw(b"", b"", msg.data, None)

        sub = await client.conn.nc.subscribe(client.names.jobs_wildcard(), cb=on_work)
        client.conn.transport.deliver_raw(sub, on_raw)
        # This process's own collector pauses would be counted as the scheduler's lateness.
        gc_threshold = gc.get_threshold()
        gc.collect()
        gc.set_threshold(100_000, 50, 100)
        try:
            await _line(sched, "LEADING", 30)
            rng = random.Random(seed)
            # Every job is parked before the first is due (the submit must fit in the lead time).
            start = time.time() + lead
            specs = [client.build_spec("bench.noop", run_at=start + rng.uniform(0, spread)) for _ in range(n)]
            ids = await client.submit_specs(specs)
            for job_id, spec in zip(ids, specs):
                run_at[job_id] = spec.run_at or 0.0
            if time.time() > start:
                raise RuntimeError("submitting took longer than the lead time; raise --lead")
            try:
                await asyncio.wait_for(done.wait(), lead + spread + 30)
            except TimeoutError:
                pass
        finally:
            gc.set_threshold(*gc_threshold)
            await sub.unsubscribe()
            stop_process(sched)
            await client.close()
        own = json.loads(stats_file.read_text()) if stats_file.exists() else {}

    late_ms = sorted((seen[i] - run_at[i]) * 1000 for i in seen if i in run_at)
    timer = sorted(x * 1000 for x in own.get("fire_lateness", []))
    promoted = sorted(x * 1000 for x in own.get("lateness", []))
    return PrecisionResult(
        n=n,
        spread_seconds=spread,
        observed=len(late_ms),
        missing=n - len(late_ms),
        early=sum(1 for x in late_ms if x < 0),
        p50_ms=_pct(late_ms, 50),
        p95_ms=_pct(late_ms, 95),
        p99_ms=_pct(late_ms, 99),
        max_ms=round(late_ms[-1], 3) if late_ms else float("nan"),
        mean_ms=round(statistics.fmean(late_ms), 3) if late_ms else float("nan"),
        timer_p50_ms=_pct(timer, 50),
        timer_p99_ms=_pct(timer, 99),
        promoted_p50_ms=_pct(promoted, 50),
        promoted_p99_ms=_pct(promoted, 99),
        # Jobs due within the same millisecond may be published in either order.
        in_order=all(run_at[b] - run_at[a] > -0.001 for a, b in itertools.pairwise(order)),
    )


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(msgspec.json.encode(asyncio.run(run_precision(n))).decode())
