"""``chronos bench throughput``: enqueue and end-to-end jobs/s with state tracked for every job.

An embedded nats-server, one worker process, N no-op jobs submitted while the
worker runs. End to end = N / (last completion - first submit). Lost = jobs not
completed; duplicated = job ids the task saw more than once.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import msgspec

from ..client import Client
from ..config import load_settings
from ..embedded import EmbeddedServer
from ..states import JobState
from ._common import (
    cpu_seconds,
    read_stats,
    server_counters,
    spawn_worker,
    stop_process,
    wait_for_workers,
)


class ThroughputResult(msgspec.Struct):
    n: int
    enqueue_seconds: float
    enqueue_jobs_per_s: float
    end_to_end_seconds: float
    end_to_end_jobs_per_s: float
    completed: int
    lost: int
    duplicated: int
    server_msgs_in_per_job: float
    server_msgs_out_per_job: float
    concurrency: int
    # CPU time per job in each process over the run (µs): where the 2 cores went.
    cpu_us_per_job: dict[str, float] = {}


async def run_throughput(n: int = 20000, concurrency: int = 256, timeout: float = 300.0) -> ThroughputResult:
    with tempfile.TemporaryDirectory(prefix="chronos-bench-") as tmp, EmbeddedServer(Path(tmp) / "js") as server:
        ns = "bench"
        settings = load_settings(overrides={"namespace": ns, "nats": {"url": server.url}}, read_env=False)
        client = await Client.connect(settings)
        stats_file = Path(tmp) / "worker.json"
        worker = spawn_worker(server.url, ns, concurrency=concurrency, stats_file=stats_file)
        try:
            await wait_for_workers(client, 1)
            specs = [client.build_spec("bench.noop") for _ in range(n)]
            completed: set[str] = set()
            done = asyncio.Event()
            last_completion = 0.0

            async def follow() -> None:
                nonlocal last_completion
                async for ev in client.watch(kinds=["completed"]):
                    if ev.job_id:
                        completed.add(ev.job_id)
                        last_completion = time.perf_counter()
                        if len(completed) >= n:
                            done.set()
                            return

            follower = asyncio.ensure_future(follow())
            await asyncio.sleep(0.2)  # let the subscription reach the server before the first job
            before = server_counters(server)
            pids = {"server": server.proc.pid if server.proc else None, "worker": worker.pid}
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"client": cpu_seconds()}
            t0 = time.perf_counter()
            ids = await client.submit_specs(specs)
            t_enqueued = time.perf_counter()
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except TimeoutError:
                pass
            after = server_counters(server)
            cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"client": cpu_seconds()}
            follower.cancel()
            # Completions whose events we missed still count if the record says so.
            missing = [i for i in ids if i not in completed]
            for job_id in missing:
                rec = await client.get(job_id)
                if rec.state == JobState.COMPLETED:
                    completed.add(job_id)
        finally:
            stop_process(worker)
            await client.close()
        runs = read_stats(stats_file).get("runs", {})
        duplicated = sum(1 for c in runs.values() if c > 1)
        e2e = (last_completion - t0) if last_completion else float("inf")
        return ThroughputResult(
            n=n,
            enqueue_seconds=round(t_enqueued - t0, 3),
            enqueue_jobs_per_s=round(n / (t_enqueued - t0), 1),
            end_to_end_seconds=round(e2e, 3),
            end_to_end_jobs_per_s=round(n / e2e, 1) if e2e else 0.0,
            completed=len(completed),
            lost=n - len(completed),
            duplicated=duplicated,
            server_msgs_in_per_job=round((after["in_msgs"] - before["in_msgs"]) / n, 2),
            server_msgs_out_per_job=round((after["out_msgs"] - before["out_msgs"]) / n, 2),
            concurrency=concurrency,
            cpu_us_per_job={k: round((cpu1[k] - cpu0[k]) / n * 1e6, 1) for k in cpu0},
        )


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    print(msgspec.json.encode(asyncio.run(run_throughput(n))).decode())
