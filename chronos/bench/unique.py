"""bench unique: submit latency of unique-while-active and debounced jobs against plain jobs.

Against a throwaway server, no worker (a submit returns once the server has the job), one
submit after another from one client, interleaved in rounds so a busy host's noise falls on
every kind alike:
- ``plain``: ``submit_job`` of a job with no unique option (marker, record, work message);
- ``active_new``: unique while active on a fresh key each time (read the key: absent; take it
  with the marker in one round trip; record; work message);
- ``active_held``: the same key again while its job is pending (read the key, read the holder:
  no write at all);
- ``active_reuse``: a key whose job has finished (read the key, read the holder, take the key
  over by compare-and-set, record, work message);
- ``debounce``: a debounce submit that moves a scheduled job (read the key and the holder,
  park the new generation, compare-and-set the record).
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from ..config import Settings, load_settings
from ..embedded import EmbeddedServer

TASK = "bench.noop"
KINDS = ("plain", "active_new", "active_held", "active_reuse", "debounce")


class Latency(msgspec.Struct):
    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class UniqueBenchResult(msgspec.Struct):
    n: int
    kinds: dict[str, Latency]
    loadavg: str = ""


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000.0


def _settings(url: str, namespace: str) -> Settings:
    return load_settings(overrides={"namespace": namespace, "nats": {"url": url},
                                    "jobs": {"check_task_names": False}}, read_env=False)


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""


async def _run(url: str, n: int) -> dict[str, list[float]]:
    from ..client import Client

    lat: dict[str, list[float]] = {k: [] for k in KINDS}
    async with await Client.connect(_settings(url, "benchunique")) as client:
        finished: list[str] = []
        for i in range(20):  # warm up every path, and leave keys whose jobs have finished
            await client.submit_job(TASK, [i])
            held = await client.submit_job(TASK, [i], unique="while_active", unique_key=f"warm{i}")
            await client.submit_job(TASK, [i], debounce=3600, unique_key=f"warm{i}")
            await client.cancel(held.id)
            finished.append(f"warm{i}")
        held_key = "held"
        await client.submit_job(TASK, [0], unique="while_active", unique_key=held_key, delay=3600)

        async def timed(kind: str, **options: object) -> str:
            t0 = time.perf_counter()
            sub = await client.submit_job(TASK, [1], **options)  # type: ignore[arg-type]
            lat[kind].append(time.perf_counter() - t0)
            return sub.id

        for i in range(n):
            await timed("plain")
            await timed("active_new", unique="while_active", unique_key=f"new{i}", delay=3600)
            await timed("active_held", unique="while_active", unique_key=held_key)
            key = f"reuse{i}"
            first = await client.submit_job(TASK, [1], unique="while_active", unique_key=key, delay=3600)
            await client.cancel(first.id)  # finished: the next submit takes the key over
            await timed("active_reuse", unique="while_active", unique_key=key, delay=3600)
            await timed("debounce", debounce=3600, unique_key="deb")
    return lat


def run_unique_bench(n: int = 300) -> UniqueBenchResult:
    with EmbeddedServer() as server:
        lat = asyncio.run(_run(server.url, n))
    kinds = {k: Latency(n=len(v), p50_ms=_pct(v, 0.5), p99_ms=_pct(v, 0.99), max_ms=max(v) * 1000.0)
             for k, v in lat.items() if v}
    return UniqueBenchResult(n=n, kinds=kinds, loadavg=_loadavg())
