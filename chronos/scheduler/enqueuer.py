"""Enqueuer: turns due schedules into jobs. Leader only.

For schedule S and fire time T the job id is ``derived_job_id(S, int(T))``; the
record is created if absent, then published with ``Nats-Msg-Id`` ``S:T``
(``schedules.fire_many``, shared with backfill). So two enqueuers that both
believe they lead, or a backfill over the same window, still make one job per
fire (STYLE principle 4). After a fire, ``last_fire_time`` is persisted with
compare-and-set; a new leader resumes from it, re-firing at most the fire that
was in flight (a no-op by the rules above).

Misfires: fires older than ``misfire_grace`` (default twice the lease TTL plus
one second, so a leader failover is not a misfire) are missed fires; the due
fires inside the grace always fire. ``skip`` drops the missed ones, ``run-once``
makes one job for the latest missed one, ``catch-up`` makes up to
``catch_up_max`` of the latest missed ones (``cron.plan_due_fires``, a pure
function with a property test against a reference model). Overlap: ``skip`` fires nothing
while the previous fire's job is unfinished (the fire time still advances);
``replace`` cancels that job and fires anew; ``allow`` fires regardless.
Pause: a paused schedule fires nothing; when ``paused_until`` passes, the
enqueuer clears the pause and resumes from that moment (fires inside the pause
are not made up, whatever the misfire policy).

Cost: the running loop keeps every schedule in memory from a watch of the
schedules bucket (its current entries first, then each change, this enqueuer's
own writes included) and their next fire times in a heap. It sleeps until the
earliest one (or ``tick``, or an edit) and handles only the schedules that are
due, so 10,000 idle schedules cost nothing between fires. Heap entries carry a
version per schedule; an edit pushes a new one and the old entry is skipped
when it surfaces. ``step()`` is the same work as one pass over every schedule
(tests and tools call it).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable

from .. import codec
from ..clock import SYSTEM_CLOCK, Clock
from ..cron import plan_due_fires
from ..errors import ChronosError, ConflictError
from ..ids import derived_job_id
from ..jobs import JobOps, job_event
from ..models import CancelRequest, Event, Schedule
from ..schedules import ScheduleStore, fire_many, fire_record, timing_of
from ..states import PENDING, TERMINAL, JobState

log = logging.getLogger(__name__)


class Enqueuer:
    def __init__(
        self,
        ops: JobOps,
        *,
        clock: Clock = SYSTEM_CLOCK,
        tick: float = 1.0,
        is_leader: Callable[[], bool] = lambda: True,
        misfire_grace: float | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.ops = ops
        self.clock = clock
        self.tick = tick
        self.is_leader = is_leader
        self.on_event = on_event  # each fire is announced like a submit, for `chronos logs` and the TUI
        s = ops.conn.settings.scheduler
        self.misfire_grace = 2 * s.lease_ttl + 1 if misfire_grace is None else misfire_grace
        self.max_fires = s.max_backfill
        self.schedules = ScheduleStore(ops.conn)
        self.fired: list[tuple[str, float, str]] = []  # (schedule, fire time, job id), newest last
        self.fired_event = asyncio.Event()  # pulsed after each fire
        self._wake = asyncio.Event()
        self._known: dict[str, Schedule] = {}  # name -> newest schedule seen (watch or own write)
        self._heap: list[tuple[float, int, str]] = []  # (due time, version, name)
        self._version: dict[str, int] = {}
        self.handled = 0  # schedules handled by the loop (a measure of its work)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(), name="enqueuer-watch")
            await self._loop()

    # --- the schedules in memory ----------------------------------------------------------------
    async def _watch(self) -> None:
        # Current schedules first, then every edit (add, pause, resume, remove) at once.
        async for entry in (await self.schedules.store()).watch(include_existing=True):
            if entry.value is None:
                self._forget(entry.key)
            else:
                try:
                    s = codec.decode(entry.value, Schedule)
                except ChronosError as exc:
                    log.warning("enqueuer: schedule %s unreadable: %s", entry.key, exc)
                    continue
                s.revision = entry.revision
                self._remember(s)
            self._wake.set()

    def _forget(self, name: str) -> None:
        self._known.pop(name, None)
        self._version[name] = self._version.get(name, 0) + 1  # its heap entries are stale now

    def _remember(self, s: Schedule) -> None:
        have = self._known.get(s.name)
        if have is not None and have.revision >= s.revision:
            return  # an older version (our own write came back after a newer one)
        self._known[s.name] = s
        self._push(s.name, self._due_at(s, self.clock.now()))

    def _push(self, name: str, due: float | None) -> None:
        version = self._version.get(name, 0) + 1
        self._version[name] = version
        if due is not None:
            heapq.heappush(self._heap, (due, version, name))

    def _due_at(self, s: Schedule, now: float) -> float | None:
        """When ``s`` next needs handling (a fire, or its pause ending); None: not while it is as it is."""
        if s.is_paused(now):
            return s.paused_until
        if s.paused:
            return now  # the pause is over: _handle clears it
        try:
            timing = timing_of(s)
        except ChronosError as exc:
            log.warning("enqueuer: schedule %s: %s", s.name, exc)
            return None
        base = s.last_fire_time if s.last_fire_time is not None else s.created_at
        return timing.next_after(base)

    def _pop_due(self, now: float) -> list[str]:
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, version, name = heapq.heappop(heap)
            if self._version.get(name) == version and name in self._known:
                due.append(name)
        return due

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock.now()
            for name in self._pop_due(now):
                if not self.is_leader():
                    break
                await self._handle_due(name, now)
            me = asyncio.current_task()
            if me is not None and me.cancelling():  # nats-py may have swallowed a cancel
                raise asyncio.CancelledError
            delay = self.tick if not self._heap else min(self.tick, max(0.0, self._heap[0][0] - self.clock.now()))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def _handle_due(self, name: str, now: float) -> None:
        s = self._known[name]
        self.handled += 1
        try:
            nxt = await self._handle(s, now)
        except ConflictError:
            # Edited meanwhile (or another enqueuer fired): read it again and look at once.
            try:
                self._remember(await self.schedules.get(name))
            except ChronosError:
                self._forget(name)
            self._push(name, self.clock.now())
            return
        except (ChronosError, OSError) as exc:
            log.warning("enqueuer: schedule %s: %s", name, exc)
            self._push(name, now + self.tick)  # try again next tick
            return
        if nxt is not None or name in self._known:
            self._push(name, nxt)

    async def step(self) -> float | None:
        """Fire everything due now; return the earliest next fire time (or None)."""
        now = self.clock.now()
        earliest: float | None = None
        for s in await self.schedules.list():
            try:
                nxt = await self._handle(s, now)
            except ConflictError:
                self._wake.set()  # edited meanwhile (or another leader): look again at once
                continue
            except ChronosError as exc:
                log.warning("enqueuer: schedule %s: %s", s.name, exc)
                continue
            if nxt is not None and (earliest is None or nxt < earliest):
                earliest = nxt
        return earliest

    async def _handle(self, s: Schedule, now: float) -> float | None:
        if s.is_paused(now):
            return s.paused_until
        timing = timing_of(s)
        base = s.last_fire_time if s.last_fire_time is not None else s.created_at
        if s.paused and s.paused_until is not None:
            # The pause is over: clear it, and move the mark to its end so fires inside it are never made up.
            base = max(base, s.paused_until)
            s = await self.schedules.update(s, paused=False, paused_until=None, last_fire_time=base)
            self._known_write(s)
        plan = plan_due_fires(timing, base, now, grace=self.misfire_grace, misfire=s.misfire,
                              catch_up_max=s.catch_up_max, limit=self.max_fires)
        if plan.latest is None:
            return timing.next_after(max(base, now))
        if plan.missed:
            log.info("schedule %s: at least %d fire(s) missed; misfire policy %s makes %d fire(s), "
                     "on-time ones included", s.name, plan.missed, s.misfire, len(plan.fires))
        for t in plan.fires:
            if not self.is_leader():
                return None
            job_id = await self._fire_with_overlap(s, t, now)
            changes: dict[str, object] = {"last_fire_time": t}
            if job_id is not None:
                changes["last_job_id"] = job_id
            s = await self.schedules.update(s, **changes)
            self._known_write(s)
        if plan.latest > (s.last_fire_time or 0.0):
            s = await self.schedules.update(s, last_fire_time=plan.latest)
            self._known_write(s)
        return timing.next_after(plan.latest)

    def _known_write(self, s: Schedule) -> None:
        """Our own write: the next handling starts from it (the watch brings it back later, ignored)."""
        have = self._known.get(s.name)
        if have is None or have.revision < s.revision:
            self._known[s.name] = s

    async def _fire_with_overlap(self, s: Schedule, t: float, now: float) -> str | None:
        if s.overlap != "allow" and s.last_job_id and s.last_job_id != derived_job_id(s.name, str(int(t))):
            prev = await self.ops.read_or_none(s.last_job_id)
            if prev is not None and prev.state not in TERMINAL:
                if s.overlap == "skip":
                    log.info("schedule %s: fire at %.0f skipped, job %s is still %s", s.name, t, prev.id, prev.state)
                    return None
                await self._cancel(prev.id, f"replaced by schedule {s.name} fire at {int(t)}")
        return await self.fire(s, t, now)

    async def fire(self, s: Schedule, t: float, now: float | None = None) -> str:
        """Make the job for fire ``t`` of ``s``; idempotent (same job id, same ``S:T`` message id)."""
        now = self.clock.now() if now is None else now
        (result,) = await fire_many(self.ops, s, [t], now)
        if result.made:
            if self.on_event is not None:
                self.on_event(job_event(fire_record(s, t, now), message=f"schedule {s.name} fire at {int(t)}"))
            self.fired.append((s.name, t, result.job_id))
            self.fired_event.set()
            self.fired_event.clear()
        return result.job_id

    async def _cancel(self, job_id: str, reason: str) -> None:
        def decide(rec):  # type: ignore[no-untyped-def]
            if rec.state in TERMINAL or rec.cancel_requested:
                return None
            if rec.state in PENDING:
                return JobState.CANCELLED, {"cancel_reason": reason, "error": reason}
            return JobState.RUNNING, {"cancel_requested": True, "cancel_reason": reason}

        rec = await self.ops.move_with_retry(job_id, decide)
        control = await self.ops.control()
        req = CancelRequest(job_id, self.clock.now(), reason, rec.gen)
        await control.put(self.ops.names.cancel_key(job_id), codec.encode(req))

