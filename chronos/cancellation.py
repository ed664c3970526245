"""One cancellation policy: a cancel is never lost, and only a cancel we sent ourselves is taken back.

Python 3.11's ``asyncio.wait_for`` (used inside nats-py for every request and fetch) can swallow
a cancel that lands in the same loop iteration as the reply it waits for (CPython gh-86296): the
call returns normally, the task's ``cancelling()`` count stays above zero, and a loop that was
asked to stop carries on. Python 3.12 rebuilt ``wait_for`` on ``asyncio.timeout`` and fixed it.

Why not require 3.12 and drop the guard: the project promises 3.11+, CI runs 3.11, and the TUI's
committed snapshots are pinned to the Python that made them, so moving the floor is a release
decision of its own, not a refactor. Until then every long-running loop that awaits nats-py calls
``raise_if_cancelling()`` once per turn (cheap: one attribute read), in this one place, so the
day the floor moves it becomes a no-op to delete.

The other direction: the worker interrupts a running task function by cancelling the task that
awaits it (timeout, operator cancel, shutdown). That cancel is ours and must not end the task:
``take_interrupt()`` takes it back with ``uncancel()``.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise CancelledError if this task was asked to stop but a callee swallowed the cancel."""
    me = asyncio.current_task()
    if me is not None and me.cancelling():
        raise asyncio.CancelledError


def take_interrupt() -> None:
    """Take back the one cancel this task's owner sent as an interrupt (not a stop request),
    so the task can go on to record the interrupted call's outcome."""
    me = asyncio.current_task()
    if me is not None:
        me.uncancel()
