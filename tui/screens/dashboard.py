"""Dashboard: throughput, per queue and priority counts, consumers, workers, the last failure."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Label

from ..data import Cluster, Stats
from ..format import ago, short
from ..widgets.painted import Painted
from ..widgets.queue_table import QueueTable
from ..widgets.throughput import ThroughputPanel
from ..widgets.workers_table import WorkersTable
from .base import ChronosScreen


class DashboardScreen(ChronosScreen):
    VIEW = "dashboard"
    BINDINGS = [
        Binding("l", "last_failure", "Last failure"),
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

    def action_focus_queues(self) -> None:
        self.query_one(QueueTable).focus()
