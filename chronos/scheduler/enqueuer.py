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
"""

from __future__ import annotations

import asyncio
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

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(), name="enqueuer-watch")
            await self._loop()

    async def _watch(self) -> None:
        # Any edit (add, pause, resume, remove) is looked at at once, not at the next tick.
        async for _ in (await self.schedules.store()).watch():
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                nxt = await self.step()
            except (ChronosError, OSError) as exc:
                log.warning("enqueuer: step failed: %r", exc)
                nxt = None
            me = asyncio.current_task()
            if me is not None and me.cancelling():  # nats-py may have swallowed a cancel
                raise asyncio.CancelledError
            delay = self.tick if nxt is None else min(self.tick, max(0.0, nxt - self.clock.now()))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

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
        if plan.latest > (s.last_fire_time or 0.0):
            s = await self.schedules.update(s, last_fire_time=plan.latest)
        return timing.next_after(plan.latest)

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

