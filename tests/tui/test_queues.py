"""The console's queue actions (pause/resume, concurrency) and its Limits view, against the real
nats-server with a real worker (issue 16, deliverable 5)."""

from __future__ import annotations

from chronos.tui.app import make_app
from chronos.tui.screens.confirm import ConfirmScreen
from chronos.tui.screens.dashboard import DashboardScreen
from chronos.tui.screens.limits import LimitsScreen, LimitTable
from chronos.tui.screens.prompt import PromptScreen
from chronos.tui.widgets.queue_table import QueueTable

from ..conftest import wait_for_state
from .conftest import static_text, table_rows, wait_for, wait_until

SIZE = (160, 48)


def queue_cells(app, queue: str) -> list[str] | None:
    rows = table_rows(app.screen.query_one(QueueTable))
    return next((r for r in rows if r[0] == queue), None)


async def test_pause_resume_and_concurrency_from_the_dashboard(client, settings, start_worker, tasks):
    w = await start_worker(tasks.registry())
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, DashboardScreen)
        table = app.screen.query_one(QueueTable)
        await wait_until(pilot, lambda: table.selected == "default", what="the default queue selected")

        await pilot.press("p")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the pause confirmation")
        assert "Pause queue default on every worker" in static_text(app.screen.query_one("#question"))
        await pilot.press("y")
        flag = await wait_for(lambda: client.queue_flag("default"), lambda f: f is not None and f.paused,
                              what="the pause flag")
        assert flag.reason == "paused from the console"
        # ... and its pull requests opened before the pause have run out (one of them would hand a
        # new job over and back, and it would count as ack pending, not waiting: docs/queues.md).
        await wait_until(pilot, lambda: "default" in w.service.pauses.paused and not any(
            p.busy for p in w.service.pullers if p.queue == "default"), what="the worker to see the pause")
        await wait_until(pilot, lambda: (r := queue_cells(app, "default")) and "PAUSED" in r[-1],
                         what="PAUSED on the dashboard")

        # Paused: a job waits; the dashboard counts it.
        job = await client.submit("ok", [5])
        await wait_until(pilot, lambda: (r := queue_cells(app, "default")) and r[2] == "1", what="1 waiting")
        assert (await client.get(job)).state == "available"

        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen), what="the concurrency prompt")
        await pilot.press("3", "enter")
        lim = await wait_for(lambda: client.queue_limit("default"), lambda q: q is not None and q.concurrency == 3,
                             what="concurrency 3")
        assert lim.rate is None
        await wait_until(pilot, lambda: (r := queue_cells(app, "default")) and "max 3" in r[-1],
                         what="the limit on the dashboard")

        # A mistyped concurrency changes nothing.
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen), what="the prompt again")
        await pilot.press("ctrl+a", "ctrl+k", "0", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), what="back on the dashboard")
        assert (await client.queue_limit("default")).concurrency == 3

        await pilot.press("p")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the resume confirmation")
        assert "Resume queue default" in static_text(app.screen.query_one("#question"))
        await pilot.press("y")
        await wait_for_state(client, job, "completed")
        await wait_until(pilot, lambda: (r := queue_cells(app, "default")) and "PAUSED" not in r[-1],
                         what="PAUSED gone")


async def test_readonly_console_cannot_pause(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    app = make_app(settings, client, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(QueueTable)
        await wait_until(pilot, lambda: table.selected == "default", what="queue settings loaded")
        await pilot.press("p")
        await pilot.press("c")
        await pilot.pause(0.2)
        assert isinstance(app.screen, DashboardScreen)
        assert await client.queue_flag("default") is None
        assert await client.queue_limit("default") is None


async def test_limits_view_shows_holders_and_waiting(client, settings, start_worker, tasks):
    await client.set_queue_limit("default", concurrency=1)
    await start_worker(tasks.registry())
    first = await client.submit("blocks")
    await wait_for_state(client, first, "running")
    second = await client.submit("blocks")
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await wait_until(pilot, lambda: isinstance(app.screen, LimitsScreen), what="the limits view")
        screen = app.screen

        def row() -> list[str] | None:
            return next((r for r in table_rows(screen.query_one(LimitTable))
                         if r[0] == "queue" and r[1] == "default" and r[3] == "concurrency"), None)

        r = await wait_until(pilot, lambda: (x := row()) and first in x[6] and x, what="the holder listed")
        assert r[4] == "1" and r[5] == "1" and w_id(r[6])
        status = static_text(screen.query_one("#limits-status"))
        assert "default: max 1" in status
        tasks.release.set()
        for job in (first, second):
            await wait_for_state(client, job, "completed")
        await wait_until(pilot, lambda: (x := row()) is None or x[6] == "-", what="the slot released")


def w_id(holders: str) -> bool:
    """A holder reads '<job> on <worker> (<age>)'."""
    return " on " in holders and "(" in holders
