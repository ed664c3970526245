"""The jobs view's --where filter and its bulk actions (C, R), against the real nats-server."""

from __future__ import annotations

from textual.widgets import Input, Label

from chronos.tui.app import make_app
from chronos.tui.screens.confirm import ConfirmScreen
from chronos.tui.screens.jobs import JobsScreen
from chronos.tui.widgets.job_table import JobTable

from .conftest import table_rows, wait_until

SIZE = (160, 48)


async def seed(client, n: int = 6) -> list[str]:
    await client.register_tasks(["s.tui"])
    specs = [client.build_spec("s.tui", {"customer_id": 42 if i % 3 == 0 else i}, delay=3600,
                               annotations={"team": "billing"}) for i in range(n)]
    return await client.submit_specs(specs)


async def filtered(pilot, screen: JobsScreen, text: str) -> None:
    await pilot.press("slash")
    box = screen.query_one("#filter", Input)
    box.value = text
    await pilot.press("enter")


async def test_filter_by_args_then_cancel_all_matches_after_confirming(client, settings):
    ids = await seed(client)
    chosen = {ids[0], ids[3]}
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.page is not None,
                         what="jobs view")
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        await filtered(pilot, screen, "args.customer_id=42")
        await wait_until(pilot, lambda: screen.page is not None and screen.query_spec.where == ("args.customer_id=42",)
                         and {r[0] for r in table_rows(screen.query_one(JobTable))} == chosen, what="2 matches")
        # A malformed filter is a line in the status bar; the last query stays.
        await filtered(pilot, screen, "args.=1")
        await wait_until(pilot, lambda: "a key name is expected" in str(screen.query_one("#jobs-status", Label).render()),
                         what="error shown")
        assert screen.query_spec.where == ("args.customer_id=42",)
        # A page load (a reload here; the periodic refresh is the same) keeps it until the next
        # filter: it was wiped by the last query's load landing after it.
        before = screen.page
        await pilot.press("g")
        await wait_until(pilot, lambda: screen.page is not before, what="a reload")
        assert "a key name is expected" in str(screen.query_one("#jobs-status", Label).render())
        await pilot.press("C")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        assert "Cancel 2 jobs matching" in app.screen.question
        await pilot.press("y")

        async def states() -> dict[str, str]:
            return {i: (await client.get(i)).state.value for i in ids}

        for _ in range(200):
            now = await states()
            if {i for i, s in now.items() if s == "cancelled"} == chosen:
                break
            await pilot.pause(0.05)
        assert {i for i, s in (await states()).items() if s == "cancelled"} == chosen
        assert {s for i, s in (await states()).items() if i not in chosen} == {"scheduled"}


async def test_bulk_needs_a_filter_and_no_free_words(client, settings):
    await seed(client, 2)
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, JobsScreen), what="jobs view")
        await pilot.press("C")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        assert any("filter first" in str(n.message) for n in app._notifications)
