"""SchedulerService: holds the lease, runs the leader-only loops while it leads.

::

    follower --lease gained--> leader: stager, enqueuer, rescuer, pruner in one TaskGroup
       ^                          |
       +-------lease lost---------+  (all loops cancelled together)

    every node, leader or not: the lease task and the archiver (events -> its own
    SQLite file; every node answers history requests, the client merges), see archiver.py

A loop that fails ends the term's TaskGroup; the service logs it and starts the
loops again while it still leads (after a short pause). ``stop()`` cancels the
loops and resigns the lease so a follower takes over at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from .archiver import Archiver
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..connection import Connection, connect, ensure_topology
from ..events import EventPublisher, log_event
from ..jobs import JobOps
from ..leadership import LeaderLease
from .enqueuer import Enqueuer
from .pruner import Pruner
from .purger import Purger
from .rescuer import Rescuer
from .stager import Stager
from .workflows import WorkflowRepair

log = logging.getLogger(__name__)


class SchedulerService:
    def __init__(
        self,
        settings: Settings,
        *,
        conn: Connection | None = None,
        clock: Clock = SYSTEM_CLOCK,
        node_id: str | None = None,
        log_events: bool = True,
        stager_tick: float = 2.0,
        enqueuer_tick: float = 1.0,
        rescuer_tick: float | None = None,
        pruner_tick: float | None = None,
        workflow_tick: float = 1.0,
        archive_path: str | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.node_id = node_id
        self._conn = conn
        self._own_conn = conn is None
        self._log_events = log_events
        self._stager_tick = stager_tick
        self._enqueuer_tick = enqueuer_tick
        self._rescuer_tick = rescuer_tick
        self._pruner_tick = pruner_tick
        self._workflow_tick = workflow_tick
        self.workflow_repair: WorkflowRepair | None = None
        self._archive_path = archive_path
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()  # connected, topology ensured, contending for the lease
        self.leading = asyncio.Event()  # the leader-only loops are running
        self.lease: LeaderLease | None = None
        self.stager: Stager | None = None
        self.enqueuer: Enqueuer | None = None
        self.rescuer: Rescuer | None = None
        self.pruner: Pruner | None = None
        self.purger: Purger | None = None
        self.archiver: Archiver | None = None
        self.terms = 0  # how many times the loops were started
        self.stop_wait = 5.0  # how long a term's loops get to finish after their cancel
        self._stragglers: set[asyncio.Task[Any]] = set()

    def stop(self) -> None:
        """Begin graceful shutdown (safe to call from a signal handler)."""
        self._stopping.set()

    @property
    def is_leader(self) -> bool:
        return self.lease is not None and self.lease.is_leader

    async def run(self) -> None:
        if self._conn is None:
            self._conn = await connect(self.settings, name="chronos-scheduler")
        conn = self._conn
        events = EventPublisher(conn.nc, conn.names)
        if self._log_events:
            events.bus.subscribe(log_event)
        try:
            await ensure_topology(conn)
            # Followers poll at most every 0.5 s (the lease's default is ttl/4, 1.25 s at the default TTL):
            # an expired lease leaves no marker to watch, and takeover must stay within TTL + 1 s.
            poll = min(self.settings.scheduler.lease_ttl / 4, 0.5)
            self.lease = LeaderLease(conn, clock=self.clock, node_id=self.node_id, on_event=events.emit,
                                     poll_every=poll)
            self.archiver = Archiver(conn, path=self._archive_path, clock=self.clock)
            async with asyncio.TaskGroup() as tg:
                archive_task = tg.create_task(self.archiver.run(), name="scheduler-archive")
                lease_task = tg.create_task(self.lease.run(), name="scheduler-lease")
                main = tg.create_task(self._supervise(conn, events), name="scheduler-supervise")
                self.ready.set()
                await self._stopping.wait()
                main.cancel()
                lease_task.cancel()  # resigns on the way out
                archive_task.cancel()
        finally:
            await events.close()
            if self._own_conn:
                await conn.close()
            if self._stragglers:
                await asyncio.wait(self._stragglers, timeout=self.stop_wait)

    async def _supervise(self, conn: Connection, events: EventPublisher) -> None:
        assert self.lease is not None
        lease = self.lease
        while True:
            await lease.leading.wait()
            if not lease.is_leader:
                await asyncio.sleep(0.05)
                continue
            term = asyncio.create_task(self._lead(conn, events), name="scheduler-term")
            lost = asyncio.create_task(lease.following.wait())
            try:
                await asyncio.wait({term, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (term, lost):
                    t.cancel()
                _, pending = await asyncio.wait({term, lost}, timeout=self.stop_wait)
                if pending:
                    # A cancel lost inside nats-py (3.11's wait_for swallows one that lands as a reply
                    # arrives) leaves a loop waiting forever, and a TaskGroup cancels its children only
                    # once. Cancel the stuck loop tasks again; every loop re-checks is_leader before it
                    # acts, so one that lingers meanwhile does no harm. Collected at shutdown.
                    stuck = _recancel_stuck_loops()
                    log.error("scheduler loops did not stop within %.0fs; cancelled again: %s", self.stop_wait,
                              ", ".join(stuck) or "none found")
                    _, pending = await asyncio.wait(pending, timeout=self.stop_wait)
                    self._stragglers.update(pending)
                self.leading.clear()
            if term.done() and not term.cancelled() and term.exception() is not None:
                log.error("scheduler loops failed; restarting them", exc_info=term.exception())
                await asyncio.sleep(0.5)

    async def _lead(self, conn: Connection, events: EventPublisher) -> None:
        """The leader-only loops of one term, started and cancelled together."""
        assert self.lease is not None
        lease = self.lease
        ops = JobOps(conn, self.clock)
        s = self.settings.scheduler

        def is_leader() -> bool:
            return lease.is_leader

        self.stager = Stager(ops, clock=self.clock, tick=self._stager_tick, is_leader=is_leader,
                             on_event=events.emit)
        self.enqueuer = Enqueuer(ops, clock=self.clock, tick=self._enqueuer_tick, is_leader=is_leader,
                                 on_event=events.emit)
        assert self.archiver is not None
        self.rescuer = Rescuer(ops, clock=self.clock, tick=self._rescuer_tick or max(1.0, s.rescue_after / 4),
                               is_leader=is_leader, on_event=events.emit, index=self.archiver.index)
        # Workflows: repair, pruning past the retention; their node jobs are kept while their record is.
        self.workflow_repair = WorkflowRepair(ops, clock=self.clock, tick=self._workflow_tick, is_leader=is_leader,
                                              events=events)
        self.pruner = Pruner(ops, self.archiver, clock=self.clock, is_leader=is_leader,
                             tick=self._pruner_tick or min(300.0, max(1.0, s.retention / 10)),
                             keep=self.workflow_repair.holds)
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("stager", self.stager.run),
            ("enqueuer", self.enqueuer.run),
            ("rescuer", self.rescuer.run),
            ("pruner", self.pruner.run),
        ]
        # Acknowledged work messages out of the limits-retention jobs stream, in bulk (purger.py).
        # It also republishes available jobs whose messages were purged by someone else (a stolen credential).
        self.purger = Purger(conn, is_leader=is_leader, clock=self.clock, ops=ops, index=self.archiver.index,
                             rescue_after=s.rescue_after)
        loops.append(("purger", self.purger.run))
        loops.append(("workflows", self.workflow_repair.run))
        self.terms += 1
        async with asyncio.TaskGroup() as tg:
            for name, fn in loops:
                tg.create_task(fn(), name=f"scheduler-{name}")
            self.leading.set()


# Tasks of a term's loops (named where they are created); never the lease, whose cleanup resigns.
_LOOP_TASKS = ("scheduler-stager", "scheduler-enqueuer", "scheduler-rescuer", "scheduler-pruner", "scheduler-workflows",
               "scheduler-purger", "workflows-watch",
               "stager-load", "enqueuer-watch")


def _recancel_stuck_loops() -> list[str]:
    """Cancel again every loop task that was cancelled but is still running; returns where each waits."""
    out = []
    for task in asyncio.all_tasks():
        if task.get_name() in _LOOP_TASKS and task.cancelling() and not task.done():
            frames = task.get_stack(limit=1)
            where = f" at {frames[-1].f_code.co_name}:{frames[-1].f_lineno}" if frames else ""
            out.append(f"{task.get_name()}{where}")
            task.cancel()
    return out
