"""Pilot tests of every screen and action against the real nats-server, with a real worker."""

from __future__ import annotations

import asyncio

from chronos.leadership import LeaderLease
from chronos.states import JobState
from chronos.tui.app import ChronosApp, make_app
from chronos.tui.screens.confirm import ConfirmScreen
from chronos.tui.screens.dashboard import DashboardScreen
from chronos.tui.screens.help import HelpScreen
from chronos.tui.screens.job_detail import JobDetailScreen
from chronos.tui.screens.jobs import JobsScreen
from chronos.tui.widgets.event_log import EventLog
from chronos.tui.widgets.job_table import JobTable
from chronos.tui.widgets.leader_banner import LeaderBanner
from chronos.tui.widgets.queue_table import QueueTable
from chronos.tui.widgets.workers_table import WorkersTable

from ..conftest import wait_for_state
from .conftest import FAST, static_text, table_rows, wait_for, wait_until

SIZE = (160, 48)


def banner_text(app: ChronosApp) -> str:
    return static_text(app.screen.query_one(LeaderBanner))


def jobs_screen(app: ChronosApp) -> JobsScreen | None:
    return app.screen if isinstance(app.screen, JobsScreen) else None


def job_rows(app: ChronosApp) -> list[list[str]]:
    screen = jobs_screen(app)
    return table_rows(screen.query_one(JobTable)) if screen is not None and screen.page is not None else []


def palette_top(app: ChronosApp) -> str | None:
    """The highlighted hit of the open command palette, as plain text."""
    from textual.command import CommandList, CommandPalette

    if not isinstance(app.screen, CommandPalette):
        return None
    hits = app.screen.query_one(CommandList)
    if hits.option_count == 0 or hits.highlighted is None:
        return None
    prompt = hits.get_option_at_index(hits.highlighted).prompt
    return str(getattr(prompt, "plain", prompt)).splitlines()[0].strip()


def detail_text(app: ChronosApp) -> str:
    if not isinstance(app.screen, JobDetailScreen) or app.screen.detail is None:
        return ""
    return "\n".join(static_text(w) for w in app.screen.query("#detail Static") if w.display)


async def test_dashboard_counts_workers_and_leader(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    ids = [await client.submit("ok", [i]) for i in range(3)]
    bad = await client.submit("boom", max_attempts=1)
    for job_id in ids:
        await wait_for_state(client, job_id, "completed")
    await wait_for_state(client, bad, "discarded")
    lease = LeaderLease(client.conn, node_id="sched-test", ttl=3)
    lease_task = asyncio.get_running_loop().create_task(lease.run())
    try:
        app = make_app(settings, client)
        async with app.run_test(size=SIZE) as pilot:
            dash = app.screen
            assert isinstance(dash, DashboardScreen)

            def default_row() -> list[str] | None:
                rows = table_rows(dash.query_one(QueueTable))
                return next((r for r in rows if r[0] == "default" and r[1] == "default"), None)

            # The DLQ depth comes from a separate poll than the done/failed counts: wait for both.
            row = await wait_until(pilot, lambda: (r := default_row()) and r[6] == "3" and r[8] == "1"
                                   and r[10] == "1" and r,
                                   what="3 done, 1 failed in the last 5 minutes and 1 in the DLQ")
            assert row[10] == "1"  # DLQ depth of the queue
            workers = await wait_until(pilot, lambda: table_rows(dash.query_one(WorkersTable)), what="workers")
            assert len(workers) == 1 and workers[0][5] == "running"
            await wait_until(pilot, lambda: "leader sched-test" in banner_text(app), what="leader banner")
            assert "term" in banner_text(app) and "left" in banner_text(app)
            assert "kaboom" in static_text(dash.query_one("#last-failure"))
            # live: a new completion moves the counts without a reload
            await client.wait(await client.submit("ok", [9]), timeout=15)
            await wait_until(pilot, lambda: (r := default_row()) and r[6] == "4", what="4 done")
            assert len(dash.refreshes) >= 2
    finally:
        lease_task.cancel()
        await asyncio.gather(lease_task, return_exceptions=True)


async def test_why_did_it_fail_and_retry_in_three_keys(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    await client.wait(await client.submit("ok"), timeout=15)
    bad = await client.submit("boom", max_attempts=1, backoff=FAST)
    await wait_for_state(client, bad, "discarded")
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.latest_stats is not None and app.latest_stats.seeded, what="seed")
        await pilot.press("f")  # 1: failed jobs, newest first
        await wait_until(pilot, lambda: job_rows(app) and job_rows(app)[0][0] == bad, what="failed list")
        await pilot.press("enter")  # 2: open it
        text = await wait_until(pilot, lambda: detail_text(app), what="job detail")
        assert "why it failed" in text and "kaboom: the widget is broken" in text
        assert "Traceback" in text and "ValueError" in text
        await pilot.press("r")  # 3: retry
        rec = await wait_for(lambda: client.get(bad), lambda r: r.gen == 2 and r.state == JobState.DISCARDED,
                             what="the retried job to run (and fail) again")
        assert rec.attempt == 2
        await wait_until(pilot, lambda: "attempts (2)" in detail_text(app), what="detail shows the new attempt")
        # f again from another view lands on the list, not on the detail left open in the jobs view
        await pilot.press("1")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), what="dashboard")
        await pilot.press("f")
        await wait_until(pilot, lambda: job_rows(app) and job_rows(app)[0][0] == bad, what="failed list again")


async def test_last_failure_is_two_keys_from_launch(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    bad = await client.submit("flaky_once", max_attempts=1)
    await wait_for_state(client, bad, "discarded")
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.latest_stats is not None and app.latest_stats.last_failure,
                         what="last failure")
        await pilot.press("l")
        text = await wait_until(pilot, lambda: detail_text(app), what="job detail")
        assert "first try always fails" in text
        await pilot.press("r")
        rec = await wait_for_state(client, bad, "completed")
        assert rec.result == "fine the second time"


async def test_cancel_asks_first(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    later = await client.submit("ok", delay=3600)
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: job_rows(app), what="jobs")
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("n")  # declined: nothing happens
        await wait_until(pilot, lambda: isinstance(app.screen, JobsScreen), what="back on jobs")
        assert (await client.get(later)).state == JobState.SCHEDULED
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await wait_for_state(client, later, "cancelled")
        await wait_until(pilot, lambda: job_rows(app) and job_rows(app)[0][2] == "cancelled", what="table update")


async def test_run_now_promotes_a_scheduled_job(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    later = await client.submit("ok", [5], delay=3600)
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        app.run_command(f"job {later}")
        await wait_until(pilot, lambda: detail_text(app), what="job detail")
        await pilot.press("n")
        rec = await wait_for_state(client, later, "completed")
        assert rec.result == {"x": 5}


async def test_jobs_filter_sort_and_pages(client, settings, start_worker, tasks):
    await client.register_tasks(["alpha", "beta"])
    for i in range(55):
        await client.submit("alpha", [i])
    for i in range(3):
        await client.submit("beta", [i], tags=["vip"])
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: len(job_rows(app)) == 50, what="first page of 50")
        screen = jobs_screen(app)
        assert screen is not None and screen.page is not None and screen.page.total == 58
        await pilot.press("right_square_bracket")
        await wait_until(pilot, lambda: len(job_rows(app)) == 8, what="second page of 8")
        await pilot.press("slash")
        await pilot.press(*"task:beta", "enter")
        await wait_until(pilot, lambda: len(job_rows(app)) == 3 and all(r[1] == "beta" for r in job_rows(app)),
                         what="filtered to beta")
        await pilot.press("slash")
        await pilot.press(*[("backspace") for _ in range(9)], *"tag:vip", "enter")
        await wait_until(pilot, lambda: len(job_rows(app)) == 3, what="tag filter")
        # sort by task, both ways
        await pilot.press("escape")
        await wait_until(pilot, lambda: len(job_rows(app)) == 50, what="filter cleared")
        while jobs_screen(app).query_spec.sort != "task":
            await pilot.press("o")
        await wait_until(pilot, lambda: job_rows(app) and job_rows(app)[0][1] == "beta", what="task sort desc")
        await pilot.press("O")
        await wait_until(pilot, lambda: job_rows(app) and job_rows(app)[0][1] == "alpha", what="task sort asc")
        # the mouse: clicking a header sorts too
        table = jobs_screen(app).query_one(JobTable)
        x = sum(c.get_render_width(table) for c in table.ordered_columns[:2]) + 2  # inside the STATE header
        await pilot.click(JobTable, offset=(x, 0))
        await wait_until(pilot, lambda: jobs_screen(app).query_spec.sort == "state", what="header click sorts")


async def test_job_detail_shows_spec_result_and_timeline(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    job = await client.submit("ok", {"x": 42}, tags=["t1"])
    await client.wait(job, timeout=15)
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("colon")
        await pilot.press(*f"job {job}", "enter")
        text = await wait_until(pilot, lambda: detail_text(app), what="job detail")
        assert '"x": 42' in text  # spec args and result
        assert "result" in text and "attempts (1)" in text and "completed" in text
        assert "timeline (" in text and "available" in text
        assert "why it failed" not in text
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), what="back")


async def test_event_tail_filters_and_pauses(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        log = app.screen.query_one(EventLog)
        await wait_until(pilot, lambda: app.feeds.source is not None and app.feeds.tally.seeded, what="feeds")
        first = await client.submit("ok", [1])
        await client.wait(first, timeout=15)
        await wait_until(pilot, lambda: any("completed" in line and first in line for line in log.lines),
                         what="completed line")
        await pilot.press("p")
        assert app.screen.paused
        before = log.line_count
        await client.wait(await client.submit("ok", [2]), timeout=15)
        await wait_until(pilot, lambda: app.screen.missed > 0, what="events counted while paused")
        assert log.line_count == before
        await pilot.press("p")
        await pilot.press("slash")
        await pilot.press(*"kind:completed", "enter")
        await wait_until(pilot, lambda: log.line_count > 0 and all("completed" in line for line in log.lines),
                         what="filtered tail")
        third = await client.submit("ok", [3])
        await client.wait(third, timeout=15)
        await wait_until(pilot, lambda: any(third in line for line in log.lines), what="live line after resume")
        assert all("completed" in line for line in log.lines)


async def test_schedules_pause_resume_and_run_now(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    await client.add_schedule("hourly-ok", "ok", [7], every=3600)
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await wait_until(pilot, lambda: app.screen.rows, what="schedule rows")
        await pilot.press("p")
        await wait_for(lambda: client.get_schedule("hourly-ok"), lambda s: s.paused, what="paused")
        await wait_until(pilot, lambda: app.screen.rows and app.screen.rows[0].schedule.paused, what="shown paused")
        await pilot.press("p")
        await wait_for(lambda: client.get_schedule("hourly-ok"), lambda s: not s.paused, what="resumed")
        await pilot.press("n")
        page = await wait_for(lambda: client.list(task="ok"), lambda p: p.total == 1, what="a job from run now")
        job = page.jobs[0]
        assert job.spec.annotations.get("schedule") == "hourly-ok"
        assert (await client.wait(job.id, timeout=15)).result == {"x": 7}


async def test_dlq_inspect_replay_and_purge(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    fixable = await client.submit("flaky_once", max_attempts=1)
    broken = [await client.submit("boom", max_attempts=1) for _ in range(2)]
    for job_id in (fixable, *broken):
        await wait_for_state(client, job_id, "discarded")
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        screen = app.screen
        await wait_until(pilot, lambda: len(screen.entries) == 3, what="3 DLQ entries")
        # filter to the fixable one, inspect it, replay it
        await pilot.press("slash")
        await pilot.press(*"task:flaky_once", "enter")
        await wait_until(pilot, lambda: len(screen.shown()) == 1, what="filtered")
        assert "first try always fails" in static_text(screen.query_one("#dlq-entry-body"))
        await pilot.press("r")
        assert (await wait_for_state(client, fixable, "completed")).gen == 2
        await wait_until(pilot, lambda: len(screen.entries) == 2, what="entry removed after replay")
        # purge everything (confirmed)
        await pilot.press("slash")
        await pilot.press(*["backspace"] * 15, "enter")
        await pilot.press("P")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await wait_for(client.dlq_count, lambda n: n == 0, what="empty DLQ")
        await wait_until(pilot, lambda: not screen.entries, what="empty table")


async def test_dlq_replay_all_filtered(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    jobs = [await client.submit("flaky_once", max_attempts=1) for _ in range(2)]
    for job_id in jobs:
        await wait_for_state(client, job_id, "discarded")
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await wait_until(pilot, lambda: len(app.screen.entries) == 2, what="2 entries")
        await pilot.press("A")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        for job_id in jobs:
            await wait_for_state(client, job_id, "completed")


async def test_views_by_keys_commands_and_palette(client, settings):
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        for key, mode in (("2", "jobs"), ("3", "events"), ("4", "schedules"), ("5", "dlq"), ("1", "dashboard")):
            await pilot.press(key)
            await wait_until(pilot, lambda mode=mode: app.current_mode == mode, what=mode)
        for command, mode in (("schedules", "schedules"), ("dlq", "dlq"), ("jobs", "jobs"), ("events", "events"),
                              ("queues", "dashboard")):
            await pilot.press("colon")
            await pilot.press(*command, "enter")
            await wait_until(pilot, lambda mode=mode: app.current_mode == mode, what=f":{command}")
        await pilot.press("colon")
        await pilot.press(*"workers", "enter")
        await wait_until(pilot, lambda: isinstance(app.focused, WorkersTable), what=":workers focuses workers")
        await pilot.press("colon")
        await pilot.press(*"jobs state:failed", "enter")
        await wait_until(pilot, lambda: jobs_screen(app) is not None and jobs_screen(app).query_spec.state == "failed",
                         what=":jobs with a filter")
        await pilot.press("colon")
        await pilot.press(*"nonsense", "enter")
        await wait_until(pilot, lambda: any("unknown command" in str(n.message) for n in app._notifications),
                         what="unknown command notice")
        # ctrl+r recounts from the records
        seeds = app.feeds.seeds
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: app.feeds.seeds == seeds + 1, what="recount")
        # the command palette lists views and the screen's actions
        await pilot.press("ctrl+p")
        await pilot.press(*"View: dlq")
        await wait_until(pilot, lambda: palette_top(app) == "View: dlq", what="palette hit")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.current_mode == "dlq", what="palette switched view")


async def test_palette_offers_job_actions(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    bad = await client.submit("flaky_once", max_attempts=1)
    await wait_for_state(client, bad, "discarded")
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        app.open_job(bad)
        await wait_until(pilot, lambda: detail_text(app), what="detail")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert f"Retry job {bad}" in titles and f"Cancel job {bad}" in titles and f"Run now job {bad}" in titles
        await pilot.press("ctrl+p")
        await pilot.press(*f"Retry job {bad}")
        await wait_until(pilot, lambda: palette_top(app) == f"Retry job {bad}", what="palette hit")
        await pilot.press("enter")
        await wait_for_state(client, bad, "completed")


async def test_help_screen(client, settings):
    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        text = static_text(app.screen.query_one("#help-body"))
        for needle in ("latest failure", ":jobs", ":workers", ":dlq", "Retry", "Filter", "Pause/resume", "Purge"):
            assert needle in text
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), what="help closed")


async def test_readonly_hides_and_refuses_every_action(client, settings, start_worker, tasks):
    await start_worker(tasks.registry())
    bad = await client.submit("boom", max_attempts=1)
    await wait_for_state(client, bad, "discarded")
    await client.add_schedule("ro-sched", "ok", every=3600)
    app = make_app(settings, client, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        assert "READ-ONLY" in banner_text(app)
        await pilot.press("f")
        await wait_until(pilot, lambda: job_rows(app), what="failed jobs")
        visible = {b.binding.action for b in app.screen.active_bindings.values()
                   if app.screen.check_action(b.binding.action, ()) is not False}
        assert not visible & {"retry", "cancel", "run_now"}
        await pilot.press("r", "c", "n")
        await pilot.press("enter")
        await wait_until(pilot, lambda: detail_text(app), what="detail still opens")
        await pilot.press("r", "c", "n")
        assert not isinstance(app.screen, ConfirmScreen)
        assert not [c.title for c in app.get_system_commands(app.screen)
                    if c.title.startswith(("Retry", "Cancel", "Run now"))]
        # the feed refuses even when asked directly
        assert app.feeds.act("retry", bad, lambda s: s.retry(bad)) is False
        await pilot.press("4")
        await wait_until(pilot, lambda: app.screen.rows, what="schedules")
        await pilot.press("p", "n")
        await pilot.press("5")
        await wait_until(pilot, lambda: app.screen.entries, what="dlq")
        await pilot.press("r", "A", "P")
        assert not isinstance(app.screen, ConfirmScreen)
        # refusals are synchronous: had any key been taken, its action worker would exist by now
        assert not [w for w in app.workers if w.group == "actions"]
    rec = await client.get(bad)
    assert rec.state == JobState.DISCARDED and rec.gen == 1
    assert not (await client.get_schedule("ro-sched")).paused
    assert (await client.list(task="ok")).total == 0
    assert await client.dlq_count() == 1


async def test_disconnected_state_recovers_by_itself(namespace, tmp_path):
    from chronos.embedded import EmbeddedServer, free_port

    from ..conftest import make_settings

    port = free_port()
    store = tmp_path / "js"
    settings = make_settings(f"nats://127.0.0.1:{port}", namespace, nats={"url": f"nats://127.0.0.1:{port}",
                                                                              "connect_timeout": 0.5})
    app = make_app(settings)  # no client: the console connects, and keeps trying
    server = EmbeddedServer(store_dir=store, port=port)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: "DISCONNECTED, retrying" in banner_text(app), what="disconnected")
            await asyncio.to_thread(server.start)
            # The console creates no streams: until `admin init` it says so, and keeps trying.
            await wait_until(pilot, lambda: "has no chronos streams" in banner_text(app), timeout=30,
                             what="namespace missing")
            from chronos.client import Client

            await (await Client.connect(settings)).close()  # what `chronos admin init` does
            await wait_until(pilot, lambda: "● connected" in banner_text(app), timeout=30, what="first connect")
            await asyncio.to_thread(server.stop)
            await wait_until(pilot, lambda: "DISCONNECTED, retrying" in banner_text(app), what="lost")
            server = EmbeddedServer(store_dir=store, port=port)
            await asyncio.to_thread(server.start)
            await wait_until(pilot, lambda: "● connected" in banner_text(app), timeout=30, what="recovered")
            polls = app.feeds.polls
            await wait_until(pilot, lambda: app.feeds.polls > polls + 2, what="polling again")
    finally:
        await asyncio.to_thread(server.cleanup)


async def test_jobs_from_the_archive_and_a_real_leader(client, settings, start_worker, tasks, tmp_path):
    from chronos.scheduler.service import SchedulerService

    app = make_app(settings, client)
    async with app.run_test(size=SIZE) as pilot:
        # no scheduler yet: the archive answers nobody, and the banner says so
        await pilot.press("2")
        await wait_until(pilot, lambda: jobs_screen(app) is not None and jobs_screen(app).page is not None, what="jobs")
        await pilot.press("a")
        await wait_until(pilot, lambda: jobs_screen(app).query_spec.archive and jobs_screen(app).error,
                         what="archive unavailable")
        assert "archive unavailable" in jobs_screen(app).error
        assert "NO LEADER" in banner_text(app)

        svc = SchedulerService(settings, log_events=False, archive_path=str(tmp_path / "archive.sqlite3"),
                               node_id="sched-real")
        sched = asyncio.get_running_loop().create_task(svc.run())
        try:
            await asyncio.wait_for(svc.leading.wait(), 20)
            await start_worker(tasks.registry())
            done = [await client.submit("ok", [i]) for i in range(2)]
            for job_id in done:
                await client.wait(job_id, timeout=15)
            await wait_for(lambda: client.history(task="ok"), lambda recs: len(recs) == 2, what="archived jobs")
            await wait_until(pilot, lambda: "leader sched-real" in banner_text(app), what="real leader")
            jobs_screen(app).action_reload()
            await wait_until(pilot, lambda: sorted(r[0] for r in job_rows(app)) == sorted(done),
                             what="archived jobs listed")
            assert jobs_screen(app).error is None
            assert "archive" in static_text(jobs_screen(app).query_one("#jobs-status"))
        finally:
            svc.stop()
            await asyncio.wait_for(sched, 15)
