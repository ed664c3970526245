"""Time, injected. Anything that compares against now, sleeps, or waits with a timeout takes a Clock.

Services and their tests share one rule: no ``asyncio.sleep(n)``, ``asyncio.wait_for(..., n)``,
``loop.call_later`` or ``time.time()`` outside this module (``asyncio.sleep(0)``, a yield, is
not a wait). So a test can hand a ``FakeClock`` to a worker or a stager and move time by hand:
a one-hour backoff or run_at is then a millisecond test.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (for records and schedules)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for deadlines and lease trust)."""

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until ``event`` is set or ``timeout`` seconds pass on this clock; True if it is set."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        # asyncio.timeout, not wait_for: no task per call, and (unlike 3.11's wait_for) it never
        # swallows a cancel that lands as the event is set.
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await event.wait()
        except TimeoutError:
            return event.is_set()
        return True


class FakeClock:
    """A clock tests move by hand; sleepers wake when time passes their deadline."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._registered: asyncio.Event | None = None  # set whenever a sleep or wait begins

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._add((self._mono + max(0.0, seconds), fut))
        await fut

    def _add(self, entry: tuple[float, asyncio.Future[None]]) -> None:
        self._sleepers.append(entry)
        if self._registered is not None:
            self._registered.set()

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._mono + max(0.0, timeout), timer)
        self._add(entry)
        waiter = asyncio.ensure_future(event.wait())  # a test clock: a task per wait is fine
        try:
            await asyncio.wait((timer, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if entry in self._sleepers:
                self._sleepers.remove(entry)
        return event.is_set()

    @property
    def sleepers(self) -> int:
        """How many sleeps and waits are pending: a test advances once the code under test waits."""
        return sum(1 for _, fut in self._sleepers if not fut.done())

    async def until_waiting(self, n: int = 1, timeout: float = 10.0) -> None:
        """Return once at least ``n`` sleeps or waits are pending on this clock (real ``timeout``):
        a test advances time only after the code under test has started waiting for it."""
        async with asyncio.timeout(timeout):
            while self.sleepers < n:
                self._registered = self._registered or asyncio.Event()
                self._registered.clear()
                await self._registered.wait()

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds
        due = [s for s in self._sleepers if s[0] <= self._mono]
        self._sleepers = [s for s in self._sleepers if s[0] > self._mono]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)

    def set(self, now: float) -> None:
        self.advance(max(0.0, now - self._now))


SYSTEM_CLOCK = SystemClock()
