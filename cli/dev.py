"""`chronos dev`: an embedded nats-server, a worker with demo tasks, and demo jobs, in one command.

One instance per data directory: a lock file (``dev.lock``: pid and URL) held for the whole run
refuses a second one with one line, because two nats-servers on one store lose each other's
jobs. The port is remembered in the data directory (``dev.port``), so a restart comes back on
the same URL and open consoles and workers reconnect. The banner is printed last; after it,
service logs go to ``dev.log`` in the data directory and only warnings reach the terminal, so
the banner stays on screen.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Annotated, Optional

import msgspec
import typer

from chronos import runtime
from chronos.client import Client
from chronos.config import Settings
from chronos.demo import DEMO_QUEUE, demo_jobs, demo_registry, demo_schedules
from chronos.embedded import EmbeddedServer
from chronos.errors import ChronosError

from ._shared import run_async, setup_logging, state

DEFAULT_PORT = 4222
READY_LINE = "chronos dev is running"  # printed once everything is up; tests wait for it


def dev(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where nats-server keeps its data.")] = Path(".chronos-dev"),
    port: Annotated[Optional[int], typer.Option("--port", min=0, max=65535,
                                                help="NATS port (default: the last run's, else 4222; 0 = any free).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Worker slots.")] = 8,
    seed: Annotated[bool, typer.Option("--seed/--no-seed", help="Submit demo jobs at start.")] = True,
) -> None:
    """Start a local nats-server, a worker with demo tasks and some demo jobs. Ctrl-C stops it all."""
    st = state(ctx)
    setup_logging("DEBUG" if st.debug else "INFO")
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(data_dir)
    try:
        chosen = _choose_port(data_dir, port)
        # fsync every write, as the deploy configs do (deploy/README.md "Durability"); a server
        # chronos starts with a sync mode says so, so its clients batch writes (nats.atomic_batches).
        server = EmbeddedServer(store_dir=data_dir / "jetstream", port=chosen, log_file=data_dir / "nats-server.log",
                                sync="always")
        server.start()
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()} {server.url}\n")
        lock.flush()
        (data_dir / "dev.port").write_text(f"{server.port}\n")
        try:
            outcome = _run(st, server, data_dir, concurrency, seed, moved=bool(chosen is None and port != 0))
        finally:
            server.stop()
    finally:
        lock.close()
    typer.echo(f"chronos dev stopped ({outcome}); data kept in {data_dir}")
    if outcome is runtime.Outcome.FORCED:
        raise typer.Exit(130)


def _run(st: object, server: EmbeddedServer, data_dir: Path, concurrency: int, seed: bool, moved: bool) -> object:
    settings = _with_url(st.settings, server.url)  # type: ignore[attr-defined]
    registry = runtime.worker_registry(settings, builtins=True)
    registry.merge(demo_registry())
    # Its own queue only: the demo never takes a user's jobs (user workers serve `default`).
    worker = runtime.WorkerMain(settings, registry, concurrency=concurrency, queues=[DEMO_QUEUE], tune_gc=True)
    scheduler = runtime.SchedulerMain(settings)

    async def seeder(stop: asyncio.Event) -> None:
        await worker.service.ready.wait()
        await scheduler.service.ready.wait()
        n, n_sched = await _seed(settings) if seed else (0, 0)
        log_file = _quiet_terminal(data_dir)
        logging.getLogger("chronos.dev").info("chronos dev ready on %s (this line goes to %s only)",
                                              server.url, log_file)
        _banner(settings, server, data_dir, worker.service.id, registry.names(), n, n_sched,
                log_file=log_file, moved=moved)

    grace = settings.worker.shutdown_grace + 5.0
    return run_async(st, runtime.run_service(worker, scheduler, seeder, grace=grace))


def _lock_data_dir(data_dir: Path):  # type: ignore[no-untyped-def]
    """Hold ``dev.lock`` for the whole run; another instance on this directory is one line."""
    path = data_dir / "dev.lock"
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown pid"
        fh.close()
        pid, _, url = holder.partition(" ")
        raise ChronosError(f"chronos dev is already running on {data_dir} (pid {pid}, {url or 'starting'}): "
                           "use that one, stop it, or pass --data-dir") from None
    return fh


def _choose_port(data_dir: Path, port: int | None) -> int | None:
    """The port to listen on: asked for, else the last run's, else 4222; None (any free) if taken."""
    if port == 0:
        return None
    if port is not None:
        if not _port_free(port):
            raise ChronosError(f"port {port} is in use: pass another --port, or --port 0 for any free one")
        return port
    try:
        last = int((data_dir / "dev.port").read_text().strip())
    except (OSError, ValueError):
        last = DEFAULT_PORT
    for candidate in dict.fromkeys([last, DEFAULT_PORT]):
        if _port_free(candidate):
            return candidate
    return None


def _quiet_terminal(data_dir: Path) -> Path:
    """Service logs go to dev.log from here on; the terminal keeps warnings only (the banner stays visible)."""
    root = logging.getLogger()
    path = data_dir / "dev.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    for h in root.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)
    root.addHandler(handler)
    return path


def _with_url(settings: Settings, url: str) -> Settings:
    return msgspec.structs.replace(settings, nats=msgspec.structs.replace(settings.nats, url=url))


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    # SO_REUSEADDR as nats-server's own listener has: a port in TIME_WAIT after a restart is free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


async def _seed(settings: Settings) -> tuple[int, int]:
    """Demo jobs every start; demo schedules only when absent (a restart keeps the data directory)."""
    async with await Client.connect(settings) as client:
        for job in demo_jobs():
            await client.submit(job.task, job.args, **job.options)
        have = {s.name for s in await client.list_schedules()}
        added = 0
        for sched in demo_schedules():
            if sched.name not in have:
                await client.add_schedule(sched.name, sched.task, sched.args, **sched.options)
                added += 1
    return len(demo_jobs()), added


def _path_hint() -> str | None:
    """How to get `chronos` on PATH, when the one running is not what PATH finds."""
    scripts = Path(sys.executable).parent
    found = shutil.which("chronos")
    if found and Path(found).resolve().parent == scripts.resolve():
        return None
    try:
        rel = scripts.relative_to(Path.cwd())
    except ValueError:
        rel = scripts
    activate = scripts / "activate"
    if activate.exists():
        return f"source {rel / 'activate'}   (puts chronos on PATH in this shell; or run {rel / 'chronos'})"
    return f"export PATH={scripts}:$PATH"


def _banner(settings: Settings, server: EmbeddedServer, data_dir: Path, worker_id: str, tasks: list[str],
            seeded: int, schedules: int = 0, *, log_file: Path | None = None, moved: bool = False) -> None:
    default_target = settings.nats.url == f"nats://127.0.0.1:{DEFAULT_PORT}" and settings.namespace == "chronos"
    prefix = "chronos" if default_target else f"chronos --server {server.url} --namespace {settings.namespace}"
    lines = [
        "",
        f"{READY_LINE}",
        f"  server     {server.url}   (data in {data_dir}, log {server.log_file})",
        f"  namespace  {settings.namespace}",
        f"  worker     {worker_id} on queue {DEMO_QUEUE!r}: {', '.join(tasks)}",
    ]
    if moved:
        lines.append(f"  NOTE       port {DEFAULT_PORT} is taken by another program: this run listens on "
                     f"{server.port}; pass --server {server.url} to every command")
    if seeded:
        lines.append(f"  seeded     {seeded} demo jobs: most complete, two retry first, one lands in the DLQ,"
                     " one waits 30 s")
    if schedules:
        lines.append(f"  schedules  {schedules} demo schedules (one fires every 15 s)")
    lines.append("  scheduler  running (leader lease, delayed jobs, cron schedules)")
    if log_file is not None:
        lines.append(f"  logs       {log_file} (only warnings show here)")
    hint = _path_hint()
    lines += ["", "  in another terminal:"]
    if hint:
        lines.append(f"    {hint}")
    lines += [
        f"    {prefix} tui",
        f"    {prefix} jobs list",
        f"    {prefix} submit demo.add --args '[2, 3]' --wait",
        f"    {prefix} dlq list",
        f"    {prefix} logs --follow",
        "",
        "  Ctrl-C stops everything (twice to force).",
    ]
    typer.echo("\n".join(lines))
