"""A widget that shows one renderable and repaints without a layout pass when its height holds.

``Static.update`` always asks for a layout refresh (a reflow of the whole screen);
for lines that change several times a second (banner, counters, tables) that reflow
was the largest cost under load. ``paint`` repaints only, unless the line count changed.
"""

from __future__ import annotations

from rich.console import RenderableType
from rich.text import Text
from textual.widget import Widget


class Painted(Widget):
    DEFAULT_CSS = """
    Painted { height: auto; }
    """

    def __init__(self, content: RenderableType = "", *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._content: RenderableType = content
        self._lines = _line_count(content)

    @property
    def content(self) -> RenderableType:
        return self._content

    def paint(self, content: RenderableType) -> None:
        if isinstance(content, Text) and isinstance(self._content, Text) and content == self._content:
            return
        if isinstance(content, str) and content == self._content:
            return
        lines = _line_count(content)
        self._content = content
        self.refresh(layout=lines != self._lines)
        self._lines = lines

    def render(self) -> RenderableType:
        return self._content


def _line_count(content: RenderableType) -> int | None:
    if isinstance(content, str):
        return content.count("\n") + 1
    if isinstance(content, Text):
        return content.plain.count("\n") + 1
    return None  # something richer: always lay out
