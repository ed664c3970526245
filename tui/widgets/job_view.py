"""A job's whole story as rich renderables: why it failed first, then spec, record, attempts, result, timeline."""

from __future__ import annotations

from typing import Any

import msgspec
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ..data import JobDetail
from ..format import ago, duration, stamp, state_text


def _json(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _kv(rows: list[tuple[str, Any]]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v if isinstance(v, Text) else Text(str(v)))
    return t


def why(detail: JobDetail) -> RenderableType | None:
    """The answer to "why did this job fail": the error and the last traceback."""
    rec = detail.record
    failed = [a for a in rec.attempts if a.outcome not in (None, "completed")]
    if not rec.error and not failed and detail.dlq is None:
        return None
    last = failed[-1] if failed else None
    parts: list[RenderableType] = []
    error = rec.error or (last.error if last else None) or (detail.dlq.reason if detail.dlq else "")
    parts.append(Text(error or "", style="bold red"))
    if detail.dlq is not None:
        same = detail.dlq.reason == error
        parts.append(Text(f"In the DLQ (seq {detail.dlq.seq})" + ("" if same else f": {detail.dlq.reason}"),
                          style="red"))
    tb = (last.traceback if last else None) or (detail.dlq.traceback if detail.dlq else None)
    if tb:
        parts.append(Syntax(tb.rstrip(), "pytb", theme="ansi_dark", word_wrap=True))
    title = f"why it failed (attempt {last.number})" if last else "why it failed"
    return Panel(Group(*parts), title=title, border_style="red", title_align="left")


def header(detail: JobDetail, now: float) -> Text:
    rec = detail.record
    t = Text()
    t.append(rec.id, style="bold")
    t.append("  ")
    t.append_text(state_text(rec.state))
    t.append(f"  {rec.spec.task}  {rec.spec.queue}/{rec.spec.priority}  attempt {rec.attempt}/{rec.spec.max_attempts}")
    t.append(f"  updated {ago(rec.updated_at, now)}")
    return t


def spec(detail: JobDetail) -> RenderableType:
    return Panel(Syntax(_json(detail.record.spec), "json", theme="ansi_dark", word_wrap=True),
                 title="spec", title_align="left")


def record(detail: JobDetail, now: float) -> RenderableType:
    r = detail.record
    rows: list[tuple[str, Any]] = [
        ("state", state_text(r.state)), ("created", f"{stamp(r.created_at)} ({ago(r.created_at, now)})"),
        ("updated", stamp(r.updated_at)), ("scheduled", stamp(r.scheduled_at)), ("finished", stamp(r.finished_at)),
        ("generation", r.gen), ("worker", r.worker or "-"), ("revision", r.revision),
    ]
    if r.cancel_requested or r.cancel_reason:
        rows.append(("cancel", f"requested={r.cancel_requested} reason={r.cancel_reason or '-'}"))
    if r.schedule_id:
        rows.append(("schedule", f"{r.schedule_id} (fire {stamp(r.fire_time)})"))
    return Panel(_kv(rows), title="record", title_align="left")


def attempts(detail: JobDetail) -> RenderableType:
    rec = detail.record
    if not rec.attempts:
        return Panel(Text("no attempts yet"), title="attempts", title_align="left")
    parts: list[RenderableType] = []
    for a in rec.attempts:
        took = duration(a.ended_at - a.started_at) if a.ended_at is not None else "running"
        line = Text(f"#{a.number}  {stamp(a.started_at)}  {took}  worker={a.worker or '-'}  ")
        line.append(a.outcome or "running", style="green" if a.outcome == "completed" else
                    "yellow" if a.outcome is None else "red")
        parts.append(line)
        if a.error:
            parts.append(Text(f"    {a.error}", style="red"))
        if a.traceback:
            parts.append(Syntax(a.traceback.rstrip(), "pytb", theme="ansi_dark", word_wrap=True, padding=(0, 4)))
    return Panel(Group(*parts), title=f"attempts ({len(rec.attempts)})", title_align="left")


def result(detail: JobDetail) -> RenderableType:
    rec = detail.record
    body: RenderableType
    if rec.result is None:
        body = Text("no result" if str(rec.state) != "completed" else "None")
    else:
        body = Syntax(_json(rec.result), "json", theme="ansi_dark", word_wrap=True)
    title = "result (truncated)" if rec.result_truncated else "result"
    return Panel(body, title=title, title_align="left")


def timeline(detail: JobDetail) -> RenderableType:
    if not detail.timeline:
        return Panel(Text("no events in the events stream for this job"), title="timeline", title_align="left")
    t = Table.grid(padding=(0, 2))
    for ev in detail.timeline:
        extra = " ".join(x for x in (f"try={ev.attempt}" if ev.attempt else "", f"worker={ev.worker}" if ev.worker
                                     else "", f"took={duration(ev.duration)}" if ev.duration is not None else "",
                                     ev.error or "", ev.message or "") if x)
        t.add_row(stamp(ev.at), state_text(ev.kind) if ev.kind else Text(""), Text(extra))
    return Panel(t, title=f"timeline ({len(detail.timeline)} events)", title_align="left")
