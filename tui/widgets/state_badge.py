"""A job state shown as a coloured badge."""

from __future__ import annotations

from textual.widgets import Static

from ..format import STATE_STYLES


class StateBadge(Static):
    DEFAULT_CSS = """
    StateBadge { width: auto; padding: 0 1; text-style: bold; }
    """

    def show(self, state: object) -> None:
        s = str(state)
        self.styles.color = None
        self.update(f"[{STATE_STYLES.get(s, '') or 'default'} reverse] {s} [/]")
