"""Prometheus endpoints of the worker and the scheduler, scraped over HTTP with httpx."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from chronos.embedded import free_port
from chronos.models import Backoff
from chronos.metrics import MetricsMain, SchedulerMetrics, WorkerMetrics
from chronos.runtime import Outcome, SchedulerMain, WithMetrics, WorkerMain, run_service
from chronos.worker.registry import Registry

ROOT = Path(__file__).parents[2]


def in_tmp(settings, tmp_path: Path):
    """The settings with the scheduler's SQLite archive in the test's directory, not the working one."""
    import msgspec

    return msgspec.structs.replace(settings, scheduler=msgspec.structs.replace(
        settings.scheduler, archive_path=str(tmp_path / "archive.sqlite3")))

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(f"http://127.0.0.1:{port}/metrics")
    r.raise_for_status()
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape_until(port: int, ok: Callable[[Samples], bool], timeout: float = 20.0) -> Samples:
    """Scrape until ``ok`` holds (the endpoint is the signal); the last scrape if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        samples = await scrape(port)
        if ok(samples) or loop.time() > deadline:
            return samples
        await asyncio.sleep(0.1)


def registry() -> Registry:
    reg = Registry()

    async def add(a: int, b: int) -> int:
        return a + b

    async def boom() -> None:
        raise RuntimeError("no")

    reg.register(add, name="t.add")
    reg.register(boom, name="t.boom")
    return reg


async def test_worker_and_scheduler_metrics(settings, client, tmp_path):
    wport, sport = free_port(), free_port()
    worker = WorkerMain(settings, registry())
    scheduler = SchedulerMain(in_tmp(settings, tmp_path), node_id="metrics-node")
    wm = WithMetrics(worker, MetricsMain(WorkerMetrics(worker.service), wport))
    smetrics = SchedulerMetrics(scheduler.service, settings, poll_every=0.2)
    sm = WithMetrics(scheduler, MetricsMain(smetrics, sport))
    stop = asyncio.Event()
    services = asyncio.ensure_future(run_service(wm, sm, grace=10, stop=stop, signals=()))
    try:
        await asyncio.wait_for(asyncio.gather(worker.ready.wait(), scheduler.service.leading.wait(),
                                              smetrics.following.wait()), 30)
        ids = [await client.submit("t.add", [i, 1]) for i in range(3)]
        bad = await client.submit("t.boom", max_attempts=2,
                                  backoff=Backoff(kind="fixed", base=0.1, jitter=False))
        for job_id in ids:
            assert (await client.wait(job_id, timeout=20)).state == "completed"
        assert (await client.wait(bad, timeout=20)).state == "discarded"

        # A job's record is completed before its worker has read the write's PubAck and counted
        # it, so wait for the counts to arrive rather than for one of them.
        w = await scrape_until(wport, lambda s: value(s, "chronos_acks_total", kind="term") >= 1
                               and value(s, "chronos_acks_total", kind="ack") >= 3)
        assert value(w, "chronos_jobs_total", state="completed", queue="default") == 3
        assert value(w, "chronos_jobs_total", state="retryable", queue="default") == 1
        assert value(w, "chronos_jobs_total", state="discarded", queue="default") == 1
        assert value(w, "chronos_acks_total", kind="ack") == 3
        assert value(w, "chronos_acks_total", kind="nak") == 1
        assert value(w, "chronos_acks_total", kind="term") == 1
        assert value(w, "chronos_jobs_fetched_total", queue="default") == 5
        assert value(w, "chronos_job_run_seconds_count", queue="default") == 5
        assert value(w, "chronos_worker_slots", kind="total") == settings.worker.concurrency

        s = await scrape_until(sport, lambda s: value(s, "chronos_dlq_messages") == 1
                               and value(s, "chronos_job_events_total", state="discarded", queue="default") == 1)
        assert value(s, "chronos_leader") == 1
        assert value(s, "chronos_leader_changes_total", change="gained") == 1
        assert value(s, "chronos_job_events_total", state="completed", queue="default") == 3
        assert value(s, "chronos_job_queue_seconds_count", queue="default") == 4  # every job started once
        assert value(s, "chronos_dlq_messages") == 1
        assert value(s, "chronos_jobs", state="available", queue="default", priority="default") == 0
    finally:
        stop.set()
        assert await asyncio.wait_for(services, 30) is Outcome.STOPPED


async def test_serve_scheduler_metrics_port(settings, tmp_path):
    """`chronos serve scheduler --metrics-port N`: the real command line, scraped until it leads."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHRONOS_", "NOTIFY_", "WATCHDOG_"))}
    env["CHRONOS_SCHEDULER__ARCHIVE_PATH"] = str(tmp_path / "archive.sqlite3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronos.cli.main", "--server", settings.nats.url, "--namespace", settings.namespace,
         "serve", "scheduler", "--id", "m-node", "--metrics-port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        samples: Samples = {}
        while loop.time() < deadline and value(samples, "chronos_leader") != 1:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                samples = await scrape(port)
            except httpx.TransportError:
                pass  # not listening yet
            await asyncio.sleep(0.1)
        assert value(samples, "chronos_leader") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
    assert rc in (0, 130)
