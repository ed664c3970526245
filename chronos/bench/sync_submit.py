"""bench sync-submit: submit latency from synchronous code, the way a Django or Flask view does it.

Three measurements against a throwaway server (no worker: a submit returns once the server
has the job):
- ``SyncClient.submit`` one call after another from one thread: p50/p99/max latency;
- the same from ``threads`` threads at once: jobs/s and p50/p99 (one connection, pipelined);
- the alternative users reach for without it, ``asyncio.run(...)`` per call (connect, check
  the topology, submit, close): p50, over fewer calls because each costs tens of ms.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import msgspec

from ..config import Settings, load_settings
from ..embedded import EmbeddedServer

TASK = "bench.noop"


class SyncSubmitResult(msgspec.Struct):
    n: int
    threads: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    threaded_jobs_per_s: float
    threaded_p50_ms: float
    threaded_p99_ms: float
    asyncio_run_calls: int
    asyncio_run_p50_ms: float


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000.0


def _settings(url: str, namespace: str) -> Settings:
    return load_settings(overrides={"namespace": namespace, "nats": {"url": url},
                                    "jobs": {"check_task_names": False}}, read_env=False)


def run_sync_submit(n: int = 5000, threads: int = 8, asyncio_run_calls: int = 50) -> SyncSubmitResult:
    from ..client import Client
    from ..sync import SyncClient

    with EmbeddedServer() as server:
        settings = _settings(server.url, "benchsync")
        with SyncClient(settings) as client:
            for _ in range(100):  # warm up: connection, topology, code paths
                client.submit(TASK, [])
            one: list[float] = []
            for _ in range(n):
                t0 = time.perf_counter()
                client.submit(TASK, [])
                one.append(time.perf_counter() - t0)

            per_thread = max(1, n // threads)
            lat: list[list[float]] = [[] for _ in range(threads)]
            barrier = threading.Barrier(threads + 1)

            def worker(i: int) -> None:
                barrier.wait()
                out = lat[i]
                for _ in range(per_thread):
                    t0 = time.perf_counter()
                    client.submit(TASK, [])
                    out.append(time.perf_counter() - t0)

            pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
            for t in pool:
                t.start()
            barrier.wait()
            start = time.perf_counter()
            for t in pool:
                t.join()
            elapsed = time.perf_counter() - start
            flat = [x for xs in lat for x in xs]

        async def once() -> None:
            async with await Client.connect(settings) as c:
                await c.submit(TASK, [])

        runs: list[float] = []
        for _ in range(asyncio_run_calls):
            t0 = time.perf_counter()
            asyncio.run(once())
            runs.append(time.perf_counter() - t0)

    return SyncSubmitResult(
        n=n, threads=threads, p50_ms=_pct(one, 0.5), p99_ms=_pct(one, 0.99), max_ms=max(one) * 1000.0,
        threaded_jobs_per_s=len(flat) / elapsed, threaded_p50_ms=_pct(flat, 0.5), threaded_p99_ms=_pct(flat, 0.99),
        asyncio_run_calls=asyncio_run_calls, asyncio_run_p50_ms=statistics.median(runs) * 1000.0,
    )
