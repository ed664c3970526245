"""`chronos dev`: an embedded nats-server, a worker with demo tasks, and demo jobs, in one command."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from chronos import runtime
from chronos.client import Client
from chronos.config import Settings
from chronos.demo import demo_jobs, demo_registry, demo_schedules
from chronos.embedded import EmbeddedServer

from ._shared import run_async, setup_logging, state

DEFAULT_PORT = 4222
READY_LINE = "chronos dev is running"  # printed once everything is up; tests wait for it


def dev(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where nats-server keeps its data.")] = Path(".chronos-dev"),
    port: Annotated[int, typer.Option("--port", help="NATS port (a free one if this is taken; 0 = any free).")] = DEFAULT_PORT,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Worker slots.")] = 8,
    seed: Annotated[bool, typer.Option("--seed/--no-seed", help="Submit demo jobs at start.")] = True,
) -> None:
    """Start a local nats-server, a worker with demo tasks and some demo jobs. Ctrl-C stops it all."""
    st = state(ctx)
    setup_logging("DEBUG" if st.debug else "INFO")
    server = EmbeddedServer(store_dir=data_dir / "jetstream", port=port if port and _port_free(port) else None,
                            log_file=data_dir / "nats-server.log")
    server.start()
    try:
        settings = _with_url(st.settings, server.url)
        registry = runtime.worker_registry(settings, builtins=True)
        registry.merge(demo_registry())
        worker = runtime.WorkerMain(settings, registry, concurrency=concurrency)
        scheduler = runtime.SchedulerMain(settings)

        async def seeder(stop: asyncio.Event) -> None:
            await worker.service.ready.wait()
            await scheduler.service.ready.wait()
            n, n_sched = await _seed(settings) if seed else (0, 0)
            _banner(settings, server, data_dir, worker.service.id, registry.names(), n, n_sched)

        grace = settings.worker.shutdown_grace + 5.0
        outcome = run_async(st, runtime.run_service(worker, scheduler, seeder, grace=grace))
    finally:
        server.stop()
    typer.echo(f"chronos dev stopped ({outcome}); data kept in {data_dir}")
    if outcome is runtime.Outcome.FORCED:
        raise typer.Exit(130)


def _with_url(settings: Settings, url: str) -> Settings:
    return msgspec.structs.replace(settings, nats=msgspec.structs.replace(settings.nats, url=url))


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
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


def _banner(settings: Settings, server: EmbeddedServer, data_dir: Path, worker_id: str, tasks: list[str],
            seeded: int, schedules: int = 0) -> None:
    default_target = settings.nats.url == f"nats://127.0.0.1:{DEFAULT_PORT}" and settings.namespace == "chronos"
    prefix = "chronos" if default_target else f"chronos --server {server.url} --namespace {settings.namespace}"
    lines = [
        f"{READY_LINE}",
        f"  server     {server.url}   (data in {data_dir}, log {server.log_file})",
        f"  namespace  {settings.namespace}",
        f"  worker     {worker_id}: {', '.join(tasks)}",
    ]
    if seeded:
        lines.append(f"  seeded     {seeded} demo jobs: most complete, two retry first, one lands in the DLQ,"
                     " one waits 30 s")
    if schedules:
        lines.append(f"  schedules  {schedules} demo schedules (one fires every 15 s)")
    lines.append("  scheduler  running (leader lease, delayed jobs, cron schedules)")
    lines += [
        "",
        "  open the console in another terminal:",
        f"    {prefix} tui",
        "  or try:",
        f"    {prefix} jobs list",
        f"    {prefix} submit demo.add --args '[2, 3]' --wait",
        f"    {prefix} dlq list",
        f"    {prefix} logs --follow",
        "",
        "  Ctrl-C stops everything (twice to force).",
    ]
    typer.echo("\n".join(lines))
