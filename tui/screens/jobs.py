"""Jobs: a filterable (/), sortable, paged table over the KV (or the archive, with a)."""

from __future__ import annotations

import time
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Input, Label

from ..data import SORT_KEYS, JobQuery, JobsPage, parse_filter
from ..messages import JobsLoaded, LoadFailed
from ..widgets.job_table import JobTable
from .base import ChronosScreen

SORT_ORDER = ("created", "updated", "task", "state", "queue", "attempt")


class JobsScreen(ChronosScreen):
    VIEW = "jobs"
    MUTATING = frozenset({"retry", "cancel", "run_now", "bulk"})
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("escape", "clear_filter", "Clear", show=False),
        Binding("r", "retry", "Retry"),
        Binding("c", "cancel", "Cancel"),
        Binding("n", "run_now", "Run now"),
        Binding("R", "bulk('retry')", "Retry all", show=False),
        Binding("C", "bulk('cancel')", "Cancel all", show=False),
        Binding("o", "sort", "Sort"),
        Binding("O", "reverse", "Reverse", show=False),
        Binding("right_square_bracket", "page(1)", "Next page"),
        Binding("left_square_bracket", "page(-1)", "Prev page", show=False),
        Binding("a", "archive", "KV/archive"),
        Binding("g", "reload", "Reload", show=False),
    ]
    DEFAULT_CSS = """
    JobsScreen #filter { display: none; }
    JobsScreen #filter.-visible { display: block; }
    JobsScreen #jobs { height: 1fr; }
    JobsScreen #jobs-status { padding: 0 1; height: 1; background: $boost; }
    """
    RELOAD_EVERY = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.query_spec = JobQuery()
        self.page: JobsPage | None = None
        self.error: str | None = None  # the last load's
        # A malformed filter's message: kept until the next filter is applied. A page load (the
        # last query's, refreshed) must not wipe it before the operator has read it (a test saw it
        # wiped under load).
        self.filter_error: str | None = None
        self._loaded_at = float("-inf")
        self._load_started = 0.0
        self._load_cost = 0.0

    def compose(self) -> ComposeResult:
        yield self.banner()
        yield Input(placeholder="filter: state:failed queue:mail task:emails.send tag:x words…  (enter to apply)",
                    id="filter")
        yield JobTable(id="jobs")
        yield Label("", id="jobs-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(JobTable).focus()
        self.reload(force=True)
        self.set_interval(self.RELOAD_EVERY, self._periodic)

    def _periodic(self) -> None:
        if self.is_current and not isinstance(self.focused, Input) and self._stale():
            self.reload()

    def _stale(self) -> bool:
        """Due for a reload: a slow listing (a KV scan, when no scheduler index answers) spaces the next out."""

        return time.monotonic() - self._loaded_at >= max(self.RELOAD_EVERY, 5 * self._load_cost)

    def reload(self, force: bool = False) -> None:

        self._load_started = time.monotonic()
        self.capp.feeds.load_jobs(self.query_spec, self, force=force)

    def on_screen_resume(self) -> None:
        if self._stale():
            self.reload()

    # --- data ---------------------------------------------------------------------------------
    def on_jobs_loaded(self, message: JobsLoaded) -> None:
        if message.page.query != self.query_spec:
            return  # an answer to an older question

        self._loaded_at = time.monotonic()
        self._load_cost = self._loaded_at - self._load_started
        self.page = message.page
        self.error = message.page.error
        self.query_one(JobTable).show(message.page.jobs, self.capp.clock.now())
        self._status()

    def on_load_failed(self, message: LoadFailed) -> None:
        self.error = message.error
        self._status()

    def _status(self) -> None:
        q = self.query_spec
        parts = []
        if self.page is not None:
            total = self.page.total
            pages = max(1, -(-total // q.limit))
            parts.append(f"page {q.offset // q.limit + 1}/{pages} · {total:,} job{'s' if total != 1 else ''}")
        parts.append(f"sort {q.sort} {'↓' if q.descending else '↑'}")
        parts.append("archive" if q.archive else "KV")
        if q.describe():
            parts.append(f"filter: {q.describe()}")
        for error in (self.filter_error, self.error):
            if error:
                parts.append(f"error: {error}")
        self.query_one("#jobs-status", Label).update(" · ".join(parts))

    def set_query(self, query: JobQuery) -> None:
        self.query_spec = query
        self._status()
        self.reload(force=True)

    def apply_filter(self, text: str) -> None:
        from chronos.errors import ChronosError

        try:
            q = parse_filter(text, self.query_spec)
        except ChronosError as exc:  # a malformed args./annotations. filter: say so, keep the last query
            self.filter_error = str(exc)
            self._status()
            return
        self.filter_error = None
        if q.state == "failed" and self.query_spec.state != "failed":
            q = q.with_(sort="updated", descending=True)  # newest failure first
        self.query_one("#filter", Input).value = text
        self.set_query(q)

    def selected_id(self) -> str | None:
        return self.query_one(JobTable).selected_key()

    # --- keys ---------------------------------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-visible")
        box.focus()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.apply_filter(event.value)
        if not event.value:
            event.input.remove_class("-visible")
        self.query_one(JobTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_focus:
            if not box.value:
                box.remove_class("-visible")
            self.query_one(JobTable).focus()
            return
        if self.query_spec.describe():
            box.value = ""
            box.remove_class("-visible")
            self.set_query(parse_filter("", self.query_spec).with_(sort="created", descending=True))

    def action_sort(self) -> None:
        i = SORT_ORDER.index(self.query_spec.sort) if self.query_spec.sort in SORT_ORDER else -1
        self.set_query(self.query_spec.with_(sort=SORT_ORDER[(i + 1) % len(SORT_ORDER)], offset=0))

    def action_reverse(self) -> None:
        self.set_query(self.query_spec.with_(descending=not self.query_spec.descending, offset=0))

    @on(JobTable.HeaderSelected)
    def _header(self, event: JobTable.HeaderSelected) -> None:
        key = event.column_key
        if key not in SORT_KEYS:
            return
        if key == self.query_spec.sort:
            self.action_reverse()
        else:
            self.set_query(self.query_spec.with_(sort=key, descending=True, offset=0))

    def action_page(self, delta: int) -> None:
        q = self.query_spec
        total = self.page.total if self.page is not None else 0
        offset = q.offset + delta * q.limit
        if offset < 0 or (delta > 0 and offset >= total):
            self.app.bell()
            return
        self.set_query(q.with_(offset=offset))

    def action_archive(self) -> None:
        self.set_query(self.query_spec.with_(archive=not self.query_spec.archive, offset=0))

    def action_reload(self) -> None:
        self.reload(force=True)

    @on(JobTable.RowSelected, "#jobs")
    def _open(self, event: JobTable.RowSelected) -> None:
        self.capp.open_job(event.row_key)

    def action_retry(self) -> None:
        if (job_id := self.selected_id()) is not None:
            self.capp.job_action("retry", job_id)

    def action_bulk(self, verb: str) -> None:
        """Every job the filter matches (screens/bulk.py): counted, confirmed, then acted on."""
        from .bulk import start

        start(self, verb)

    def action_cancel(self) -> None:
        if (job_id := self.selected_id()) is not None:
            self.capp.job_action("cancel", job_id)

    def action_run_now(self) -> None:
        if (job_id := self.selected_id()) is not None:
            self.capp.job_action("run now", job_id)

    def after_action(self, message: Any) -> None:
        if self.is_current:
            self.reload(force=True)

    def palette_actions(self) -> list[tuple[str, str, Any]]:
        job_id = self.selected_id()
        if job_id is None:
            return []
        return [(f"{verb.capitalize()} job {job_id}", f"{verb} the selected job",
                 lambda v=verb: self.capp.job_action(v, job_id)) for verb in ("retry", "cancel", "run now")]
