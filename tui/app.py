"""ChronosApp and make_app(settings, client): bindings, the view registry, and routing feed messages.

Views are Textual modes (each keeps its own screen stack, like k9s views):
dashboard, jobs, events, schedules and dlq. Job detail, help, the ':' prompt and
confirmations are pushed on top. Data arrives only through feeds.py messages;
the app keeps the latest of each and republishes it on a signal screens subscribe to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.signal import Signal

from chronos.client import Client
from chronos.clock import SYSTEM_CLOCK, Clock
from chronos.config import Settings

from .data import Cluster, Connection, Stats
from .feeds import Feeds
from .messages import (
    ActionDone,
    ActionFailed,
    ClusterChanged,
    ConnectionChanged,
    EventsTail,
    StatsChanged,
)
from .screens.audit import AuditScreen
from .screens.confirm import ConfirmScreen
from .screens.dashboard import DashboardScreen
from .screens.dlq import DlqScreen
from .screens.events import EventsScreen
from .screens.help import HelpScreen, sections_for
from .screens.job_detail import JobDetailScreen
from .screens.jobs import JobsScreen
from .screens.limits import LimitsScreen
from .screens.prompt import PromptScreen
from .screens.schedules import SchedulesScreen
from .screens.workflows import WorkflowsScreen
from .source import ClientSource, Source
from .widgets.job_table import JobTable

VIEWS = {
    "dashboard": DashboardScreen,
    "jobs": JobsScreen,
    "events": EventsScreen,
    "schedules": SchedulesScreen,
    "dlq": DlqScreen,
    "limits": LimitsScreen,
    "workflows": WorkflowsScreen,
}
ALIASES = {"dash": "dashboard", "queues": "dashboard", "workers": "dashboard", "logs": "events",
           "log": "events", "job": "jobs", "schedule": "schedules", "sched": "schedules",
           "limit": "limits", "workflow": "workflows", "wf": "workflows"}


class ChronosApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "chronos"
    MODES = dict(VIEWS)  # type: ignore[arg-type]
    DEFAULT_MODE = "dashboard"
    BINDINGS = [
        # Views stay out of the footer (a long footer is rebuilt on every switch); ? lists them.
        Binding("1", "view('dashboard')", "Dashboard", show=False),
        Binding("2", "view('jobs')", "Jobs", show=False),
        Binding("3", "view('events')", "Events", show=False),
        Binding("4", "view('schedules')", "Schedules", show=False),
        Binding("5", "view('dlq')", "DLQ", show=False),
        Binding("6", "view('limits')", "Limits", show=False),
        Binding("7", "view('workflows')", "Workflows", show=False),
        Binding("f", "failed", "Failed jobs"),
        Binding("colon", "prompt", "Command", key_display=":"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("ctrl+r", "resync", "Recount", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, settings: Settings, source: Source | None = None, *, readonly: bool = False,
                 clock: Clock = SYSTEM_CLOCK, interval: float = 0.2) -> None:
        super().__init__()
        self.settings = settings
        self.readonly = readonly
        self.clock = clock
        self.feeds = Feeds(self, settings, source, clock, readonly=readonly, interval=interval)
        self.latest_stats: Stats | None = None
        self.latest_cluster: Cluster | None = None
        self.latest_connection: Connection | None = None
        self.latest_tail: EventsTail | None = None
        self.stats_signal: Signal[Stats] = Signal(self, "stats")
        self.cluster_signal: Signal[Cluster] = Signal(self, "cluster")
        self.connection_signal: Signal[Connection] = Signal(self, "connection")
        self.events_signal: Signal[EventsTail] = Signal(self, "events")
        self.actions_signal: Signal[Any] = Signal(self, "actions")
        if readonly:
            self.sub_title = "read-only"

    def on_mount(self) -> None:
        self.feeds.start()

    async def on_unmount(self) -> None:
        await self.feeds.close()

    # --- feed messages -> latest + signals ---------------------------------------------------------
    def on_stats_changed(self, message: StatsChanged) -> None:
        self.latest_stats = message.stats
        self.stats_signal.publish(message.stats)

    def on_cluster_changed(self, message: ClusterChanged) -> None:
        self.latest_cluster = message.cluster
        self.cluster_signal.publish(message.cluster)

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        self.latest_connection = message.connection
        self.connection_signal.publish(message.connection)

    def on_events_tail(self, message: EventsTail) -> None:
        self.latest_tail = message
        self.events_signal.publish(message)

    def on_action_done(self, message: ActionDone) -> None:
        text = f"{message.verb}: {message.target}"
        self.notify(f"{text} ({message.detail})" if message.detail else text, title="done")
        self.actions_signal.publish(message)

    def on_action_failed(self, message: ActionFailed) -> None:
        self.notify(f"{message.verb} {message.target}: {message.error}", title="failed", severity="error")
        self.actions_signal.publish(message)

    # --- navigation ---------------------------------------------------------------------------------
    async def action_view(self, name: str) -> None:
        if self.current_mode != name:
            await self.switch_mode(name)
        elif isinstance(self.screen, JobDetailScreen):
            self.pop_screen()

    async def action_failed(self) -> None:
        await self.show_jobs("state:failed")

    async def show_jobs(self, filter_text: str | None = None) -> None:
        await self.action_view("jobs")
        while isinstance(self.screen, JobDetailScreen):  # a detail left open in this view
            await self.pop_screen()
        screen = self.screen_stack[0]
        if isinstance(screen, JobsScreen) and filter_text is not None:
            screen.apply_filter(filter_text)
            screen.query_one(JobTable).focus()

    async def show_dashboard(self, focus: str) -> None:
        await self.action_view("dashboard")
        screen = self.screen_stack[0]
        if isinstance(screen, DashboardScreen):
            screen.action_focus_workers() if focus == "workers" else screen.action_focus_queues()

    def open_job(self, job_id: str) -> None:
        self.push_screen(JobDetailScreen(job_id))

    def action_help(self) -> None:
        sections = sections_for(self.BINDINGS, [("dashboard", DashboardScreen), ("jobs", JobsScreen),
                                                ("job detail", JobDetailScreen), ("events", EventsScreen),
                                                ("schedules", SchedulesScreen), ("dlq", DlqScreen),
                                                ("limits", LimitsScreen), ("workflows", WorkflowsScreen)],
                              self.readonly)
        self.push_screen(HelpScreen(sections, self.readonly))

    def action_prompt(self) -> None:
        self.push_screen(PromptScreen(), lambda text: self.run_command(text) if text else None)

    def action_resync(self) -> None:
        self.feeds.resync()
        self.notify("recounting from the job records")

    def run_command(self, text: str) -> None:
        """A ':' command: a view name (k9s style), ``jobs <filter>``, ``job <id>``, help or quit."""
        word, _, rest = text.strip().lstrip(":").partition(" ")
        word = word.lower()
        rest = rest.strip()
        if word in ("q", "quit", "exit"):
            self.exit()
        elif word in ("help", "h", "?"):
            self.action_help()
        elif word == "failed":
            self.call_later(self.show_jobs, "state:failed")
        elif word == "audit":
            self.push_screen(AuditScreen())
        elif word == "job" and rest:
            self.open_job(rest)
        elif word == "jobs":
            self.call_later(self.show_jobs, rest or None)
        elif word in ("queues", "workers"):
            self.call_later(self.show_dashboard, word)
        elif word in VIEWS or word in ALIASES:
            self.call_later(self.action_view, ALIASES.get(word, word))
        else:
            self.notify(f"unknown command {text!r}; try :help", severity="warning")

    # --- actions --------------------------------------------------------------------------------------
    def job_action(self, verb: str, job_id: str) -> None:
        """retry, cancel (confirmed) or run now, for one job; refused when read-only."""
        calls = {
            "retry": lambda s: s.retry(job_id),
            "cancel": lambda s: s.cancel(job_id),
            "run now": lambda s: s.run_now(job_id),
        }
        call = calls[verb]

        def done(rec: Any) -> str:
            return f"now {rec.state}"

        if verb == "cancel" and not self.readonly:
            self.push_screen(ConfirmScreen(f"Cancel job {job_id}?"),
                             lambda yes: self.feeds.act(verb, job_id, call, done) if yes else None)
            return
        self.feeds.act(verb, job_id, call, done)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name in VIEWS:
            yield SystemCommand(f"View: {name}", f"switch to the {name} view",
                                lambda n=name: self.call_later(self.action_view, n))
        yield SystemCommand("View: failed jobs", "jobs that failed, newest first",
                            lambda: self.call_later(self.action_failed))
        yield SystemCommand("Recount", "recount jobs from the KV records", self.action_resync)
        yield SystemCommand("Audit trail", "the last operator actions: who, as which role, what, when",
                            lambda: self.push_screen(AuditScreen()))
        if self.readonly:
            return
        hook = getattr(screen, "palette_actions", None)
        if hook is not None:
            for title, help_text, callback in hook():
                yield SystemCommand(title, help_text, callback)


def make_app(settings: Settings, client: Client | None = None, *, readonly: bool = False,
             clock: Clock | None = None, source: Source | None = None, interval: float = 0.2) -> ChronosApp:
    """The console for ``settings``. With no client (and no source) it connects by itself and keeps
    retrying; a client passed in stays the caller's to close."""
    if source is None and client is not None:
        source = ClientSource(client)
    if clock is None:
        clock = source.clock if source is not None else (client.clock if client is not None else SYSTEM_CLOCK)
    return ChronosApp(settings, source, readonly=readonly, clock=clock, interval=interval)
