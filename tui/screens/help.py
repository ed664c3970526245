"""Help: every binding, view by view, the fast path to a failure, and the : commands."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

FAST_PATH = ("From launch: [b]l[/b] opens the latest failure (error and traceback first), [b]r[/b] retries it: "
             "2 keys. Or [b]f[/b] (failed jobs, newest first), [b]enter[/b], [b]r[/b]: 3 keys.")

COMMANDS = (
    (":jobs [filter]", "jobs view, optionally filtered (e.g. :jobs state:failed queue:mail)"),
    (":queues", "dashboard, queue table focused"),
    (":workers", "dashboard, workers table focused"),
    (":schedules", "schedules view"),
    (":dlq", "dead-letter queue view"),
    (":limits", "rate and concurrency limits: holders, waiting, current rate (also 6)"),
    (":events", "live event tail (also :logs)"),
    (":dashboard", "dashboard (also :dash)"),
    (":failed", "jobs that failed, newest first"),
    (":audit", "the last operator actions: who, as which role, what, when"),
    (":job ID", "open one job"),
    (":help", "this screen"),
    (":quit", "leave (also :q)"),
)


def _keys(bindings: Iterable[Any]) -> list[tuple[str, str]]:
    out = []
    for b in bindings:
        if isinstance(b, tuple):
            b = Binding(*b)
        if b.description:
            out.append((b.key_display or b.key, b.description))
    return out


def help_table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    for key, desc in rows:
        t.add_row(key.replace("slash", "/").replace("right_square_bracket", "]")
                  .replace("left_square_bracket", "[").replace("question_mark", "?").replace("colon", ":"), desc)
    return t


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("q", "dismiss", "Close"),
                Binding("question_mark", "dismiss", "Close", show=False)]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 96; height: 90%; border: thick $accent; background: $surface; padding: 0 1; }
    """

    def __init__(self, sections: list[tuple[str, list[tuple[str, str]]]], readonly: bool) -> None:
        super().__init__()
        self.sections = sections
        self.readonly = readonly

    def compose(self) -> ComposeResult:
        parts: list[Any] = [Text.from_markup("[b]chronos console[/b]: keyboard first; the mouse works too."),
                            Text.from_markup(FAST_PATH), Text("")]
        if self.readonly:
            parts.append(Text("READ-ONLY: actions (retry, cancel, run now, pause, limits, replay, purge) are hidden "
                              "and refused.", style="bold yellow"))
        for title, rows in self.sections:
            parts.append(help_table(title, rows))
            parts.append(Text(""))
        parts.append(help_table(": commands (k9s style)", list(COMMANDS)))
        parts.append(Text("\nctrl+p opens the command palette: every view and action is there too.", style="dim"))
        with VerticalScroll():
            yield Static(Group(*parts), id="help-body")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)


def sections_for(app_bindings: Iterable[Any], screens: list[tuple[str, type]], readonly: bool
                 ) -> list[tuple[str, list[tuple[str, str]]]]:
    out = [("everywhere", _keys(app_bindings))]
    for title, cls in screens:
        hidden = getattr(cls, "MUTATING", frozenset()) if readonly else frozenset()
        rows = _keys(b for b in cls.BINDINGS if not (isinstance(b, Binding) and b.action in hidden))
        out.append((title, rows))
    return out
