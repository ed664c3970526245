"""`chronos dlq list|show|replay|purge`: jobs that ran out of attempts or could not run."""

from __future__ import annotations

import time
from typing import Annotated, Any, Optional

import msgspec
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chronos.client import Client
from chronos.errors import ChronosError
from chronos.models import DLQEntry, JobRecord

from . import _output as out
from ._parse import BadOption
from ._shared import JsonOpt, YesOpt, run_client, state, wants_json

app = typer.Typer(help="Inspect, replay and purge the dead-letter queue.", no_args_is_help=True)

Ref = Annotated[str, typer.Argument(help="DLQ sequence number, or a job id (or a unique prefix of one).",
                                    show_default=False)]


class ReplayFailure(msgspec.Struct):
    seq: int
    job_id: str | None
    error: str


class ReplayReport(msgspec.Struct):
    """JSON of `dlq replay`: job ids replayed, and entries that could not be."""

    replayed: list[str]
    failed: list[ReplayFailure]


class PurgeReport(msgspec.Struct):
    purged: int


@app.command("list")
def list_entries(
    ctx: typer.Context,
    task: Annotated[Optional[str], typer.Option("--task", help="Only this task.")] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", "-q", help="Only this queue.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-l", min=1, help="At most this many.")] = 100,
    cursor: Annotated[Optional[str], typer.Option("--cursor", help="Start where a listing's 'next' says.")] = None,
    json_: JsonOpt = False,
) -> None:
    """List DLQ entries, oldest first: one per job (the newest, when a job failed again after a retry)."""
    if cursor is not None and not cursor.isdigit():
        raise BadOption("--cursor", f"{cursor!r} is not a cursor of `dlq list` (a 'next' value it printed)")
    after = int(cursor) if cursor is not None else 0
    # One more than asked tells whether there is a next page.
    entries = run_client(state(ctx), lambda c: c.dlq_list(task=task, queue=queue, limit=limit + 1, after=after),
                         ensure=False)
    more = len(entries) > limit
    entries = entries[:limit]
    if wants_json(ctx, json_):
        out.print_listing(entries, entries[-1].seq if more else None)
        return
    if not entries:
        typer.echo("the DLQ is empty" if task is None and queue is None and cursor is None else "no matching DLQ entries")
        return
    now = time.time()
    t = out.table("SEQ", "JOB", "TASK", "QUEUE", "ATTEMPTS", "AT", "REASON")
    for e in entries:
        t.add_row(str(e.seq), e.job_id or "-", out.cell(e.spec.task if e.spec else "?"),
                  out.cell(e.spec.queue if e.spec else _queue_of(e)),
                  f"{e.attempts} of {e.spec.max_attempts}" if e.spec else str(e.attempts), out.when(e.at, now),
                  out.cell(out.short(e.reason, 60)))
    out.print_table(t)
    typer.echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
               + (f"; next: --cursor {entries[-1].seq}" if more else "")
               + "; replay with: chronos dlq replay SEQ|JOB_ID")


def _queue_of(e: DLQEntry) -> str:
    return e.subject.rsplit(".", 1)[-1] if e.subject else "?"


@app.command("show")
def show(ctx: typer.Context, ref: Ref, json_: JsonOpt = False) -> None:
    """Show one DLQ entry with its reason and traceback."""
    entry = run_client(state(ctx), lambda c: c.dlq_get(_ref(ref)), ensure=False)
    if wants_json(ctx, json_):
        out.print_json(entry)
        return
    spec = entry.spec
    rows: list[tuple[str, Any]] = [
        ("seq", entry.seq),
        ("job", entry.job_id),
        ("task", spec.task if spec else None),
        ("queue", f"{spec.queue} / {spec.priority}" if spec else _queue_of(entry)),
        ("args", out.compact_json(spec.args, 400) if spec else None),
        ("attempts", out.attempt_text(entry.attempts, spec.max_attempts) if spec else entry.attempts),
        ("at", out.when(entry.at, full=True)),
        ("reason", entry.reason),
        ("raw bytes", len(entry.raw) if entry.raw else None),
    ]
    c = out.console()
    c.print(out.key_values(rows))
    if entry.traceback:
        c.print()
        c.print(out.block(entry.traceback))


@app.command("replay")
def replay(
    ctx: typer.Context,
    ref: Annotated[Optional[str], typer.Argument(help="DLQ sequence number or job id.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every entry.")] = False,
    task: Annotated[Optional[str], typer.Option("--task", help="Replay every entry of this task.")] = None,
    where: Annotated[Optional[list[str]], typer.Option(
        "--where", help="Entries whose job args/annotations match (as `jobs list --where`); asks first.")] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", "-q", help="With --where: only this queue.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --where: count the matches only.")] = False,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run DLQ'd jobs again: one (REF), all of them (--all), one task's (--task), or the matches of --where."""
    st = state(ctx)
    if where or queue is not None or dry_run:
        from ._bulk import parse_where, run_dlq_replay

        if ref is not None:
            raise BadOption("--where", "give a SEQ or JOB_ID, or --where filters, not both")
        if not where:
            raise BadOption("--where", "--queue and --dry-run go with --where filters")
        run_dlq_replay(ctx, parse_where(where), task, queue, dry_run=dry_run, yes=yes, json_=json_)
        return
    chosen = sum([ref is not None, all_, task is not None])
    if chosen != 1:
        raise BadOption("replay", "give exactly one of: a SEQ or JOB_ID, --all, --task TASK")
    as_json = wants_json(ctx, json_)
    if ref is not None:
        async def one(client: Client) -> JobRecord:
            entry = await client.dlq_get(_ref(ref))  # a clear "not found" first
            return await client.dlq_replay(entry.seq)

        rec = run_client(st, one, ensure=False)
        if as_json:
            out.print_json(ReplayReport(replayed=[rec.id], failed=[]))
        else:
            typer.echo(f"replayed job {rec.id} ({rec.spec.task}): {rec.state}")
        return

    async def go(client: Client) -> ReplayReport:
        entries = await client.dlq_list(task=task, limit=1_000_000)
        report = ReplayReport(replayed=[], failed=[])
        if not entries:
            return report
        with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=out.console(stderr=True), transient=True, disable=as_json) as progress:
            bar = progress.add_task("replay", total=len(entries))
            for entry in entries:
                try:
                    rec = await client.dlq_replay(entry.seq)
                    report.replayed.append(rec.id)
                except ChronosError as exc:
                    report.failed.append(ReplayFailure(seq=entry.seq, job_id=entry.job_id, error=str(exc)))
                progress.advance(bar)
        return report

    report = run_client(st, go, ensure=False)
    if as_json:
        out.print_json(report)
    elif not report.replayed and not report.failed:
        typer.echo("nothing to replay: the DLQ is empty" if task is None else f"no DLQ entries for task {task!r}")
    else:
        typer.echo(f"replayed {len(report.replayed)} of {len(report.replayed) + len(report.failed)} DLQ entries")
        for f in report.failed:
            typer.echo(f"error: seq {f.seq}: {f.error}", err=True)
    if report.failed:
        raise typer.Exit(1)


@app.command("purge")
def purge(
    ctx: typer.Context,
    task: Annotated[Optional[str], typer.Option("--task", help="Only this task's entries.")] = None,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Delete DLQ entries for good (asks first unless --yes)."""
    st = state(ctx)
    as_json = wants_json(ctx, json_)

    async def count(client: Client) -> int:
        if task is None:
            return await client.dlq_count()
        return len(await client.dlq_list(task=task, limit=1_000_000))

    n = run_client(st, count, ensure=False)
    if n == 0:
        if as_json:
            out.print_json(PurgeReport(purged=0))
        else:
            typer.echo("nothing to purge")
        return
    what = f"{n} DLQ entr{'y' if n == 1 else 'ies'}" + (f" of task {task!r}" if task else "")
    if not yes:
        typer.confirm(f"Delete {what}? This cannot be undone", abort=True, err=True)
    purged = run_client(st, lambda c: c.dlq_purge(task=task), ensure=False)
    if as_json:
        out.print_json(PurgeReport(purged=purged))
    else:
        typer.echo(f"purged {purged} DLQ entr{'y' if purged == 1 else 'ies'}")


def _ref(ref: str) -> str | int:
    """A sequence number is all digits without a leading zero; anything else is a job id or its prefix."""
    return int(ref) if ref.isdigit() and not ref.startswith("0") else ref
