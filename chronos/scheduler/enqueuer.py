"""Enqueuer: leader-only loop (placeholder until implemented)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..clock import SYSTEM_CLOCK, Clock
from ..jobs import JobOps


class Enqueuer:
    def __init__(self, ops: JobOps, *, clock: Clock = SYSTEM_CLOCK, tick: float = 1.0,
                 is_leader: Callable[[], bool] = lambda: True) -> None:
        self.ops = ops
        self.clock = clock
        self.tick = tick
        self.is_leader = is_leader

    async def run(self) -> None:
        await asyncio.Event().wait()
