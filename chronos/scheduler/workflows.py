"""The leader's workflow loop: repairs what a process killed mid-advance left undone, and prunes
finished workflows past the retention.

Workers advance a workflow as each node's job ends (worker/advance.py). A worker killed after
committing a node's outcome and before advancing it, or a starter killed between deciding a
child and creating it, leaves a node ended but not advanced, or a child that should exist and
does not. Every ``tick`` this loop looks at each running workflow's frontier and advances or
starts what is missing; advancing is idempotent and starting is create-if-absent, so racing a
live worker is harmless. A workflow that failed fast or was cancelled has its live nodes
signalled until none is left (settled).

Cost follows active workflows, never all of them: the workflow records are kept in memory from
one watch of ``w.*`` (every record once when the term starts, then each write as it happens),
so a tick looks only at the running and unsettled workflows, and with none it reads nothing.
Nor does it re-read a running workflow in which nothing happens: a second watch (headers only)
of the node jobs' keys marks a workflow changed on any write of one of its jobs, and the
repair reads it ``min_age`` after its last change (what a dead worker left is a write like any
other), and otherwise once every ``SAFETY`` seconds. The finished ones wait in a heap by
finish time; when the oldest passes ``scheduler.retention`` its keys are deleted with markers that
expire by themselves (``WorkflowStore.purge_keys``; no stream purge right), so a pass costs what
expires, up to ``PRUNE_KEYS_PER_TICK`` keys. While a
workflow's record exists its node jobs are kept by the job pruner (``holds``): a node pruned
while its workflow runs would look missing to the repair and lose its result to its children.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import Callable

from ..clock import Clock
from ..events import EventPublisher
from ..jobs import JobOps
from ..states import WORKFLOW_TERMINAL, WorkflowState
from ..workflows import WorkflowRecord, split_job_id
from ..workflowstore import WorkflowStore

log = logging.getLogger(__name__)

PRUNE_KEYS_PER_TICK = 20_000  # about two 10,000-node workflows per repair tick
SAFETY = 30.0  # seconds between looks at a running workflow in which nothing was seen to change


class WorkflowRepair:
    def __init__(self, ops: JobOps, *, clock: Clock, tick: float, is_leader: Callable[[], bool],
                 events: EventPublisher | None = None, min_age: float = 1.0,
                 retention: float | None = None) -> None:
        self.store = WorkflowStore(ops, emit=events.emit if events is not None else None)
        self.nc = ops.publisher.nc
        self.clock = clock
        self.tick = tick
        self.is_leader = is_leader
        self.min_age = min_age  # a node ended this recently is probably being advanced by its worker
        self.retention = ops.conn.settings.scheduler.retention if retention is None else retention
        self.repaired = 0
        self.rounds = 0
        self.looked = 0  # workflows read by rounds (repair or settle): the loop's cost
        self.pruned = 0
        self.loaded = asyncio.Event()  # the watch has delivered every record that existed at its start
        self._live: dict[str, WorkflowRecord] = {}  # running, or stopped with nodes maybe still running
        self._finished: dict[str, tuple[float, int]] = {}  # finished and settled: (finished_at, revision)
        self._expiry: list[tuple[float, str]] = []  # (finished_at, id); stale entries skipped when popped
        self._purging: set[str] = set()  # records deleted whose other keys are still to purge
        self._next: dict[str, float] = {}  # workflow -> when to look again (big ones less often)
        self._changed: dict[str, float] = {}  # running workflow -> when a write to it was last seen
        self._looked: dict[str, float] = {}  # running workflow -> when the repair last read it

    # --- what the job pruner asks ----------------------------------------------------------------------
    def holds(self, job_id: str) -> bool:
        """Is this job a node of a workflow whose record still exists (or may: not loaded yet)?"""
        node = split_job_id(job_id)
        if node is None:
            return False
        wf = node[0]
        return not self.loaded.is_set() or wf in self._live or wf in self._finished

    def active(self) -> list[str]:
        return list(self._live)

    # --- the loop ------------------------------------------------------------------------------------
    async def run(self) -> None:
        watch: asyncio.Task[None] | None = None
        reconnects = -1
        try:
            while self.is_leader():
                # After a reconnect start the watch over (a fresh read of every record): an ordered
                # consumer may notice a restarted server only after missed heartbeats.
                if watch is None or watch.done() or self.nc.stats["reconnects"] != reconnects:
                    if watch is not None:
                        watch.cancel()
                        await asyncio.gather(watch, return_exceptions=True)
                    reconnects = self.nc.stats["reconnects"]
                    watch = asyncio.get_running_loop().create_task(self._follow(), name="workflows-watch")
                try:
                    await self.round()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("workflow round failed; trying again next tick")
                await self.clock.sleep(self.tick)
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)

    async def _follow(self) -> None:
        self.loaded.clear()
        self._live.clear()
        self._finished.clear()
        self._expiry.clear()
        self._looked.clear()  # every workflow is read at the first look after a (re)start
        close = None
        try:
            close = await self.store.on_node_writes(self._touch)
            async for wf, rec, caught_up in self.store.watch_records():
                if wf:
                    self._see(wf, rec)
                if caught_up and not self.loaded.is_set():
                    log.debug("workflows: %d active, %d finished", len(self._live), len(self._finished))
                    self.loaded.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("workflow watch ended (%s); starting it over next tick", exc)
        finally:
            if close is not None:
                await close()

    def _touch(self, wf: str) -> None:
        if wf in self._live:
            self._changed[wf] = self.clock.now()

    def _see(self, wf: str, rec: WorkflowRecord | None) -> None:
        if rec is None:  # pruned
            self._live.pop(wf, None)
            self._finished.pop(wf, None)
            self._forget(wf)
            return
        have = self._live.get(wf)
        if have is not None and have.revision > rec.revision:
            return
        if rec.state in WORKFLOW_TERMINAL and rec.settled:
            self._live.pop(wf, None)
            self._forget(wf)
            done = rec.finished_at if rec.finished_at is not None else rec.updated_at
            self._finished[wf] = (done, rec.revision)
            heapq.heappush(self._expiry, (done, wf))
        else:
            self._finished.pop(wf, None)
            self._live[wf] = rec
            self._changed[wf] = self.clock.now()  # submitted, resumed, stopped: look at it

    def _forget(self, wf: str) -> None:
        self._next.pop(wf, None)
        self._changed.pop(wf, None)
        self._looked.pop(wf, None)

    async def round(self) -> int:
        if not self.loaded.is_set():
            return 0
        touched = 0
        now = self.clock.now()
        for wf, rec in list(self._live.items()):
            if not self.is_leader():
                break
            try:
                if rec.state is WorkflowState.RUNNING:
                    changed = self._changed.get(wf)
                    # a change is looked at once it is min_age old (its worker had time to advance it)
                    due = (changed is not None and now - changed >= self.min_age) or \
                        now - self._looked.get(wf, -SAFETY) >= SAFETY
                    if not due or self._next.get(wf, 0.0) > now:
                        continue
                    # a big workflow's frontier costs a pass over its jobs: look less often
                    self._next[wf] = now + max(0.0, rec.nodes / 2000.0 - self.tick)  # 10,000 nodes: every 5 s
                    if changed is not None and now - changed >= self.min_age and self._changed.get(wf) == changed:
                        self._changed.pop(wf, None)  # this look covers it (an earlier one would not: too fresh)
                    self._looked[wf] = now
                    self.looked += 1
                    touched += await self.store.repair(wf, self.min_age)
                elif not rec.settled:
                    self.looked += 1
                    await self.store.settle(wf)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("workflow %s: repair failed; trying again next tick", wf)
        await self.expire(now)
        self.repaired += touched
        self.rounds += 1
        return touched

    async def expire(self, now: float) -> int:
        """Purge the finished workflows whose finish is older than the retention, oldest first."""
        cutoff = now - self.retention
        n = written = 0
        for wf in list(self._purging):  # a purge that failed after its record's delete
            if not self.is_leader():
                return n
            try:
                written += await self.store.purge_keys(wf)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("workflow %s: purging its keys failed (%s); trying again next tick", wf, exc)
                return n
            self._purging.discard(wf)
        # A pass deletes keys one by one (about 15-25 ms per 1,000 keys): past a budget, the rest
        # waits for the next tick so the repair is not held up by a backlog of big workflows.
        while self._expiry and self._expiry[0][0] < cutoff and self.is_leader() and written < PRUNE_KEYS_PER_TICK:
            done, wf = heapq.heappop(self._expiry)
            seen = self._finished.get(wf)
            if seen is None or seen[0] != done:
                continue  # resumed, pruned or finished again since
            try:
                if not await self.store.delete_record(wf, seen[1]):
                    continue  # moved since (retried): the watch brings its new state
                self._finished.pop(wf, None)
                self._purging.add(wf)
                written += await self.store.purge_keys(wf)
                self._purging.discard(wf)
                n += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("workflow %s: pruning failed; trying again next tick", wf)
                if wf not in self._purging:
                    heapq.heappush(self._expiry, (done, wf))
                break
        if n:
            log.info("workflows: pruned %d finished before the %gs retention", n, self.retention)
            self.pruned += n
        return n
