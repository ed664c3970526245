"""`chronos submit --wait` rides a nats-server restart: it reports the job's end as soon as the job
ends, exit 0; a server that stays away ends it with one line and exit 3.

The wait follows the record with a KV watch, which nats-py notices is dead only after missing its
heartbeats (about 18 s after a restart), and a read cut by the restart raised nats' TimeoutError,
which the CLI took for its own --wait-timeout ("still running"). The wait now starts over on the
reconnect (clientapi/jobs.py ``_riding_restarts``); with no server it waited quietly for ever."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chronos.embedded import EmbeddedServer
from chronos.runtime import WorkerMain, run_service
from chronos.worker.registry import Registry

from .conftest import fault_settings, reconnected, restart_on_same_store, wait_until


@asynccontextmanager
async def waiting_cli(tmp_path, ns: str, *cli_args: str) -> AsyncIterator[tuple[EmbeddedServer, WorkerMain,
                                                                                 asyncio.Event, subprocess.Popen[bytes]]]:
    """A server, a worker whose task ``f.holds`` runs until the event is set, and ``submit f.holds
    --wait`` in its own process, once the job runs."""
    server = EmbeddedServer(store_dir=tmp_path / "js").start()
    servers = [server]
    release = asyncio.Event()
    reg = Registry()

    async def holds() -> str:
        await asyncio.wait_for(release.wait(), 120)
        return "released"

    reg.register(holds, name="f.holds")
    settings = fault_settings(server.url, ns)
    worker = WorkerMain(settings, reg, concurrency=2)
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(worker, grace=1, stop=stop, signals=()))
    proc = None
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")}
        proc = subprocess.Popen([sys.executable, "-m", "chronos.cli.main", "-s", server.url, "-n", settings.namespace,
                                 "submit", "f.holds", "--wait", *cli_args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        await wait_until(lambda: bool(worker.service.running), 30, "the job to run")
        yield server, worker, release, proc
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        stop.set()
        try:
            await asyncio.wait_for(services, 60)
        finally:
            for s in servers:
                s.cleanup()


async def test_submit_wait_reports_a_job_that_ends_after_a_server_restart(tmp_path):
    # --wait-timeout 12s: with the watch stalled until nats-py noticed (18 s), this ran out.
    async with waiting_cli(tmp_path, "waitrestart", "--wait-timeout", "12s") as (server, worker, release, proc):
        server.kill()
        restarted = restart_on_same_store(server)
        try:
            await reconnected(worker.service.conn.nc)
            release.set()
            out = (await asyncio.to_thread(proc.communicate, timeout=60))[0].decode(errors="replace")
        finally:
            release.set()
            worker.service.stop()
            restarted.cleanup()
        assert proc.returncode == 0, out[-600:]
        assert "completed" in out and "released" in out, out[-600:]


async def test_submit_wait_gives_a_server_that_stays_away_up_in_one_line(tmp_path):
    async with waiting_cli(tmp_path, "waitgone") as (server, _worker, release, proc):
        server.kill()
        out = (await asyncio.to_thread(proc.communicate, timeout=60))[0].decode(errors="replace")
        release.set()
        last = [line for line in out.splitlines() if line.strip()][-1]
        assert proc.returncode == 3, out[-600:]
        assert last.startswith("error: lost the connection to NATS at"), last
        assert "Traceback" not in out
