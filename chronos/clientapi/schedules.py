"""Schedules: CRUD, pause/resume (by name or glob), edit, dry runs, backfill and crontab export.

Over the schedules KV bucket; the scheduler's enqueuer fires them. The logic is in
chronos/schedules.py; these methods check input (a ValidationError naming the field, nothing
stored) and do the I/O.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import msgspec

from ..audit import audited
from ..clock import Clock
from ..connection import Connection
from ..cron import IntervalSchedule, next_n, parse_schedule
from ..errors import ValidationError
from ..events import EventPublisher
from ..jobs import JobOps, job_event
from ..models import Schedule
from ..schedules import (
    EDITABLE,
    MAX_DRY_RUN,
    BackfillReport,
    ScheduleStatus,
    ScheduleStore,
    backfill_times,
    coming_fires,
    crontab,
    fire_many,
    fire_record,
    interval_anchor,
    match_names,
    next_fire,
    validate,
)
from ..subjects import is_valid_token
from .catalog import TaskCatalog
from .cluster import Cluster
from .submit import Submitter

log = logging.getLogger("chronos.client")


class Schedules:
    def __init__(self, conn: Connection, clock: Clock, ops: JobOps, events: EventPublisher,
                 catalog: TaskCatalog, cluster: Cluster, submitter: Submitter) -> None:
        self.conn = conn
        self.settings = conn.settings
        self.names = conn.names
        self.clock = clock
        self.ops = ops
        self.events = events
        self.catalog = catalog  # a schedule's task must be registered, as for a submit
        self.cluster = cluster  # ... and its queue known
        self.submitter = submitter  # its job fields are checked as a submit's are
        self.store = ScheduleStore(conn)

    def _schedule_from(self, base: Schedule, changes: dict[str, Any], now: float) -> Schedule:
        """``base`` with ``changes`` applied and every field checked; raises ValidationError naming the field."""
        cron, every, tz = changes.get("cron", base.cron), changes.get("every", base.every), changes.get("tz", base.tz)
        if not isinstance(tz, str):
            raise ValidationError(f"tz: expected an IANA zone name, got {tz!r}")
        anchor = base.anchor
        if "every" in changes and every is not None and cron is None:
            anchor = interval_anchor(parse_schedule(every=every, tz=tz).seconds, now)  # type: ignore[union-attr]
        timing = parse_schedule(cron=cron, every=every, tz=tz, anchor=anchor)
        spec = self.submitter.build_spec(
            changes.get("task", base.task), changes.get("args", base.args),
            queue=changes.get("queue", base.queue), priority=changes.get("priority", base.priority),
            timeout=changes.get("timeout", base.timeout), max_attempts=changes.get("max_attempts", base.max_attempts),
            annotations=changes.get("annotations", base.annotations),
        )
        new = msgspec.structs.replace(
            base, task=spec.task, args=spec.args, queue=spec.queue, priority=spec.priority, timeout=spec.timeout,
            max_attempts=spec.max_attempts, annotations=spec.annotations, tz=tz, anchor=anchor,
            cron=timing.expr if not isinstance(timing, IntervalSchedule) else None,
            every=timing.seconds if isinstance(timing, IntervalSchedule) else None,
            overlap=changes.get("overlap", base.overlap), misfire=changes.get("misfire", base.misfire),
            catch_up_max=changes.get("catch_up_max", base.catch_up_max), updated_at=now,
        )
        validate(new)
        return new

    @audited("schedule_add")
    async def add_schedule(
        self,
        name: str,
        task: str,
        args: Any = None,
        *,
        cron: str | None = None,
        every: float | str | None = None,
        tz: str = "UTC",
        queue: str | None = None,
        priority: str | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        annotations: dict[str, str] | None = None,
        overlap: str = "allow",
        misfire: str = "skip",
        catch_up_max: int = 10,
        paused: bool = False,
    ) -> Schedule:
        """Store a new schedule. Every problem raises ValidationError naming the field; nothing is stored then.

        ``cron`` (5 or 6 fields, or an alias, in ``tz``) or ``every`` (seconds, or "90s", "5m", "2h", "1d").
        The queue must be known (see ``Cluster.check_queue``) and the task registered.
        """
        if not isinstance(name, str) or not is_valid_token(name):
            raise ValidationError(f"name: {name!r} is not a valid schedule name (1-64 letters, digits, '_' or '-')")
        now = self.clock.now()
        js = self.settings.jobs
        # The first fire comes strictly after creation: last_fire_time marks where firing starts.
        base = Schedule(name=name, task=task, created_at=now, updated_at=now, paused=bool(paused),
                        max_attempts=js.default_max_attempts, last_fire_time=now)
        sched = self._schedule_from(base, {
            "cron": cron, "every": every, "tz": tz, "task": task, "args": args,
            "queue": js.default_queue if queue is None else queue,
            "priority": js.default_priority if priority is None else priority,
            "timeout": timeout, "max_attempts": js.default_max_attempts if max_attempts is None else max_attempts,
            "annotations": dict(annotations or {}), "overlap": overlap, "misfire": misfire,
            "catch_up_max": catch_up_max,
        }, now)
        await self.cluster.check_queue(sched.queue)
        await self.catalog.check_task(sched.task)
        return await self.store.create(sched)

    @audited("schedule_update")
    async def update_schedule(self, name: str, /, **changes: Any) -> Schedule:
        """Edit a stored schedule (compare-and-set). Editable: task, args, cron, every, tz, queue,
        priority, timeout, max_attempts, annotations, overlap, misfire, catch_up_max.

        Giving ``cron`` drops ``every`` and the other way round. A timing change takes effect
        from now on: fire times already past are not made up.
        """
        for field in changes:
            if field not in EDITABLE:
                raise ValidationError(f"{field}: cannot be edited (editable: {', '.join(sorted(EDITABLE))})")
        if changes.get("cron") is not None:
            changes.setdefault("every", None)
        elif changes.get("every") is not None:
            changes.setdefault("cron", None)
        current = await self.store.get(name)
        now = self.clock.now()
        self._schedule_from(current, changes, now)  # refuse bad input before any I/O check
        if "queue" in changes:
            await self.cluster.check_queue(changes["queue"])
        if "task" in changes:
            await self.catalog.check_task(changes["task"])
        retime = any(f in changes for f in ("cron", "every", "tz"))

        def change(s: Schedule) -> dict[str, Any]:
            new = self._schedule_from(s, changes, self.clock.now())
            out = {f: getattr(new, f) for f in (*changes, "anchor", "updated_at", "cron", "every")}
            if retime:
                out["last_fire_time"] = max(s.last_fire_time or now, now)
            return out

        return await self.store.modify(name, change)

    async def get_schedule(self, name: str) -> Schedule:
        return await self.store.get(name)

    async def list_schedules(self) -> list[Schedule]:
        return sorted(await self.store.list(), key=lambda s: s.name)

    async def schedule_statuses(self, pattern: str | None = None) -> list[ScheduleStatus]:
        """Schedules (all, or those matching a glob) with their next fire and their last job's state."""
        schedules = await self.list_schedules()
        if pattern is not None:
            wanted = set(match_names([s.name for s in schedules], pattern))
            schedules = [s for s in schedules if s.name in wanted]
        now = self.clock.now()
        last_jobs = await asyncio.gather(*(self.ops.read_or_none(s.last_job_id) if s.last_job_id else asyncio.sleep(0)
                                           for s in schedules))
        out = []
        for s, job in zip(schedules, last_jobs):
            st = ScheduleStatus(schedule=s, next_fire_time=next_fire(s, now), paused_now=s.is_paused(now),
                                last_job_id=s.last_job_id)
            if job is not None:
                st.last_job_fire_time, st.last_job_state = job.fire_time, str(job.state)
            out.append(st)
        return out

    @audited("schedule_remove")
    async def remove_schedule(self, name: str) -> None:
        await self.store.delete(name)

    @audited("schedule_pause")
    async def pause_schedule(self, name: str, until: float | None = None) -> Schedule:
        """Pause until ``until`` (epoch seconds), or until resumed when it is None."""
        (s,) = await self._pause([name], until)
        return s

    @audited("schedule_pause")
    async def pause_schedules(self, pattern: str, until: float | None = None) -> list[Schedule]:
        """Pause every schedule whose name matches the glob (``nightly-*``); ScheduleNotFoundError if none."""
        return await self._pause(await self.store.matching(pattern), until)

    async def _pause(self, names: list[str], until: float | None) -> list[Schedule]:
        now = self.clock.now()
        if until is not None and (not isinstance(until, (int, float)) or not until > now):
            raise ValidationError("until: must be a time in the future")
        return [await self.store.modify(
            n, lambda s: {"paused": True, "paused_until": until, "updated_at": now}) for n in names]

    @audited("schedule_resume")
    async def resume_schedule(self, name: str) -> Schedule:
        """Resume; fires missed while paused are not made up (the enqueuer starts from now)."""
        (s,) = await self._resume([name])
        return s

    @audited("schedule_resume")
    async def resume_schedules(self, pattern: str) -> list[Schedule]:
        """Resume every schedule whose name matches the glob; ScheduleNotFoundError if none."""
        return await self._resume(await self.store.matching(pattern))

    async def _resume(self, names: list[str]) -> list[Schedule]:
        now = self.clock.now()

        def change(s: Schedule) -> dict[str, Any]:
            if not s.paused:
                return {}
            return {"paused": False, "paused_until": None, "updated_at": now,
                    "last_fire_time": max(now, s.last_fire_time or now)}

        return [await self.store.modify(n, change) for n in names]

    async def next_fire_times(self, name: str, count: int = 5, *, after: float | None = None) -> list[float]:
        """Dry run: the next ``count`` fire times of a stored schedule (epoch seconds; see
        ``schedules.wall_time`` for its zone's wall time). A pause is not taken into account."""
        s = await self.store.get(name)
        return coming_fires(s, self.clock.now() if after is None else after, count)

    def preview_fire_times(
        self, *, cron: str | None = None, every: float | str | None = None, tz: str = "UTC",
        count: int = 5, after: float | None = None,
    ) -> list[float]:
        """Dry run for a definition not stored yet; an interval counts from now (as add_schedule would)."""
        now = self.clock.now() if after is None else after
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_DRY_RUN:
            raise ValidationError(f"count: must be a whole number from 1 to {MAX_DRY_RUN}, got {count!r}")
        timing = parse_schedule(cron=cron, every=every, tz=tz)
        if isinstance(timing, IntervalSchedule):
            timing = IntervalSchedule(timing.seconds, interval_anchor(timing.seconds, now))
        return next_n(timing, now, count)

    @audited("schedule_backfill")
    async def backfill_schedule(
        self, name: str, since: float, until: float | None = None,
        *, progress: Callable[[int, int], None] | None = None,
    ) -> BackfillReport:
        """Make the jobs for the fire times in the past window ``since <= t <= until`` (default now).

        Idempotent: the jobs have the enqueuer's derived ids and ``S:T`` message ids, so
        backfilling twice, or over fires the enqueuer made, yields one job per fire. A window
        with more than ``scheduler.max_backfill`` fire times is refused with nothing made.
        ``progress(done, total)`` is called as jobs go out.
        """
        now = self.clock.now()
        until = now if until is None else until
        s = await self.store.get(name)
        times = backfill_times(s, since, until, now, self.settings.scheduler.max_backfill,
                               retention=self.settings.scheduler.retention)
        fires = await fire_many(self.ops, s, times, now, progress=progress)
        made = sum(1 for f in fires if f.made)
        for f in fires:
            if f.made:  # as submit does, so `chronos logs` and the TUI see the new jobs
                self.events.emit(job_event(fire_record(s, f.fire_time, now), message=f"backfill of schedule {name}"))
        log.info("schedule %s: backfill made %d job(s), %d existed", name, made, len(fires) - made)
        return BackfillReport(schedule=name, since=since, until=until, made=made, existing=len(fires) - made,
                              fires=fires)

    async def export_crontab(self) -> str:
        """Every schedule as crontab entries running `chronos submit`, chronos metadata in comments."""
        return crontab(await self.list_schedules(), self.clock.now(), self.names.ns)
