"""`chronos logs`, `chronos history` and `chronos workers`: what is happening and who is doing it."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from chronos.client import Client
from chronos.errors import NotFoundError
from chronos.events import event_summary
from chronos.models import Event, WorkerHeartbeat
from chronos.states import JobState

from . import _output as out
from ._parse import BadOption, parse_duration, parse_time_or_ago
from ._shared import JsonOpt, event_history, run_client, state, wants_json

# `--state failed` is shorthand for the states a failing attempt leads to.
STATE_ALIASES = {"failed": ("retryable", "discarded")}


def _audit_log(ctx: typer.Context, since: Optional[str], as_json: bool) -> None:
    """`chronos logs --audit`: the audit stream (chronos/audit.py), oldest first; the last 100 or --since."""
    from chronos import audit

    st = state(ctx)
    start = time.time() - parse_duration(since, "--since") if since is not None else None
    entries = run_client(st, lambda c: audit.read(c.conn, limit=100 if start is None else 1_000_000, since=start),
                         ensure=False)  # a read: never creates streams
    if as_json:
        out.print_listing(entries)
        return
    for e in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
        detail = " ".join(f"{k}={v}" for k, v in (e.detail or {}).items())
        typer.echo(f"{stamp}  {audit.role_label(e):<10} {e.user:<12} {e.action:<16} {e.target}"
                   + (f"  {detail}" if detail else ""))
    if not entries:
        typer.echo("no operator actions recorded" + (f" in the last {since}" if since else ""), err=True)


def _complete_state(incomplete: str) -> list[str]:
    return [s for s in [*(s.value for s in JobState), *STATE_ALIASES] if s.startswith(incomplete)]


def logs(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Print live events as they happen (from now on, "
                                                            "or from --since).")] = False,
    job: Annotated[Optional[str], typer.Option("--job", help="Only this job's events (an id or a unique prefix).")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Only this task's events.")] = None,
    state_: Annotated[
        Optional[list[str]],
        typer.Option("--state", help="Only events into this state (repeatable; 'failed' = retryable+discarded).",
                     autocompletion=_complete_state),
    ] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", "-q", help="Only this queue.")] = None,
    since: Annotated[
        Optional[str], typer.Option("--since", help="Start this far back: 10m, 2h (default 10m; with --follow, live only).")
    ] = None,
    json_: JsonOpt = False,
    audit: Annotated[bool, typer.Option("--audit", help="Operator actions instead (retry, cancel, purge, schedule "
                                                      "changes): who, as which role, what, when.")] = False,
) -> None:
    """Job lifecycle events: the last 10 minutes, or live with --follow (add --since for a backlog first)."""
    st = state(ctx)
    if audit:
        _audit_log(ctx, since, wants_json(ctx, json_))
        return
    kinds: list[str] = []
    for s in state_ or []:
        if s in STATE_ALIASES:
            kinds.extend(STATE_ALIASES[s])
        elif s in {x.value for x in JobState}:
            kinds.append(s)
        else:
            raise BadOption("--state", f"{s!r} is not one of {', '.join([*(x.value for x in JobState), *STATE_ALIASES])}")
    window = parse_duration(since, "--since") if since is not None else (0.0 if follow else DEFAULT_SINCE)
    if not follow and window <= 0:
        raise BadOption("--since", "must be more than zero without --follow")
    as_json = wants_json(ctx, json_)
    listed: list[Event] = []

    def show(ev: Event) -> None:
        if task is not None and ev.task != task:
            return
        if not follow and as_json:
            listed.append(ev)  # a finite listing: one envelope at the end
        elif as_json:
            out.print_json_line(ev)  # a stream: one JSON object per line
        else:
            typer.echo(format_event(ev))

    async def go(client: Client) -> None:
        job_id = await _job_for_events(client, job) if job is not None else None
        opts = dict(kinds=kinds or None, queue=queue, job_id=job_id)
        if follow:
            async for ev in client.watch(**opts, history=window or None):
                show(ev)
        else:
            async for ev in event_history(client, since=window, **opts):
                show(ev)

    run_client(st, go, ensure=False)
    if not follow and as_json:
        out.print_listing(listed)


async def _job_for_events(client: Client, ref: str) -> str:
    """A full id or a unique prefix; a full id whose record was pruned still has its events."""
    try:
        return await client.resolve_job_id(ref)
    except NotFoundError:
        if len(ref) >= 26:
            return ref
        raise


# What `chronos logs` shows without --since and without --follow.
DEFAULT_SINCE = 600.0


def format_event(ev: Event) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(ev.at)) + f".{int(ev.at * 1000) % 1000:03d}"
    return f"{stamp} {ev.kind:<10} {event_summary(ev, error_width=120, took=out.human_duration)}".rstrip()


TERMINAL_STATES = ("completed", "cancelled", "discarded")


def _complete_terminal(incomplete: str) -> list[str]:
    return [s for s in TERMINAL_STATES if s.startswith(incomplete)]


def history(
    ctx: typer.Context,
    task: Annotated[Optional[str], typer.Option("--task", help="Only this task.")] = None,
    state_: Annotated[
        Optional[str],
        typer.Option("--state", help=f"Only this final state: {', '.join(TERMINAL_STATES)}.",
                     autocompletion=_complete_terminal),
    ] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", "-q", help="Only this queue.")] = None,
    since: Annotated[
        Optional[str], typer.Option("--since", help="Finished at or after: a duration ago (2h, 1d) or an ISO time.")
    ] = None,
    until: Annotated[
        Optional[str], typer.Option("--until", help="Finished before: a duration ago (30m) or an ISO time.")
    ] = None,
    grep: Annotated[
        Optional[str], typer.Option("--grep", "-g", help="Text in the error or a traceback (case-insensitive).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-l", min=1, max=10_000, help="At most this many.")] = 50,
    cursor: Annotated[Optional[str], typer.Option("--cursor", help="Start where a listing's 'next' says.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Finished jobs from the schedulers' archive, newest first (works from any machine)."""
    st = state(ctx)
    if state_ is not None and state_ not in TERMINAL_STATES:
        raise BadOption("--state", f"{state_!r} is not one of {', '.join(TERMINAL_STATES)} (the archive holds finished jobs)")
    if grep is not None and not grep:
        raise BadOption("--grep", "must not be empty")
    now = time.time()
    since_at = parse_time_or_ago(since, "--since", now) if since is not None else None
    until_at = parse_time_or_ago(until, "--until", now) if until is not None else None
    if since_at is not None and until_at is not None and since_at >= until_at:
        raise BadOption("--since", "must be earlier than --until")
    keyset = None
    if cursor is not None:
        # "<finished_at>:<id>" (a keyset: jobs that finished at the same moment are not skipped);
        # a bare time is an older cursor, read as --until.
        from chronos.errors import ChronosError
        from chronos.readmodel import parse_cursor

        try:
            if ":" in cursor:
                parse_cursor(cursor)
                keyset = cursor
            else:
                until_at = float(cursor)
        except (ValueError, ChronosError):
            raise BadOption("--cursor", f"{cursor!r} is not a cursor of `history` (a 'next' value it printed)") from None
    rows = run_client(st, lambda c: c.history(task=task, state=state_, queue=queue, since=since_at, until=until_at,
                                              text=grep, limit=limit, cursor=keyset), ensure=False)
    # A full page may have more behind it: the next page starts after its last row.
    from chronos.archive import history_cursor

    next_cursor = history_cursor(rows, limit)
    if wants_json(ctx, json_):
        out.print_listing(rows, next_cursor)
        return
    if not rows:
        typer.echo("no finished jobs match")
        return
    t = out.table("ID", "TASK", "STATE", "QUEUE", "ATTEMPT", "FINISHED", "TOOK", "ERROR")
    for rec in rows:
        started = rec.attempts[0].started_at if rec.attempts else None
        took = out.human_duration(rec.finished_at - started) if started and rec.finished_at else ""
        t.add_row(rec.id, out.cell(rec.spec.task), rec.state.value, out.cell(rec.spec.queue),
                  out.attempt_text(rec.attempt, rec.spec.max_attempts).removeprefix("attempt "),
                  out.when(rec.finished_at, now), took,
                  out.cell(out.short(rec.error, 60)))
    out.print_table(t)
    typer.echo(f"{len(rows)} job(s)" + (f"; next: --cursor {next_cursor}" if next_cursor else ""))


def workers(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Live workers: heartbeats, slots, current jobs."""
    st = state(ctx)
    beats = run_client(st, lambda c: c.workers(), ensure=False)
    if wants_json(ctx, json_):
        out.print_listing(beats)
        return
    if not beats:
        typer.echo("no workers")
        return
    now = time.time()
    stale_after = stale_threshold(st.settings.worker.heartbeat_interval)
    t = out.table("ID", "HOST", "PID", "QUEUES", "SLOTS", "RUNNING", "DONE", "FAILED", "STATE", "HEARTBEAT")
    for w in beats:
        alive = now - w.heartbeat_at <= stale_after
        t.add_row(w.id, out.cell(w.host), str(w.pid), out.cell(",".join(w.queues)), f"{w.slots_used}/{w.slots_total}"
                  + (f" +{w.stuck_threads} stuck" if w.stuck_threads else ""),
                  out.cell(", ".join(f"{r.id} ({r.task})" for r in w.running[:3]) + (" …" if len(w.running) > 3 else "")),
                  str(w.processed), str(w.failed), w.state if alive else "stale", out.when(w.heartbeat_at, now))
    out.print_table(t)


def stale_threshold(heartbeat_interval: float) -> float:
    """A worker whose last heartbeat is older than this is presumed gone."""
    return max(3 * heartbeat_interval, 10.0)


def live_workers(beats: list[WorkerHeartbeat], heartbeat_interval: float, now: float | None = None) -> list[WorkerHeartbeat]:
    now = time.time() if now is None else now
    limit = stale_threshold(heartbeat_interval)
    return [w for w in beats if now - w.heartbeat_at <= limit]
