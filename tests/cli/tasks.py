"""Tasks the CLI tests run (importable as ``tests.cli.tasks:registry`` for `serve worker --tasks`)."""

from __future__ import annotations

import asyncio

from chronos import Cancel, Retry, current_job
from chronos.worker.registry import Registry

registry = Registry()


async def add(a: int, b: int) -> int:
    return a + b


async def boom(message: str = "boom") -> None:
    raise RuntimeError(message)


async def retry_once() -> int:
    ctx = current_job()
    assert ctx is not None
    if ctx.attempt == 1:
        raise Retry(0.1, "once more")
    return ctx.attempt


async def slow(seconds: float = 30.0) -> str:
    ctx = current_job()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        if ctx is not None and ctx.cancelled:
            raise Cancel(ctx.cancel_reason or "cancelled")
        await asyncio.sleep(0.05)
    return "done"


async def stubborn(seconds: float = 30.0) -> str:
    """Ignores cancel requests: only the worker's hard stop after worker.cancel_grace ends it."""
    await asyncio.sleep(seconds)
    return "done"


registry.register(add, name="t.add")
registry.register(boom, name="t.boom")
registry.register(retry_once, name="t.retry_once")
registry.register(slow, name="t.slow")
registry.register(stubborn, name="t.stubborn")
