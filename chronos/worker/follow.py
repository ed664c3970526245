"""A worker's KV watch kept alive: started over at once after a reconnect, and after a failure.

nats-py's ordered consumer notices a restarted server only after missing its idle heartbeats:
measured, a queue resume written after a server restart reached the worker 18 s later, and a
cancel the same. A reconnect is seen here at once (the connection's counter, checked every
0.1 s) and the watch starts over; each watch reads what is current when it starts
(``include_existing``), so nothing written meanwhile is missed. A watch that fails starts over
after 0.25 s, doubling to 2 s while it keeps failing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client as NATS

from ..cancellation import raise_if_cancelling

log = logging.getLogger(__name__)


async def follow(nc: NATS, watch: Callable[[], Coroutine[Any, Any, None]], what: str,
                 on_restart: Callable[[], None] | None = None) -> None:
    """Run ``watch()`` until cancelled, starting it over after each reconnect or failure."""
    backoff = 0.25
    while True:
        raise_if_cancelling()
        reconnects = nc.stats["reconnects"]
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(watch(), name=f"worker-{what}-watch")
        try:
            while not task.done() and nc.stats["reconnects"] == reconnects:
                await asyncio.wait({task}, timeout=0.1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        failed = task.done() and not task.cancelled() and task.exception() is not None
        if failed:
            log.warning("%s watch failed (%s); starting over in %.2gs", what, task.exception(), backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
        else:
            backoff = 0.25
            if on_restart is not None:
                on_restart()
            await asyncio.sleep(0.05)  # a watch that ended by itself (a closing connection): no spin
