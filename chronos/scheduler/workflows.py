"""The leader's workflow repair: finishes what a process killed mid-advance left undone.

Workers advance a workflow as each node's job ends (worker/advance.py). A worker killed after
committing a node's outcome and before advancing it, or a starter killed between deciding a
child and creating it, leaves a node ended but not advanced, or a child that should exist and
does not. Every ``tick`` this loop looks at each running workflow's frontier (nodes whose
parents have all been advanced) and advances or starts what is missing; advancing is
idempotent and starting is create-if-absent, so racing a live worker is harmless. A workflow
that failed fast or was cancelled has its live nodes signalled until none is left (settled).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from ..clock import Clock
from ..events import EventPublisher
from ..jobs import JobOps
from ..states import WorkflowState
from ..workflowstore import WorkflowStore

log = logging.getLogger(__name__)


class WorkflowRepair:
    def __init__(self, ops: JobOps, *, clock: Clock, tick: float, is_leader: Callable[[], bool],
                 events: EventPublisher | None = None, min_age: float = 1.0) -> None:
        self.store = WorkflowStore(ops, emit=events.emit if events is not None else None)
        self.clock = clock
        self.tick = tick
        self.is_leader = is_leader
        self.min_age = min_age  # a node ended this recently is probably being advanced by its worker
        self.repaired = 0
        self.rounds = 0
        self._next: dict[str, float] = {}  # workflow -> when to look again (big ones less often)

    async def run(self) -> None:
        while self.is_leader():
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("workflow repair round failed; trying again next tick")
            await self.clock.sleep(self.tick)

    async def round(self) -> int:
        touched = 0
        now = self.clock.now()
        records = await self.store.records()
        running = {r.id for r in records if r.state is WorkflowState.RUNNING}
        for wf in [w for w in self._next if w not in running]:
            del self._next[wf]
        for rec in records:
            if not self.is_leader():
                break
            if rec.state is WorkflowState.RUNNING:
                if self._next.get(rec.id, 0.0) > now:
                    continue
                # a big workflow's frontier costs a pass over its jobs: look less often
                self._next[rec.id] = now + max(0.0, rec.nodes / 2000.0 - self.tick)  # 10,000 nodes: every 5 s
                try:
                    touched += await self.store.repair(rec.id, self.min_age)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("workflow %s: repair failed; trying again next tick", rec.id)
            elif not rec.settled and rec.state in (WorkflowState.CANCELLED, WorkflowState.FAILED):
                try:
                    await self.store.settle(rec.id)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("workflow %s: stopping its live nodes failed; trying again next tick", rec.id)
        self.repaired += touched
        self.rounds += 1
        return touched
