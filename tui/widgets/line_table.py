"""A read-only table with a row cursor that paints one pre-rendered line per visible row.

A DataTable renders each cell on its own (about 1 ms a cell on this box) and redraws all
of them once its column widths settle, so a fresh page of jobs cost two full renders of
~400 cells before its rows were on screen. This table renders a row once, as one styled
line (a Strip), when it first comes into view, and paints from that cache until its
content, the width or the cursor changes. It holds only the rows it is given (a page).

Keys: up/down, page up/down, home/end move the cursor; enter selects the row. A click
moves the cursor, a click on the cursor's row selects it, a click on a header asks for
a sort (``HeaderSelected``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

Cell = str | Text
GAP = 2  # spaces between two columns
LEFT = 1  # space before the first column


class Column:
    """A column's key, label and content width (``get_render_width`` as a DataTable's column has it)."""

    def __init__(self, key: str, label: str, width: int) -> None:
        self.key = key
        self.label = label
        self.width = width

    def get_render_width(self, table: Any) -> int:
        return self.width + GAP


class LineTable(ScrollView, can_focus=True):
    COMPONENT_CLASSES = {"linetable--header", "linetable--cursor"}
    DEFAULT_CSS = """
    LineTable { height: 1fr; background: $surface; color: $foreground; }
    LineTable > .linetable--header { text-style: bold; background: $panel; color: $foreground; }
    LineTable > .linetable--cursor {
        background: $block-cursor-blurred-background;
        color: $block-cursor-blurred-foreground;
        text-style: $block-cursor-blurred-text-style;
    }
    LineTable:focus > .linetable--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: $block-cursor-text-style;
    }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "cursor(-1000000)", "First", show=False),
        Binding("end", "cursor(1000000)", "Last", show=False),
        Binding("enter", "select", "Select", show=False),
    ]
    COLUMNS: Sequence[tuple[str, str]] = ()  # (key, label)

    cursor_row: reactive[int] = reactive(0, always_update=True)

    class RowSelected(Message):
        def __init__(self, table: LineTable, row_key: str) -> None:
            super().__init__()
            self.table = table
            self.row_key = row_key

        @property
        def control(self) -> LineTable:
            return self.table

    class HeaderSelected(Message):
        def __init__(self, table: LineTable, column_key: str) -> None:
            super().__init__()
            self.table = table
            self.column_key = column_key

        @property
        def control(self) -> LineTable:
            return self.table

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.rows: list[tuple[Cell, ...]] = []
        self._keys: list[str] = []
        self._widths = [cell_len(label) for _, label in self.COLUMNS]
        self._lines: dict[int, Strip] = {}  # row index -> its line, unstyled by the cursor; -1 the header
        self._line_width = 0

    # --- content ------------------------------------------------------------------------------------------
    def sync(self, rows: Sequence[tuple[str, tuple[Cell, ...]]]) -> None:
        """Show exactly these rows (key, cells); the cursor stays on its row's key when that is still shown."""
        keys = [k for k, _ in rows]
        cells = [c for _, c in rows]
        if keys == self._keys and cells == self.rows:
            return
        selected = self.selected_key()
        self._keys, self.rows = keys, cells
        widths = [cell_len(label) for _, label in self.COLUMNS]
        for row in cells:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], cell_len(cell.plain if isinstance(cell, Text) else cell))
        self._widths = widths
        self._lines.clear()
        self.virtual_size = Size(0, len(keys) + 1)  # lines are cut to the width: no sideways scroll
        if selected in keys:
            self.cursor_row = keys.index(selected)
        else:
            self.cursor_row = min(self.cursor_row, max(0, len(keys) - 1))
        self.refresh()

    @property
    def row_count(self) -> int:
        return len(self._keys)

    @property
    def ordered_columns(self) -> list[Column]:
        return [Column(k, label, w) for (k, label), w in zip(self.COLUMNS, self._widths)]

    def selected_key(self) -> str | None:
        if not self._keys or not 0 <= self.cursor_row < len(self._keys):
            return None
        return self._keys[self.cursor_row]

    def plain_rows(self) -> list[list[str]]:
        return [[c.plain if isinstance(c, Text) else c for c in row] for row in self.rows]

    def get_row_at(self, index: int) -> list[Cell]:
        return list(self.rows[index])

    # --- painting -----------------------------------------------------------------------------------------
    def _text(self, cells: Sequence[Cell], style: str = "") -> Text:
        out = Text(" " * LEFT, no_wrap=True, end="")
        last = len(cells) - 1
        for i, cell in enumerate(cells):
            if isinstance(cell, Text):
                out.append_text(cell)
                width = cell_len(cell.plain)
            else:
                out.append(cell, style=style)
                width = cell_len(cell)
            if i < last:
                out.append(" " * (self._widths[i] - width + GAP))
        return out

    def _line(self, index: int, width: int) -> Strip:
        line = self._lines.get(index)
        if line is None:
            if index < 0:
                text = self._text([label for _, label in self.COLUMNS])
                base = self.get_component_rich_style("linetable--header")
            else:
                text = self._text(self.rows[index])
                base = self.rich_style
            segments = list(Segment.apply_style(text.render(self.app.console), style=base))
            line = Strip(segments).crop_extend(0, width, base)
            self._lines[index] = line
        return line

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if width != self._line_width:
            self._line_width = width
            self._lines.clear()
        if y == 0:
            return self._line(-1, width)
        index = self.scroll_offset.y + y - 1
        if not 0 <= index < len(self.rows):
            return Strip.blank(width, self.rich_style)
        line = self._line(index, width)
        if index == self.cursor_row:
            cursor: Style = self.get_component_rich_style("linetable--cursor")
            line = Strip(Segment.apply_style(list(line), post_style=cursor), line.cell_length)
        return line

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()  # focus, theme: the lines' base style may have changed

    # --- the cursor -----------------------------------------------------------------------------------------
    def validate_cursor_row(self, row: int) -> int:
        return max(0, min(row, len(self._keys) - 1)) if self._keys else 0

    def watch_cursor_row(self, old: int, new: int) -> None:
        self._scroll_to_cursor()
        self.refresh()

    def _scroll_to_cursor(self) -> None:
        visible = max(1, self.size.height - 1)  # the header takes a line
        top = round(self.scroll_offset.y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + visible:
            self.scroll_to(y=self.cursor_row - visible + 1, animate=False)

    def action_cursor(self, delta: int) -> None:
        self.cursor_row = self.cursor_row + delta

    def action_page(self, delta: int) -> None:
        self.cursor_row = self.cursor_row + delta * max(1, self.size.height - 2)

    def action_select(self) -> None:
        key = self.selected_key()
        if key is not None:
            self.post_message(self.RowSelected(self, key))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = LEFT
            for (key, _), width in zip(self.COLUMNS, self._widths):
                if x <= event.x < x + width + GAP:
                    self.post_message(self.HeaderSelected(self, key))
                    return
                x += width + GAP
            return
        index = self.scroll_offset.y + event.y - 1
        if 0 <= index < len(self._keys):
            if index == self.cursor_row:
                self.action_select()
            else:
                self.cursor_row = index
