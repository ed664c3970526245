"""Schedules: next fire times, last outcome; pause/resume (p) and run now (n)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Label

from ..data import ScheduleRow
from ..format import ago, clock_time, state_text
from ..messages import LoadFailed, SchedulesLoaded
from ..widgets.sync_table import SyncTable
from .base import ChronosScreen


class ScheduleTable(SyncTable):
    COLUMNS = (
        ("name", "NAME"), ("task", "TASK"), ("timing", "WHEN"), ("next", "NEXT FIRE (UTC)"), ("last", "LAST FIRE"),
        ("job", "LAST JOB"), ("outcome", "OUTCOME"), ("status", "STATUS"),
    )

    def show(self, rows: list[ScheduleRow], now: float) -> None:
        out = []
        for r in rows:
            s = r.schedule
            status = Text("paused", style="bold yellow") if s.is_paused(now) else Text("active", style="green")
            nxt = "-" if r.next_fire is None else f"{clock_time(r.next_fire)} ({ago(r.next_fire, now)})"
            out.append((s.name, (
                s.name, s.task, r.timing, nxt,
                ago(s.last_fire_time, now) if s.last_job_id else "-", s.last_job_id or "-",
                state_text(r.last_state) if r.last_state else "-", status,
            )))
        self.sync(out)


class SchedulesScreen(ChronosScreen):
    VIEW = "schedules"
    MUTATING = frozenset({"toggle_pause", "run_now"})
    BINDINGS = [
        Binding("p", "toggle_pause", "Pause/resume"),
        Binding("n", "run_now", "Run now"),
        Binding("g", "reload", "Reload"),
    ]
    DEFAULT_CSS = """
    SchedulesScreen #schedules { height: 1fr; }
    SchedulesScreen #schedules-status { height: 1; padding: 0 1; background: $boost; }
    """
    RELOAD_EVERY = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[ScheduleRow] = []

    def compose(self) -> ComposeResult:
        yield self.banner()
        yield ScheduleTable(id="schedules")
        yield Label("loading…", id="schedules-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(ScheduleTable).focus()
        self.reload(force=True)
        self.set_interval(self.RELOAD_EVERY, lambda: self.is_current and self.reload())

    def on_screen_resume(self) -> None:
        self.reload()

    def reload(self, force: bool = False) -> None:
        self.capp.feeds.load_schedules(self, force=force)

    def on_schedules_loaded(self, message: SchedulesLoaded) -> None:
        self.rows = message.rows
        self.query_one(ScheduleTable).show(message.rows, self.capp.clock.now())
        paused = sum(1 for r in message.rows if r.schedule.is_paused(self.capp.clock.now()))
        self.query_one("#schedules-status", Label).update(
            f"{len(message.rows)} schedule{'s' if len(message.rows) != 1 else ''} · {paused} paused"
            " · enter: open the last job")

    def on_load_failed(self, message: LoadFailed) -> None:
        self.query_one("#schedules-status", Label).update(f"error: {message.error}")

    def selected(self) -> ScheduleRow | None:
        key = self.query_one(ScheduleTable).selected_key()
        return next((r for r in self.rows if r.schedule.name == key), None)

    def action_reload(self) -> None:
        self.reload(force=True)

    def action_toggle_pause(self) -> None:
        row = self.selected()
        if row is None:
            return
        name = row.schedule.name
        if row.schedule.is_paused(self.capp.clock.now()):
            self.capp.feeds.act("resume", name, lambda s: s.resume_schedule(name))
        else:
            self.capp.feeds.act("pause", name, lambda s: s.pause_schedule(name))

    def action_run_now(self) -> None:
        row = self.selected()
        if row is None:
            return
        name = row.schedule.name
        self.capp.feeds.act("run schedule", name, lambda s: s.run_schedule(name), lambda job_id: f"job {job_id}")

    @on(DataTable.RowSelected, "#schedules")
    def _open(self, event: DataTable.RowSelected) -> None:
        row = self.selected()
        if row is not None and row.schedule.last_job_id:
            self.capp.open_job(row.schedule.last_job_id)

    def after_action(self, message: Any) -> None:
        if self.is_current:
            self.reload(force=True)

    def palette_actions(self) -> list[tuple[str, str, Any]]:
        row = self.selected()
        if row is None:
            return []
        name = row.schedule.name
        return [(f"Pause/resume schedule {name}", "toggle the selected schedule", self.action_toggle_pause),
                (f"Run schedule {name} now", "submit one job from the schedule now", self.action_run_now)]
