"""A DataTable that takes the whole desired content and changes only what differs.

Rewriting a table 4 times a second would reset the cursor and cost CPU; ``sync``
updates changed cells in place and only rebuilds when the row keys change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.widgets import DataTable


class SyncTable(DataTable):
    COLUMNS: Sequence[tuple[str, str]] = ()  # (key, label)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self._rows: dict[str, tuple[Any, ...]] = {}
        self._order: list[str] = []

    def on_mount(self) -> None:
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)

    def sync(self, rows: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        keys = [k for k, _ in rows]
        if keys != self._order:
            selected = self.selected_key()
            self.clear()
            for key, cells in rows:
                self.add_row(*cells, key=key)
            self._rows = dict(rows)
            self._order = keys
            if selected in self._rows:
                self.move_cursor(row=keys.index(selected))
            # Column widths are measured on the table's next idle; redraw once they are.
            self.check_idle()
            self.call_after_refresh(self._redraw)
            return
        cols = [k for k, _ in self.COLUMNS]
        for key, cells in rows:
            old = self._rows.get(key)
            if old == cells:
                continue
            for i, value in enumerate(cells):
                if old is None or old[i] != value:
                    self.update_cell(key, cols[i], value, update_width=True)
            self._rows[key] = cells

    def _redraw(self) -> None:
        self._clear_caches()  # DataTable keeps rendered lines cached across a width change
        self.refresh()

    def selected_key(self) -> str | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]
