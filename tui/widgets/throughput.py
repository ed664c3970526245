"""Throughput sparklines: completed, failed and enqueued per second over the last minute."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline

from ..data import Stats
from .painted import Painted

SERIES = (("completed", "done/s"), ("failed", "failed/s"), ("enqueued", "enqueued/s"))


class ThroughputPanel(Horizontal):
    DEFAULT_CSS = """
    ThroughputPanel { height: 4; }
    ThroughputPanel > Vertical { width: 1fr; padding: 0 1; }
    ThroughputPanel Painted { width: 100%; height: 1; }
    ThroughputPanel Sparkline { height: 2; }
    ThroughputPanel #spark-failed > .sparkline--max-color { color: $error; }
    """

    def compose(self) -> ComposeResult:
        for key, _ in SERIES:
            with Vertical():
                yield Painted(Text(""), id=f"label-{key}")
                yield Sparkline([0.0], id=f"spark-{key}")

    def show(self, stats: Stats) -> None:
        data = {"completed": stats.completed_per_s, "failed": stats.failed_per_s, "enqueued": stats.enqueued_per_s}
        for key, unit in SERIES:
            series = list(data[key]) or [0.0]
            recent = series[-5:]
            peak = max(series)
            self.query_one(f"#label-{key}", Painted).paint(
                Text(f"{key}: {sum(recent) / len(recent):,.0f} {unit} (peak {peak:,.0f})"))
            spark = self.query_one(f"#spark-{key}", Sparkline)
            if list(spark.data or []) != series:
                spark.data = series
