"""TUI fixtures: a task registry for real jobs, an app factory, and condition waits for Pilot.

Live tests drive the console against the session nats-server with a real worker;
snapshot tests use tests/tui/fakes.py (fixed data, a FakeClock). Every wait is on
a condition with a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from chronos import Registry
from chronos.models import Backoff

FAST = Backoff(base=0.05, cap=0.1, jitter=False)


class Tasks:
    """Task bodies for the console's tests, with what they saw."""

    def __init__(self) -> None:
        self.flaky_seen: set[str] = set()
        self.release = asyncio.Event()

    def registry(self) -> Registry:
        from chronos import current_job

        reg = Registry()

        async def ok(x: int = 1) -> dict:
            return {"x": x}

        async def boom() -> None:
            raise ValueError("kaboom: the widget is broken")

        async def flaky_once() -> str:
            job = current_job().job_id
            if job not in self.flaky_seen:
                self.flaky_seen.add(job)
                raise RuntimeError("first try always fails")
            return "fine the second time"

        async def blocks() -> str:
            await self.release.wait()
            return "released"

        for fn in (ok, boom, flaky_once, blocks):
            reg.register(fn, name=fn.__name__)
        return reg


@pytest.fixture
def tasks() -> Tasks:
    return Tasks()


async def wait_until(pilot: Pilot[Any], predicate: Callable[[], Any], timeout: float = 20.0,
                     what: str = "condition") -> Any:
    """Let the app run until ``predicate()`` is truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


async def wait_for(coro_fn: Callable[[], Any], predicate: Callable[[Any], bool], timeout: float = 20.0,
                   what: str = "condition") -> Any:
    """Poll an async read (a record, a schedule) until ``predicate`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await coro_fn()
        if predicate(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {value!r}")
        await asyncio.sleep(0.05)


def table_rows(table: Any) -> list[list[str]]:
    """A table's cells as plain strings (a DataTable or a TextTable)."""
    if hasattr(table, "plain_rows"):
        return table.plain_rows()
    out = []
    for i in range(table.row_count):
        out.append([str(getattr(c, "plain", c)) for c in table.get_row_at(i)])
    return out


def static_text(widget: Any) -> str:
    """What a Static shows, as plain text (rich renderables rendered at 160 columns)."""
    from rich.console import Console

    content = widget.content
    if isinstance(content, str):
        return content
    console = Console(width=160, record=True, color_system=None, force_terminal=False)
    console.print(content)
    return console.export_text()
