"""Bulk actions for `jobs cancel|retry --all` and `dlq replay --where`: count, confirm, act, report.

The order is fixed: every option is checked first (one line, exit 2, nothing sent); then the
matches are counted (a dry run stops here); then the operator confirms (``--yes`` skips it; with
no terminal to ask and no ``--yes`` the command refuses); then the action runs with a Rich bar on
a terminal, plain progress lines on stderr otherwise, and ends with one summary line (or the
``--json`` report). Ctrl-C stops starting new actions; those in flight finish and the summary
says how far it got (exit 130); running the same command again resumes. The connection to NATS
lost for a few seconds mid-run ends it the same way: the summary so far, one line naming the lost
connection, exit 3 (unreachable); actions in flight then are counted ``unknown`` and a re-run
finds each as it is. One action without a reply for 30 s is counted failed, not waited on.

Safety: ``--all`` needs at least one filter; ``--all --everything`` is the explicit way to act
on every job. Without ``--state``, cancel acts on unfinished jobs only and retry on retryable,
cancelled and discarded ones (what the single actions accept), so the count is what will change.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chronos.client import Client
from chronos.clientapi.bulk import Bulk, BulkReport, describe_query
from chronos.errors import ChronosError
from chronos.states import RETRIABLE_BY_HAND, TERMINAL, JobState

from . import _output as out
from ._parse import BadOption
from ._shared import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_UNREACHABLE, run_client, state, wants_json

CANCELLABLE = tuple(s.value for s in JobState if s not in TERMINAL)
RETRIABLE = tuple(s.value for s in JobState if s in RETRIABLE_BY_HAND)


@dataclass
class BulkFilters:
    where: Optional[list[str]]
    state: Optional[str]
    queue: Optional[str]
    task: Optional[str]
    tag: Optional[str]
    since: Optional[str]
    until: Optional[str]

    def given(self) -> bool:
        return any(v for v in (self.where, self.state, self.queue, self.task, self.tag, self.since, self.until))


def _query(client: Client, action: str, f: BulkFilters, where: list[str], since: float | None,
           until: float | None) -> Any:
    allowed = CANCELLABLE if action == "cancel" else RETRIABLE
    states: list[str]
    if f.state == "failed":
        states = [s for s in ("retryable", "discarded") if s in allowed]
    elif f.state is not None:
        states = [f.state]
    else:
        states = list(allowed)
    return client.jobs.query(states=states, queue=f.queue, task=f.task, tag=f.tag, since=since, until=until,
                             where=where, limit=1)


STATE_CHOICES = (*(s.value for s in JobState), "failed")


def parse_where(where: Optional[list[str]]) -> list[str]:
    """Each --where checked here (one line, exit 2, nothing sent); the checked texts travel."""
    from chronos.where import parse_all

    try:
        return [w.text for w in parse_all(where)]
    except ChronosError as exc:
        raise BadOption("--where", str(exc).removeprefix("--where ")) from None


def check(action: str, job_id: Optional[str], all_: bool, f: BulkFilters,
          everything: bool) -> tuple[list[str], float | None, float | None]:
    """Every refusal before anything is sent: (where texts, since, until)."""
    from ._parse import parse_time_or_ago

    if job_id is not None:
        raise BadOption("--all", f"give a JOB_ID or --all with filters, not both (got {job_id!r})")
    if not all_:
        raise BadOption("--all", f"filters select jobs for --all: `{action} --all --where ...` (or give a JOB_ID)")
    if not f.given() and not everything:
        raise BadOption("--all", "needs a filter (--where, --state, --queue, --task, --tag, --since, --until); "
                                 "--all --everything acts on every job")
    allowed = CANCELLABLE if action == "cancel" else RETRIABLE
    if f.state is not None:
        if f.state not in STATE_CHOICES:
            raise BadOption("--state", f"{f.state!r} is not one of {', '.join(STATE_CHOICES)}")
        if f.state != "failed" and f.state not in allowed:
            raise BadOption("--state", f"{f.state} jobs cannot be {'cancelled' if action == 'cancel' else 'retried'} "
                                       f"(one of {', '.join(allowed)})")
    where = parse_where(f.where)
    now = time.time()
    since = parse_time_or_ago(f.since, "--since", now) if f.since is not None else None
    until = parse_time_or_ago(f.until, "--until", now) if f.until is not None else None
    if since is not None and until is not None and since >= until:
        raise BadOption("--since", "must be earlier than --until")
    return where, since, until


def run_bulk(ctx: typer.Context, action: str, job_id: Optional[str], all_: bool, f: BulkFilters, *,
             everything: bool, dry_run: bool, yes: bool, json_: bool, reason: str | None = None) -> None:
    st = state(ctx)
    as_json = wants_json(ctx, json_)
    where, since, until = check(action, job_id, all_, f, everything)

    async def count(client: Client) -> tuple[str, int, bool]:
        q = _query(client, action, f, where, since, until)
        n, complete = await Bulk.of(client).count(q)
        return describe_query(q), n, complete

    what, n, complete = run_client(st, count, ensure=False)
    counted = f"{n}" if complete else f"at least {n}"
    verb = "cancel" if action == "cancel" else "retry"
    if dry_run or n == 0:
        if as_json:
            out.print_json(BulkReport(action=action, filter=what, matched=n, dry_run=True))
        elif n == 0:
            typer.echo(f"nothing matches ({what})")
        else:
            typer.echo(f"{counted} job{'s' if n != 1 else ''} match ({what}); nothing changed (dry run)")
        return
    confirm(f"{verb.capitalize()} {counted} job{'s' if n != 1 else ''} matching {what}?", yes)

    async def go(client: Client) -> BulkReport:
        q = _query(client, action, f, where, since, until)
        bulk = Bulk.of(client)
        with Reporter(verb, n, as_json) as rep, ctrl_c() as stop:
            if action == "cancel":
                report = await bulk.cancel_all(q, matched=n, reason=reason or "cancelled by operator",
                                               progress=rep.update, stop=stop)
                return await _after(client, report)
            report = await bulk.retry_all(q, matched=n, progress=rep.update, stop=stop)
        return await _after(client, report)

    finish(_run_reporting(st, go, as_json), as_json)


def _run_reporting(st: Any, go: Any, as_json: bool) -> BulkReport:
    """run_client; an error that cut the run short (the job index stopped answering) still
    prints the summary so far before its own line, and the exit code of its kind."""
    try:
        report: BulkReport = run_client(st, go, ensure=False)
        return report
    except ChronosError as exc:
        partial = getattr(exc, "bulk_report", None) or getattr(exc.__cause__, "bulk_report", None)
        if isinstance(partial, BulkReport) and as_json:
            out.print_json(partial)
        elif isinstance(partial, BulkReport):
            typer.echo(_summary(partial) + "; stopped early (run the same command again to resume)")
        raise


def _summary(report: BulkReport) -> str:
    return (f"{report.action}: {report.matched} matched, {report.done} done, {report.skipped} skipped, "
            f"{report.failed} failed in {report.seconds:.1f} s")


async def _after(client: Client, report: BulkReport) -> BulkReport:
    """The connection lost: close it now, bounded (a drain would wait on a server that is gone)."""
    if report.lost:
        nc = client.conn.nc
        closing = asyncio.ensure_future(nc.close())
        # Its error (nats-py flushing into the dead socket) is read, not shown: the lost line says it.
        closing.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.wait({closing}, timeout=2.0)
        if not closing.done():
            closing.cancel()
    return report


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise BadOption("--yes", "no terminal to confirm on; add --yes to act without asking")
    typer.confirm(question, abort=True, err=True)


def finish(report: BulkReport, as_json: bool) -> None:
    if as_json:
        out.print_json(report)
    else:
        line = _summary(report)
        if report.interrupted:
            line += "; interrupted (run the same command again to resume)"
        if report.unknown:
            line += f"; {report.unknown} in flight when the connection was lost"
        typer.echo(line)
        for e in report.errors:
            typer.echo(f"error: {e.job_id}: {e.error}", err=True)
    if report.lost:  # last, so it is the line an operator (or a script's tail) sees
        typer.echo(f"error: {report.lost}; run the same command again to finish", err=True)
        raise typer.Exit(EXIT_UNREACHABLE)
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


class ctrl_c:
    """Within it, the first Ctrl-C sets the returned event (no new actions; in-flight ones finish),
    a second one cancels the command."""

    def __enter__(self) -> asyncio.Event:
        self.stop = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        try:
            self.loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            self.installed = True
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests) or no signals
            self.installed = False
        return self.stop

    def _on_sigint(self) -> None:
        if self.stop.is_set() and self.task is not None:
            self.task.cancel()
            return
        typer.echo("stopping after the actions in flight (Ctrl-C again to quit now)", err=True)
        self.stop.set()

    def __exit__(self, *exc: Any) -> None:
        if self.installed:
            self.loop.remove_signal_handler(signal.SIGINT)


class Reporter:
    """A Rich bar on a terminal; otherwise a plain line on stderr every 10 % (and at the end)."""

    def __init__(self, verb: str, total: int, quiet_bar: bool) -> None:
        self.verb = verb
        self.total = max(total, 1)
        self.tty = sys.stderr.isatty() and not quiet_bar
        self.step = max(1, self.total // 10)
        self.next_line = self.step
        self.progress: Progress | None = None

    def __enter__(self) -> Reporter:
        if self.tty:
            self.progress = Progress(TextColumn(f"{self.verb}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                                     console=out.console(stderr=True), transient=True)
            self.progress.start()
            self.bar = self.progress.add_task(self.verb, total=self.total, counts="")
        return self

    def update(self, r: BulkReport) -> None:
        n = r.handled
        if self.progress is not None:
            self.progress.update(self.bar, completed=n, total=max(self.total, n),
                                 counts=f"skipped {r.skipped} failed {r.failed}")
            return
        if n >= self.next_line:
            self.next_line = (n // self.step + 1) * self.step
            typer.echo(f"{self.verb}: {n}/{self.total} (done {r.done}, skipped {r.skipped}, failed {r.failed})",
                       err=True)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()


def run_dlq_replay(ctx: typer.Context, where: list[str], task: Optional[str], queue: Optional[str], *,
                   dry_run: bool, yes: bool, json_: bool) -> None:
    """`dlq replay --where ...`: the DLQ's live entries whose spec matches, replayed in bulk."""
    st = state(ctx)
    as_json = wants_json(ctx, json_)
    what = " AND ".join([*([f"task={task}"] if task else []), *([f"queue={queue}"] if queue else []), *where])

    async def count(client: Client) -> int:
        return len(await Bulk.of(client).dlq_matches(where=where, task=task, queue=queue))

    n = run_client(st, count, ensure=False)
    if dry_run or n == 0:
        if as_json:
            out.print_json(BulkReport(action="dlq_replay", filter=what, matched=n, dry_run=True))
        elif n == 0:
            typer.echo(f"no DLQ entries match ({what})")
        else:
            typer.echo(f"{n} DLQ entr{'y' if n == 1 else 'ies'} match ({what}); nothing replayed (dry run)")
        return
    confirm(f"Replay {n} DLQ entr{'y' if n == 1 else 'ies'} matching {what}?", yes)

    async def go(client: Client) -> BulkReport:
        bulk = Bulk.of(client)
        entries = await bulk.dlq_matches(where=where, task=task, queue=queue)
        with Reporter("replay", len(entries), as_json) as rep, ctrl_c() as stop:
            report = await bulk.replay_all(entries, filter_text=what, progress=rep.update, stop=stop)
        return await _after(client, report)

    finish(_run_reporting(st, go, as_json), as_json)
