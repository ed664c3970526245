"""100,000 jobs queued for one worker of concurrency 4: the worker's memory stays bounded.

The worker runs in its own process (its RSS read from /proc) with the whole backlog
waiting in the stream; it may never hold more than its free slots. In CI it works
through the first ``CHECK_DONE`` jobs, sampling RSS, which is enough to show the backlog
is not pulled into memory; ``FAULTS_FULL=1`` drains all 100,000 (minutes).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from chronos.bench._common import spawn_worker, stop_process
from chronos.client import Client
from chronos.embedded import EmbeddedServer
from chronos.models import WorkerHeartbeat

from .conftest import fault_settings, wait_until

N = 100_000
FULL = os.environ.get("FAULTS_FULL") == "1"
CHECK_DONE = N if FULL else 20_000
WARM = 2_000  # RSS after this many jobs is the baseline
MAX_GROWTH_MB = 25.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def worker_heartbeat(client: Client, processed: int, into: list[WorkerHeartbeat]) -> bool:
    """The one worker's heartbeat, kept once it reports at least ``processed`` jobs done."""
    workers = await client.workers()
    if len(workers) == 1 and workers[0].processed >= processed:
        into.append(workers[0])
        return True
    return False


@pytest.mark.timeout(600 if FULL else 180)
async def test_worker_memory_is_bounded_under_a_100k_backlog(tmp_path):
    with EmbeddedServer(store_dir=tmp_path / "js") as server:
        settings = fault_settings(server.url, "mem")
        client = await Client.connect(settings)
        try:
            await client.register_tasks(["bench.noop"])
            t0 = time.perf_counter()
            chunk = 20_000
            for start in range(0, N, chunk):
                await client.submit_specs([client.build_spec("bench.noop") for _ in range(chunk)])
            submit_s = time.perf_counter() - t0
            consumer = client.names.consumer_name("default", "default")

            held: list[int] = []  # delivered, not yet acknowledged: what the worker holds

            async def done() -> int:
                info = await client.conn.js.consumer_info(client.names.jobs_stream, consumer)
                held.append(info.num_ack_pending)
                return N - info.num_pending - info.num_ack_pending

            assert await done() == 0
            env = {"CHRONOS_WORKER__ACK_WAIT": str(settings.worker.ack_wait)}
            proc = spawn_worker(server.url, settings.namespace, concurrency=4, stats_file=tmp_path / "runs",
                                extra_env=env)
            samples: list[tuple[int, float]] = []
            try:
                t1 = time.perf_counter()

                async def sampled_until(target: int) -> bool:
                    assert proc.poll() is None, "the worker died"
                    n = await done()
                    samples.append((n, rss_mb(proc.pid)))
                    return n >= target

                await wait_until(lambda: sampled_until(WARM), 60, f"{WARM} jobs done", every=0.25)
                baseline = samples[-1][1]
                await wait_until(lambda: sampled_until(CHECK_DONE), 540 if FULL else 120,
                                 f"{CHECK_DONE} jobs done", every=0.25)
                run_s = time.perf_counter() - t1
                beats: list[WorkerHeartbeat] = []
                await wait_until(lambda: worker_heartbeat(client, CHECK_DONE, beats), 30,
                                 "a heartbeat that counts the jobs done")
            finally:
                stop_process(proc)
            peak = max(r for _, r in samples)
            print(f"memory: {N} queued in {submit_s:.1f}s; worker ran {samples[-1][0]} in {run_s:.1f}s "
                  f"({samples[-1][0] / run_s:.0f}/s); RSS baseline {baseline:.1f} MB at {WARM}, "
                  f"peak {peak:.1f} MB, last {samples[-1][1]:.1f} MB")
            assert peak - baseline < MAX_GROWTH_MB, samples[::max(1, len(samples) // 20)]
            # Exact, from the worker's side: it never held more jobs than its 4 slots.
            peak_held = beats[0].slots_peak
            assert 1 <= peak_held <= 4, f"the worker held {peak_held} jobs with 4 slots"
            # From the server's side, with slack: it processes acks and pull requests on separate
            # goroutines, so an ack the worker sent before its next pull request can be counted
            # after the new delivery (seen: 6 pending with 4 slots). Pulling the backlog would
            # show thousands here.
            assert max(held) <= 4 * 4, f"the server had {max(held)} jobs pending an ack for a 4-slot worker"
        finally:
            await client.close()
