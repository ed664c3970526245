"""The console on a scheduler's job index: counts without a record scan, the jobs view as one indexed page."""

from __future__ import annotations

from chronos.tui.app import make_app
from chronos.tui.screens.dashboard import DashboardScreen
from chronos.tui.widgets.queue_table import QueueTable

from ..conftest import wait_for_state
from ..integration.test_scheduler import start_scheduler  # noqa: F401  (fixture)
from .conftest import table_rows, wait_until
from .test_live import SIZE, job_rows


async def test_counts_and_jobs_come_from_the_index(client, settings, start_worker, start_scheduler, tasks):  # noqa: F811
    await start_worker(tasks.registry())
    ids = [await client.submit("ok", [i]) for i in range(3)]
    for job_id in ids:
        await wait_for_state(client, job_id, "completed")
    sched = await start_scheduler(lead=False)
    assert sched.service.archiver is not None
    await sched.service.archiver.index_serving.wait()
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        dash = app.screen
        assert isinstance(dash, DashboardScreen)

        def default_row() -> list[str] | None:
            rows = table_rows(dash.query_one(QueueTable))
            return next((r for r in rows if r[0] == "default" and r[1] == "default"), None)

        await wait_until(pilot, lambda: (r := default_row()) and r[6] == "3", what="3 done from the index")
        feeds = app.feeds
        assert feeds._indexed and app.feeds.tally._indexed is not None  # counted by the index, not a scan
        # A new job shows in the counts within the next poll (the index follows the KV).
        await client.wait(await client.submit("ok", [9]), timeout=15)
        await wait_until(pilot, lambda: (r := default_row()) and r[6] == "4", what="4 done")
        await pilot.press("2")
        rows = await wait_until(pilot, lambda: len(job_rows(app)) >= 4 and job_rows(app), what="jobs rows")
        assert {r[0] for r in rows} >= set(ids)
