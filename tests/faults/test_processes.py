"""Process faults: a worker SIGKILLed mid-job (the crash bench, small), and the leading scheduler SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chronos.bench.crash import TARGET_SECONDS, run_crash
from chronos.connection import connect
from chronos.leadership import read_leader
from chronos.worker.registry import Registry

from .conftest import wait_until

ROOT = Path(__file__).parents[2]


async def test_worker_sigkilled_mid_job_loses_nothing():
    """Two 8-slot worker processes; one's process group SIGKILLed at 40 %, restarted after 1 s."""
    # 30 ms jobs: shorter than worker.running_write_after, see the report on the deferred-write race.
    r = await run_crash(600, job_seconds=0.03, timeout=60)
    print(f"crash: {r}")
    assert r.completed == r.n and r.lost == 0
    assert r.orphaned >= 1, "the kill should have caught jobs mid-flight"
    assert r.recovery_seconds <= TARGET_SECONDS
    assert r.target_met


async def test_server_sigkilled_mid_flood_loses_nothing_and_hides_no_run():
    """nats-server (sync_interval always) SIGKILLed at 40 % and restarted on its store after 1 s,
    both workers riding it out: every job completes, and a job that ran twice (its outcome write
    lost with the server while a replay of its message ran elsewhere) shows both runs."""
    r = await run_crash(600, job_seconds=0.03, timeout=90, kill="server")
    print(f"crash: {r}")
    assert r.kill == "server"
    assert r.completed == r.n and r.lost == 0
    assert r.unseen_duplicates == 0
    assert r.killed_at_completed < r.n, "the kill should have come mid-flood"


def _scheduler(settings, node: str, lease_ttl: float, archive: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHRONOS_", "NOTIFY_", "WATCHDOG_"))}
    env["CHRONOS_SCHEDULER__LEASE_TTL"] = str(lease_ttl)
    env["CHRONOS_SCHEDULER__ARCHIVE_PATH"] = str(archive)
    return subprocess.Popen(
        [sys.executable, "-m", "chronos.cli.main", "--server", settings.nats.url, "--namespace", settings.namespace,
         "serve", "scheduler", "--id", node],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


async def test_leader_sigkilled_follower_takes_over(settings, client, start_worker, tmp_path):
    lease_ttl = 3.0
    procs = {node: _scheduler(settings, node, lease_ttl, tmp_path / f"{node}.sqlite3")
             for node in ("sched-a", "sched-b")}
    conn = await connect(settings)
    try:
        leader = None

        async def someone_leads() -> bool:
            nonlocal leader
            info = await read_leader(conn)
            leader = info.node if info else None
            return leader in procs

        await wait_until(someone_leads, 30, "a leader")
        old = leader
        os.killpg(procs[old].pid, signal.SIGKILL)
        procs[old].wait()
        t_kill = time.perf_counter()

        async def other_leads() -> bool:
            info = await read_leader(conn)
            return info is not None and info.node != old

        await wait_until(other_leads, lease_ttl * 4, "the follower to take over")
        takeover = time.perf_counter() - t_kill
        print(f"leader {old} killed; follower led {takeover:.1f}s later (lease_ttl {lease_ttl}s)")
        assert takeover <= lease_ttl * 2

        # The new leader does the leader's work: a delayed job is promoted and runs.
        reg = Registry()

        async def ping() -> str:
            return "pong"

        reg.register(ping, name="f.ping")
        await start_worker(reg)
        job = await client.submit("f.ping", delay=0.5)
        rec = await client.wait(job, timeout=20)
        assert rec.state == "completed" and rec.result == "pong"
    finally:
        await conn.close()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
