"""WorkerService: a pull loop that never fetches more than its free slots.

Slots: ``concurrency`` in all; a running job takes its task's ``weight``; a
pull request reserves as many slots as it may still deliver. A job that has run and
whose outcome write awaits its commit holds no slot (``completing``): the write's
fsync overlaps the next jobs, as River's batch completer lets the producer fetch
while completions are persisted. Up to ``concurrency`` such jobs are free; past
that backlog they count again, so no more than twice ``concurrency`` messages are
ever held unacked, and none is fetched that no slot can run.

Priority rule: each fetch round asks critical, then high, default, low (queues
in turn within a priority), each for what is still free. So that ``low`` is
never starved by a flood of higher work, every ``low_priority_every``-th round
(default 8) runs the order backwards, lowest first.

Idle: a consumer found empty keeps one long poll (batch 1) standing, as slots
allow, instead of being asked again each round; any delivery or finished job
starts a new round.

Shutdown, in two phases (River's Stop/StopAndCancel, arq's wait-for-completion):
stop fetching; wait up to ``shutdown_grace`` for running jobs; then cancel what
is left, which writes them back to ``available`` and naks them for redelivery.

Sync tasks: when the registry has any, a fetch also never asks for more than the
free threads (or processes) of the sync runner, less those still held by calls
that were interrupted but could not be stopped (sync_exec.py).

Beside the fetch loop: the heartbeat and the view of peers (heartbeat.py), the
operator-cancel watch (cancels.py), and one ticker here for in_progress and
timeouts. The service is the executor's ``Host`` (slots, peers, pending cancels,
its task group). A thread (watchdog.py) keeps held jobs alive while a task blocks
the event loop.

Tasks: every task belongs to the service's TaskGroup, or, once that group is
closing, to a tracked set awaited before the service returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg

from .. import codec
from ..cancellation import raise_if_cancelling
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..connection import Connection, connect, ensure_queue_consumers, ensure_topology
from ..events import EventPublisher, log_event
from ..ids import new_job_id
from ..jobs import JobOps
from ..limitstore import LimitStore
from ..models import Event, RunningJob, TaskInfo, WorkerHeartbeat
from ..subjects import PRIORITIES
from .advisories import MaxDeliveriesHandler
from .cancels import CancelWatch
from .executor import Executor, Running
from .heartbeat import Heartbeat, Peers
from .limiter import Limiter
from .pauses import PauseWatch, hand_back
from .puller import Puller
from .registry import Registry, default_registry
from .sync_exec import SyncRunner
from .watchdog import LoopWatchdog

log = logging.getLogger(__name__)

# The young-generation threshold of a process that is a worker (runtime.WorkerMain, gctune.py):
# with Python's defaults the collector took 21 % of a busy worker's CPU (py-spy, bench
# throughput); with this, and the per-job reference cycle broken (``released``), about 1 %.
WORKER_GC_GEN0 = 100_000


class Changes:
    """A count of the service's state changes (a job released, a heartbeat sent, a thread freed)
    that anyone may wait on with a predicate: unlike an event pulsed set-then-clear, a change
    that lands before the wait begins is never missed, because the predicate is checked first."""

    __slots__ = ("count", "_waiters")

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[asyncio.Future[None]] = []

    def bump(self) -> None:
        self.count += 1
        if self._waiters:
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(None)
            self._waiters.clear()

    async def until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Return once ``predicate()`` holds, checked now and after each change; TimeoutError after
        ``timeout`` seconds of real time (a test's bound, not the service's clock)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                await fut


class WorkerService:
    def __init__(
        self,
        settings: Settings,
        registry: Registry | None = None,
        *,
        conn: Connection | None = None,
        clock: Clock = SYSTEM_CLOCK,
        burst: bool = False,
        worker_id: str | None = None,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        log_events: bool = True,
    ) -> None:
        self.settings = settings
        self.registry = registry or default_registry
        self.clock = clock
        self.burst = burst
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_job_id()[-6:]}"
        self.queues = queues or list(settings.worker.queues)
        self.slots = concurrency or settings.worker.concurrency
        self._conn = conn
        self._own_conn = conn is None
        self.running: dict[int, Running] = {}
        self.used = 0
        self.committing = 0  # jobs that ran and await their outcome's commit (they hold no slot)
        self.peak_used = 0  # the most slots held at once: what the heartbeat reports as slots_peak
        self._wake = asyncio.Event()
        self.changed = Changes()
        self._stopping = asyncio.Event()
        self._fetch_done = asyncio.Event()
        self.ready = asyncio.Event()
        self.pullers: list[Puller] = []
        self._log_events = log_events
        self._tg: asyncio.TaskGroup | None = None
        self._stray: set[asyncio.Task[Any]] = set()  # tasks started once the group was closing
        self._seq = 0
        self.started_at = clock.now()
        self.events: EventPublisher | None = None
        self.executor: Executor | None = None
        self.sync: SyncRunner | None = None
        self.watchdog: LoopWatchdog | None = None
        self._sync_cap = any(not d.is_async for d in map(self.registry.get, self.registry.names()) if d)
        self.sync_held = 0  # held jobs that are (or may be, not yet decoded) sync: each takes a thread
        self.peers: Peers | None = None
        self.cancels: CancelWatch | None = None
        self.beat: Heartbeat | None = None
        self.limiter: Limiter | None = None  # fleet-wide rate and concurrency limits (limiter.py)
        self.pauses: PauseWatch | None = None
        self.paused_handbacks = 0  # jobs delivered for a request opened before their queue was paused

    # --- public -----------------------------------------------------------------------
    def stop(self) -> None:
        """Begin graceful shutdown (safe to call from a signal handler)."""
        self._stopping.set()
        self._wake.set()

    @property
    def conn(self) -> Connection:
        assert self._conn is not None
        return self._conn

    async def run(self) -> None:
        if self._conn is None:
            self._conn = await connect(self.settings, name=f"chronos-worker-{self.id}")
        conn = self._conn
        w = self.settings.worker
        self.sync = SyncRunner(w.sync_executor, w.thread_pool_size, self.clock, on_free=self._on_sync_free,
                               preload=[d.fn.__module__ for d in map(self.registry.get, self.registry.names())
                                        if d and not d.is_async])
        try:
            await ensure_topology(conn)
            for q in self.queues:
                await ensure_queue_consumers(conn, q)
            ops = JobOps(conn, self.clock)
            await ops.store()  # bind the KV handle once, not from hundreds of first jobs at once
            self.events = EventPublisher(conn.nc, conn.names)
            if self._log_events:
                self.events.bus.subscribe(log_event)
            self.peers = Peers(conn, self.id, w.heartbeat_interval, self.clock)
            self.cancels = CancelWatch(ops, self.clock, w.cancel_grace, lambda: list(self.running.values()))
            self.beat = Heartbeat(conn, self.id, w.heartbeat_interval, self.clock, self.heartbeat,
                                  on_sent=self.changed.bump)
            self.limiter = Limiter(LimitStore(conn, self.clock), self.clock, self.id, w.limit_lease, w.max_deliver)
            self.executor = Executor(
                ops=ops, registry=self.registry, events=self.events, clock=self.clock, worker_id=self.id,
                default_timeout=self.settings.jobs.default_timeout,
                max_result_bytes=self.settings.jobs.max_result_bytes, sync=self.sync,
                unknown_task_after=w.unknown_task_after, host=self, limiter=self.limiter,
            )
            if w.loop_watchdog:
                self.watchdog = LoopWatchdog(self.settings, self._held, name=self.id, on_block=self._on_block)
                self.watchdog.start()
            await self._register_tasks(conn)
            await self.cancels.load()  # before the first fetch: see executor's fast path
            await self.limiter.load()  # queue limits, before the first fetch; then followed live
            # Paused queues are known before the first pull, then followed live (pauses.py).
            self.pauses = PauseWatch(conn, self.queues, self._on_pause_change)
            await self.pauses.load()
            advisories = await MaxDeliveriesHandler(ops, self.clock).subscribe()
            self.pullers = [
                Puller(conn, p, q, self._on_message, self._wake.set, self._on_stale)
                for p in PRIORITIES for q in self.queues
            ]
            for p in self.pullers:
                await p.start()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                background = [
                    tg.create_task(self.beat.run(), name=f"worker-heartbeat-{self.id}"),
                    tg.create_task(self._progress_loop(), name=f"worker-progress-{self.id}"),
                    tg.create_task(self.cancels.run(), name=f"worker-cancels-{self.id}"),
                    tg.create_task(self.limiter.watch(), name=f"worker-limits-{self.id}"),
                    tg.create_task(self.limiter.renew_loop(), name=f"worker-limit-leases-{self.id}"),
                    tg.create_task(self.pauses.run(), name=f"worker-pauses-{self.id}"),
                ]
                fetch = tg.create_task(self._fetch_loop(), name=f"worker-fetch-{self.id}")
                self.ready.set()
                self.events.emit(Event(kind="worker.started", at=self.clock.now(), worker=self.id,
                                       queue=",".join(self.queues), message=f"{self.slots} slots"))
                await fetch
                await self._drain_running()
                for t in background:
                    t.cancel()
            self._tg = None
            await self._settle_stray()
            await advisories.unsubscribe()  # type: ignore[attr-defined]
            await self.beat.remove()
            self.events.emit(Event(kind="worker.stopped", at=self.clock.now(), worker=self.id))
        finally:
            self._tg = None
            for t in self._stray:
                t.cancel()
            for p in self.pullers:
                await p.stop()
            if self.events is not None:
                await self.events.close()
            if self.watchdog is not None:
                self.watchdog.stop()
            self.sync.shutdown()
            if self._own_conn:
                await conn.close()

    # --- slots ---------------------------------------------------------------------------
    def free(self) -> int:
        outstanding = sum(p.outstanding for p in self.pullers)
        # Jobs awaiting their commit hold no slot, up to a backlog of ``slots`` of them (completing()).
        free = self.slots - self.used - outstanding - max(0, self.committing - self.slots)
        if self._sync_cap:
            # Never fetch more sync jobs than free threads: an undecoded delivery may be one.
            assert self.sync is not None
            free = min(free, self.sync.size - self.sync_held - self.sync.stuck - outstanding)
        return free

    def _on_block(self) -> None:
        """From the watchdog thread: no delivery takes the unchecked fast path until the service
        clears this, 2 x ack_wait after the loop runs again (a bool store is atomic)."""
        if self.executor is not None:
            self.executor.suspect = True

    def _held(self) -> list[tuple[str, str, float]]:
        """For the watchdog thread: a snapshot of held jobs (a dict copy is atomic under the GIL)."""
        for _ in range(10):
            try:
                runs = list(self.running.copy().values())
                break
            except RuntimeError:  # changed size during the copy: try again
                continue
        else:
            return []
        return [(r.job_id, r.msg.reply, r.deadline) for r in runs if r.msg.reply]

    # --- the executor's Host ----------------------------------------------------------------
    def classify(self, run: Running, is_sync: bool) -> None:
        if run.sync and not is_sync:
            run.sync = False
            self.sync_held -= 1
            self._wake.set()

    async def task_absent_for(self, task: str, queue: str) -> float:
        assert self.peers is not None
        return await self.peers.task_absent_for(task, queue)

    def pending_cancel(self, job_id: str, gen: int) -> str | None:
        assert self.cancels is not None
        return self.cancels.take(job_id, gen)

    def adjust_weight(self, run: Running, weight: int) -> None:
        self.used += weight - run.weight
        run.weight = weight
        if self.used > self.peak_used:
            self.peak_used = self.used

    def is_running_here(self, job_id: str, *, besides: Running) -> bool:
        # ``besides`` is the delivery asking, held in ``running`` with its job id already set: counted,
        # it made every delivery of a job whose record shows it running here (this worker's run whose
        # outcome write failed) stand down as "runs here", on each redelivery, for good.
        return any(r.job_id == job_id and r is not besides for r in self.running.values())

    def held_unrun(self, job_id: str, gen: int, *, besides: Running) -> set[int]:
        return {r.delivered for r in self.running.values()
                if r.holding and r is not besides and r.job_id == job_id and r.msg_gen == gen}

    def released(self, run: Running) -> None:
        if self.running.pop(run.key, None) is not None:
            if self.limiter is not None:
                self.limiter.release(run)  # its concurrency slots, if it held any
            if run.completing:
                self.committing -= 1  # its slot was freed when it went to commit
            else:
                self.used -= run.weight
                if run.sync:
                    self.sync_held -= 1
            self._wake.set()
            self.changed.bump()
        # Its context's progress hook points back at the run: a reference cycle per job, left to
        # the garbage collector (10 objects a job, the collector's largest cost). Broken here.
        run.ctx = None
        run.progress = None

    def completing(self, run: Running) -> None:
        """The job ran and its outcome write awaits its commit (about an fsync under ``sync_interval:
        always``): its slot goes to the next job now, as River's batch completer frees a producer's
        slot before the completion is persisted. The message stays held, unacked and kept alive by
        the progress loop, until ``released``; at most ``slots`` such jobs count for nothing, more
        take slots again (``free``), so a stalled commit stops fetching rather than piling up."""
        if run.completing or run.key not in self.running:
            return
        run.completing = True
        self.committing += 1
        self.used -= run.weight
        if run.sync:
            self.sync_held -= 1
            run.sync = False
        self._wake.set()

    def _on_sync_free(self) -> None:
        self._wake.set()
        self.changed.bump()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        tg = self._tg
        if tg is not None:
            try:
                tg.create_task(coro)
                return
            except RuntimeError:  # the group is closing (rare; a commit that failed)
                pass
        # Beside the group, still owned: run() awaits these before it returns.
        task = asyncio.get_running_loop().create_task(coro)
        self._stray.add(task)
        task.add_done_callback(self._stray.discard)

    async def _settle_stray(self) -> None:
        while self._stray:
            await asyncio.gather(*list(self._stray), return_exceptions=True)

    # --- fetching --------------------------------------------------------------------------
    def _on_pause_change(self) -> None:
        # A request already open on a paused queue runs out by itself (pauses.py says why).
        self._wake.set()
        self.changed.bump()

    def _paused(self, queue: str) -> bool:
        return self.pauses is not None and queue in self.pauses.paused

    def _order(self, round_no: int) -> list[Puller]:
        every = self.settings.worker.low_priority_every
        rotate = round_no % len(self.queues)
        by_priority: list[Puller] = []
        for p in PRIORITIES:
            # A paused queue's pullers are not asked (an open request of theirs runs out by itself).
            group = [x for x in self.pullers if x.priority == p and not self._paused(x.queue)]
            by_priority.extend(group[rotate:] + group[:rotate])
        if every > 0 and round_no % every == 0:
            by_priority.reverse()
        return by_priority

    async def _fetch_loop(self) -> None:
        expires = self.settings.worker.poll_expires
        round_no = 0
        # A standing poll per empty priority reserves a slot while busy: fine for 256 slots, but an
        # 8-slot worker with three empty priorities ran 5 jobs at a time (bench crash). Below this,
        # busy rounds ask every priority with no-wait requests instead.
        standing_ok = self.slots >= 8 * len(self.pullers)
        nc = self.conn.nc
        reconnects = nc.stats["reconnects"]
        try:
            while not self._stopping.is_set():
                if nc.stats["reconnects"] != reconnects:
                    # Requests open before the reconnect died with the old connection (a restarted
                    # server keeps none): their reserved slots would otherwise never come back.
                    reconnects = nc.stats["reconnects"]
                    for p in self.pullers:
                        p.reset()
                if not nc.is_connected:
                    # A request now is only buffered, and its wait for an answer (7 s) held up a
                    # stop past the drain's grace (red team): wait for the connection, or a stop.
                    await self._wait_wake(0.25)
                    continue
                if self.free() <= 0:
                    # Requests lost while the server was away must expire even when they are what
                    # holds every slot (``busy``, below, is never reached then).
                    now = asyncio.get_running_loop().time()
                    for p in self.pullers:
                        p.expire(now)
                    if self.free() <= 0:
                        nearest = min(p.deadline for p in self.pullers) - now
                        await self._wait_wake(min(expires, max(0.05, nearest + 0.01)))
                        continue
                round_no += 1
                got = 0
                for p in self._order(round_no):
                    free = self.free()
                    if free <= 0 or self._stopping.is_set():
                        break
                    if p.busy or p.resting:
                        continue
                    await p.request(free, no_wait=True, expires=5.0)
                    if not await self._answered(p, 7.0):
                        if self._stopping.is_set():
                            break
                        log.warning("no answer to a pull request on %s; is the server there?", p.consumer)
                    got += p.delivered
                    if p.delivered == 0 and not self.burst and standing_ok and self.free() > len(self.pullers):
                        # Empty: leave one long poll standing instead of asking again every round.
                        # It hands over the first new job at once and saves a request per round,
                        # but holds a slot: only where that is a small share of the slots.
                        await p.request(1, no_wait=False, expires=expires)
                if got or self._stopping.is_set():
                    continue
                if self.burst:
                    if not self.running:
                        log.info("burst mode: queues are empty, stopping")
                        self._stopping.set()
                        break
                    await self._wait_wake(0.05)
                    continue
                for p in self._order(round_no):
                    if self.free() <= 0:
                        break
                    if not p.busy and not p.resting:
                        await p.request(1, no_wait=False, expires=expires)
                # A puller resting after a refused request is asked again when its back-off ends.
                now = asyncio.get_running_loop().time()
                rest = min((p.rest_until - now for p in self.pullers if p.resting), default=expires)
                await self._wait_wake(max(0.01, min(expires, rest)))
        finally:
            self._fetch_done.set()

    async def _answered(self, p: Puller, timeout: float) -> bool:
        """Whether ``p``'s request was answered within ``timeout``; a stop (or a dropped connection)
        ends the wait early, unanswered."""
        deadline = self.clock.monotonic() + timeout
        while not p.request_done.is_set():
            left = deadline - self.clock.monotonic()
            if left <= 0 or self._stopping.is_set() or not self.conn.nc.is_connected:
                return False
            await self.clock.wait(p.request_done, min(left, 0.25))
        return True

    async def _wait_wake(self, timeout: float) -> None:
        await self.clock.wait(self._wake, timeout)
        self._wake.clear()

    def _on_message(self, msg: Msg, puller: Puller) -> None:
        tg = self._tg
        if tg is None or self._stopping.is_set():
            # Arrived after we stopped fetching: hand it straight back.
            assert self.executor is not None
            self.spawn(self.executor.acks.nak(msg))
            return
        if self._paused(puller.queue):
            # For a request opened before its queue was paused: given back, counted (pauses.py).
            assert self.executor is not None
            self.paused_handbacks += 1
            self.spawn(hand_back(self.executor, msg, min(1.0, self.settings.worker.poll_expires)))
            return
        now_mono = self.clock.monotonic()
        run = Running(msg=msg, job_id="", task="", weight=1, started_mono=now_mono,
                      started_at=self.clock.now(), progress_mono=now_mono)
        self._seq += 1
        run.key = self._seq
        self.running[run.key] = run
        self.used += 1
        if self._sync_cap:
            run.sync = True  # until its task is known
            self.sync_held += 1
        if self.used > self.peak_used:
            self.peak_used = self.used
        try:
            run.runner = tg.create_task(self._execute(run))
        except RuntimeError:  # the task group is shutting down: hand the job back
            self.released(run)
            assert self.executor is not None
            self.spawn(self.executor.acks.nak(msg))

    def _on_stale(self, msg: Msg) -> None:
        """A job delivered for a pull request released as lost: no slot was reserved, hand it back."""
        assert self.executor is not None
        self.spawn(self.executor.acks.nak(msg))

    async def _execute(self, run: Running) -> None:
        assert self.executor is not None
        in_flight = False
        try:
            in_flight = await self.executor.execute(run)
        finally:
            if not in_flight:  # otherwise its PubAck callback releases it
                self.released(run)

    # --- shutdown ------------------------------------------------------------------------------
    async def _drain_running(self) -> None:
        grace = self.settings.worker.shutdown_grace
        if not self.running:
            return
        log.info("waiting up to %.1fs for %d running jobs", grace, len(self.running))
        deadline = self.clock.monotonic() + grace
        if self.executor is not None:  # outcome writes waiting out a lost connection stop waiting then
            self.executor.stop_by = deadline
        while self.running and self.clock.monotonic() < deadline:
            await self._wait_wake(min(0.1, max(0.0, deadline - self.clock.monotonic())))
        leftover = list(self.running.values())
        if leftover:
            log.warning("grace period over: returning %d jobs to the queue", len(leftover))
            conn = self._conn
            if conn is not None and not conn.nc.is_connected:
                # Outcome writes awaiting a server that is away would wait out the publisher's
                # timeout, past the runtime's hard stop: failed now, their runs are given up
                # (executor._rewrite, past stop_by) and the drain ends.
                failed = conn.publisher.fail_pending()
                if failed:
                    log.warning("the server is away: %d writes awaiting it failed", failed)
        for run in leftover:
            if run.holding and run.runner is not None:
                run.runner.cancel()  # held for a running write, its task never called: nothing to save
            else:
                run.interrupt_with("shutdown")
        while self.running:
            await self._wait_wake(0.1)

    # --- background loops --------------------------------------------------------------------------
    async def _progress_loop(self) -> None:
        """One ticker for all running jobs: in_progress well inside ack_wait (it resets the
        redelivery clock, NATS-FACTS), and job timeouts (no timer per job on the hot path)."""
        every = max(0.2, self.settings.worker.ack_wait / 3)
        assert self.executor is not None
        acks = self.executor.acks
        defer = self.settings.worker.running_write_after
        tg = self._tg
        assert tg is not None
        wd = self.watchdog
        while True:
            await self.clock.sleep(0.05)
            raise_if_cancelling()
            if wd is not None:
                self.executor.suspect = wd.recently_blocked(2 * self.settings.worker.ack_wait)
            now = self.clock.monotonic()
            for run in list(self.running.values()):
                if run.deferred is not None and run.running_write is None and now - run.started_mono >= defer:
                    run.running_write = tg.create_task(self.executor.persist_running(run))
                if now >= run.deadline:
                    run.interrupt_with("timeout")
                elif now >= run.cancel_deadline:
                    run.interrupt_with("cancel")
                if now - run.progress_mono >= every:
                    run.progress_mono = now
                    await acks.in_progress(run.msg)

    def heartbeat(self) -> WorkerHeartbeat:
        now = self.clock.now()
        mono = self.clock.monotonic()
        assert self.executor is not None
        return WorkerHeartbeat(
            id=self.id, host=socket.gethostname(), pid=os.getpid(), queues=self.queues,
            slots_total=self.slots, slots_used=self.used, slots_peak=self.peak_used, started_at=self.started_at, heartbeat_at=now,
            tasks=self.registry.names(),
            running=[RunningJob(id=r.job_id, task=r.task, started_at=r.started_at,
                                progress_at=now - (mono - r.progress_mono))
                     for r in list(self.running.values())[:100] if r.job_id],
            processed=self.executor.processed, failed=self.executor.failed,
            state="draining" if self._stopping.is_set() else "running",
            stuck_threads=self.sync.stuck if self.sync is not None else 0,
        )

    async def _register_tasks(self, conn: Connection) -> None:
        now = self.clock.now()
        futs = []
        for d in self.registry.defs():
            name = d.name
            data = codec.encode(TaskInfo(name=name, registered_at=now, worker=self.id, queue=d.queue or ""))
            futs.append(await conn.publisher.publish(conn.names.kv_subject(conn.names.tasks_bucket, name), data))
        for f in futs:
            await conn.publisher.wait(f)


async def run_worker(settings: Settings, registry: Registry | None = None, **kwargs: Any) -> WorkerService:
    svc = WorkerService(settings, registry, **kwargs)
    await svc.run()
    return svc
