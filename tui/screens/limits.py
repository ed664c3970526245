"""Limits: every rate and concurrency limit in force, who holds its slots, how many wait, the rate now.

One row per limit (scope, name, key): a concurrency limit lists its holders (job, worker, for how
long); a rate limit shows its current starts per second and the jobs holding a later turn. The
queues' own settings (rate, concurrency, paused) are on the status line. Reloaded every second
while shown (``Client.limits()``).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Label

from ..format import ago
from ..messages import LimitsLoaded, LoadFailed
from ..widgets.sync_table import SyncTable
from .base import ChronosScreen

MAX_HOLDERS_SHOWN = 3


def holders_text(holders: list[Any], now: float) -> str:
    shown = [f"{h.job_id} on {h.worker} ({ago(h.since, now)})" for h in holders[:MAX_HOLDERS_SHOWN]]
    more = len(holders) - len(shown)
    return ", ".join(shown) + (f" +{more} more" if more > 0 else "") if shown else "-"


class LimitTable(SyncTable):
    COLUMNS = (
        ("scope", "SCOPE"), ("name", "NAME"), ("key", "KEY"), ("kind", "KIND"), ("limit", "LIMIT"),
        ("used", "IN USE"), ("holders", "HOLDERS (job, worker, since)"), ("waiting", "WAITING"),
        ("rate", "RATE NOW"),
    )

    def show(self, views: list[Any], now: float) -> None:
        out = []
        for v in views:
            key = f"{v.kind}:{v.scope}:{v.name}:{v.key or ''}"
            used = str(len(v.holders)) if v.kind == "concurrency" else "-"
            full = v.kind == "concurrency" and v.limit.isdigit() and len(v.holders) >= int(v.limit)
            waiting = Text(str(v.waiting), style="bold yellow" if v.waiting else "")
            out.append((key, (
                v.scope, v.name, v.key or "-", v.kind, v.limit or "-",
                Text(used, style="bold red" if full else ""), holders_text(v.holders, now), waiting,
                "-" if v.rate_now is None else f"{v.rate_now:.1f}/s",
            )))
        self.sync(out)


class LimitsScreen(ChronosScreen):
    VIEW = "limits"
    BINDINGS = [
        Binding("g", "reload", "Reload"),
        Binding("enter", "open_holder", "Open a holder's job", show=False),
    ]
    DEFAULT_CSS = """
    LimitsScreen #limits { height: 1fr; }
    LimitsScreen #limits-status { height: auto; padding: 0 1; background: $boost; }
    """
    RELOAD_EVERY = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.snapshot: Any = None

    def compose(self) -> ComposeResult:
        yield self.banner()
        yield LimitTable(id="limits")
        yield Label("loading…", id="limits-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(LimitTable).focus()
        self.reload(force=True)
        self.set_interval(self.RELOAD_EVERY, lambda: self.is_current and self.reload())

    def on_screen_resume(self) -> None:
        self.reload()

    def reload(self, force: bool = False) -> None:
        self.capp.feeds.load_limits(self, force=force)

    def action_reload(self) -> None:
        self.reload(force=True)

    def on_limits_loaded(self, message: LimitsLoaded) -> None:
        snap = message.snapshot
        self.snapshot = snap
        views = list(snap.limits)
        self.query_one(LimitTable).show(views, self.capp.clock.now())
        held = sum(len(v.holders) for v in views)
        waiting = sum(v.waiting for v in views)
        settings = "; ".join(
            f"{q.queue}: " + ", ".join(t for t in (f"max {q.concurrency}" if q.concurrency is not None else "",
                                                 q.rate or "") if t)
            for q in snap.queues) or "none"
        self.query_one("#limits-status", Label).update(
            f"{len(views)} limit{'s' if len(views) != 1 else ''} in force · {held} slot{'s' if held != 1 else ''} "
            f"held · {waiting} waiting · queue limits: {settings} · set one on the dashboard (c) "
            "or with chronos queues limit")

    def on_load_failed(self, message: LoadFailed) -> None:
        self.query_one("#limits-status", Label).update(f"error: {message.error}")

    def _selected(self) -> Any:
        key = self.query_one(LimitTable).selected_key()
        if self.snapshot is None or key is None:
            return None
        return next((v for v in self.snapshot.limits if f"{v.kind}:{v.scope}:{v.name}:{v.key or ''}" == key), None)

    @on(DataTable.RowSelected, "#limits")
    def _open(self, event: DataTable.RowSelected) -> None:
        self.action_open_holder()

    def action_open_holder(self) -> None:
        view = self._selected()
        if view is not None and view.holders:
            self.capp.open_job(view.holders[0].job_id)
