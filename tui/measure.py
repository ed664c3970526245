"""How long the console takes to show counts and a page of jobs: for ``chronos bench listing --tui``.

Runs the real app headless (``App.run_test``) on a connected client: the time from
start until the dashboard has counts (from a scheduler's job index, or a record
scan without one), and from pressing ``2`` until the jobs view shows rows.
"""

from __future__ import annotations

import time
from typing import Any

from chronos.client import Client
from chronos.config import Settings


async def measure_paint(settings: Settings, client: Client, timeout: float = 120.0) -> dict[str, float]:
    from .app import make_app
    from .screens.jobs import JobsScreen

    app = make_app(settings, client)
    began = time.perf_counter()
    out: dict[str, float] = {}
    async with app.run_test(size=(160, 48)) as pilot:

        async def until(cond: Any) -> float:
            start = time.perf_counter()
            while not cond():
                if time.perf_counter() - start > timeout:
                    raise TimeoutError("the console did not paint in time")
                await pilot.pause(0.005)
            return time.perf_counter()

        out["counts_ms"] = round((await until(lambda: app.feeds.tally.seeded) - began) * 1000, 1)
        pressed = time.perf_counter()
        await pilot.press("2")

        def rows() -> bool:
            screen = app.screen
            return isinstance(screen, JobsScreen) and screen.page is not None and bool(screen.page.jobs)

        out["jobs_rows_ms"] = round((await until(rows) - pressed) * 1000, 1)
        screen = app.screen
        out["jobs_load_ms"] = round(getattr(screen, "_load_cost", 0.0) * 1000, 1)  # the page's own fetch
        # Once more, the view already built: back to the dashboard, then the jobs view again.
        await pilot.press("1")
        await pilot.pause(0.2)
        screen.page = None
        pressed = time.perf_counter()
        await pilot.press("2")
        screen.reload(force=True)
        out["jobs_again_ms"] = round((await until(rows) - pressed) * 1000, 1)
    return out
