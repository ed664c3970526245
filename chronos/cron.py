"""When schedules fire: cron and interval schedules as pure functions of time. No I/O.

A schedule answers one question, ``next_after(t)``: the first fire time strictly
after the epoch instant ``t``. Everything else (dry runs, backfill, crontab
export, dedupe ids) is built on that.

Cron expressions
    5 fields ``minute hour day-of-month month day-of-week`` or 6 fields with
    *seconds first* (``second minute hour dom month dow``, the Quartz / robfig /
    NATS ``Nats-Schedule`` order), plus the aliases ``@hourly``, ``@daily``,
    ``@midnight``, ``@weekly``, ``@monthly``, ``@yearly`` (``@annually``).
    Fields are matched against wall-clock time in an IANA zone (``tz``,
    default ``UTC``); day-of-month and day-of-week are OR-ed as in Vixie cron.

Daylight saving time (the rule every scheduler must pick; this is ours)
    * Spring forward (a gap): a wall time that does not exist that day fires
      once, at the first valid instant after the gap. ``30 2 * * *`` in
      America/New_York on 2026-03-08 fires at 03:00 EDT. Several candidates in
      the gap (``*/15`` at 02:00..02:45) collapse into that single fire, and a
      candidate exactly at the gap's end (03:00) is the same fire, so its
      ``fire_id`` is the same too.
    * Fall back (a fold): a wall time that occurs twice fires once, at its
      first occurrence (the earlier, daylight-time instant). ``30 1 * * *`` in
      New York on 2026-11-01 fires at 01:30 EDT, not again at 01:30 EST;
      ``0 * * * *`` fires at 01:00 EDT and next at 02:00 EST, two hours later.
    * Interval schedules count real seconds from their anchor and never see DST.

Fire ids
    ``fire_id(schedule_id, t)`` is ``"<schedule_id>:<epoch seconds>"``. It is
    the ``Nats-Msg-Id`` of a fire, so two schedulers that both believe they
    lead still publish one job (STYLE principle 4). That is why intervals must
    be at least one second: two fires in one second would share an id.
"""

from __future__ import annotations

import functools
import math
import re
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from croniter import croniter

from .errors import ValidationError

__all__ = [
    "ALIASES",
    "CronSchedule",
    "IntervalSchedule",
    "Schedule",
    "fire_id",
    "fire_times_between",
    "plan_due_fires",
    "next_n",
    "parse_schedule",
    "to_crontab_line",
]

ALIASES: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIELD_NAMES_5 = ("minute", "hour", "day-of-month", "month", "day-of-week")
_FIELD_NAMES_6 = ("second", *_FIELD_NAMES_5)
# After the fold jump one more candidate always lands past t; this only guards against a bug looping.
_MAX_CANDIDATES = 16


@runtime_checkable
class Schedule(Protocol):
    def next_after(self, t: float) -> float:
        """The first fire time strictly after epoch seconds ``t``."""
        ...


# --- validation helpers ---------------------------------------------------------


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValidationError(f"tz: unknown timezone {tz!r} (use an IANA name such as 'Europe/Berlin')") from None


def _croniter_ok(fields: list[str]) -> str | None:
    """None when croniter accepts the fields, else its complaint."""
    try:
        croniter(" ".join(fields), datetime(2000, 1, 1), second_at_beginning=len(fields) == 6)
    except (ValueError, TypeError, KeyError) as exc:
        return str(exc) or type(exc).__name__
    return None


@functools.lru_cache(maxsize=1024)
def _compile(expr: str) -> tuple[str, bool]:
    """Normalise ``expr`` to (croniter text, has_seconds); raise ValidationError naming the bad field."""
    text = " ".join(expr.split())
    if not text:
        raise ValidationError("cron: expression is empty")
    if text.startswith("@"):
        alias = ALIASES.get(text.lower())
        if alias is None:
            raise ValidationError(f"cron: unknown alias {text!r} (known: {', '.join(sorted(ALIASES))})")
        text = alias
    fields = text.split(" ")
    if len(fields) not in (5, 6):
        raise ValidationError(
            f"cron: {expr!r} has {len(fields)} fields; expected 5 (minute hour dom month dow) "
            "or 6 (second first)"
        )
    problem = _croniter_ok(fields)
    if problem is not None:
        # Find the field at fault by checking each alone, so the message points at it.
        names = _FIELD_NAMES_6 if len(fields) == 6 else _FIELD_NAMES_5
        for i, name in enumerate(names):
            alone = ["*"] * len(fields)
            alone[i] = fields[i]
            if _croniter_ok(alone) is not None:
                raise ValidationError(f"cron: {name} field {fields[i]!r} in {expr!r} is not valid")
        raise ValidationError(f"cron: invalid expression {expr!r}: {problem}")
    try:
        # Catch expressions that can never fire, such as 30 February.
        croniter(" ".join(fields), datetime(2000, 1, 1), second_at_beginning=len(fields) == 6).get_next(datetime)
    except ValueError:
        raise ValidationError(f"cron: {expr!r} never fires") from None
    return " ".join(fields), len(fields) == 6


# --- wall time <-> instants -----------------------------------------------------


def _wall(t: float, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(t, zone).replace(tzinfo=None)


def _first_true(lo: int, hi: int, pred: Callable[[int], bool]) -> int:
    """Smallest integer s in [lo, hi] with pred(s), for pred false...false true...true; hi if none."""
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _instant(wall: datetime, zone: ZoneInfo) -> float:
    """The instant a wall time fires: itself, the first occurrence in a fold, the gap's end in a gap."""
    early = wall.replace(tzinfo=zone, fold=0).timestamp()
    late = wall.replace(tzinfo=zone, fold=1).timestamp()
    if early == late:
        return early
    lo, hi = min(early, late), max(early, late)
    if _wall(lo, zone) == wall:
        return lo  # a fold: both exist; the first one fires
    # A gap: the first instant whose wall time reaches ``wall`` is the transition itself.
    return float(_first_true(math.floor(lo), math.ceil(hi), lambda s: _wall(s, zone) >= wall))


def _fold_end(wall: datetime, zone: ZoneInfo) -> datetime:
    """For a wall time inside a fold, the first wall time after the repeated stretch."""
    first = wall.replace(tzinfo=zone, fold=0).timestamp()
    second = wall.replace(tzinfo=zone, fold=1).timestamp()
    lo, hi = min(first, second), max(first, second)
    after = datetime.fromtimestamp(hi, zone).utcoffset()
    before = datetime.fromtimestamp(lo, zone).utcoffset()
    assert after is not None and before is not None
    # The transition: the first instant already on the later offset.
    t = _first_true(math.floor(lo), math.ceil(hi), lambda s: datetime.fromtimestamp(s, zone).utcoffset() == after)
    return datetime.fromtimestamp(t, UTC).replace(tzinfo=None) + before


# --- schedules ------------------------------------------------------------------


class CronSchedule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A cron expression evaluated in wall-clock time of ``tz`` (see the module docstring for DST)."""

    expr: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        _compile(self.expr)
        _zone(self.tz)

    @property
    def has_seconds(self) -> bool:
        return _compile(self.expr)[1]

    def fields(self) -> list[str]:
        """The normalised fields (aliases expanded; seconds first when there are six)."""
        return _compile(self.expr)[0].split(" ")

    def next_after(self, t: float) -> float:
        text, seconds = _compile(self.expr)
        zone = _zone(self.tz)
        # Iterate naive wall time (croniter never sees DST), then map each candidate to an instant.
        it = croniter(text, _wall(t, zone), second_at_beginning=seconds)
        for _ in range(_MAX_CANDIDATES):
            wall = it.get_next(datetime)
            at = _instant(wall, zone)
            if at > t:
                return at
            # Only inside a fold's second pass: these walls already fired in the first pass; skip them all.
            it = croniter(text, _fold_end(wall, zone) - timedelta(microseconds=1), second_at_beginning=seconds)
        raise RuntimeError(f"cron {self.expr!r} in {self.tz}: no fire time found after {t}")

    def describe(self) -> str:
        return f"cron {self.expr!r} ({self.tz})"


class IntervalSchedule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every ``seconds`` seconds on the grid ``anchor + k * seconds``; immune to DST and clock-face time."""

    seconds: float
    anchor: float = 0.0

    def __post_init__(self) -> None:
        _check_interval(self.seconds)
        if not math.isfinite(self.anchor):
            raise ValidationError(f"anchor: {self.anchor} is not a finite epoch time")

    def next_after(self, t: float) -> float:
        # Every fire is computed as anchor + k * seconds (never by adding to a previous fire), so a
        # grid point has one float value; the division may round either way near one, hence k - 1.
        k = math.floor((t - self.anchor) / self.seconds)
        while (nxt := self.anchor + k * self.seconds) <= t:
            k += 1
        return nxt

    def describe(self) -> str:
        return f"every {_fmt_seconds(self.seconds)}"


MAX_INTERVAL = 100 * 365 * 86400.0  # beyond this, fire times leave the calendar datetime can hold


def _check_interval(seconds: float) -> None:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
        raise ValidationError(f"every: {seconds!r} is not a number of seconds")
    if seconds <= 0:
        raise ValidationError(f"every: interval must be greater than 0 seconds, got {seconds:g}")
    if seconds < 1:
        raise ValidationError(f"every: interval must be at least 1 second (fire ids are whole seconds), got {seconds:g}")
    if seconds > MAX_INTERVAL:
        raise ValidationError(f"every: interval must be at most 100 years ({MAX_INTERVAL:.0f} s), got {seconds:g}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _parse_every(every: float | str) -> float:
    if isinstance(every, str):
        m = _DURATION.match(every)
        if m is None:
            raise ValidationError(f"every: {every!r} is not a duration (examples: 90, 90s, 5m, 2h, 1d)")
        return float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
    return every


def _fmt_seconds(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{s:g}s"


def parse_schedule(
    *,
    cron: str | None = None,
    every: float | str | None = None,
    tz: str = "UTC",
    anchor: float = 0.0,
) -> CronSchedule | IntervalSchedule:
    """Build a schedule from user input; a mistake raises ValidationError naming the field.

    Give exactly one of ``cron`` (5 or 6 fields, or an alias) and ``every``
    (seconds, or a string such as ``"90s"``, ``"5m"``, ``"2h"``, ``"1d"``).
    ``tz`` is checked either way but only cron schedules use it.
    """
    if (cron is None) == (every is None):
        raise ValidationError("schedule: give exactly one of cron or every")
    _zone(tz)
    if cron is not None:
        if not isinstance(cron, str):
            raise ValidationError(f"cron: expected a string, got {type(cron).__name__}")
        return CronSchedule(cron.strip(), tz)
    assert every is not None
    return IntervalSchedule(_parse_every(every), anchor)


# --- derived helpers ------------------------------------------------------------


def next_n(schedule: Schedule, after: float, n: int) -> list[float]:
    """The next ``n`` fire times after ``after``, for dry runs (``chronos schedules next``)."""
    if n < 0:
        raise ValidationError(f"n: must be 0 or more, got {n}")
    out: list[float] = []
    t = after
    for _ in range(n):
        t = schedule.next_after(t)
        out.append(t)
    return out


def fire_times_between(schedule: Schedule, since: float, until: float, limit: int) -> list[float]:
    """Fire times ``t`` with ``since < t <= until``, for backfill and catch-up after downtime.

    Raises ValidationError when there are more than ``limit`` of them, so a
    long outage or a wide backfill range cannot flood the queue by accident.
    """
    if limit < 0:
        raise ValidationError(f"limit: must be 0 or more, got {limit}")
    out: list[float] = []
    t = schedule.next_after(since)
    while t <= until:
        if len(out) == limit:
            raise ValidationError(
                f"limit: more than {limit} fire times between {_iso(since)} and {_iso(until)}; "
                "narrow the range or raise the limit"
            )
        out.append(t)
        t = schedule.next_after(t)
    return out


MISFIRE_POLICIES = ("skip", "run-once", "catch-up")


class DuePlan(msgspec.Struct, frozen=True):
    """What the enqueuer makes for one schedule at ``now``: ``fires`` (ascending), ``latest`` (the
    newest due fire time, made or not, which becomes ``last_fire_time``) and ``missed`` (how many
    missed fires were seen; a lower bound after a long outage, which is not walked)."""

    fires: list[float]
    latest: float | None
    missed: int


def plan_due_fires(
    schedule: Schedule,
    base: float,
    now: float,
    *,
    grace: float,
    misfire: str,
    catch_up_max: int,
    limit: int,
) -> DuePlan:
    """The fires due in ``(base, now]`` under a misfire policy (docs/schedules.md, "Misfires").

    A fire ``t`` with ``now - t <= grace`` is on time and always fires. An older one was missed:
    ``skip`` drops every missed fire, ``run-once`` makes the latest missed one, ``catch-up`` the
    latest ``catch_up_max`` missed ones; the on-time fires come on top in every policy. Missed
    fires are found by looking back from the cutoff, never by walking from ``base``, so a long
    outage costs about as much as a short one. At most ``limit`` on-time fires are made (the
    latest), which only a grace far larger than the interval can reach.
    """
    if misfire not in MISFIRE_POLICIES:
        raise ValidationError(f"misfire: {misfire!r} is not one of {', '.join(MISFIRE_POLICIES)}")
    cutoff = now - grace
    # Fire times are at least 1 s apart, so starting one second early finds a fire exactly at the
    # cutoff (on time) and at most one older fire, which the filter drops.
    on_time = [t for t in _walk(schedule, max(base, cutoff - 1.0), now) if now - t <= grace]
    on_time = on_time[-limit:] if limit > 0 else []
    want = {"skip": 0, "run-once": 1}.get(misfire, catch_up_max)
    missed: list[float] = []
    seen = 0
    if cutoff > base:
        missed, seen = _latest_before(schedule, base, now, grace, max(1, want))
    chosen = missed[len(missed) - want:] if want > 0 else []
    latest = on_time[-1] if on_time else (missed[-1] if missed else None)
    return DuePlan(fires=chosen + on_time, latest=latest, missed=seen)


def _walk(schedule: Schedule, since: float, until: float) -> Iterator[float]:
    t = schedule.next_after(since)
    while t <= until:
        yield t
        t = schedule.next_after(t)


def _latest_before(schedule: Schedule, base: float, now: float, grace: float, want: int) -> tuple[list[float], int]:
    """Up to ``want`` of the latest missed fires (``base < t`` and ``now - t > grace``), ascending.
    The look-back window doubles from the grace until it holds ``want`` of them or reaches ``base``;
    only the newest ``want`` are kept while walking, so memory stays bounded. Also returns how many
    missed fires the last window held."""
    cutoff = now - grace
    span = max(grace, 1.0)
    while True:
        start = max(base, cutoff - span)
        kept: deque[float] = deque(maxlen=want)
        seen = 0
        for t in _walk(schedule, start, cutoff):
            if now - t > grace:
                kept.append(t)
                seen += 1
        if seen >= want or start == base:
            return list(kept), seen
        span *= 2


def fire_id(schedule_id: str, fire_time: float) -> str:
    """The deterministic id of one fire, used as its Nats-Msg-Id (same on every node)."""
    return f"{schedule_id}:{int(fire_time)}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def to_crontab_line(schedule: Schedule, command: str, *, tz_line: bool = True) -> str:
    """The schedule as a crontab entry running ``command``.

    A 5-field line, preceded (when ``tz_line``) by ``CRON_TZ=<zone>`` because a
    crontab line has no zone of its own; cronie applies ``CRON_TZ`` to the lines
    after it, so every entry states its zone and entries can be concatenated in
    any order. Intervals are written in UTC. A schedule cron cannot express
    (sub-minute seconds, an interval that does not divide the hour or day) comes
    back as a single ``#`` comment line that still names the command.
    """
    if isinstance(schedule, CronSchedule):
        fields = schedule.fields()
        if len(fields) == 6:
            if fields[0] != "0":
                return f"# {schedule.describe()} fires at seconds {fields[0]!r}; not expressible in crontab: {command}"
            fields = fields[1:]
        line = f"{' '.join(fields)} {command}"
        return f"CRON_TZ={schedule.tz}\n{line}" if tz_line else line
    if isinstance(schedule, IntervalSchedule):
        fields_text = _interval_fields(schedule)
        if fields_text is None:
            anchor = _iso(schedule.anchor)
            return f"# {schedule.describe()} from {anchor}: not expressible in crontab: {command}"
        line = f"{fields_text} {command}"
        return f"CRON_TZ=UTC\n{line}" if tz_line else line
    return f"# {type(schedule).__name__}: not expressible in crontab: {command}"


def _interval_fields(s: IntervalSchedule) -> str | None:
    """Cron fields (UTC) that fire on exactly the interval's grid, or None when none do."""
    secs, anchor = s.seconds, s.anchor
    if secs % 60 or anchor % 60:
        return None
    minutes = int(secs // 60)
    start = datetime.fromtimestamp(anchor, UTC)

    def stepped(first: int, last: int, step: int) -> str:
        if step == 1:
            return "*"
        return f"*/{step}" if first == 0 else f"{first}-{last}/{step}"

    if minutes < 60 and 60 % minutes == 0:
        return f"{stepped(start.minute % minutes, 59, minutes)} * * * *"
    if minutes % 60 == 0:
        hours = minutes // 60
        if hours < 24 and 24 % hours == 0:
            return f"{start.minute} {stepped(start.hour % hours, 23, hours)} * * *"
        if hours == 24:
            return f"{start.minute} {start.hour} * * *"
        if hours == 24 * 7:
            return f"{start.minute} {start.hour} * * {(start.weekday() + 1) % 7}"
    return None
