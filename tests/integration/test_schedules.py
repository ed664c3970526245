"""Schedules against a real nats-server, with an injected clock.

The enqueuer is driven one ``step()`` at a time under a FakeClock, so misfire,
overlap and pause behaviour is decided by the clock we set, never by sleeping.
Basic CRUD, firing with a live scheduler and two enqueuers are in test_scheduler.py.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest

from chronos.client import Client
from chronos.clock import FakeClock
from chronos.errors import ScheduleNotFoundError, ValidationError
from chronos.ids import derived_job_id
from chronos.jobs import JobOps
from chronos.scheduler.enqueuer import Enqueuer
from chronos.schedules import wall_time
from chronos.states import JobState

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a multiple of every interval used here
NY = ZoneInfo("America/New_York")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def fc(settings, clock) -> AsyncIterator[Client]:
    """A client on the fake clock, with the test task in its catalog."""
    c = await Client.connect(settings, clock=clock)
    await c.register_tasks(["stamp"])
    yield c
    await c.close()


@pytest.fixture
def enq(fc, clock) -> Enqueuer:
    return Enqueuer(JobOps(fc.conn, clock), clock=clock)


def job_id(name: str, t: float) -> str:
    return derived_job_id(name, str(int(t)))


async def jobs_of(client: Client, name: str, offsets: range | list[int]) -> dict[int, JobState]:
    """States of the jobs of fire times T0 + offset that exist."""
    out = {}
    for off in offsets:
        rec = await client.ops.read_or_none(job_id(name, T0 + off))
        if rec is not None:
            assert rec.schedule_id == name and rec.fire_time == T0 + off
            out[off] = rec.state
    return out


async def waiting_messages(client: Client) -> int:
    return sum((await client.queue_depths()).values())


# --- misfire --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("misfire", "expected"),
    [
        ("skip", []),  # every missed fire is dropped
        ("run-once", [600]),  # one job, for the latest missed fire
        ("catch-up", [480, 540, 600]),  # the latest catch_up_max of them
    ],
)
async def test_misfire_policies_after_downtime(fc, enq, clock, misfire, expected):
    await fc.add_schedule("m", "stamp", every=60, misfire=misfire, catch_up_max=3)
    clock.advance(630)  # ten fires due, all older than the grace (11 s)
    await enq.step()
    assert sorted(await jobs_of(fc, "m", range(60, 601, 60))) == expected
    assert (await fc.get_schedule("m")).last_fire_time == T0 + 600
    assert await waiting_messages(fc) == len(expected)
    # After the downtime it fires on time again, whatever the policy.
    clock.advance(30)
    await enq.step()
    assert 660 in await jobs_of(fc, "m", [660])


@pytest.mark.parametrize(("misfire", "expected"), [("run-once", [3600]), ("catch-up", [3480, 3540, 3600])])
async def test_misfire_after_a_gap_longer_than_max_backfill(fc, enq, clock, misfire, expected):
    enq.max_fires = 5  # sixty missed fires: too many to walk one by one
    await fc.add_schedule("long", "stamp", every=60, misfire=misfire, catch_up_max=3)
    clock.advance(3630)
    nxt = await enq.step()
    assert sorted(await jobs_of(fc, "long", range(60, 3601, 60))) == expected
    assert nxt == T0 + 3660  # the next fire, not a past one to spin on
    assert (await fc.get_schedule("long")).last_fire_time == T0 + 3600


async def test_a_fire_inside_the_grace_is_not_a_misfire(fc, enq, clock):
    await fc.add_schedule("late", "stamp", every=60, misfire="skip")
    clock.advance(65)  # 5 s late: a slow tick or a leader failover, not downtime
    await enq.step()
    assert await jobs_of(fc, "late", [60]) == {60: JobState.AVAILABLE}


@pytest.mark.parametrize(
    ("misfire", "catch_up_max", "expected"),
    [
        ("skip", 1, [10, 50, 60]),
        ("run-once", 1, [10, 40, 50, 60]),  # the latest missed fire (+40) and the on-time ones
        ("catch-up", 2, [10, 30, 40, 50, 60]),  # the cap counts missed fires, not the on-time ones
    ],
)
async def test_fires_inside_the_grace_always_fire_after_downtime(fc, enq, clock, misfire, catch_up_max, expected):
    # The case: every 10 s, the scheduler down from just after the fire at +10 to +61.
    # The grace is 11 s, so +50 and +60 are on time and +20..+40 were missed.
    await fc.add_schedule("g", "stamp", every=10, misfire=misfire, catch_up_max=catch_up_max)
    clock.advance(10)
    await enq.step()
    clock.advance(51)
    nxt = await enq.step()
    assert sorted(await jobs_of(fc, "g", range(10, 61, 10))) == expected
    assert await waiting_messages(fc) == len(expected)
    assert (await fc.get_schedule("g")).last_fire_time == T0 + 60
    assert nxt == T0 + 70


async def test_the_running_enqueuer_fires_when_the_clock_reaches_a_fire(fc, clock):
    enq = Enqueuer(JobOps(fc.conn, clock), clock=clock, tick=0.05)
    runner = asyncio.create_task(enq.run())
    try:
        await fc.add_schedule("loop", "stamp", every=60)
        clock.advance(60)

        async def fired() -> None:
            while not enq.fired:
                await enq.fired_event.wait()

        await asyncio.wait_for(fired(), 10)
        assert enq.fired == [("loop", T0 + 60, job_id("loop", T0 + 60))]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


# --- overlap --------------------------------------------------------------------------------


async def finish(client: Client, jid: str) -> None:
    ops = client.ops
    rec = await ops.move(await ops.read(jid), JobState.RUNNING, attempt=1)
    await ops.move(rec, JobState.COMPLETED)


async def test_overlap_allow_fires_while_the_previous_job_is_unfinished(fc, enq, clock):
    await fc.add_schedule("a", "stamp", every=60, overlap="allow")
    for _ in range(2):
        clock.advance(60)
        await enq.step()
    assert await jobs_of(fc, "a", [60, 120]) == {60: JobState.AVAILABLE, 120: JobState.AVAILABLE}


async def test_overlap_skip_waits_for_the_previous_job(fc, enq, clock):
    await fc.add_schedule("s", "stamp", every=60, overlap="skip")
    clock.advance(60)
    await enq.step()
    clock.advance(60)
    await enq.step()  # the 60 s job is still available: the 120 s fire is skipped
    assert await jobs_of(fc, "s", [60, 120]) == {60: JobState.AVAILABLE}
    stored = await fc.get_schedule("s")
    assert stored.last_fire_time == T0 + 120 and stored.last_job_id == job_id("s", T0 + 60)
    await finish(fc, job_id("s", T0 + 60))
    clock.advance(60)
    await enq.step()
    assert await jobs_of(fc, "s", [60, 120, 180]) == {60: JobState.COMPLETED, 180: JobState.AVAILABLE}


async def test_overlap_replace_cancels_the_previous_job(fc, enq, clock):
    await fc.add_schedule("r", "stamp", every=60, overlap="replace")
    clock.advance(60)
    await enq.step()
    clock.advance(60)
    await enq.step()
    assert await jobs_of(fc, "r", [60, 120]) == {60: JobState.CANCELLED, 120: JobState.AVAILABLE}
    first = await fc.get(job_id("r", T0 + 60))
    assert "replaced by schedule r" in (first.cancel_reason or "")


# --- pause ------------------------------------------------------------------------------------


async def test_pause_until_then_resume_from_the_pause_end(fc, enq, clock):
    await fc.add_schedule("p", "stamp", every=60, misfire="catch-up")
    await fc.pause_schedule("p", until=T0 + 150)
    clock.advance(130)
    assert await enq.step() == T0 + 150  # asleep until the pause ends
    assert await jobs_of(fc, "p", [60, 120]) == {}
    clock.advance(60)  # now T0 + 190: the pause ended at T0 + 150
    await enq.step()
    # Fires inside the pause are not made up, even under catch-up; the one after it is.
    assert await jobs_of(fc, "p", [60, 120, 180]) == {180: JobState.AVAILABLE}
    stored = await fc.get_schedule("p")
    assert not stored.paused and stored.paused_until is None


async def test_resume_does_not_make_up_fires_missed_while_paused(fc, enq, clock):
    await fc.add_schedule("q", "stamp", every=60, misfire="catch-up", paused=True)
    clock.advance(300)
    await enq.step()
    await fc.resume_schedule("q")
    await enq.step()
    assert await jobs_of(fc, "q", range(60, 301, 60)) == {}
    clock.advance(60)
    await enq.step()
    assert await jobs_of(fc, "q", [360]) == {360: JobState.AVAILABLE}


async def test_pause_until_must_be_in_the_future(fc):
    await fc.add_schedule("f", "stamp", every=60)
    with pytest.raises(ValidationError, match="until"):
        await fc.pause_schedule("f", until=T0 - 1)
    assert not (await fc.get_schedule("f")).paused


async def test_pause_and_resume_by_pattern(fc, enq, clock):
    for name in ("nightly-a", "nightly-b", "weekly"):
        await fc.add_schedule(name, "stamp", every=60)
    paused = await fc.pause_schedules("nightly-*")
    assert [s.name for s in paused] == ["nightly-a", "nightly-b"]
    assert {s.name: s.paused for s in await fc.list_schedules()} == {
        "nightly-a": True, "nightly-b": True, "weekly": False}
    clock.advance(60)
    await enq.step()
    assert [name for name, _, _ in enq.fired] == ["weekly"]
    with pytest.raises(ScheduleNotFoundError, match="no schedule matches 'monthly-\\*'"):
        await fc.pause_schedules("monthly-*")
    resumed = await fc.resume_schedules("nightly-[a]")
    assert [s.name for s in resumed] == ["nightly-a"]
    assert {s.name: s.paused for s in await fc.list_schedules()}["nightly-b"] is True
    # Pause until a time, by pattern.
    until = clock.now() + 120
    assert all(s.paused_until == until for s in await fc.pause_schedules("*", until=until))


# --- backfill ---------------------------------------------------------------------------------


async def test_backfill_is_idempotent_and_agrees_with_the_enqueuer(fc, enq, clock):
    await fc.add_schedule("b", "stamp", ["x"], every=60)
    clock.advance(300)
    await enq.step()  # misfire skip: only the on-time fire at +300 is made
    assert await jobs_of(fc, "b", range(60, 301, 60)) == {300: JobState.AVAILABLE}

    seen: list[tuple[int, int]] = []
    report = await fc.backfill_schedule("b", since=T0 + 60, progress=lambda done, total: seen.append((done, total)))
    # The window includes its start: +60 .. +300.
    assert [f.fire_time - T0 for f in report.fires] == [60, 120, 180, 240, 300]
    assert (report.made, report.existing) == (4, 1)
    assert [f.job_id for f in report.fires] == [job_id("b", T0 + o) for o in (60, 120, 180, 240, 300)]
    assert seen[-1] == (5, 5)

    again = await fc.backfill_schedule("b", since=T0 + 60, until=T0 + 300)
    assert (again.made, again.existing) == (0, 5)
    # The enqueuer's next fire and a backfill over it still make one job.
    clock.advance(60)
    await enq.step()
    third = await fc.backfill_schedule("b", since=T0 + 60)
    assert (third.made, third.existing) == (0, 6)
    assert await waiting_messages(fc) == 6  # one work message per fire, never two
    rec = await fc.get(job_id("b", T0 + 120))
    assert rec.spec.args == ["x"] and rec.state == JobState.AVAILABLE


async def test_backfill_over_the_limit_is_refused_and_makes_nothing(settings, clock):
    limited = msgspec.structs.replace(settings, scheduler=msgspec.structs.replace(settings.scheduler, max_backfill=10))
    async with await Client.connect(limited, clock=clock) as c:
        await c.register_tasks(["stamp"])
        await c.add_schedule("wide", "stamp", every=60)
        clock.advance(3600)
        with pytest.raises(ValidationError) as err:
            await c.backfill_schedule("wide", since=T0)
        assert str(err.value).startswith("since:") and "scheduler.max_backfill = 10" in str(err.value)
        assert await jobs_of(c, "wide", range(60, 3601, 60)) == {}
        assert await waiting_messages(c) == 0
        # Exactly at the limit is fine.
        ok = await c.backfill_schedule("wide", since=T0 + 60, until=T0 + 600)
        assert ok.made == 10


@pytest.mark.parametrize(
    ("since", "until", "field"),
    [
        (T0 - 100, T0 - 150, "since"),  # inverted window
        (T0 - 600, T0 + 60, "until"),  # a window reaching into the future
        (float("nan"), None, "since"),
    ],
)
async def test_bad_backfill_windows_are_refused(fc, since, until, field):
    await fc.add_schedule("w", "stamp", every=60)
    with pytest.raises(ValidationError) as err:
        await fc.backfill_schedule("w", since=since, until=until)
    assert str(err.value).startswith(f"{field}:")
    assert await waiting_messages(fc) == 0


async def test_backfill_of_an_unknown_schedule(fc):
    with pytest.raises(ScheduleNotFoundError):
        await fc.backfill_schedule("ghost", since=T0 - 60)


async def test_backfill_further_back_than_the_retention_is_refused(fc, clock):
    # Older fires may have run and been pruned; their derived ids would let them run again.
    await fc.add_schedule("old", "stamp", every="1h")
    retention = fc.settings.scheduler.retention
    with pytest.raises(ValidationError, match="since: .* older than scheduler.retention"):
        await fc.backfill_schedule("old", since=clock.now() - retention - 3600)
    assert await waiting_messages(fc) == 0


async def test_absurd_sizes_are_refused_naming_the_field(fc):
    with pytest.raises(ValidationError, match="every: interval must be at most 100 years"):
        await fc.add_schedule("forever", "stamp", every=1e300)
    with pytest.raises(ValidationError, match="every: interval must be at most 100 years"):
        await fc.add_schedule("forever", "stamp", every="99999999999d")
    assert await fc.list_schedules() == []
    await fc.add_schedule("ok", "stamp", every="1h")
    with pytest.raises(ValidationError, match="count: must be a whole number from 1 to 10000"):
        await fc.next_fire_times("ok", 10**9)
    with pytest.raises(ValidationError, match="count: must be a whole number from 1 to 10000"):
        fc.preview_fire_times(every="1h", count=10**9)


# --- DST through the enqueuer ---------------------------------------------------------------


async def test_spring_gap_fires_once_at_the_gap_end(fc, enq, clock):
    # 2026-03-08 in New York: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
    clock.set(datetime(2026, 3, 8, 1, 0, tzinfo=NY).timestamp())
    await fc.add_schedule("gap", "stamp", cron="30 2 * * *", tz="America/New_York")
    clock.set(datetime(2026, 3, 8, 3, 0, 5, tzinfo=NY).timestamp())
    await enq.step()
    fired = [t for name, t, _ in enq.fired if name == "gap"]
    assert fired == [datetime(2026, 3, 8, 3, 0, tzinfo=NY).timestamp()]
    assert wall_time(fired[0], "America/New_York") == "2026-03-08T03:00:00-04:00"


# --- dry run, status, edit --------------------------------------------------------------------


async def test_next_fire_times_in_the_schedules_zone(fc, clock):
    await fc.add_schedule("ny", "stamp", cron="30 2 * * *", tz="America/New_York")
    after = datetime(2026, 3, 6, 12, 0, tzinfo=NY).timestamp()
    fires = await fc.next_fire_times("ny", 3, after=after)
    assert [wall_time(t, "America/New_York") for t in fires] == [
        "2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
    # A definition not stored yet.
    preview = fc.preview_fire_times(every="15m", count=2)
    assert preview == [T0 + 900, T0 + 1800]
    with pytest.raises(ValidationError, match="count"):
        await fc.next_fire_times("ny", 0)
    with pytest.raises(ValidationError, match="cron"):
        fc.preview_fire_times(cron="* * *")
    with pytest.raises(ScheduleNotFoundError):
        await fc.next_fire_times("nope", 3)


async def test_schedule_statuses_show_next_and_last_fire(fc, enq, clock):
    await fc.add_schedule("st", "stamp", every=60)
    await fc.add_schedule("idle", "stamp", every=60, paused=True)
    clock.advance(60)
    await enq.step()
    by_name = {st.schedule.name: st for st in await fc.schedule_statuses()}
    assert by_name["st"].next_fire_time == T0 + 120
    assert (by_name["st"].last_job_fire_time, by_name["st"].last_job_state) == (T0 + 60, "available")
    assert by_name["idle"].next_fire_time is None and by_name["idle"].paused_now
    assert [st.schedule.name for st in await fc.schedule_statuses("i*")] == ["idle"]


async def test_edit_a_schedule(fc, enq, clock):
    await fc.add_schedule("e", "stamp", every=60, priority="low")
    s = await fc.update_schedule("e", cron="*/5 * * * *", priority="high", args={"n": 1})
    assert (s.cron, s.every, s.priority, s.args) == ("*/5 * * * *", None, "high", {"n": 1})
    before = await fc.get_schedule("e")
    for changes, field in [
        ({"cron": "bad"}, "cron"),
        ({"tz": "Nowhere/Else"}, "tz"),
        ({"every": -5}, "every"),
        ({"priority": "urgent"}, "priority"),
        ({"overlap": "maybe"}, "overlap"),
        ({"catch_up_max": 0}, "catch_up_max"),
        ({"queue": "nobody-serves-this"}, "queue"),
        ({"name": "other"}, "name"),
    ]:
        with pytest.raises(ValidationError) as err:
            await fc.update_schedule("e", **changes)
        assert str(err.value).startswith(f"{field}:"), (changes, str(err.value))
    after = await fc.get_schedule("e")
    assert after.revision == before.revision  # nothing written
    # A timing change applies from now on: no fire from before the edit is made.
    clock.advance(600)
    await fc.update_schedule("e", every="2m")
    await enq.step()
    assert enq.fired == []
    clock.advance(120)
    await enq.step()
    assert [t - T0 for _, t, _ in enq.fired] == [720]


# --- crontab export ---------------------------------------------------------------------------


async def test_crontab_export(fc):
    await fc.add_schedule("nightly", "stamp", {"pct": "50%"}, cron="30 2 * * *", tz="Europe/Berlin",
                          queue="default", priority="high", timeout=90, misfire="catch-up", catch_up_max=4,
                          annotations={"team": "ops"})
    await fc.add_schedule("quarter", "stamp", every="15m")
    await fc.add_schedule("odd", "stamp", every=90)
    await fc.add_schedule("held", "stamp", cron="0 * * * *", paused=True)
    text = await fc.export_crontab()
    blocks = text.strip().split("\n\n")
    assert blocks[0].startswith(f"# chronos schedules, namespace {fc.names.ns}, exported ")
    by_name = {b.split("name=")[1].split()[0]: b.split("\n") for b in blocks[1:]}
    assert list(by_name) == ["held", "nightly", "odd", "quarter"]  # sorted by name

    nightly = by_name["nightly"]
    assert nightly[0] == ("# chronos: name=nightly when='cron 30 2 * * *' tz=Europe/Berlin task=stamp queue=default "
                          "priority=high overlap=allow misfire=catch-up catch_up_max=4")
    assert nightly[1] == '# chronos: annotations={"team":"ops"}'
    assert nightly[2] == "CRON_TZ=Europe/Berlin"
    fields = nightly[3].split(" ", 5)
    assert fields[:5] == ["30", "2", "*", "*", "*"]
    assert "50\\%" in fields[5]  # cron would turn a bare % into a newline
    argv = shlex.split(fields[5].replace("\\%", "%"))
    assert argv == ["chronos", "submit", "stamp", "--args", '{"pct":"50%"}', "--queue", "default",
                    "--priority", "high", "--max-attempts", "5", "--timeout", "90"]

    assert by_name["quarter"][1:] == ["CRON_TZ=UTC", by_name["quarter"][2]]
    assert by_name["quarter"][2].startswith("*/15 * * * * chronos submit stamp")
    assert by_name["odd"][1].startswith("# every 90s") and "not expressible in crontab" in by_name["odd"][1]
    held = by_name["held"]
    assert "paused" in held[0].split()
    assert held[1] == "# CRON_TZ=UTC" and held[2].startswith("# 0 * * * * chronos submit")


async def test_crontab_export_with_no_schedules(fc):
    text = await fc.export_crontab()
    assert all(line.startswith("#") for line in text.splitlines())


# --- bad input --------------------------------------------------------------------------------


async def test_a_schedule_for_an_unknown_queue_is_refused(fc, settings):
    with pytest.raises(ValidationError) as err:
        await fc.add_schedule("mail", "stamp", every=60, queue="mail")
    assert str(err.value).startswith("queue: unknown queue 'mail'")
    assert await fc.list_schedules() == []
    await fc.ensure_queue("mail")  # what `chronos admin init` and a worker serving it do
    assert (await fc.add_schedule("mail", "stamp", every=60, queue="mail")).queue == "mail"
    # Another client learns it from the queue's consumers on the server.
    async with await Client.connect(settings) as other:
        await other.register_tasks(["stamp"])
        assert (await other.add_schedule("mail2", "stamp", every=60, queue="mail")).queue == "mail"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"every": -5}, "every"),
        ({"every": 0.5}, "every"),
        ({}, "schedule"),  # neither cron nor every
        ({"every": 60, "cron": "* * * * *"}, "schedule"),
        ({"cron": "* * * * * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),  # 30 February never comes
        ({"cron": "@fortnightly"}, "cron"),
        ({"every": 60, "tz": "Europe/Atlantis"}, "tz"),
        ({"every": 60, "catch_up_max": 0}, "catch_up_max"),
        ({"every": 60, "priority": "urgent"}, "priority"),
        ({"every": 60, "max_attempts": 0}, "max_attempts"),
        ({"every": 60, "timeout": -1}, "timeout"),
        ({"every": 60, "args": "not a list"}, "args"),
        ({"every": 60, "name": "has space"}, "name"),
        ({"every": 60, "task": "never.registered"}, "unknown task"),
    ],
)
async def test_bad_schedules_name_the_field_and_store_nothing(fc, kwargs, field):
    kwargs = {"name": "bad", "task": "stamp", **kwargs}
    with pytest.raises(ValidationError) as err:
        await fc.add_schedule(kwargs.pop("name"), kwargs.pop("task"), **kwargs)
    assert str(err.value).startswith(field), str(err.value)
    assert await fc.list_schedules() == []


# --- the docs -----------------------------------------------------------------------------------


async def test_the_python_example_in_the_docs_runs(settings):
    """docs/schedules.md's Python block, run against the test server (docs are executable)."""
    text = (Path(__file__).parents[2] / "docs" / "schedules.md").read_text()
    source = text.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, object] = {}
    exec(compile(source, "docs/schedules.md", "exec"), scope)  # noqa: S102 -- our own docs, run on purpose
    async with await Client.connect(settings) as c:
        await c.register_tasks(["reports.build", "emails.digest", "maintenance.cleanup"])
        await scope["define"](c)  # type: ignore[operator]
        by_name = {s.name: s for s in await c.list_schedules()}
    assert sorted(by_name) == ["digest", "nightly-report", "weekly-cleanup"]
    assert by_name["digest"].every == 1800 and not any(s.paused for s in by_name.values())
    assert (by_name["nightly-report"].tz, by_name["nightly-report"].overlap) == ("Europe/Berlin", "skip")
