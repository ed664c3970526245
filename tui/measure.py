"""How long the console takes to show counts and a page of jobs: for ``chronos bench listing|scale``.

Runs the real app headless (``App.run_test``) on a connected client: the time from
start until the dashboard has counts (from a scheduler's job index, or a record
scan without one), and from pressing ``2`` until the jobs rows are *on screen*: the
first frame the compositor hands to the terminal that holds the page's first job id
(headless, Textual still composes every frame; only the write to the terminal is
skipped, so the frame is rendered to text here as a terminal would get it).
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
    shown: list[float] = []  # when a frame with the first job's id went out
    want: list[str] = []  # that id, once known

    def first_id() -> str | None:
        screen = app.screen
        if isinstance(screen, JobsScreen) and screen.page is not None and screen.page.jobs:
            return screen.page.jobs[0].id
        return None

    real_display = app._display

    def display(screen: Any, renderable: Any) -> None:
        real_display(screen, renderable)
        if shown or renderable is None or not isinstance(screen, JobsScreen):
            return
        job_id = want[0] if want else first_id()
        if job_id is not None and job_id in renderable.render_segments(app.console):
            shown.append(time.perf_counter())

    app._display = display  # type: ignore[method-assign]
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
        await until(lambda: bool(shown))
        out["jobs_rows_ms"] = round((shown[0] - pressed) * 1000, 1)
        screen = app.screen
        out["jobs_load_ms"] = round(getattr(screen, "_load_cost", 0.0) * 1000, 1)  # the page's own fetch
        # Once more, the view already built: back to the dashboard, then the jobs view again (its
        # rows are on screen at once; a reload follows in the background).
        want.append(first_id() or "")
        await pilot.press("1")
        await pilot.pause(0.2)
        shown.clear()
        pressed = time.perf_counter()
        await pilot.press("2")
        await until(lambda: bool(shown))
        out["jobs_again_ms"] = round((shown[0] - pressed) * 1000, 1)
    return out
