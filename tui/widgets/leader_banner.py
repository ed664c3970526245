"""The top line of every screen: namespace, leader lease, workers, throughput, connection state."""

from __future__ import annotations

from rich.text import Text

from ..data import Cluster, Connection, Stats
from ..format import duration
from .painted import Painted


class LeaderBanner(Painted):
    DEFAULT_CSS = """
    LeaderBanner { height: 1; background: $primary-background; color: $text; padding: 0 1; }
    LeaderBanner.-disconnected { background: $error; color: $text; text-style: bold; }
    LeaderBanner.-noleader { background: $warning-darken-2; }
    """

    def __init__(self, namespace: str, *, readonly: bool = False, id: str | None = None) -> None:
        super().__init__(Text(""), id=id)
        self.namespace = namespace
        self.readonly = readonly

    def show(self, cluster: Cluster | None, connection: Connection | None, stats: Stats | None, now: float) -> None:
        t = Text()
        t.append("chronos", style="bold")
        t.append(f" ns:{self.namespace}")
        if self.readonly:
            t.append("  READ-ONLY", style="bold")
        if connection is not None and not connection.connected:
            self.set_class(True, "-disconnected")
            self.set_class(False, "-noleader")
            waited = duration(max(0.0, now - connection.since)) if connection.since else "?"
            t.append(f"  ✖ DISCONNECTED, retrying ({waited}")
            if connection.attempts:
                t.append(f", attempt {connection.attempts}")
            t.append(")")
            if connection.detail:
                t.append(f": {connection.detail}")
            self.paint(t)
            return
        self.set_class(False, "-disconnected")
        if connection is None:
            t.append("  connecting…")
            self.paint(t)
            return
        t.append("  │ ")
        leader = cluster.leader if cluster is not None else None
        self.set_class(cluster is not None and leader is None, "-noleader")
        if cluster is None:
            t.append("leader: …")
        elif leader is None:
            t.append("NO LEADER (scheduler down?)", style="bold")
        else:
            t.append("leader ")
            t.append(leader.node, style="bold")
            t.append(f" ({leader.host} pid {leader.pid}) term {leader.term}")
            if leader.expires_in is not None:
                t.append(f" · lease {max(0.0, leader.expires_in):.1f}s left")
        if cluster is not None:
            live = len(cluster.workers)
            t.append(f"  │ {live} worker{'s' if live != 1 else ''}")
        if stats is not None and stats.completed_per_s:
            recent = stats.completed_per_s[-5:]
            t.append(f"  │ {sum(recent) / len(recent):,.0f} done/s")
        t.append("  │ ● connected", style="green")
        self.paint(t)
