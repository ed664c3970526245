"""Audit: the last operator actions (who, as which role, what, when), from the audit stream. ``:audit``."""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

LIMIT = 50


class AuditScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "app.pop_screen", "Close"), Binding("r", "reload", "Reload")]
    DEFAULT_CSS = """
    AuditScreen { align: center middle; }
    AuditScreen > VerticalScroll { width: 90%; height: 80%; border: thick $accent; background: $surface; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("loading the audit trail…", id="audit")

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self.load()

    @work(exclusive=True, group="audit")
    async def load(self) -> None:
        from chronos import console

        view = self.query_one("#audit", Static)
        client = getattr(getattr(self.app, "feeds", None) and self.app.feeds.source, "client", None)  # type: ignore[attr-defined]
        if client is None:
            view.update("the audit trail needs a live connection")
            return
        try:
            entries = await console.audit_trail(client, limit=LIMIT)
        except Exception as exc:  # shown, not raised: a console must stay up
            view.update(f"cannot read the audit trail: {exc}")
            return
        view.update(render(entries))


def render(entries: list[Any]) -> Any:
    if not entries:
        return "no operator actions recorded"
    table = Table(title=f"last {len(entries)} operator actions (newest first)", expand=True)
    for col in ("when", "role", "user", "action", "target"):
        table.add_column(col)
    from chronos.console import role_label

    for e in reversed(entries):
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at)), role_label(e), e.user,
                      e.action, e.target)
    return table
