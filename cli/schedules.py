"""`chronos schedules add|edit|list|get|next|pause|resume|remove|backfill|export-crontab`.

Thin commands over the Client's schedule methods. Values the CLI can check
alone (cron, interval, zone, JSON, durations, policies) are usage errors naming
the option (exit 2), and so are values the server refuses (unknown queue or
task, a backfill window over the limit); a missing name is "not found" (exit 4)
and a taken one a conflict (exit 5).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any, Optional
from zoneinfo import ZoneInfo

import msgspec
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chronos.client import Client
from chronos.cron import parse_schedule
from chronos.errors import ValidationError
from chronos.models import Schedule
from chronos.schedules import MISFIRE, OVERLAP, ScheduleStatus, describe_when, wall_time
from chronos.subjects import PRIORITIES

from . import _output as out
from ._parse import BadOption, parse_duration, parse_json, parse_pairs, parse_time, parse_time_or_ago
from ._shared import JsonOpt, StateConflict, run_client, state, wants_json

app = typer.Typer(help="Cron and interval schedules.", no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="Schedule name.", show_default=False)]
OptName = Annotated[Optional[str], typer.Argument(help="Schedule name.", show_default=False)]
MatchOpt = Annotated[Optional[str], typer.Option("--match", "-m", help="Every schedule whose name matches this glob.")]

# Client field -> the option that sets it, so a core ValidationError can name the option.
_OPTION_OF = {"cron": "--cron", "every": "--every", "tz": "--tz", "schedule": "--cron", "count": "--count"}

# A backfill this size or bigger shows a progress bar.
_PROGRESS_FROM = 200


def _complete(choices: tuple[str, ...]) -> Any:
    return lambda incomplete: [c for c in choices if c.startswith(incomplete)]


# --- option parsing ------------------------------------------------------------------------------
def _as_option(exc: ValidationError) -> BadOption:
    """'cron: minute field ...' -> BadOption('--cron', 'minute field ...')."""
    field, sep, rest = str(exc).partition(": ")
    return BadOption(_OPTION_OF.get(field, f"--{field.replace('_', '-')}"), rest if sep else str(exc))


def _timing(cron: str | None, every: str | None, tz: str | None, *, required: bool) -> dict[str, Any]:
    """Check --cron/--every/--tz on their own; return the client keyword arguments they set."""
    if cron is not None and every is not None:
        raise BadOption("--cron", "give either --cron EXPR or --every DURATION, not both")
    if required and cron is None and every is None:
        raise BadOption("--cron", "give one of --cron EXPR or --every DURATION")
    out_: dict[str, Any] = {}
    seconds = parse_duration(every, "--every") if every is not None else None
    try:
        if cron is not None or seconds is not None:
            parse_schedule(cron=cron, every=seconds, tz=tz or "UTC")
        elif tz is not None:
            parse_schedule(cron="* * * * *", tz=tz)
    except ValidationError as exc:
        raise _as_option(exc) from None
    if cron is not None:
        out_["cron"] = cron
    if seconds is not None:
        out_["every"] = seconds
    if tz is not None:
        out_["tz"] = tz
    return out_


def _job_options(
    args: str | None, arg: list[str] | None, priority: str | None, timeout: str | None,
    max_attempts: int | None, overlap: str | None, misfire: str | None, catch_up_max: int | None,
) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if args is not None and arg:
        raise BadOption("--arg", "give either --args JSON or --arg k=v, not both")
    if args is not None:
        payload = parse_json(args, "--args")
        if not isinstance(payload, (list, dict)):
            raise BadOption("--args", "must be a JSON list (positional) or object (keyword arguments)")
        opts["args"] = payload
    elif arg:
        opts["args"] = parse_pairs(arg, "--arg")
    if priority is not None:
        if priority not in PRIORITIES:
            raise BadOption("--priority", f"{priority!r} is not one of {', '.join(PRIORITIES)}")
        opts["priority"] = priority
    if timeout is not None:
        opts["timeout"] = parse_duration(timeout, "--timeout")
        if opts["timeout"] <= 0:
            raise BadOption("--timeout", "must be more than zero")
    if max_attempts is not None:
        if max_attempts < 1:
            raise BadOption("--max-attempts", "must be at least 1")
        opts["max_attempts"] = max_attempts
    if overlap is not None:
        if overlap not in OVERLAP:
            raise BadOption("--overlap", f"{overlap!r} is not one of {', '.join(OVERLAP)}")
        opts["overlap"] = overlap
    if misfire is not None:
        if misfire not in MISFIRE:
            raise BadOption("--misfire", f"{misfire!r} is not one of {', '.join(MISFIRE)}")
        opts["misfire"] = misfire
    if catch_up_max is not None:
        if catch_up_max < 1:
            raise BadOption("--catch-up-max", "must be at least 1")
        opts["catch_up_max"] = catch_up_max
    return opts


def _one_target(name: str | None, match: str | None) -> None:
    if (name is None) == (match is None):
        raise BadOption("--match", "give a schedule NAME or --match GLOB, not both and not neither")


# --- JSON and human output -----------------------------------------------------------------------
def _flat(st: ScheduleStatus) -> dict[str, Any]:
    """JSON of a schedule in list/get: its stored fields plus what is computed about it."""
    return {**out.plain(st.schedule), "next_fire_time": st.next_fire_time, "paused_now": st.paused_now,
            "last_job_fire_time": st.last_job_fire_time, "last_job_state": st.last_job_state}


def _paused_text(s: Schedule, now: float) -> str:
    if not s.is_paused(now):
        return "no"
    return "yes" if s.paused_until is None else f"until {out.when(s.paused_until, now)}"


def _zone_time(t: float, tz: str) -> str:
    return datetime.fromtimestamp(t, ZoneInfo(tz)).strftime("%a %Y-%m-%d %H:%M:%S %Z (%z)")


def _last_fire(st: ScheduleStatus, now: float) -> str:
    if st.last_job_fire_time is None:
        return ""
    return f"{out.when(st.last_job_fire_time, now)} {st.last_job_state or ''}".rstrip()


def _print_status(st: ScheduleStatus) -> None:
    now = time.time()
    s = st.schedule
    nxt = st.next_fire_time
    rows: list[tuple[str, Any]] = [
        ("schedule", s.name),
        ("when", describe_when(s)),
        ("timezone", s.tz if s.cron is not None else None),
        ("task", s.task),
        ("args", out.compact_json(s.args, 400)),
        ("queue", f"{s.queue} / {s.priority}"),
        ("attempts", s.max_attempts),
        ("timeout", out.human_duration(s.timeout) if s.timeout else None),
        ("overlap", s.overlap),
        ("misfire", s.misfire + (f" (at most {s.catch_up_max})" if s.misfire == "catch-up" else "")),
        ("paused", _paused_text(s, now)),
        ("next fire", f"{_zone_time(nxt, s.tz)}, {out.relative(nxt, now)}" if nxt is not None else "none (paused)"),
        ("last fire", _last_fire(st, now) + (f" (job {st.last_job_id})" if st.last_job_id else "")),
        ("annotations", ", ".join(f"{k}={v}" for k, v in s.annotations.items())),
        ("created", out.when(s.created_at, now, full=True)),
        ("updated", out.when(s.updated_at, now, full=True)),
    ]
    out.console().print(out.key_values(rows))


def _status_of(client: Client, name: str) -> Any:
    async def go() -> ScheduleStatus:
        await client.get_schedule(name)  # a clear "not found" for a bad name
        (st,) = await client.schedule_statuses(name)
        return st

    return go()


# --- commands ------------------------------------------------------------------------------------
@app.command("add")
def add(
    ctx: typer.Context,
    name: Name,
    task: Annotated[str, typer.Argument(help="Task name, as a worker registered it.", show_default=False)],
    cron: Annotated[Optional[str], typer.Option("--cron", help="Cron expression: 5 fields, 6 (seconds first) or @daily etc.")] = None,
    every: Annotated[Optional[str], typer.Option("--every", help="Fixed interval: 30s, 5m, 1h30m, 1d.")] = None,
    tz: Annotated[Optional[str], typer.Option("--tz", help="IANA zone for --cron (default UTC).")] = None,
    args: Annotated[Optional[str], typer.Option("--args", help="Arguments as JSON: a list or an object.")] = None,
    arg: Annotated[Optional[list[str]], typer.Option("--arg", help="A keyword argument k=v (repeatable).")] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", "-q", help="Queue (default from config); must be served.")] = None,
    priority: Annotated[Optional[str], typer.Option("--priority", "-p", help=f"One of {', '.join(PRIORITIES)}.",
                                                    autocompletion=_complete(PRIORITIES))] = None,
    timeout: Annotated[Optional[str], typer.Option("--timeout", help="Per-attempt timeout: 90, 30s, 5m.")] = None,
    max_attempts: Annotated[Optional[int], typer.Option("--max-attempts", help="Attempts before the DLQ.")] = None,
    overlap: Annotated[Optional[str], typer.Option("--overlap", help="allow | skip | replace (default allow).",
                                                   autocompletion=_complete(OVERLAP))] = None,
    misfire: Annotated[Optional[str], typer.Option("--misfire", help="skip | run-once | catch-up (default skip).",
                                                   autocompletion=_complete(MISFIRE))] = None,
    catch_up_max: Annotated[Optional[int], typer.Option("--catch-up-max", help="Most fires made up by catch-up (default 10).")] = None,
    paused: Annotated[bool, typer.Option("--paused", help="Store it paused (resume to start it).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Add a schedule: TASK runs on a cron expression (in a timezone) or every fixed interval."""
    st = state(ctx)
    options = {**_timing(cron, every, tz, required=True),
               **_job_options(args, arg, priority, timeout, max_attempts, overlap, misfire, catch_up_max)}
    payload = options.pop("args", None)

    async def go(client: Client) -> ScheduleStatus:
        try:
            await client.add_schedule(name, task, payload, queue=queue, paused=paused, **options)
        except ValidationError as exc:
            if str(exc).startswith("name: ") and "already exists" in str(exc):
                raise StateConflict(f"{str(exc).removeprefix('name: ')} (edit it with `chronos schedules edit`)") from None
            raise
        (status,) = await client.schedule_statuses(name)
        return status

    status = run_client(st, go, ensure=False)
    if wants_json(ctx, json_):
        out.print_json(_flat(status))
        return
    s = status.schedule
    nxt = status.next_fire_time
    when_next = f"next fire {out.when(nxt)}" if nxt is not None else "paused"
    typer.echo(f"added schedule {s.name}: {s.task} {describe_when(s)}"
               f"{f' ({s.tz})' if s.cron is not None else ''} on {s.queue}/{s.priority}; {when_next}")


@app.command("edit")
def edit(
    ctx: typer.Context,
    name: Name,
    task: Annotated[Optional[str], typer.Option("--task", help="Run this task instead.")] = None,
    cron: Annotated[Optional[str], typer.Option("--cron", help="New cron expression (replaces --every).")] = None,
    every: Annotated[Optional[str], typer.Option("--every", help="New interval (replaces --cron).")] = None,
    tz: Annotated[Optional[str], typer.Option("--tz", help="New IANA zone.")] = None,
    args: Annotated[Optional[str], typer.Option("--args", help="New arguments as JSON.")] = None,
    arg: Annotated[Optional[list[str]], typer.Option("--arg", help="New keyword arguments k=v (repeatable).")] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", "-q", help="New queue.")] = None,
    priority: Annotated[Optional[str], typer.Option("--priority", "-p", help=f"One of {', '.join(PRIORITIES)}.",
                                                    autocompletion=_complete(PRIORITIES))] = None,
    timeout: Annotated[Optional[str], typer.Option("--timeout", help="New per-attempt timeout.")] = None,
    max_attempts: Annotated[Optional[int], typer.Option("--max-attempts", help="New attempt budget.")] = None,
    overlap: Annotated[Optional[str], typer.Option("--overlap", help="allow | skip | replace.",
                                                   autocompletion=_complete(OVERLAP))] = None,
    misfire: Annotated[Optional[str], typer.Option("--misfire", help="skip | run-once | catch-up.",
                                                   autocompletion=_complete(MISFIRE))] = None,
    catch_up_max: Annotated[Optional[int], typer.Option("--catch-up-max", help="Most fires made up by catch-up.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Change a schedule; a new timing applies from now on (past fire times are not made up)."""
    st = state(ctx)
    changes = {**_timing(cron, every, tz, required=False),
               **_job_options(args, arg, priority, timeout, max_attempts, overlap, misfire, catch_up_max)}
    if task is not None:
        changes["task"] = task
    if queue is not None:
        changes["queue"] = queue
    if not changes:
        raise BadOption("edit", "nothing to change; give at least one option (see --help)")

    async def go(client: Client) -> ScheduleStatus:
        await client.update_schedule(name, **changes)
        (status,) = await client.schedule_statuses(name)
        return status

    status = run_client(st, go, ensure=False)
    if wants_json(ctx, json_):
        out.print_json(_flat(status))
    else:
        typer.echo(f"updated schedule {name}: {', '.join(sorted(changes))}")


@app.command("list")
def list_schedules(
    ctx: typer.Context,
    match: MatchOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List schedules with their next and last fire."""
    statuses = run_client(state(ctx), lambda c: c.schedule_statuses(match), ensure=False)
    if wants_json(ctx, json_):
        out.print_listing([_flat(x) for x in statuses])
        return
    if not statuses:
        typer.echo("no schedules" if match is None else f"no schedule matches {match!r}")
        return
    now = time.time()
    t = out.table("NAME", "WHEN", "TZ", "NEXT FIRE", "LAST FIRE", "PAUSED", "TASK")
    for x in statuses:
        s = x.schedule
        nxt = out.when(x.next_fire_time, now) if x.next_fire_time is not None else "-"
        t.add_row(out.cell(s.name), out.cell(describe_when(s)), s.tz if s.cron is not None else "-", nxt,
                  _last_fire(x, now) or "-", _paused_text(s, now), out.cell(s.task))
    out.print_table(t)
    typer.echo(f"{len(statuses)} schedule{'' if len(statuses) == 1 else 's'}")


@app.command("get")
def get(ctx: typer.Context, name: Name, json_: JsonOpt = False) -> None:
    """Show one schedule: timing, job options, policies, next and last fire."""
    status = run_client(state(ctx), lambda c: _status_of(c, name), ensure=False)
    if wants_json(ctx, json_):
        out.print_json(_flat(status))
    else:
        _print_status(status)


class NextFire(msgspec.Struct):
    at: float  # epoch seconds
    wall: str  # ISO 8601 wall time in the schedule's zone, with its offset


class NextReport(msgspec.Struct):
    """JSON of `schedules next`."""

    name: Optional[str]
    when: str
    tz: str
    fire_times: list[NextFire]


@app.command("next")
def next_fires(
    ctx: typer.Context,
    name: OptName = None,
    count: Annotated[int, typer.Option("--count", help="How many fire times.")] = 5,
    cron: Annotated[Optional[str], typer.Option("--cron", help="Dry-run a cron expression instead of a stored schedule.")] = None,
    every: Annotated[Optional[str], typer.Option("--every", help="Dry-run an interval instead of a stored schedule.")] = None,
    tz: Annotated[Optional[str], typer.Option("--tz", help="Zone for --cron (default UTC).")] = None,
    after: Annotated[Optional[str], typer.Option(
        "--after", help="Fire times after this ISO 8601 time (local if no offset), past or future; default now.")] = None,
    json_: JsonOpt = False,
) -> None:
    """The fire times of schedule NAME (or of --cron/--every) from now or --after TIME, in its timezone."""
    st = state(ctx)
    if not 1 <= count <= 10_000:
        raise BadOption("--count", "must be from 1 to 10000")
    start = parse_time(after, "--after") if after is not None else None
    if name is not None and (cron is not None or every is not None or tz is not None):
        raise BadOption("--cron", "give a schedule NAME or --cron/--every/--tz, not both")
    if name is None:
        options = _timing(cron, every, tz, required=True)
        zone = options.get("tz", "UTC")

        async def preview(client: Client) -> list[float]:
            return client.preview_fire_times(count=count, after=start, **options)

        times = run_client(st, preview, ensure=False)
        label = f"cron {cron}" if cron is not None else f"every {every}"
    else:
        async def stored(client: Client) -> tuple[Schedule, list[float]]:
            return await client.get_schedule(name), await client.next_fire_times(name, count, after=start)

        s, times = run_client(st, stored, ensure=False)
        zone, label = s.tz, describe_when(s)
        if s.cron is None:
            zone = "UTC"
    report = NextReport(name=name, when=label, tz=zone, fire_times=[NextFire(t, wall_time(t, zone)) for t in times])
    if wants_json(ctx, json_):
        out.print_json(report)
        return
    now = time.time()
    typer.echo(f"{name or 'dry run'}: {label}, times in {zone}"
               + (f", after {out.local_time(start, now, full=True)}" if start is not None else ""))
    for t in times:
        typer.echo(f"  {_zone_time(t, zone)}  {out.relative(t, now)}")


@app.command("pause")
def pause(
    ctx: typer.Context,
    name: OptName = None,
    match: MatchOpt = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Resume by itself at this ISO 8601 time.")] = None,
    for_: Annotated[Optional[str], typer.Option("--for", help="Resume by itself after this long: 30m, 2h, 1d.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Pause a schedule (NAME) or several (--match GLOB), until resumed or until a time."""
    st = state(ctx)
    _one_target(name, match)
    if until is not None and for_ is not None:
        raise BadOption("--for", "give either --until or --for, not both")
    end: float | None = None
    if until is not None:
        end = parse_time(until, "--until")
        if end <= time.time():
            raise BadOption("--until", f"{until!r} is not in the future")
    if for_ is not None:
        seconds = parse_duration(for_, "--for")
        if seconds <= 0:
            raise BadOption("--for", "must be more than zero")
        end = time.time() + seconds

    async def go(client: Client) -> list[Schedule]:
        if name is not None:
            return [await client.pause_schedule(name, until=end)]
        return await client.pause_schedules(match or "", until=end)

    changed = run_client(st, go, ensure=False)
    if wants_json(ctx, json_):
        out.print_listing(changed)
        return
    for s in changed:
        typer.echo(f"paused {s.name}" + (f" until {out.when(s.paused_until)}" if s.paused_until else " (until resumed)"))


@app.command("resume")
def resume(ctx: typer.Context, name: OptName = None, match: MatchOpt = None, json_: JsonOpt = False) -> None:
    """Resume a paused schedule (NAME) or several (--match GLOB); fires missed while paused are not made up."""
    st = state(ctx)
    _one_target(name, match)

    async def go(client: Client) -> list[Schedule]:
        if name is not None:
            return [await client.resume_schedule(name)]
        return await client.resume_schedules(match or "")

    changed = run_client(st, go, ensure=False)
    if wants_json(ctx, json_):
        out.print_listing(changed)
        return
    for s in changed:
        typer.echo(f"resumed {s.name}")


class RemoveReport(msgspec.Struct):
    removed: str


@app.command("remove")
def remove(ctx: typer.Context, name: Name, json_: JsonOpt = False) -> None:
    """Delete a schedule. Jobs it already made are not touched."""
    run_client(state(ctx), lambda c: c.remove_schedule(name), ensure=False)
    if wants_json(ctx, json_):
        out.print_json(RemoveReport(removed=name))
    else:
        typer.echo(f"removed schedule {name}")


@app.command("backfill")
def backfill(
    ctx: typer.Context,
    name: Name,
    since: Annotated[str, typer.Option("--since", help="Window start: ISO 8601 time, or a duration ago (6h, 2d).",
                                       show_default=False)],
    until: Annotated[Optional[str], typer.Option("--until", help="Window end (default now): ISO 8601 or a duration ago.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Make the jobs for the fire times of NAME in a past window. Safe to repeat: one job per fire."""
    st = state(ctx)
    now = time.time()
    start = parse_time_or_ago(since, "--since", now)
    end = parse_time_or_ago(until, "--until", now) if until is not None else None
    as_json = wants_json(ctx, json_)

    async def go(client: Client) -> Any:
        # Made on the first report of a big window only, so a small backfill writes nothing to stderr.
        bars: list[tuple[Progress, Any]] = []

        def advance(done: int, total: int) -> None:
            if as_json or total < _PROGRESS_FROM:
                return
            if not bars:
                progress = Progress(TextColumn("backfilling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                    console=out.console(stderr=True), transient=True)
                progress.start()
                bars.append((progress, progress.add_task("backfill", total=total)))
            bars[0][0].update(bars[0][1], completed=done)

        try:
            return await client.backfill_schedule(name, start, end, progress=advance)
        finally:
            for progress, _ in bars:
                progress.stop()

    report = run_client(st, go, ensure=False)
    if as_json:
        out.print_json(report)
        return
    n = len(report.fires)
    span = f"{out.local_time(report.since, now, full=True)} .. {out.local_time(report.until, now, full=True)}"
    if n == 0:
        typer.echo(f"no fire times of {name} in {span}; nothing to do")
        return
    typer.echo(f"backfilled {name}: {n} fire time{'' if n == 1 else 's'} in {span}; "
               f"{report.made} job{'' if report.made == 1 else 's'} made, {report.existing} existed already")


class CrontabReport(msgspec.Struct):
    crontab: str


@app.command("export-crontab")
def export_crontab(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Print every schedule as crontab entries (chronos metadata as comments)."""
    text = run_client(state(ctx), lambda c: c.export_crontab(), ensure=False)
    if wants_json(ctx, json_):
        out.print_json(CrontabReport(crontab=text))
    else:
        typer.echo(text, nl=False)
