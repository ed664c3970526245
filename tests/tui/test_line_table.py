"""LineTable (the jobs table's base): cursor, selection, header clicks, and lines rendered only when seen."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult

from chronos.tui.widgets.line_table import LineTable


class Table(LineTable):
    COLUMNS = (("id", "ID"), ("task", "TASK"), ("state", "STATE"))


class Host(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.selected: list[str] = []
        self.headers: list[str] = []

    def compose(self) -> ComposeResult:
        yield Table(id="t")

    def on_line_table_row_selected(self, event: LineTable.RowSelected) -> None:
        self.selected.append(event.row_key)

    def on_line_table_header_selected(self, event: LineTable.HeaderSelected) -> None:
        self.headers.append(event.column_key)


def rows(n: int, start: int = 0) -> list[tuple[str, tuple[Any, ...]]]:
    return [(f"job{i:05d}", (f"job{i:05d}", f"task{i % 3}", Text("failed", style="red") if i % 2 else "done"))
            for i in range(start, start + n)]


def screen_text(app: App[Any]) -> str:
    table = app.query_one(Table)
    return "\n".join(table.render_line(y).text for y in range(table.size.height))


async def test_rows_cursor_and_selection() -> None:
    app = Host()
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(Table)
        table.focus()
        table.sync(rows(5))
        await pilot.pause()
        text = screen_text(app)
        assert text.splitlines()[0].split() == ["ID", "TASK", "STATE"]
        assert "job00003  task0  failed" in text
        assert table.selected_key() == "job00000"
        await pilot.press("down", "down", "enter")
        assert table.selected_key() == "job00002"
        await pilot.pause()
        assert app.selected == ["job00002"]
        await pilot.press("end")
        assert table.selected_key() == "job00004"
        await pilot.press("down")  # stays on the last row
        assert table.selected_key() == "job00004"
        # New content: the cursor follows its key; when the key is gone it stays in range.
        table.sync(rows(3, start=3))
        assert table.selected_key() == "job00004"
        table.sync(rows(2, start=10))
        assert table.selected_key() == "job00011"
        assert table.plain_rows() == [["job00010", "task1", "done"], ["job00011", "task2", "failed"]]


async def test_clicks_move_the_cursor_select_and_sort() -> None:
    app = Host()
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(Table)
        table.sync(rows(4))
        await pilot.pause()
        x = sum(c.get_render_width(table) for c in table.ordered_columns[:2]) + 2  # inside STATE
        await pilot.click(Table, offset=(x, 0))
        await pilot.click(Table, offset=(2, 0))
        await pilot.click(Table, offset=(2, 3))  # the third row
        assert table.selected_key() == "job00002"
        await pilot.click(Table, offset=(2, 3))  # again: selects it
        await pilot.pause()
        assert app.headers == ["state", "id"]
        assert app.selected == ["job00002"]


async def test_only_lines_in_view_are_rendered_and_the_cursor_scrolls() -> None:
    app = Host()
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(Table)
        table.focus()
        table.sync(rows(1000))
        await pilot.pause()
        assert table.row_count == 1000
        # A thousand rows given, only the header and what fits on screen rendered.
        assert 0 < len(table._lines) <= table.size.height
        await pilot.press("end")
        await pilot.pause()
        assert table.selected_key() == "job00999"
        assert "job00999" in screen_text(app)
        assert "job00000" not in screen_text(app)
        assert len(table._lines) <= 2 * table.size.height
        await pilot.press("home")
        await pilot.pause()
        assert "job00000" in screen_text(app)
