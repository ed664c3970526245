"""`chronos jobs list|get|cancel|retry|run-now`, and `submit`, `retry`, `cancel` at the top level."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Optional

import logging

import typer

from chronos.client import Client
from chronos.errors import ChronosError
from chronos.models import JobRecord
from chronos.states import TERMINAL, JobState
from chronos.subjects import PRIORITIES

from . import _output as out
from ._parse import BadOption, is_job_id, parse_duration, parse_json, parse_pairs, parse_time
from ._shared import JsonOpt, StateConflict, YesOpt, run_client, state, wants_json

log = logging.getLogger(__name__)

app = typer.Typer(help="List, inspect, cancel and retry jobs.", no_args_is_help=True)

def _check_job_id(value: str) -> str:
    if not is_job_id(value):
        raise typer.BadParameter(f"{value!r} is not a job id (letters, digits, '-' and '_')")
    return value


JobId = Annotated[str, typer.Argument(help="Job id, or a unique prefix of one.", show_default=False,
                                      callback=_check_job_id)]


def _check_opt_job_id(value: Optional[str]) -> Optional[str]:
    return None if value is None else _check_job_id(value)


# cancel and retry: one job by id, or every match of filters with --all (cli/_bulk.py).
OptJobId = Annotated[Optional[str], typer.Argument(help="Job id, or a unique prefix of one (or --all with filters).",
                                                   show_default=False, callback=_check_opt_job_id)]
AllOpt = Annotated[bool, typer.Option("--all", help="Every job the filters match (a count and a confirmation first).")]
EverythingOpt = Annotated[bool, typer.Option("--everything", help="With --all and no filter: really every job.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="With --all: count the matches, change nothing.")]
BulkStateOpt = Annotated[Optional[str], typer.Option("--state", help="With --all: only jobs in this state.",
                                                     autocompletion=lambda incomplete: _complete_state(incomplete))]
BulkQueueOpt = Annotated[Optional[str], typer.Option("--queue", "-q", help="With --all: only this queue.")]
BulkTaskOpt = Annotated[Optional[str], typer.Option("--task", help="With --all: only this task.")]
BulkTagOpt = Annotated[Optional[str], typer.Option("--tag", "-t", help="With --all: only jobs with this tag.")]
BulkSinceOpt = Annotated[Optional[str], typer.Option("--since", help="With --all: created at or after (2h, ISO time).")]
BulkUntilOpt = Annotated[Optional[str], typer.Option("--until", help="With --all: created before (30m, ISO time).")]

# `--state failed` means what it means in `chronos logs` and the TUI: a failing attempt's outcome.
FAILED_STATES = (JobState.RETRYABLE, JobState.DISCARDED)
STATE_CHOICES = (*(s.value for s in JobState), "failed")


def _complete_priority(incomplete: str) -> list[str]:
    return [p for p in PRIORITIES if p.startswith(incomplete)]


def _complete_state(incomplete: str) -> list[str]:
    return [s for s in STATE_CHOICES if s.startswith(incomplete)]


WhereOpt = Annotated[Optional[list[str]], typer.Option(
    "--where", help="A JSON path into args or annotations: args.customer_id=42, args[0].x!=1, "
    "annotations.team=billing, args.flag (exists), !args.flag (missing); repeat to AND.")]


def _parse_where(where: Optional[list[str]]) -> list[str]:
    from ._bulk import parse_where

    return parse_where(where)


# --- submit ------------------------------------------------------------------------------------------
def submit(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="Task name, as a worker registered it.", show_default=False)],
    args: Annotated[Optional[str], typer.Option("--args", help="Arguments as JSON: a list or an object.")] = None,
    arg: Annotated[Optional[list[str]], typer.Option("--arg", help="A keyword argument k=v (repeatable).")] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", "-q", help="Queue (default from config).")] = None,
    priority: Annotated[
        Optional[str],
        typer.Option("--priority", "-p", help=f"One of {', '.join(PRIORITIES)}.", autocompletion=_complete_priority),
    ] = None,
    at: Annotated[Optional[str], typer.Option("--at", help="Run at an ISO 8601 time (local if no offset).")] = None,
    in_: Annotated[Optional[str], typer.Option("--in", help="Run after a delay: 30s, 5m, 1h30m.")] = None,
    unique: Annotated[Optional[str], typer.Option(
        "--unique", help="Dedupe key: a duplicate inside the duplicate window returns the first job.")] = None,
    unique_mode: Annotated[Optional[str], typer.Option(
        "--unique-mode", help="while-active: while a job of this key (or these args) is pending or running, "
                              "a submit returns it.")] = None,
    unique_key: Annotated[Optional[str], typer.Option(
        "--unique-key", help="The key of --unique-mode or --debounce (default: a digest of task and args).")] = None,
    debounce: Annotated[Optional[str], typer.Option(
        "--debounce", help="Run once, this long after the last submit of the key, with its args: 30s, 5m.")] = None,
    debounce_max: Annotated[Optional[str], typer.Option(
        "--debounce-max", help="Run at most this long after the first submit (default: 10 x --debounce).")] = None,
    timeout: Annotated[Optional[str], typer.Option("--timeout", help="Per-attempt timeout: 90, 30s, 5m.")] = None,
    max_attempts: Annotated[Optional[int], typer.Option("--max-attempts", help="Attempts before the DLQ.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", "-t", help="A tag (repeatable).")] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Follow the job to its end; exit 1 unless completed.")] = False,
    wait_timeout: Annotated[
        Optional[str], typer.Option("--wait-timeout", help="Give up waiting after this long (exit 1).")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Submit a job."""
    st = state(ctx)
    if args is not None and arg:
        raise BadOption("--arg", "give either --args JSON or --arg k=v, not both")
    payload: Any = _parse_args(args) if args is not None else (parse_pairs(arg, "--arg") if arg else [])
    if args is not None and not isinstance(payload, (list, dict)):
        raise BadOption("--args", "must be a JSON list (positional) or object (keyword arguments)")
    if at is not None and in_ is not None:
        raise BadOption("--in", "give either --at or --in, not both")
    if priority is not None and priority not in PRIORITIES:
        raise BadOption("--priority", f"{priority!r} is not one of {', '.join(PRIORITIES)}")
    run_at = parse_time(at, "--at") if at is not None else None
    delay = parse_duration(in_, "--in") if in_ is not None else None
    timeout_s = parse_duration(timeout, "--timeout") if timeout is not None else None
    if timeout_s is not None and timeout_s <= 0:
        raise BadOption("--timeout", "must be more than zero")
    wait_s = parse_duration(wait_timeout, "--wait-timeout") if wait_timeout is not None else None
    debounce_s = parse_duration(debounce, "--debounce") if debounce is not None else None
    debounce_max_s = parse_duration(debounce_max, "--debounce-max") if debounce_max is not None else None
    for option, value in (("--timeout", timeout_s), ("--in", delay), ("--wait-timeout", wait_s),
                          ("--debounce", debounce_s), ("--debounce-max", debounce_max_s)):
        if value is not None and not math.isfinite(value):
            raise BadOption(option, "must be a finite duration")
    uniq = _unique_options(unique, unique_mode, unique_key, debounce_s, debounce_max_s, at, in_)
    as_json = wants_json(ctx, json_)
    outcome = ["created"]

    async def go(client: Client) -> JobRecord:
        submitted = await client.submit_job(
            task, payload, queue=queue, priority=priority, run_at=run_at, delay=delay,
            max_attempts=max_attempts, timeout=timeout_s, tags=tag or (), **uniq,
        )
        job_id, outcome[0] = submitted
        await _warn_if_unserved(client, job_id)
        if not wait:
            return await client.get(job_id)
        if not as_json:
            typer.echo(f"{_SUBMITTED[outcome[0]]} {job_id}; waiting for it to finish "
                       "(Ctrl-C stops waiting, not the job)")
        try:
            with out.ProgressView(enabled=not as_json) as view:
                return await client.wait(job_id, timeout=wait_s, on_update=view.update)
        except TimeoutError:
            rec = await client.get(job_id)
            if rec.state in TERMINAL:  # it ended as the wait ran out: that is its end, not a timeout
                return rec
            raise _WaitTimedOut(rec) from None

    try:
        rec = run_client(st, go)
    except _WaitTimedOut as exc:
        _print_submitted(exc.record, as_json, waited=True)
        typer.echo(f"error: --wait-timeout: job {exc.record.id} is still {exc.record.state}", err=True)
        raise typer.Exit(1) from None
    _print_submitted(rec, as_json, waited=wait, outcome=outcome[0])
    if wait and rec.state != JobState.COMPLETED:
        raise typer.Exit(1)


_SUBMITTED = {"created": "submitted", "active": "already active:", "debounced": "debounced:"}
_UNIQUE_MODES = ("while-active",)


def _unique_options(unique: str | None, mode: str | None, key: str | None, debounce: float | None,
                    debounce_max: float | None, at: str | None, in_: str | None) -> dict[str, Any]:
    """The submit's unique options; a mistake names its option (exit 2), nothing sent."""
    if mode is not None and mode not in _UNIQUE_MODES:
        raise BadOption("--unique-mode", f"{mode!r} is not a mode (one of: {', '.join(_UNIQUE_MODES)})")
    if unique is not None and (mode is not None or debounce is not None or key is not None):
        raise BadOption("--unique", "is the dedupe-window key; with --unique-mode or --debounce give --unique-key")
    if mode is not None and debounce is not None:
        raise BadOption("--debounce", "give either --unique-mode or --debounce, not both")
    if key is not None and mode is None and debounce is None:
        raise BadOption("--unique-key", "needs --unique-mode while-active or --debounce (a dedupe key is --unique)")
    if debounce is not None:
        if debounce <= 0:
            raise BadOption("--debounce", "must be more than zero")
        if at is not None or in_ is not None:
            raise BadOption("--debounce", "decides when the job runs; give no --at or --in with it")
    if debounce_max is not None and debounce is None:
        raise BadOption("--debounce-max", "only with --debounce")
    if debounce_max is not None and debounce is not None and debounce_max < debounce:
        raise BadOption("--debounce-max", "must be at least --debounce")
    if mode is None and debounce is None:
        return {"unique_key": unique}
    return {"unique": "while_active" if mode else None, "unique_key": key, "debounce": debounce,
            "debounce_max": debounce_max}


async def _warn_if_unserved(client: Client, job_id: str) -> None:
    """A job on a queue no live worker serves waits, silently, until one does: say so (stderr)."""
    try:
        rec = await client.get(job_id)
        workers = await client.workers()
    except Exception as exc:  # the warning is a courtesy; the job is submitted either way
        log.debug("could not check the queue's workers: %s", exc)
        return
    if any(rec.spec.queue in w.queues for w in workers):
        return
    served = sorted({q for w in workers for q in w.queues})
    typer.echo(f"warning: no live worker serves queue {rec.spec.queue!r}"
               + (f" (served: {', '.join(served)})" if served else " (no worker is running)")
               + "; the job waits until one does", err=True)


def _parse_args(text: str) -> Any:
    """--args JSON; text that is not UTF-8 (the shell passed raw bytes) or nested too deeply is a
    usage error like any bad JSON, never a traceback."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise BadOption("--args", "is not valid UTF-8 text") from None
    try:
        return parse_json(text, "--args")
    except RecursionError:
        raise BadOption("--args", "JSON nested too deeply") from None


class _WaitTimedOut(ChronosError):
    def __init__(self, record: JobRecord) -> None:
        super().__init__(record.id)
        self.record = record


def _print_submitted(rec: JobRecord, as_json: bool, *, waited: bool, outcome: str = "created") -> None:
    if as_json:
        # The record, plus what the submit did when a unique or debounce key was held (docs/unique-jobs.md).
        out.print_json(rec if outcome == "created" else {**out.plain(rec), "outcome": outcome})
        return
    if not waited:
        extra = f", runs {out.when(rec.spec.run_at)}" if rec.state == JobState.SCHEDULED and rec.spec.run_at else ""
        if rec.spec.run_at is not None and rec.state != JobState.SCHEDULED and rec.spec.run_at <= rec.created_at:
            # --at in the past, --in 0 or a debounce shorter than the submit: not always an --at.
            extra = f"; its run time {out.when(rec.spec.run_at, full=True)} has passed, so it runs now"
        typer.echo(f"{_SUBMITTED.get(outcome, 'submitted')} {rec.id} ({out.cell(rec.spec.task, 80)} on "
                   f"{rec.spec.queue}/{rec.spec.priority}: {rec.state}{extra})")
        return
    line = f"job {rec.id} {rec.state} on {out.attempt_text(rec.attempt, rec.spec.max_attempts)}"
    if rec.state == JobState.COMPLETED:
        typer.echo(f"{line}; result: {out.compact_json(rec.result, 200)}")
    else:
        typer.echo(f"{line}: {rec.error or ''}".rstrip(": "))


# --- list / get ---------------------------------------------------------------------------------------------
@app.command("list")
def list_jobs(
    ctx: typer.Context,
    state_: Annotated[
        Optional[str], typer.Option("--state", help="Only jobs in this state ('failed' = retryable+discarded).",
                                    autocompletion=_complete_state)
    ] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", "-q", help="Only this queue.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Only this task.")] = None,
    tag: Annotated[Optional[str], typer.Option("--tag", "-t", help="Only jobs with this tag.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-l", min=1, help="At most this many.")] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many (newest first).")] = 0,
    cursor: Annotated[Optional[str], typer.Option("--cursor", help="Start where a listing's 'next' says.")] = None,
    since: Annotated[
        Optional[str], typer.Option("--since", help="Created at or after: a duration ago (2h, 1d) or an ISO time.")
    ] = None,
    until: Annotated[
        Optional[str], typer.Option("--until", help="Created before: a duration ago (30m) or an ISO time.")
    ] = None,
    where: WhereOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    from chronos.readmodel import parse_cursor

    from ._parse import parse_time_or_ago

    st = state(ctx)
    if state_ is not None and state_ not in STATE_CHOICES:
        raise BadOption("--state", f"{state_!r} is not one of {', '.join(STATE_CHOICES)}")
    now = time.time()
    since_at = parse_time_or_ago(since, "--since", now) if since is not None else None
    until_at = parse_time_or_ago(until, "--until", now) if until is not None else None
    if since_at is not None and until_at is not None and since_at >= until_at:
        raise BadOption("--since", "must be earlier than --until")
    if cursor is not None:
        if cursor.isdigit():  # an offset (as older versions printed)
            offset, cursor = int(cursor), None
        else:
            try:
                parse_cursor(cursor)  # "<created_at>:<id>": the next page starts after that job
            except ChronosError:
                raise BadOption("--cursor", f"{cursor!r} is not a cursor of `jobs list` (a 'next' value it printed)") from None
    states = [s.value for s in FAILED_STATES] if state_ == "failed" else None
    wheres = _parse_where(where)

    async def go(client: Client) -> Any:
        return await client.list(state=None if state_ == "failed" else state_, states=states, queue=queue, task=task,
                                 tag=tag, since=since_at, until=until_at, offset=offset, limit=limit, cursor=cursor,
                                 where=wheres)

    page = run_client(st, go, ensure=False)
    jobs, total = page.jobs, page.total
    of = f"{total}" if page.exact else f"{total}+"
    if wants_json(ctx, json_):
        out.print_listing(jobs, page.next)
        return
    stopped = bool(wheres) and page.next is not None and len(jobs) < limit
    if not jobs:
        if stopped:
            typer.echo(f"no matches yet (the search stopped at its time budget); more: --cursor {page.next}")
            return
        typer.echo("no jobs" if total == 0 else f"no jobs at offset {offset} ({of} in all)")
        return
    t = out.table("ID", "TASK", "STATE", "QUEUE", "PRIORITY", "ATTEMPT", "CREATED", "NEXT/ENDED", "ERROR")
    for rec in jobs:
        nxt = rec.finished_at if rec.finished_at else (rec.scheduled_at if rec.state in (JobState.SCHEDULED, JobState.RETRYABLE) else None)
        t.add_row(rec.id, out.cell(rec.spec.task), rec.state.value, out.cell(rec.spec.queue), rec.spec.priority,
                  out.attempt_text(rec.attempt, rec.spec.max_attempts).removeprefix("attempt "),
                  out.when(rec.created_at, now), out.when(nxt, now), out.cell(out.short(rec.error, 40)))
    out.print_table(t)
    shown = f"{len(jobs)} more" if cursor is not None else f"{offset + 1}-{offset + len(jobs)}"
    typer.echo(f"{shown} of {of}" + ("; the search stopped at its time budget, more may match" if stopped else "")
               + (f"; next: --cursor {page.next}" if page.next else ""))


@app.command("get")
def get(ctx: typer.Context, job_id: JobId, json_: JsonOpt = False) -> None:
    """Show one job: spec, state, every attempt with its traceback, result or error."""
    st = state(ctx)

    async def go(client: Client) -> JobRecord:
        return await client.get(await client.resolve_job_id(job_id))

    rec = run_client(st, go, ensure=False)
    if wants_json(ctx, json_):
        out.print_json(rec)
        return
    print_job(rec)


def print_job(rec: JobRecord) -> None:
    now = time.time()
    spec = rec.spec
    took = None
    if rec.finished_at and rec.attempts and rec.attempts[-1].ended_at:
        took = out.human_duration(rec.attempts[-1].ended_at - rec.attempts[-1].started_at)
    rows = [
        ("job", rec.id),
        ("task", spec.task),
        ("state", rec.state.value + (" (cancel requested)" if rec.cancel_requested else "")),
        ("queue", f"{spec.queue} / {spec.priority}"),
        ("args", out.compact_json(spec.args, 400)),
        ("attempts", out.attempt_text(rec.attempt, spec.max_attempts) if rec.attempt else f"none yet (of {spec.max_attempts})"),
        ("created", out.when(rec.created_at, now, full=True)),
        ("run at", out.when(spec.run_at, now, full=True)),
        ("next run" if rec.state in (JobState.SCHEDULED, JobState.RETRYABLE) else "scheduled",
         out.when(rec.scheduled_at, now, full=True)),
        ("finished", out.when(rec.finished_at, now, full=True) + (f", last attempt took {took}" if took else "")),
        ("timeout", out.human_duration(spec.timeout) if spec.timeout else None),
        ("worker", rec.worker),
        ("unique key", spec.unique_key),
        ("unique", _unique_text(spec)),
        ("progress", out.progress_text(rec.progress, now) if rec.progress else None),
        ("tags", ", ".join(spec.tags)),
        ("schedule", rec.schedule_id),
        ("result", (out.compact_json(rec.result, 2000) + (" (truncated)" if rec.result_truncated else ""))
         if rec.state == JobState.COMPLETED else None),
        ("error", rec.error),
    ]
    c = out.console()
    c.print(out.key_values(rows))
    if rec.attempts:
        t = out.table("#", "STARTED", "ENDED", "OUTCOME", "WORKER", "ERROR", title=None)
        for a in rec.attempts:
            t.add_row(str(a.number), out.when(a.started_at, now), out.when(a.ended_at, now), a.outcome or "running",
                      out.cell(a.worker), out.cell(out.short(a.error, 60)))
        c.print()
        c.print(t)
        for a in rec.attempts:
            if a.traceback or a.error:
                c.print()
                c.print(f"[bold]attempt {a.number}[/bold] ({a.outcome or 'running'}):")
                c.print(out.block(a.traceback or a.error or ""))


def _unique_text(spec: Any) -> str | None:
    u = spec.unique
    if u is None:
        return None
    key = "by args" if u.key.startswith("args:") else u.key
    if u.mode == "debounce":
        return f"debounce {out.human_duration(u.debounce)} (at most {out.human_duration(u.max_wait)}), key {key}"
    return f"while active, key {key}"


# --- cancel / retry / run-now -------------------------------------------------------------------------------
@app.command("cancel")
def cancel(
    ctx: typer.Context,
    job_id: OptJobId = None,
    reason: Annotated[str, typer.Option("--reason", help="Recorded on the job.")] = "cancelled by operator",
    all_: AllOpt = False,
    where: WhereOpt = None,
    state_: BulkStateOpt = None,
    queue: BulkQueueOpt = None,
    task: BulkTaskOpt = None,
    tag: BulkTagOpt = None,
    since: BulkSinceOpt = None,
    until: BulkUntilOpt = None,
    everything: EverythingOpt = False,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Cancel a job: a waiting job at once, a running one by signalling its task. With --all: every match."""
    from ._bulk import BulkFilters, run_bulk

    filters = BulkFilters(where, state_, queue, task, tag, since, until)
    if job_id is None or all_ or filters.given():
        run_bulk(ctx, "cancel", job_id, all_, filters, everything=everything, dry_run=dry_run, yes=yes,
                 json_=json_, reason=reason)
        return
    rec = _act(ctx, job_id, lambda c, jid: c.cancel(jid, reason))
    _print_changed(ctx, rec, json_, "cancel requested (the task is signalled)" if rec.state == JobState.RUNNING else "cancelled")


@app.command("retry")
def retry(
    ctx: typer.Context,
    job_id: OptJobId = None,
    all_: AllOpt = False,
    where: WhereOpt = None,
    state_: BulkStateOpt = None,
    queue: BulkQueueOpt = None,
    task: BulkTaskOpt = None,
    tag: BulkTagOpt = None,
    since: BulkSinceOpt = None,
    until: BulkUntilOpt = None,
    everything: EverythingOpt = False,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run a retryable, cancelled or discarded job again now, with a fresh attempt budget. With --all: every match."""
    from ._bulk import BulkFilters, run_bulk

    filters = BulkFilters(where, state_, queue, task, tag, since, until)
    if job_id is None or all_ or filters.given():
        run_bulk(ctx, "retry", job_id, all_, filters, everything=everything, dry_run=dry_run, yes=yes, json_=json_)
        return
    rec = _act(ctx, job_id, lambda c, jid: c.retry(jid), revives=True)
    _print_changed(ctx, rec, json_, "queued again")


@app.command("run-now")
def run_now(ctx: typer.Context, job_id: JobId, json_: JsonOpt = False) -> None:
    """Run a scheduled job now (a finished one is retried)."""
    rec = _act(ctx, job_id, lambda c, jid: c.run_now(jid), revives=True)
    _print_changed(ctx, rec, json_, "queued to run now")


def _act(ctx: typer.Context, ref: str, action: Any, *, revives: bool = False) -> JobRecord:
    """Resolve an id prefix, run ``action(client, job_id)``; a refusal by the job's state is a conflict.

    A job that runs again (``revives``) is not dead any more: its DLQ entries go, so a job
    that fails again keeps one live entry, not one per failure.
    """

    async def go(client: Client) -> JobRecord:
        job_id = await client.resolve_job_id(ref)
        was_discarded = revives and (await client.get(job_id)).state == JobState.DISCARDED
        # Read before the job runs again: a new failure's entry must stay.
        dead = await client.dlq_sequences(job_id) if was_discarded else []
        try:
            rec = await action(client, job_id)
        except ChronosError as exc:
            if type(exc) is ChronosError:  # the Client's "job X is completed; ..." refusals
                raise StateConflict(str(exc)) from None
            raise
        if dead:
            await client.dlq_forget(rec.id, dead)
        return rec

    return run_client(state(ctx), go, ensure=False)


def _print_changed(ctx: typer.Context, rec: JobRecord, json_: bool, what: str) -> None:
    if wants_json(ctx, json_):
        out.print_json(rec)
    else:
        typer.echo(f"job {rec.id}: {what} (state {rec.state})")
