"""Job detail: why it failed (error and traceback) first, then attempts, result, spec, record, timeline."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Static

from ..data import JobDetail
from ..messages import JobLoaded, LoadFailed
from ..widgets import job_view
from .base import ChronosScreen

TERMINAL = ("completed", "cancelled", "discarded")


class JobDetailScreen(ChronosScreen):
    MUTATING = frozenset({"retry", "cancel", "run_now"})
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("backspace", "back", "Back", show=False),
        Binding("r", "retry", "Retry"),
        Binding("c", "cancel", "Cancel"),
        Binding("n", "run_now", "Run now"),
        Binding("g", "reload", "Reload"),
    ]
    DEFAULT_CSS = """
    JobDetailScreen #detail { height: 1fr; padding: 0 1; }
    JobDetailScreen #detail > Static { margin-bottom: 0; }
    JobDetailScreen #job-header { padding: 0 1; background: $boost; }
    """
    RELOAD_EVERY = 1.0

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.detail: JobDetail | None = None

    def compose(self) -> ComposeResult:
        yield self.banner()
        yield Static(f"{self.job_id}  loading…", id="job-header")
        with VerticalScroll(id="detail"):
            for part in ("why", "attempts", "result", "spec", "record", "timeline"):
                yield Static("", id=f"part-{part}")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#detail").focus()
        self.reload(force=True)
        self.set_interval(self.RELOAD_EVERY, self._periodic)

    def _periodic(self) -> None:
        if self.is_current and (self.detail is None or str(self.detail.record.state) not in TERMINAL):
            self.reload()

    def reload(self, force: bool = False) -> None:
        self.capp.feeds.load_job(self.job_id, self, force=force)

    def on_job_loaded(self, message: JobLoaded) -> None:
        if message.detail.record.id != self.job_id:
            return
        self.detail = d = message.detail
        now = self.capp.clock.now()
        self.query_one("#job-header", Static).update(job_view.header(d, now))
        why = job_view.why(d)
        part = self.query_one("#part-why", Static)
        part.display = why is not None
        part.update(why if why is not None else "")
        self.query_one("#part-attempts", Static).update(job_view.attempts(d))
        self.query_one("#part-result", Static).update(job_view.result(d))
        self.query_one("#part-spec", Static).update(job_view.spec(d))
        self.query_one("#part-record", Static).update(job_view.record(d, now))
        self.query_one("#part-timeline", Static).update(job_view.timeline(d))

    def on_load_failed(self, message: LoadFailed) -> None:
        self.query_one("#job-header", Static).update(f"{self.job_id}: {message.error}")

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_reload(self) -> None:
        self.reload(force=True)

    def action_retry(self) -> None:
        self.capp.job_action("retry", self.job_id)

    def action_cancel(self) -> None:
        self.capp.job_action("cancel", self.job_id)

    def action_run_now(self) -> None:
        self.capp.job_action("run now", self.job_id)

    def after_action(self, message: Any) -> None:
        if getattr(message, "target", None) == self.job_id:
            self.reload(force=True)

    def palette_actions(self) -> list[tuple[str, str, Any]]:
        return [(f"{verb.capitalize()} job {self.job_id}", f"{verb} this job",
                 lambda v=verb: self.capp.job_action(v, self.job_id)) for verb in ("retry", "cancel", "run now")]
