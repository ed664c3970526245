"""A read-only table drawn as one Text: for views that change several times a second.

A DataTable re-renders every cell after any cell changes (its cache is keyed on an
update counter), which cost about 1 ms per cell under load. This draws the whole
table as a single styled Text and redraws only when the content actually changed.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text

from .painted import Painted

Cell = str | Text


class TextTable(Painted, can_focus=True):
    DEFAULT_CSS = """
    TextTable { height: auto; padding: 0 1; }
    TextTable:focus { background: $boost; }
    """
    COLUMNS: Sequence[tuple[str, str]] = ()  # (key, label)
    RIGHT: frozenset[str] = frozenset()  # keys of right-aligned columns

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(Text(""), id=id, classes=classes)
        self.rows: list[tuple[Cell, ...]] = []

    def sync(self, rows: Sequence[tuple[str, tuple[Cell, ...]]]) -> None:
        new = [cells for _, cells in rows]
        if new == self.rows and self.content.plain:
            return
        self.rows = new
        self.paint(self._draw())

    def _draw(self) -> Text:
        keys = [k for k, _ in self.COLUMNS]
        labels = [label for _, label in self.COLUMNS]
        widths = [cell_len(label) for label in labels]
        plain = [[c.plain if isinstance(c, Text) else c for c in row] for row in self.rows]
        for row in plain:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], cell_len(cell))
        out = Text(no_wrap=True, overflow="ellipsis")
        self._line(out, labels, labels, widths, keys, style="bold")
        for row, texts in zip(plain, self.rows):
            out.append("\n")
            self._line(out, row, texts, widths, keys)
        return out

    def _line(self, out: Text, plain: Sequence[str], cells: Sequence[Cell], widths: list[int], keys: list[str],
              style: str = "") -> None:
        for i, (p, cell) in enumerate(zip(plain, cells)):
            pad = " " * (widths[i] - cell_len(p))
            if i:
                out.append("  ")
            if keys[i] in self.RIGHT:
                out.append(pad)
            if isinstance(cell, Text):
                out.append_text(cell)
            else:
                out.append(cell, style=style)
            if keys[i] not in self.RIGHT and i < len(keys) - 1:
                out.append(pad)

    def plain_rows(self) -> list[list[str]]:
        return [[c.plain if isinstance(c, Text) else c for c in row] for row in self.rows]
