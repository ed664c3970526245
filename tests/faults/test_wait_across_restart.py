"""`chronos submit --wait` rides a nats-server restart: it reports the job's end as soon as the job
ends, exit 0.

The wait follows the record with a KV watch, which nats-py notices is dead only after missing its
heartbeats (about 18 s after a restart), and a read cut by the restart raised nats' TimeoutError,
which the CLI took for its own --wait-timeout ("still running"). The wait now starts over on the
reconnect (clientapi/jobs.py ``_riding_restarts``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from chronos.embedded import EmbeddedServer
from chronos.runtime import WorkerMain, run_service
from chronos.worker.registry import Registry

from .conftest import fault_settings, reconnected, restart_on_same_store, wait_until


async def test_submit_wait_reports_a_job_that_ends_after_a_server_restart(tmp_path):
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    restarted: EmbeddedServer | None = None
    release = asyncio.Event()
    reg = Registry()

    async def holds() -> str:
        await asyncio.wait_for(release.wait(), 60)
        return "released"

    reg.register(holds, name="f.holds")
    settings = fault_settings(server.url, "waitrestart")
    worker = WorkerMain(settings, reg, concurrency=2)
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, grace=10, stop=stop, signals=()))
    proc = None
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")}
        # --wait-timeout 12s: with the watch stalled until nats-py noticed (18 s), this ran out.
        proc = subprocess.Popen([sys.executable, "-m", "chronos.cli.main", "-s", server.url, "-n", settings.namespace,
                                 "submit", "f.holds", "--wait", "--wait-timeout", "12s"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        await wait_until(lambda: bool(worker.service.running), 30, "the job to run")
        server.kill()
        restarted = restart_on_same_store(server)
        await reconnected(worker.service.conn.nc)
        release.set()
        out = (await asyncio.to_thread(proc.communicate, timeout=60))[0].decode(errors="replace")
        assert proc.returncode == 0, out[-600:]
        assert "completed" in out and "released" in out, out[-600:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        stop.set()
        try:
            await asyncio.wait_for(services, 60)
        finally:
            for s in (restarted, server):
                if s is not None:
                    s.cleanup()


async def test_submit_wait_gives_a_server_that_stays_away_up_in_one_line(tmp_path):
    """Killed and not restarted: exit 3 and one line naming the lost connection, after LOST_AFTER
    (the watch waited quietly for ever before)."""
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    reg = Registry()

    async def holds() -> None:
        await asyncio.sleep(120)

    reg.register(holds, name="f.holds")
    settings = fault_settings(server.url, "waitgone")
    worker = WorkerMain(settings, reg, concurrency=2)
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, grace=1, stop=stop, signals=()))
    proc = None
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")}
        proc = subprocess.Popen([sys.executable, "-m", "chronos.cli.main", "-s", server.url, "-n", settings.namespace,
                                 "submit", "f.holds", "--wait"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        await wait_until(lambda: bool(worker.service.running), 30, "the job to run")
        server.kill()
        out = (await asyncio.to_thread(proc.communicate, timeout=60))[0].decode(errors="replace")
        last = [line for line in out.splitlines() if line.strip()][-1]
        assert proc.returncode == 3, out[-600:]
        assert last.startswith("error: lost the connection to NATS at"), last
        assert "Traceback" not in out
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        stop.set()
        try:
            await asyncio.wait_for(services, 60)
        finally:
            server.cleanup()
