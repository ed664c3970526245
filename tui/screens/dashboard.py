"""Dashboard: throughput, per queue and priority counts, consumers, workers, the last failure.

Queue actions on the selected queue (up/down in the queue table): pause or resume it across the
fleet (asks first) and set its fleet-wide concurrency. The queues' pause state and limits are
reloaded every second while the dashboard is shown."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Label

from ..data import Cluster, Stats
from ..format import ago, short
from ..messages import LoadFailed, QueuesLoaded
from ..widgets.painted import Painted
from ..widgets.queue_table import QueueTable
from ..widgets.throughput import ThroughputPanel
from ..widgets.workers_table import WorkersTable
from .base import ChronosScreen
from .confirm import ConfirmScreen
from .prompt import PromptScreen


class DashboardScreen(ChronosScreen):
    VIEW = "dashboard"
    MUTATING = frozenset({"toggle_queue_pause", "queue_concurrency"})
    QUEUES_EVERY = 1.0
    BINDINGS = [
        Binding("l", "last_failure", "Last failure"),
        # Out of the footer (it keeps its width for the views); ? and ctrl+p list them.
        Binding("p", "toggle_queue_pause", "Pause/resume the selected queue", show=False),
        Binding("c", "queue_concurrency", "Set the selected queue's concurrency", show=False),
        Binding("w", "focus_workers", "Workers", show=False),
        Binding("u", "focus_queues", "Queues", show=False),
    ]
    DEFAULT_CSS = """
    DashboardScreen Label.section { padding: 0 1; text-style: bold; color: $accent; }
    DashboardScreen #queues { height: auto; max-height: 14; }
    DashboardScreen #workers { height: 1fr; min-height: 4; }
    DashboardScreen #last-failure { padding: 0 1; height: 1; }
    DashboardScreen #dash-body { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.refreshes: list[float] = []  # monotonic times stats were applied (for load measurement)
        self._last_failure_id: str | None = None

    def compose(self) -> ComposeResult:
        yield self.banner()
        with Vertical(id="dash-body"):
            yield ThroughputPanel(id="throughput")
            yield Painted(Text(""), id="last-failure")
            yield Label("Queues", classes="section", id="queues-title")
            yield QueueTable(id="queues")
            yield Label("Workers", classes="section")
            yield WorkersTable(id="workers")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(QueueTable).focus()
        self.capp.feeds.load_queues(self, force=True)
        self.set_interval(self.QUEUES_EVERY, lambda: self.is_current and self.capp.feeds.load_queues(self))

    def on_queues_loaded(self, message: QueuesLoaded) -> None:
        self.query_one(QueueTable).show_queues(message.queues)

    def on_load_failed(self, message: LoadFailed) -> None:
        # A source without queue settings (an older server, a test fake) keeps the plain table.
        pass

    def after_action(self, message: Any) -> None:
        if self.is_current:
            self.capp.feeds.load_queues(self, force=True)

    def _selected_queue(self) -> Any:
        table = self.query_one(QueueTable)
        info = table.queue_info.get(table.selected or "")
        if info is None:
            self.notify("no queue selected (queue settings not loaded yet)", severity="warning")
        return info

    def action_toggle_queue_pause(self) -> None:
        info = self._selected_queue()
        if info is None:
            return
        name = info.name
        feeds = self.capp.feeds
        if info.paused:
            question = f"Resume queue {name}? Every worker serving it pulls from it again."
            verb, call = "resume queue", (lambda s: s.resume_queue(name))
        else:
            question = (f"Pause queue {name} on every worker? Running jobs finish; new jobs wait "
                        f"({info.waiting} waiting now).")
            verb, call = "pause queue", (lambda s: s.pause_queue(name, reason="paused from the console"))
        self.app.push_screen(ConfirmScreen(question), lambda yes: feeds.act(verb, name, call) if yes else None)

    def action_queue_concurrency(self) -> None:
        info = self._selected_queue()
        if info is None:
            return
        name = info.name
        now = getattr(info.limits, "concurrency", None)
        prompt = PromptScreen(f"concurrency of queue {name} across the fleet: a number, or none to remove it",
                              words=[], value="" if now is None else str(now))
        self.app.push_screen(prompt, lambda text: self._set_concurrency(name, text))

    def _set_concurrency(self, name: str, text: str | None) -> None:
        if text is None or not text.strip():
            return
        value = text.strip().lower()
        if value == "none":
            n: int | None = None
        else:
            try:
                n = int(value)
            except ValueError:
                n = 0
            if n <= 0:
                self.notify(f"concurrency: {text!r} is not a whole number of at least 1 (or none)", severity="error")
                return
        self.capp.feeds.act("set concurrency", name, lambda s: s.set_queue_concurrency(name, n),
                            lambda _: "no limit" if n is None else f"at most {n} at once")

    def on_stats(self, stats: Stats) -> None:
        import time

        self.refreshes.append(time.monotonic())
        if len(self.refreshes) > 10000:
            del self.refreshes[:5000]
        self.query_one(ThroughputPanel).show(stats)
        conn = self.capp.latest_connection
        counting = not stats.seeded and conn is not None and conn.connected
        title = "Queues (counting the job records…)" if counting else "Queues"
        label = self.query_one("#queues-title", Label)
        if label.content != title:
            label.update(title)
        self.query_one(QueueTable).show(stats, self.capp.latest_cluster)
        lf = stats.last_failure
        line = Text()
        if lf is None:
            line.append("no failures seen", style="dim")
            self._last_failure_id = None
        else:
            self._last_failure_id = lf.job_id
            line.append("last failure: ", style="bold red")
            line.append(f"{lf.job_id} {lf.task}: {short(lf.error, 70)} ({ago(lf.at, self.capp.clock.now())})")
            line.append("  [l] open  [f] all failed", style="dim")
        self.query_one("#last-failure", Painted).paint(line)

    def on_cluster(self, cluster: Cluster) -> None:
        self.query_one(QueueTable).show(self.capp.latest_stats, cluster)
        self.query_one(WorkersTable).show(cluster.workers, self.capp.clock.now(),
                                          self.capp.settings.worker.heartbeat_interval)

    def action_last_failure(self) -> None:
        if self._last_failure_id is None:
            self.notify("no failures seen")
            return
        self.capp.open_job(self._last_failure_id)

    def action_focus_workers(self) -> None:
        self.query_one(WorkersTable).focus()

    def palette_actions(self) -> list[tuple[str, str, Any]]:
        table = self.query_one(QueueTable)
        if table.selected is None or table.selected not in table.queue_info:
            return []
        q = table.selected
        return [(f"Pause/resume queue {q}", "on every worker (asks first)", self.action_toggle_queue_pause),
                (f"Set concurrency of queue {q}", "fleet-wide, live", self.action_queue_concurrency)]

    def action_focus_queues(self) -> None:
        self.query_one(QueueTable).focus()
