"""Live event tail with a filter (/) and pause (p)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Input, Label

from ..messages import EventsTail
from ..widgets.event_log import EventLog, event_line, event_matches
from .base import ChronosScreen


class EventsScreen(ChronosScreen):
    VIEW = "events"
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("p", "pause", "Pause/resume"),
        Binding("space", "pause", "Pause", show=False),
        Binding("x", "clear", "Clear"),
        Binding("escape", "unfocus", "Done", show=False),
    ]
    DEFAULT_CSS = """
    EventsScreen #events-filter { display: none; }
    EventsScreen #events-filter.-visible { display: block; }
    EventsScreen #events-status { height: 1; padding: 0 1; background: $boost; }
    """

    MAX_LINES_PER_TICK = 100

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.shown_seq = 0
        self.missed = 0
        self.filter_text = ""

    def compose(self) -> ComposeResult:
        yield self.banner()
        yield Input(placeholder="filter: kind:discarded queue:mail task:x job:id words…", id="events-filter")
        yield EventLog(id="event-log")
        yield Label("", id="events-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(EventLog).focus()
        self.capp.events_signal.subscribe(self, self.show_tail)
        if self.capp.latest_tail is not None:
            self.show_tail(self.capp.latest_tail)
        self._status()

    def on_screen_resume(self) -> None:
        if self.capp.latest_tail is not None:
            self.show_tail(self.capp.latest_tail)

    def show_tail(self, tail: EventsTail) -> None:
        if not self.is_current:
            return  # out of sight; caught up on resume
        fresh = [(seq, ev) for seq, ev in tail.events if seq > self.shown_seq]
        if not fresh:
            return
        if self.paused:
            self.missed += len(fresh)
            self.shown_seq = fresh[-1][0]
            self._status()
            return
        self.shown_seq = fresh[-1][0]
        matching = [ev for _, ev in fresh if event_matches(ev, self.filter_text)]
        lines = [event_line(ev) for ev in matching[-self.MAX_LINES_PER_TICK:]]
        skipped = len(matching) - len(lines)
        if skipped > 0:  # a firehose: nobody reads 5,000 lines a second; say what was left out
            lines.insert(0, f"… {skipped:,} more events (filter with / or pause with p)")
        if lines:
            self.query_one(EventLog).write_lines(lines)

    def _status(self) -> None:
        parts = ["PAUSED" + (f" ({self.missed:,} new not shown)" if self.missed else "") if self.paused else "live"]
        if self.filter_text:
            parts.append(f"filter: {self.filter_text}")
        self.query_one("#events-status", Label).update(" · ".join(parts))

    def action_filter(self) -> None:
        box = self.query_one("#events-filter", Input)
        box.add_class("-visible")
        box.focus()

    @on(Input.Submitted, "#events-filter")
    def _submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        self.query_one(EventLog).clear()
        self.shown_seq = 0  # re-show what the buffer holds, filtered
        if self.capp.latest_tail is not None:
            was, self.paused = self.paused, False
            self.show_tail(self.capp.latest_tail)
            self.paused = was
        self._status()
        if not self.filter_text:
            event.input.remove_class("-visible")
        self.query_one(EventLog).focus()

    def action_unfocus(self) -> None:
        self.query_one(EventLog).focus()

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.missed = 0
        self._status()

    def action_clear(self) -> None:
        self.query_one(EventLog).clear()
