"""What every console screen shares: the banner, signals from the feeds, read-only action gating."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from textual.screen import Screen

from ..data import Cluster, Connection, Stats
from ..widgets.leader_banner import LeaderBanner

if TYPE_CHECKING:
    from textual.signal import Signal

    from chronos.clock import Clock
    from chronos.config import Settings

    from ..feeds import Feeds
    from ..messages import EventsTail


class ConsoleApp(Protocol):
    """What a screen needs from the app. ``ChronosApp`` (app.py) provides it; screens depend on
    this, not on app.py, because app.py imports every screen (no import cycle)."""

    settings: Settings
    readonly: bool
    clock: Clock
    feeds: Feeds
    latest_stats: Stats | None
    latest_cluster: Cluster | None
    latest_connection: Connection | None
    latest_tail: EventsTail | None
    stats_signal: Signal[Stats]
    cluster_signal: Signal[Cluster]
    connection_signal: Signal[Connection]
    events_signal: Signal[EventsTail]
    actions_signal: Signal[Any]

    def open_job(self, job_id: str) -> None: ...

    def job_action(self, verb: str, job_id: str) -> None: ...


class ChronosScreen(Screen[None]):
    # Bindings that change something: hidden and refused in a read-only console.
    MUTATING: ClassVar[frozenset[str]] = frozenset()
    VIEW: ClassVar[str] = ""

    @property
    def capp(self) -> ConsoleApp:
        return self.app  # type: ignore[return-value]

    def banner(self) -> LeaderBanner:
        return LeaderBanner(self.capp.settings.namespace, readonly=self.capp.readonly, id="banner")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in self.MUTATING and self.capp.readonly)

    def on_mount(self) -> None:
        app = self.capp
        app.stats_signal.subscribe(self, self._on_stats)
        app.cluster_signal.subscribe(self, self._on_cluster)
        app.connection_signal.subscribe(self, self._on_connection)
        app.actions_signal.subscribe(self, self.after_action)
        self.refresh_from_latest()

    def on_screen_resume(self) -> None:
        self.refresh_from_latest()

    def refresh_from_latest(self) -> None:
        app = self.capp
        if app.latest_stats is not None:
            self._on_stats(app.latest_stats)
        if app.latest_cluster is not None:
            self._on_cluster(app.latest_cluster)
        self._update_banner()

    def _update_banner(self) -> None:
        app = self.capp
        for banner in self.query(LeaderBanner):
            banner.show(app.latest_cluster, app.latest_connection, app.latest_stats, app.clock.now())

    # A screen out of sight skips updates; on_screen_resume catches up from the latest.
    def _on_stats(self, stats: Stats) -> None:
        if self.is_current:
            self._update_banner()
            self.on_stats(stats)

    def _on_cluster(self, cluster: Cluster) -> None:
        if self.is_current:
            self._update_banner()
            self.on_cluster(cluster)

    def _on_connection(self, connection: Connection) -> None:
        if self.is_current:
            self._update_banner()

    # hooks
    def on_stats(self, stats: Stats) -> None:
        pass

    def on_cluster(self, cluster: Cluster) -> None:
        pass

    def after_action(self, message: Any) -> None:
        pass

    def palette_actions(self) -> list[tuple[str, str, Any]]:
        """(title, help, callback) entries this screen adds to the command palette."""
        return []
