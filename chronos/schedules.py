"""Schedules: validation, the store, and the fire logic the enqueuer and backfill share.

* ``validate`` raises ValidationError naming the field; nothing is stored then.
* ``ScheduleStore``: CRUD on the schedules KV bucket (key = schedule name); writers
  other than ``create`` use compare-and-set on the revision they read.
* ``fire_many``: the job for fire time T of schedule S has the id
  ``derived_job_id(S, int(T))``, is created if absent, and is published with
  ``Nats-Msg-Id`` ``S:T`` (``cron.fire_id``). The enqueuer and a backfill both go
  through it, so a backfill run twice, or one overlapping normal fires, yields one
  job per fire (STYLE principle 4).
* Pure helpers on stored schedules: ``next_fire``, ``backfill_times``,
  ``match_names``, ``crontab``.

The Schedule Struct lives in models.py; when it fires is ``cron.parse_schedule``.
"""

from __future__ import annotations

import fnmatch
import math
import shlex
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import nats.js.errors

from . import cas, codec
from .connection import Connection
from .cron import (
    CronSchedule,
    IntervalSchedule,
    fire_id,
    fire_times_between,
    parse_schedule,
    to_crontab_line,
)
from .errors import ChronosError, ConflictError, ScheduleNotFoundError, ValidationError
from .ids import derived_job_id
from .jobs import JobOps, new_record
from .models import JobRecord, JobSpec, Schedule
from .states import JobState
from .store.kv import KVStore
from .subjects import PRIORITIES, is_valid_token

OVERLAP = ("allow", "skip", "replace")
MISFIRE = ("skip", "run-once", "catch-up")

# Fields an edit may change; the rest (name, created_at, fire bookkeeping) belong to the store.
EDITABLE = frozenset({
    "task", "args", "cron", "every", "tz", "queue", "priority", "timeout", "max_attempts",
    "annotations", "overlap", "misfire", "catch_up_max",
})


def timing_of(s: Schedule) -> CronSchedule | IntervalSchedule:
    """The pure schedule (next_after) for a stored schedule."""
    return parse_schedule(cron=s.cron, every=s.every, tz=s.tz, anchor=s.anchor)


def validate(s: Schedule) -> CronSchedule | IntervalSchedule:
    """Raise ValidationError naming the field; return the parsed timing."""
    if not isinstance(s.name, str) or not is_valid_token(s.name):
        raise ValidationError(f"name: {s.name!r} is not a valid schedule name (1-64 letters, digits, '_' or '-')")
    if not isinstance(s.task, str) or not s.task.strip():
        raise ValidationError("task: must be a non-empty name")
    if not isinstance(s.args, (list, dict)):
        raise ValidationError("args: must be a list (positional) or an object (keyword arguments)")
    codec.check_json_compatible(s.args, "args")
    if not isinstance(s.queue, str) or not is_valid_token(s.queue):
        raise ValidationError(f"queue: {s.queue!r} is not a valid name (1-64 letters, digits, '_' or '-')")
    if s.priority not in PRIORITIES:
        raise ValidationError(f"priority: {s.priority!r} is not one of {', '.join(PRIORITIES)}")
    if not isinstance(s.max_attempts, int) or isinstance(s.max_attempts, bool) or s.max_attempts < 1:
        raise ValidationError("max_attempts: must be a whole number of at least 1")
    if s.timeout is not None and (not isinstance(s.timeout, (int, float)) or not s.timeout > 0):
        raise ValidationError("timeout: must be a positive number of seconds")
    if s.overlap not in OVERLAP:
        raise ValidationError(f"overlap: {s.overlap!r} is not one of {', '.join(OVERLAP)}")
    if s.misfire not in MISFIRE:
        raise ValidationError(f"misfire: {s.misfire!r} is not one of {', '.join(MISFIRE)}")
    if not isinstance(s.catch_up_max, int) or isinstance(s.catch_up_max, bool) or s.catch_up_max < 1:
        raise ValidationError("catch_up_max: must be a whole number of at least 1")
    if s.paused_until is not None and not math.isfinite(s.paused_until):
        raise ValidationError("paused_until: must be a finite epoch time")
    return timing_of(s)


# --- pure helpers ------------------------------------------------------------------------


def interval_anchor(seconds: float, now: float) -> float:
    """Where a new interval schedule's grid starts: now, on a minute boundary for whole minutes.

    The boundary lets a crontab line express the schedule; the first fire still
    comes within one interval of now.
    """
    return float(int(now) // 60 * 60) if seconds % 60 == 0 else float(int(now))


def match_names(names: Iterable[str], pattern: str) -> list[str]:
    """Names matching a shell glob (``nightly-*``, ``report-?``, ``[ab]*``), case-sensitive, sorted."""
    if not isinstance(pattern, str) or not pattern:
        raise ValidationError("match: the pattern is empty")
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def next_fire(s: Schedule, now: float) -> float | None:
    """When the enqueuer will next fire ``s`` (None while paused with no end).

    Mirrors the enqueuer: after a pause it resumes strictly after ``paused_until``;
    a fire that is due but not yet made shows as due (at or before now).
    """
    if s.paused and s.paused_until is None:
        return None
    timing = timing_of(s)
    base = s.last_fire_time if s.last_fire_time is not None else s.created_at
    if s.paused and s.paused_until is not None:
        base = max(base, s.paused_until)
    return timing.next_after(base)


MAX_DRY_RUN = 10_000  # fire times one dry run lists


def coming_fires(s: Schedule, now: float, count: int) -> list[float]:
    """The next ``count`` fire times of ``s`` from now on (a dry run), ignoring a pause."""
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_DRY_RUN:
        raise ValidationError(f"count: must be a whole number from 1 to {MAX_DRY_RUN}, got {count!r}")
    timing = timing_of(s)
    out: list[float] = []
    t = now
    for _ in range(count):
        t = timing.next_after(t)
        out.append(t)
    return out


def wall_time(t: float, tz: str) -> str:
    """An instant as ISO 8601 wall time in ``tz``, with its offset: 2026-03-08T03:00:00-04:00."""
    return datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat(timespec="seconds")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def backfill_times(s: Schedule, since: float, until: float, now: float, limit: int,
                   retention: float | None = None) -> list[float]:
    """Fire times ``since <= t <= until`` of ``s``; a past window only, at most ``limit`` of them.

    With ``retention``, a window reaching further back than it is refused: a fire that old may
    have run and had its record pruned, and the derived id would then make it run again."""
    for field, value in (("since", since), ("until", until)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValidationError(f"{field}: {value!r} is not an epoch time")
    if retention is not None and since < now - retention:
        raise ValidationError(
            f"since: {_iso(since)} is older than scheduler.retention ({retention / 86400:g} days); fires that old "
            "may have run and been pruned, and backfilling them would run them again")
    if until > now:
        raise ValidationError(f"until: {_iso(until)} is in the future; backfill covers past fire times only")
    if since >= until:
        raise ValidationError(f"since: {_iso(since)} must be before until ({_iso(until)})")
    try:
        # fire_times_between is half-open (since < t); a fire exactly at ``since`` belongs to the window.
        return fire_times_between(timing_of(s), since - 1e-3, until, limit)
    except ValidationError:
        raise ValidationError(
            f"since: the window {_iso(since)} .. {_iso(until)} holds more than {limit} fire times of "
            f"{s.name!r} (scheduler.max_backfill = {limit}); narrow the window or raise the setting"
        ) from None


def describe_when(s: Schedule) -> str:
    """'cron 0 3 * * *' or 'every 5m': the schedule's timing in a few characters."""
    timing = timing_of(s)
    if isinstance(timing, CronSchedule):
        return f"cron {timing.expr}"
    return timing.describe()


def submit_command(s: Schedule) -> str:
    """The `chronos submit` command line that makes the same job as one fire of ``s``."""
    parts = ["chronos", "submit", s.task, "--args", codec.to_json(s.args).decode(),
             "--queue", s.queue, "--priority", s.priority, "--max-attempts", str(s.max_attempts)]
    if s.timeout is not None:
        parts += ["--timeout", f"{s.timeout:g}"]
    return shlex.join(parts)


def crontab(schedules: Sequence[Schedule], now: float, namespace: str) -> str:
    """Every schedule as crontab entries, chronos metadata in comments above each.

    Each entry states its own ``CRON_TZ`` (see cron.to_crontab_line). ``%`` is
    escaped because cron turns a bare ``%`` into a newline. A paused schedule is
    exported commented out, so installing the file does not start it.
    """
    lines = [
        f"# chronos schedules, namespace {namespace}, exported {_iso(now)}",
        "# Each entry runs `chronos submit` with the schedule's task, args, queue and priority.",
        "# Metadata lines start with '# chronos:'; a line cron cannot express is a comment.",
    ]
    for s in sorted(schedules, key=lambda x: x.name):
        timing = timing_of(s)
        meta = [f"name={s.name}", f"when={describe_when(s)!r}"]
        if s.cron is not None:
            meta.append(f"tz={s.tz}")
        meta += [f"task={s.task}", f"queue={s.queue}", f"priority={s.priority}", f"overlap={s.overlap}",
                 f"misfire={s.misfire}"]
        if s.misfire == "catch-up":
            meta.append(f"catch_up_max={s.catch_up_max}")
        if s.paused:
            meta.append("paused" if s.paused_until is None else f"paused_until={_iso(s.paused_until)}")
        lines.append("")
        lines.append("# chronos: " + " ".join(meta))
        if s.annotations:
            lines.append("# chronos: annotations=" + codec.to_json(s.annotations).decode())
        entry = to_crontab_line(timing, submit_command(s).replace("%", "\\%"))
        if s.is_paused(now):
            entry = "\n".join(ln if ln.startswith("#") else f"# {ln}" for ln in entry.split("\n"))
        lines.append(entry)
    return "\n".join(lines) + "\n"


# --- results -------------------------------------------------------------------------------


class Fire(msgspec.Struct):
    """One fire: its time, its job, and whether this call made the job (False: it existed)."""

    fire_time: float
    job_id: str
    made: bool


class BackfillReport(msgspec.Struct):
    """What a backfill did: every fire time in the window and its job; ``made`` counts new ones."""

    schedule: str
    since: float
    until: float
    made: int
    existing: int
    fires: list[Fire]


class ScheduleStatus(msgspec.Struct):
    """A schedule with what an operator asks next: when it fires next, and how its last fire went."""

    schedule: Schedule
    next_fire_time: float | None  # None while paused with no end
    paused_now: bool
    last_job_id: str | None = None
    last_job_fire_time: float | None = None
    last_job_state: str | None = None


# --- firing --------------------------------------------------------------------------------


def fire_record(s: Schedule, t: float, now: float) -> JobRecord:
    spec = JobSpec(task=s.task, args=s.args, queue=s.queue, priority=s.priority,
                   max_attempts=s.max_attempts, timeout=s.timeout, annotations=dict(s.annotations))
    job_id = derived_job_id(s.name, str(int(t)))
    return new_record(job_id, spec, now, JobState.AVAILABLE, schedule_id=s.name, fire_time=t, scheduled_at=t)


async def fire_many(
    ops: JobOps,
    s: Schedule,
    times: Sequence[float],
    now: float,
    *,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 200,
) -> list[Fire]:
    """Make the jobs for fire ``times`` of ``s``, idempotently; pipelined in chunks.

    A record that exists already is republished only while it may not have gone
    out (available, first generation); the ``S:T`` message id makes that a no-op
    inside the stream's duplicate window.
    """
    out: list[Fire] = []
    for start in range(0, len(times), chunk):
        part = times[start : start + chunk]
        records = [fire_record(s, t, now) for t in part]
        creates = [await ops.create_nowait(rec) for rec in records]
        acks = []
        for t, rec, fut in zip(part, records, creates):
            made = True
            try:
                rev = await fut
            except ConflictError:
                made = False
                existing = await ops.read_or_none(rec.id)
                if existing is None or existing.state is not JobState.AVAILABLE or existing.gen != 1:
                    out.append(Fire(t, rec.id, False))
                    continue
                rec, rev = existing, existing.revision
            subject, data, _ = ops.work_message(rec, rev)
            acks.append(await ops.publisher.publish(subject, data, {"Nats-Msg-Id": fire_id(s.name, t)}))
            out.append(Fire(t, rec.id, made))
        for ack in acks:
            await ops.publisher.wait(ack)
        if progress is not None:
            progress(min(start + chunk, len(times)), len(times))
    return out


# --- store ---------------------------------------------------------------------------------


class ScheduleStore:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.bucket = conn.names.schedules_bucket
        self._store: KVStore | None = None

    async def store(self) -> KVStore:
        if self._store is None:
            self._store = KVStore(await self.conn.kv(self.bucket), self.conn.publisher, self.bucket)
        return self._store

    async def get(self, name: str) -> Schedule:
        if not isinstance(name, str) or not is_valid_token(name):
            # Not a possible key (and a NATS wildcard must never reach the KV as one).
            raise ScheduleNotFoundError(f"no schedule named {name!r}")
        entry = await (await self.store()).get(name)
        if entry is None or not entry.value:
            raise ScheduleNotFoundError(f"no schedule named {name!r}")
        s = codec.decode(entry.value, Schedule)
        s.revision = entry.revision
        return s

    async def list(self) -> list[Schedule]:
        out = []
        for entry in await (await self.store()).entries():
            try:
                s = codec.decode(entry.value or b"", Schedule)
            except ChronosError:
                continue
            s.revision = entry.revision
            out.append(s)
        return out

    async def matching(self, pattern: str) -> list[str]:
        """Names matching the glob; ScheduleNotFoundError when none do."""
        names = match_names([s.name for s in await self.list()], pattern)
        if not names:
            raise ScheduleNotFoundError(f"no schedule matches {pattern!r}")
        return names

    async def create(self, s: Schedule) -> Schedule:
        """Store a new schedule; ValidationError if the name is taken."""
        kv = await self.conn.kv(self.bucket)
        try:
            # nats-py's create also succeeds over a delete marker (a removed schedule's name).
            rev = await kv.create(s.name, codec.encode(s))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ValidationError(f"name: a schedule named {s.name!r} already exists") from None
        return msgspec.structs.replace(s, revision=rev)

    async def update(self, s: Schedule, **changes: Any) -> Schedule:
        """Compare-and-set at ``s.revision``; ConflictError if it moved."""
        new = msgspec.structs.replace(s, **changes)
        rev = await (await self.store()).update(s.name, codec.encode(new), s.revision)
        new.revision = rev
        return new

    async def modify(self, name: str, change: Callable[[Schedule], dict[str, Any]], attempts: int = 5) -> Schedule:
        """Read, ``change(schedule) -> dict of changes``, compare-and-set; re-read on conflict."""
        async def read() -> tuple[Schedule, int]:
            s = await self.get(name)
            return s, s.revision

        return await cas.update(read, lambda s, _rev: (s, change(s)),
                                lambda d, _rev: self.update(d[0], **d[1]),
                                attempts=attempts, what=f"schedule {name}")

    async def delete(self, name: str) -> None:
        await self.get(name)  # not found -> ScheduleNotFoundError
        await (await self.store()).delete(name)
