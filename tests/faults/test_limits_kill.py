"""A worker process SIGKILLed while it holds concurrency slots: the slots come back within the lease
(the server's per-message TTL, no survivor has to notice), and the jobs run on another worker,
never two of one key at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from chronos.bench.limits import KEY_TASK, RATE_TASK, max_in_window, overlapping, read_runs, spawn_limit_worker
from chronos.bench._common import stop_process, wait_for_workers
from chronos.client import Client
from chronos.states import JobState

from .conftest import wait_until

LEASE = 3.0
ACK_WAIT = 1.0


async def test_a_killed_workers_slots_come_back_within_the_lease(nats_server, namespace, settings, tmp_path: Path):
    client = await Client.connect(settings)
    victim_log, other_log = tmp_path / "w-victim.log", tmp_path / "w-other.log"
    victim = spawn_limit_worker(nats_server.url, namespace, victim_log, sleep=3600.0, lease=LEASE, ack_wait=ACK_WAIT)
    other = None
    try:
        await wait_for_workers(client, 1)
        keys = 3
        ids = await client.submit_specs([client.build_spec(KEY_TASK, {"key": f"k{i}"}) for i in range(keys)])
        await wait_until(lambda: len(read_runs([victim_log])[0]) >= keys, 60, "the victim running one job per key")

        async def victim_holds() -> bool:
            snap = await client.limits()
            return sum(1 for v in snap.limits for h in v.holders if h.worker.startswith("victim-")) == keys

        await wait_until(victim_holds, 30, "the victim's slots in the snapshot")
        # A second job per key waits behind the victim's (it must not start while the slot is held).
        more = await client.submit_specs([client.build_spec(KEY_TASK, {"key": f"k{i}"}) for i in range(keys)])
        other = spawn_limit_worker(nats_server.url, namespace, other_log, sleep=0.0, lease=LEASE, ack_wait=ACK_WAIT)
        await wait_for_workers(client, 2)
        os.killpg(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        victim.wait()

        async def slots_free() -> bool:
            snap = await client.limits()
            return not any(h.worker.startswith("victim-") for v in snap.limits for h in v.holders)

        await wait_until(slots_free, LEASE + 10, "the victim's slots to expire")
        freed = time.monotonic() - killed
        # Within the lease (plus the server's TTL tick and this poll), and not before the lease is
        # mostly over: it is the TTL that frees them, not a guess.
        # Renewed every lease/3, so the lease runs out 2-3 s after the kill: never at once.
        assert LEASE / 2 <= freed <= LEASE + 2.0, freed
        for job_id in [*ids, *more]:
            rec = await client.wait(job_id, timeout=60)
            assert rec.state == JobState.COMPLETED, (job_id, rec.state, rec.error)
        _, spans = read_runs([victim_log, other_log])
        assert overlapping(spans) == 0
        assert await client.dlq_list() == []
    finally:
        for p in (victim, other):
            if p is not None and p.poll() is None:
                stop_process(p)
        await client.close()


async def test_a_rate_limit_holds_across_two_worker_processes(nats_server, namespace, settings, tmp_path: Path):
    client = await Client.connect(settings)
    logs = [tmp_path / f"w-r{i}.log" for i in range(2)]
    procs = [spawn_limit_worker(nats_server.url, namespace, log, rate="20/s") for log in logs]
    try:
        await wait_for_workers(client, 2)
        n = 60
        ids = await client.submit_specs([client.build_spec(RATE_TASK, {"i": i}) for i in range(n)])
        await wait_until(lambda: len(read_runs(logs)[0]) >= n, 90, f"{n} starts")
        starts, _ = read_runs(logs)
        firsts = sorted(min(v) for v in starts.values())
        assert len({p for p in logs if p.exists() and p.read_text()}) == 2, "both processes ran jobs"
        assert firsts[-1] - firsts[0] >= (n - 1) / 20 - 0.1
        assert max_in_window(firsts) <= 22
        for job_id in ids[:10]:
            rec = await client.get(job_id)
            assert rec.state == JobState.COMPLETED and rec.attempt == 1
    finally:
        for p in procs:
            stop_process(p)
        await client.close()
