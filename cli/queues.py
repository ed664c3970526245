"""`chronos queues list|pause|resume|limit|limits`: queues under operator control.

Pause and resume act on every worker at once (a flag in the queues bucket that each worker
watches); `limit` sets a queue's fleet-wide rate and concurrency live; `limits` shows every
limit in force: who holds which slot, how many wait, the current rate.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Optional

import msgspec
import typer

from chronos.client import Client
from chronos.errors import ValidationError
from chronos.subjects import PRIORITIES, is_valid_token

from . import _output as out
from ._parse import BadOption
from ._shared import JsonOpt, run_client, state, wants_json

app = typer.Typer(help="Queues: pause, resume, limits.", no_args_is_help=True)

QueueArg = Annotated[str, typer.Argument(help="Queue name.", show_default=False)]


def _queue(name: str) -> str:
    if not is_valid_token(name):
        raise BadOption("QUEUE", f"{name!r} is not a valid queue name (1-64 letters, digits, '_' or '-')")
    return name


class QueueRow(msgspec.Struct):
    """JSON of one `queues list` item."""

    name: str
    paused: bool
    paused_by: str
    paused_at: Optional[float]
    reason: str
    backlog: dict[str, int]
    waiting: int
    running: int
    workers: int
    rate: Optional[str]
    burst: Optional[int]
    concurrency: Optional[int]


def _row(q: Any) -> QueueRow:
    lim = q.limits
    return QueueRow(name=q.name, paused=q.paused, paused_by=q.paused_by, paused_at=q.paused_at, reason=q.reason,
                    backlog=q.backlog, waiting=q.waiting, running=q.running, workers=q.workers,
                    rate=getattr(lim, "rate", None), burst=getattr(lim, "burst", None) if lim else None,
                    concurrency=getattr(lim, "concurrency", None))


def _limits_text(rate: str | None, burst: int | None, concurrency: int | None) -> str:
    parts = []
    if rate:
        parts.append(f"rate {rate}" + (f" burst {burst}" if burst and burst > 1 else ""))
    if concurrency is not None:
        parts.append(f"concurrency {concurrency}")
    return ", ".join(parts) or "-"


@app.command("list")
def list_queues(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Every queue: paused (by whom, since when, why), waiting jobs per priority, running, workers, limits."""
    rows = [_row(q) for q in run_client(state(ctx), lambda c: c.queues(), ensure=False)]
    if wants_json(ctx, json_):
        out.print_listing(rows)
        return
    if not rows:
        typer.echo("no queues")
        return
    now = time.time()
    t = out.table("QUEUE", "STATE", "WAITING", *(p.upper() for p in PRIORITIES), "RUNNING", "WORKERS", "LIMITS")
    for r in rows:
        if r.paused:
            since = out.when(r.paused_at, now) if r.paused_at else "?"
            st = f"PAUSED by {r.paused_by or '?'} {since}" + (f": {r.reason}" if r.reason else "")
        else:
            st = "active"
        t.add_row(out.cell(r.name), out.cell(st), str(r.waiting), *(str(r.backlog.get(p, 0)) for p in PRIORITIES),
                  str(r.running), str(r.workers), _limits_text(r.rate, r.burst, r.concurrency))
    out.print_table(t)
    paused = sum(r.paused for r in rows)
    typer.echo(f"{len(rows)} queue{'' if len(rows) == 1 else 's'}" + (f", {paused} paused" if paused else ""))


async def _served_by(client: Client, queue: str) -> int:
    return next((q.workers for q in await client.queues() if q.name == queue), 0)


@app.command("pause")
def pause(
    ctx: typer.Context,
    queue: QueueArg,
    reason: Annotated[Optional[str], typer.Option("--reason", "-r", help="Why (kept with the pause and audited).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Pause QUEUE on every worker: nothing more is pulled from it; running jobs finish; submits go on."""
    _queue(queue)
    if reason is not None and len(reason) > 500:
        raise BadOption("--reason", "at most 500 characters")

    async def go(client: Client) -> tuple[Any, int]:
        flag = await client.pause_queue(queue, reason=reason)
        return flag, await _served_by(client, queue)

    flag, served = run_client(state(ctx), go, ensure=False)
    if wants_json(ctx, json_):
        out.print_json({**out.plain(flag), "workers": served})
        return
    typer.echo(f"queue {queue} paused" + (f" ({reason})" if reason else "")
               + ": workers stop pulling from it; running jobs finish; new jobs wait")
    if served == 0:
        typer.echo(f"note: no live worker serves queue {queue} now; the pause holds for any that starts")


@app.command("resume")
def resume(ctx: typer.Context, queue: QueueArg, json_: JsonOpt = False) -> None:
    """Resume QUEUE: every worker serving it pulls from it again at once."""
    _queue(queue)

    async def go(client: Client) -> tuple[Any, Any, int]:
        before = await client.queue_flag(queue)
        flag = await client.resume_queue(queue)
        return before, flag, await _served_by(client, queue)

    before, flag, served = run_client(state(ctx), go, ensure=False)
    # Not paused: resume_queue wrote nothing (no flag, no audit entry); exit 0, it is as asked.
    was_paused = bool(before and before.paused)
    if wants_json(ctx, json_):
        out.print_json({**out.plain(flag), "was_paused": was_paused, "workers": served})
        return
    if not was_paused:
        typer.echo(f"queue {queue} is not paused; nothing changed")
        return
    typer.echo(f"queue {queue} resumed")
    if served == 0:
        typer.echo(f"note: no live worker serves queue {queue} now")


def _concurrency(value: str) -> int | None:
    if value.strip().lower() == "none":
        return None
    try:
        n = int(value)
    except ValueError:
        raise BadOption("--concurrency", f"{value!r} is not a whole number (or 'none' to remove it)") from None
    if n <= 0:
        raise BadOption("--concurrency", f"must be at least 1, got {n} (or 'none' to remove it)")
    return n


def _rate(value: str) -> str | None:
    if value.strip().lower() == "none":
        return None
    from chronos.limits import parse_rate

    try:
        parse_rate(value, "--rate")
    except ValidationError as exc:
        text = str(exc)
        raise BadOption("--rate", text.split(": ", 1)[1] if text.startswith("--rate: ") else text) from None
    return value


@app.command("limit")
def limit(
    ctx: typer.Context,
    queue: QueueArg,
    concurrency: Annotated[Optional[str], typer.Option(
        "--concurrency", help="At most N jobs of the queue run at once across the fleet; 'none' removes it.")] = None,
    rate: Annotated[Optional[str], typer.Option(
        "--rate", help="At most this many starts: 10/s, 600/m, 1000/h; 'none' removes it.")] = None,
    burst: Annotated[Optional[int], typer.Option("--burst", help="Starts allowed back to back (with --rate).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Set QUEUE's fleet-wide concurrency and rate, live (workers pick it up at once)."""
    _queue(queue)
    if concurrency is None and rate is None and burst is None:
        raise BadOption("--concurrency", "give --concurrency N|none, --rate 10/s|none, or --burst N")
    kwargs: dict[str, Any] = {}
    if concurrency is not None:
        kwargs["concurrency"] = _concurrency(concurrency)
    if rate is not None:
        kwargs["rate"] = _rate(rate)
    if burst is not None:
        if burst <= 0:
            raise BadOption("--burst", f"must be at least 1, got {burst}")
        kwargs["burst"] = burst

    async def go(client: Client) -> tuple[Any, bool]:
        try:
            now = await client.set_queue_limit(queue, **kwargs)
        except ValidationError as exc:
            field, sep, problem = str(exc).partition(": ")
            raise BadOption(f"--{field}" if sep and " " not in field else "limit", problem or str(exc)) from None
        row = next((q for q in await client.queues() if q.name == queue), None)
        return now, row is None or (row.workers == 0 and row.consumers == 0)

    now, unknown = run_client(state(ctx), go, ensure=False)
    as_json = wants_json(ctx, json_)
    if as_json:
        out.print_json(now if now is not None else {"queue": queue, "rate": None, "concurrency": None})
    elif now is None:
        typer.echo(f"queue {queue}: no limits")
    else:
        typer.echo(f"queue {queue}: {_limits_text(now.rate, now.burst, now.concurrency)}")
    if unknown and now is not None:
        # Allowed (limits may be set before the workers are deployed), but a typo would go unseen.
        typer.echo(f"note: no live worker serves queue {queue} and none ever has; the limit holds for any "
                   "that starts (check the name)", err=as_json)


class LimitRow(msgspec.Struct):
    """JSON of one `queues limits` item."""

    kind: str  # "rate" | "concurrency"
    scope: str  # "queue" | "task"
    name: str
    key: Optional[str]
    limit: str
    holders: list[Any]
    waiting: int
    rate_now: Optional[float]


@app.command("limits")
def limits(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Every limit in force: scope, key, limit, who holds its slots (job, worker, since), how many wait,
    the current rate."""
    snap = run_client(state(ctx), lambda c: c.limits(), ensure=False)
    rows = [LimitRow(kind=v.kind, scope=v.scope, name=v.name, key=v.key, limit=v.limit, holders=list(v.holders),
                     waiting=v.waiting, rate_now=v.rate_now) for v in snap.limits]
    if wants_json(ctx, json_):
        out.print_listing(rows)
        return
    if not rows:
        typer.echo("no limits in force")
    else:
        t = out.table("SCOPE", "NAME", "KEY", "KIND", "LIMIT", "HOLDERS", "WAITING", "RATE NOW")
        for r in rows:
            held = ", ".join(f"{h.job_id} on {h.worker} {out.when(h.since, snap.at)}" for h in r.holders) or "-"
            t.add_row(r.scope, out.cell(r.name), out.cell(r.key or "-"), r.kind, out.cell(r.limit or "-"),
                      out.cell(held), str(r.waiting), "-" if r.rate_now is None else f"{r.rate_now:.1f}/s")
        out.print_table(t)
    if snap.queues:
        typer.echo("queue settings: " + "; ".join(
            f"{q.queue} {_limits_text(q.rate, q.burst, q.concurrency)}" for q in snap.queues))
