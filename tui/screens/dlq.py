"""DLQ: inspect entries (reason, traceback), replay one (r) or all filtered (A), purge (P), both confirmed."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.syntax import Syntax
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Input, Label, Static

from chronos.models import DLQEntry

from ..format import ago, short, stamp
from ..messages import DlqLoaded, LoadFailed
from ..widgets.sync_table import SyncTable
from .base import ChronosScreen
from .confirm import ConfirmScreen


def entry_matches(e: DLQEntry, text: str) -> bool:
    for word in text.split():
        key, sep, value = word.partition(":")
        if sep and key == "task":
            if e.spec is None or e.spec.task != value:
                return False
        elif sep and key == "queue":
            if e.spec is None or e.spec.queue != value:
                return False
        elif word.lower() not in " ".join([e.job_id or "", e.spec.task if e.spec else "", e.reason]).lower():
            return False
    return True


def task_only(text: str) -> str | None | bool:
    """The task named by a filter that is exactly ``task:NAME`` (None for no filter, False otherwise)."""
    words = text.split()
    if not words:
        return None
    if len(words) == 1 and words[0].startswith("task:") and len(words[0]) > 5:
        return words[0][5:]
    return False


class DlqTable(SyncTable):
    COLUMNS = (("seq", "SEQ"), ("job", "JOB"), ("task", "TASK"), ("queue", "QUEUE"), ("attempts", "ATTEMPTS"),
               ("at", "AT"), ("reason", "REASON"))

    def show(self, entries: list[DLQEntry], now: float) -> None:
        self.sync([(str(e.seq), (
            str(e.seq), e.job_id or "-", e.spec.task if e.spec else "(malformed)",
            f"{e.spec.queue}/{e.spec.priority}" if e.spec else "-", str(e.attempts), ago(e.at, now),
            Text(short(e.reason, 70), style="red"),
        )) for e in entries])


class DlqScreen(ChronosScreen):
    VIEW = "dlq"
    MUTATING = frozenset({"replay", "replay_all", "purge"})
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("r", "replay", "Replay"),
        Binding("A", "replay_all", "Replay all shown"),
        Binding("P", "purge", "Purge"),
        Binding("g", "reload", "Reload"),
        Binding("escape", "unfocus", "Done", show=False),
    ]
    DEFAULT_CSS = """
    DlqScreen #dlq-filter { display: none; }
    DlqScreen #dlq-filter.-visible { display: block; }
    DlqScreen #dlq { height: 1fr; }
    DlqScreen #dlq-entry { height: 1fr; border-top: solid $primary; padding: 0 1; }
    DlqScreen #dlq-status { height: 1; padding: 0 1; background: $boost; }
    """
    RELOAD_EVERY = 3.0

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[DLQEntry] = []
        self.filter_text = ""

    def compose(self) -> ComposeResult:
        yield self.banner()
        yield Input(placeholder="filter: task:NAME queue:NAME words…", id="dlq-filter")
        yield DlqTable(id="dlq")
        with VerticalScroll(id="dlq-entry"):
            yield Static("", id="dlq-entry-body")
        yield Label("loading…", id="dlq-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DlqTable).focus()
        self.reload(force=True)
        self.set_interval(self.RELOAD_EVERY, lambda: self.is_current and self.reload())

    def on_screen_resume(self) -> None:
        self.reload()

    def reload(self, force: bool = False) -> None:
        self.capp.feeds.load_dlq(self, force=force)

    def shown(self) -> list[DLQEntry]:
        return [e for e in self.entries if entry_matches(e, self.filter_text)]

    def on_dlq_loaded(self, message: DlqLoaded) -> None:
        self.entries = message.entries
        self._show_entries()

    def _show_entries(self) -> None:
        shown = self.shown()
        self.query_one(DlqTable).show(shown, self.capp.clock.now())
        status = f"{len(shown):,} of {len(self.entries):,} entries"
        if self.filter_text:
            status += f" · filter: {self.filter_text}"
        self.query_one("#dlq-status", Label).update(status + " · enter: open job")
        self._show_entry()

    def on_load_failed(self, message: LoadFailed) -> None:
        self.query_one("#dlq-status", Label).update(f"error: {message.error}")

    def selected(self) -> DLQEntry | None:
        key = self.query_one(DlqTable).selected_key()
        return next((e for e in self.entries if str(e.seq) == key), None)

    @on(DataTable.RowHighlighted, "#dlq")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_entry()

    def _show_entry(self) -> None:
        e = self.selected()
        body = self.query_one("#dlq-entry-body", Static)
        if e is None:
            body.update("the DLQ is empty" if not self.entries else "")
            return
        parts: list[Any] = [Text(f"seq {e.seq} · job {e.job_id or '-'} · {stamp(e.at)} · subject {e.subject or '-'}"),
                            Text(e.reason, style="bold red")]
        if e.traceback:
            parts.append(Syntax(e.traceback.rstrip(), "pytb", theme="ansi_dark", word_wrap=True))
        if e.raw is not None:
            parts.append(Text(f"raw payload ({len(e.raw)} bytes): {e.raw[:200]!r}"))
        body.update(Group(*parts))

    @on(DataTable.RowSelected, "#dlq")
    def _open(self, event: DataTable.RowSelected) -> None:
        e = self.selected()
        if e is not None and e.job_id:
            self.capp.open_job(e.job_id)

    def action_filter(self) -> None:
        box = self.query_one("#dlq-filter", Input)
        box.add_class("-visible")
        box.focus()

    @on(Input.Submitted, "#dlq-filter")
    def _filter(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        if not self.filter_text:
            event.input.remove_class("-visible")
        self._show_entries()
        self.query_one(DlqTable).focus()

    def action_unfocus(self) -> None:
        self.query_one(DlqTable).focus()

    def action_reload(self) -> None:
        self.reload(force=True)

    def action_replay(self) -> None:
        e = self.selected()
        if e is None:
            return
        seq = e.seq
        self.capp.feeds.act("replay", f"DLQ #{seq}", lambda s: s.dlq_replay(seq), lambda rec: f"job {rec.id} queued")

    def action_replay_all(self) -> None:
        seqs = [e.seq for e in self.shown() if e.spec is not None]
        if not seqs:
            self.notify("nothing to replay")
            return

        async def replay_all(source: Any) -> int:
            for seq in seqs:
                await source.dlq_replay(seq)
            return len(seqs)

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.capp.feeds.act("replay all", f"{len(seqs)} DLQ entries", replay_all, lambda n: f"{n} replayed")

        if self.capp.readonly:
            self.capp.feeds.act("replay all", "", replay_all)  # refused, with a notice
            return
        self.app.push_screen(ConfirmScreen(f"Replay {len(seqs)} DLQ entr{'y' if len(seqs) == 1 else 'ies'}?"),
                             confirmed)

    def action_purge(self) -> None:
        task = task_only(self.filter_text)
        if task is False:
            self.notify("purge works on the whole DLQ or on a filter of exactly task:NAME", severity="warning")
            return
        what = f"every DLQ entry of task {task}" if task else f"ALL {len(self.entries)} DLQ entries"

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.capp.feeds.act("purge", what, lambda s: s.dlq_purge(task=task or None),
                                    lambda n: f"{n} removed")

        if self.capp.readonly:
            self.capp.feeds.act("purge", what, lambda s: s.dlq_purge(task=task or None))
            return
        self.app.push_screen(ConfirmScreen(f"Purge {what}? This cannot be undone."), confirmed)

    def after_action(self, message: Any) -> None:
        if self.is_current:
            self.reload(force=True)

    def palette_actions(self) -> list[tuple[str, str, Any]]:
        out: list[tuple[str, str, Any]] = [("Replay all shown DLQ entries", "replay every entry the filter shows",
                                            self.action_replay_all),
                                           ("Purge the DLQ", "purge all entries, or those of the filtered task",
                                            self.action_purge)]
        e = self.selected()
        if e is not None:
            out.insert(0, (f"Replay DLQ entry {e.seq}", f"job {e.job_id}", self.action_replay))
        return out
