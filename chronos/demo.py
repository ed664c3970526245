"""Example tasks and demo jobs for `chronos dev`: some succeed, some retry, one ends in the DLQ.

Everything here lives on its own queue, ``demo``: a demo worker never takes a user's jobs, and
a user's worker never takes the demo's. Task handles declare the queue, so ``chronos submit
demo.add ...`` goes there without ``--queue`` (the worker publishes it in the task catalog).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgspec

from .errors import Cancel, Retry
from .models import Backoff
from .worker.context import current_job
from .worker.registry import Registry


async def add(a: float, b: float) -> float:
    """Adds two numbers after a short pause."""
    await asyncio.sleep(0.2)
    return a + b


async def sleep(seconds: float = 1.0) -> str:
    """Sleeps, checking for a cancel request so `chronos cancel` stops it early (as cancelled)."""
    ctx = current_job()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        if ctx is not None and ctx.cancelled:
            raise Cancel(ctx.cancel_reason or "cancelled")
        await asyncio.sleep(min(0.2, left))
    return f"slept {seconds:g}s"


async def flaky(fail_times: int = 2, delay: float = 1.0) -> str:
    """Asks to be retried ``fail_times`` times, then succeeds."""
    ctx = current_job()
    attempt = ctx.attempt if ctx is not None else 1
    if attempt <= fail_times:
        raise Retry(delay, f"flaky: attempt {attempt} of {fail_times + 1} asks for a retry")
    return f"succeeded on attempt {attempt}"


async def always_fails(message: str = "this task always fails") -> None:
    """Raises every time, so it runs out of attempts and lands in the DLQ."""
    await asyncio.sleep(0.05)
    raise RuntimeError(message)


def report(rows: int = 1000) -> dict[str, Any]:
    """A synchronous task (runs in the worker's thread pool) returning a small summary."""
    rng = random.Random(rows)
    values = [rng.random() for _ in range(rows)]
    return {"rows": rows, "mean": round(sum(values) / rows, 4), "max": round(max(values), 4)}


DEMO_QUEUE = "demo"


def demo_registry() -> Registry:
    reg = Registry()
    for fn, name in ((add, "demo.add"), (sleep, "demo.sleep"), (flaky, "demo.flaky"),
                     (always_fails, "demo.always_fails"), (report, "demo.report")):
        reg.register(fn, name=name, queue=DEMO_QUEUE)
    return reg


class DemoJob(msgspec.Struct, frozen=True):
    """One seeded job: Client.submit(task, args, **options)."""

    task: str
    args: list[Any] | dict[str, Any]
    options: dict[str, Any] = {}
    expect: str = "completed"  # what the job should end as, for the dev banner and the tests


FAST_RETRY = Backoff(kind="fixed", base=1.0, jitter=False)


def demo_jobs() -> list[DemoJob]:
    jobs = [
        DemoJob("demo.add", [1, 2]),
        DemoJob("demo.add", {"a": 40, "b": 2}, {"tags": ["demo"]}),
        DemoJob("demo.report", {"rows": 5000}, {"priority": "high"}),
        DemoJob("demo.sleep", {"seconds": 3}, {"priority": "low", "tags": ["demo", "slow"]}),
        DemoJob("demo.sleep", {"seconds": 1}),
        DemoJob("demo.flaky", {"fail_times": 1}, {"tags": ["demo"]}, expect="completed after a retry"),
        DemoJob("demo.flaky", {"fail_times": 2}, {"max_attempts": 5}, expect="completed after a retry"),
        DemoJob("demo.always_fails", [], {"max_attempts": 3, "backoff": FAST_RETRY, "tags": ["demo"]},
                expect="discarded (DLQ)"),
        DemoJob("demo.add", [20, 22], {"delay": 30.0, "tags": ["demo", "delayed"]},
                expect="completed 30 s after start (delayed)"),
    ]
    return [msgspec.structs.replace(j, options={"queue": DEMO_QUEUE, **j.options}) for j in jobs]


class DemoSchedule(msgspec.Struct, frozen=True):
    """One seeded schedule: Client.add_schedule(name, task, args, **options)."""

    name: str
    task: str
    args: list[Any] | dict[str, Any]
    options: dict[str, Any] = {}


def demo_schedules() -> list[DemoSchedule]:
    return [
        DemoSchedule("demo-tick", "demo.add", [1, 1], {"every": 15, "queue": DEMO_QUEUE}),
        DemoSchedule("demo-hourly-report", "demo.report", {"rows": 100}, {"cron": "0 * * * *", "tz": "UTC", "queue": DEMO_QUEUE}),
        DemoSchedule("demo-nightly", "demo.sleep", {"seconds": 2},
                     {"cron": "30 2 * * *", "tz": "Europe/Berlin", "overlap": "skip", "queue": DEMO_QUEUE}),
    ]


# For `chronos serve worker --tasks chronos.demo:registry`.
registry = demo_registry()
