"""The history archive: events -> each node's SQLite file -> history requests over NATS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from chronos import Registry, codec
from chronos.archive import ArchiveDB, HistoryQuery, NoArchiveError, history_cursor
from chronos.errors import ValidationError
from chronos.models import Event, EventBatch
from chronos.states import JobState

from .test_scheduler import SchedHandle, start_scheduler  # noqa: F401  (fixture)


def registry() -> Registry:
    reg = Registry()

    async def ok(x: int = 0) -> int:
        return x

    async def fail(why: str = "boom") -> None:
        raise RuntimeError(f"needle-{why}")

    reg.register(ok, name="a.ok")
    reg.register(fail, name="a.fail")
    return reg


async def until_archived(sched: SchedHandle, pred: Callable[[int], bool], timeout: float = 20.0) -> None:
    """Wait on the archiver's commits until ``pred(rows in the file)`` holds."""
    archiver = sched.service.archiver
    assert archiver is not None
    await asyncio.wait_for(archiver.ready.wait(), timeout)

    async def loop() -> None:
        while not pred(await archiver.db.count()):
            try:
                await asyncio.wait_for(archiver.written.wait(), 0.5)
            except TimeoutError:
                pass  # a commit may land between the count and the wait; look again

    await asyncio.wait_for(loop(), timeout)


async def test_history_answers_filters_newest_first(client, start_worker, start_scheduler, tmp_path):  # noqa: F811
    await start_worker(registry())
    sched = await start_scheduler(archive_path=str(tmp_path / "node.sqlite3"))
    t0 = time.time()
    ok = await client.submit("a.ok", [1], queue="default")
    bad = await client.submit("a.fail", ["x"], max_attempts=1)
    later = await client.submit("a.ok", [2], delay=3600)
    assert (await client.wait(ok, 15)).state == JobState.COMPLETED
    assert (await client.wait(bad, 15)).state == JobState.DISCARDED
    await client.cancel(later)
    await until_archived(sched, lambda n: n >= 3)

    rows = await client.history()
    assert [r.id for r in rows][:3] == sorted([ok, bad, later], key=lambda i: -_finished(rows, i))
    assert {r.id for r in rows} == {ok, bad, later}
    assert all(r.finished_at is not None for r in rows)
    assert [r.finished_at for r in rows] == sorted((r.finished_at for r in rows), reverse=True)

    assert [r.id for r in await client.history(state="discarded")] == [bad]
    assert [r.id for r in await client.history(state="cancelled")] == [later]
    assert {r.id for r in await client.history(task="a.ok")} == {ok, later}
    found = await client.history(text="NEEDLE-X")  # substring, case-insensitive, in error or traceback
    assert [r.id for r in found] == [bad]
    assert found[0].attempts and "RuntimeError" in (found[0].attempts[-1].traceback or "")
    assert await client.history(text="no such text") == []
    assert len(await client.history(limit=1)) == 1
    assert await client.history(queue="elsewhere") == []
    assert await client.history(until=t0 - 1) == []
    assert {r.id for r in await client.history(since=t0 - 1)} == {ok, bad, later}
    done = await client.get(ok)
    assert [r.result for r in await client.history(task="a.ok", state="completed")] == [done.result]


def _finished(rows, job_id):  # type: ignore[no-untyped-def]
    return next(r.finished_at for r in rows if r.id == job_id)


async def test_no_archive_answering_is_a_clear_error(client):
    with pytest.raises(NoArchiveError, match="no scheduler archive answered"):
        await client.history(timeout=2)


async def test_bad_history_queries_name_the_field(client):
    with pytest.raises(ValidationError, match="state"):
        await client.history(state="running")
    with pytest.raises(ValidationError, match="limit"):
        await client.history(limit=0)
    with pytest.raises(ValidationError, match="since"):
        await client.history(since=10, until=5)


async def test_every_node_archives_and_a_restarted_node_catches_up(client, start_worker, start_scheduler, tmp_path):  # noqa: F811
    await start_worker(registry())
    a = await start_scheduler(archive_path=str(tmp_path / "a.sqlite3"))
    b = await start_scheduler(lead=False, archive_path=str(tmp_path / "b.sqlite3"))
    first = await client.submit("a.ok")
    assert (await client.wait(first, 15)).state == JobState.COMPLETED
    await until_archived(a, lambda n: n >= 1)
    await until_archived(b, lambda n: n >= 1)  # the follower archives too

    await b.stop()
    second = await client.submit("a.ok")
    assert (await client.wait(second, 15)).state == JobState.COMPLETED
    await until_archived(a, lambda n: n >= 2)
    # The same archive file again: its durable consumer resumes and brings the job it missed.
    b2 = await start_scheduler(lead=False, archive_path=str(tmp_path / "b.sqlite3"))
    await until_archived(b2, lambda n: n >= 2)
    assert b2.service.archiver.durable == b.service.archiver.durable
    rows = await b2.service.archiver.db.query(HistoryQuery())
    assert {r.id for r in rows} == {first, second}

    # Either node may answer; both hold the same jobs.
    for _ in range(4):
        assert {r.id for r in await client.history()} == {first, second}


async def test_a_finished_job_whose_record_is_gone_is_kept_from_its_event(client, start_scheduler, tmp_path):  # noqa: F811
    sched = await start_scheduler(lead=False, archive_path=str(tmp_path / "n.sqlite3"))
    await asyncio.wait_for(sched.service.archiver.ready.wait(), 10)
    now = time.time()
    ev = Event(kind="discarded", at=now, job_id="gone1", task="t.gone", queue="q1", attempt=3, error="lost it")
    await client.conn.nc.publish(client.names.event_subject("discarded", "q1"), codec.encode(EventBatch(events=[ev])))
    await until_archived(sched, lambda n: n >= 1)
    (rec,) = await client.history(task="t.gone")
    assert rec.id == "gone1" and rec.state == JobState.DISCARDED and rec.spec.queue == "q1"
    assert rec.error == "lost it" and rec.finished_at == pytest.approx(now)


async def test_archive_db_keeps_the_newest_record(tmp_path):
    from chronos.jobs import new_record
    from chronos.models import JobSpec
    from chronos.states import transition

    db = await ArchiveDB(tmp_path / "x.sqlite3", "ns1").open()
    try:
        rec = new_record("j1", JobSpec(task="t"), 100.0, JobState.AVAILABLE)
        running = transition(rec, JobState.RUNNING, 101.0)
        old = transition(running, JobState.CANCELLED, 102.0, error="first")
        new = transition(transition(old, JobState.AVAILABLE, 103.0), JobState.RUNNING, 104.0)
        new = transition(new, JobState.COMPLETED, 105.0)
        await db.add([new])
        await db.add([old])  # an older event replayed late changes nothing
        (got,) = await db.query(HistoryQuery())
        assert got.state == JobState.COMPLETED and got.finished_at == 105.0
        assert await db.has([("j1", 105.0), ("j2", 1.0)]) == {"j1"}
        assert await db.has([("j1", 106.0)]) == set()
        # Another namespace in the same file sees nothing of this one.
        other = ArchiveDB(tmp_path / "x.sqlite3", "ns2")
        await other.open()
        assert await other.count() == 0
        await other.close()
    finally:
        await db.close()


async def test_a_job_the_rescuer_discards_reaches_the_archive(client, settings, tmp_path):
    import msgspec

    from chronos.jobs import JobOps, new_record
    from chronos.models import Attempt
    from chronos.scheduler import SchedulerService

    now = time.time()
    spec = client.build_spec("t.lost", max_attempts=1)  # build_spec does not check the catalog
    rec = new_record("lost1", spec, now - 100, JobState.RUNNING, worker="ghost", attempt=1,
                     attempts=[Attempt(number=1, started_at=now - 100, worker="ghost")])
    await (await JobOps(client.conn).create_nowait(rec))
    quick = msgspec.structs.replace(settings, scheduler=msgspec.structs.replace(settings.scheduler, rescue_after=1.0))
    svc = SchedulerService(quick, log_events=False, rescuer_tick=0.2, archive_path=str(tmp_path / "r.sqlite3"))
    task = asyncio.create_task(svc.run())
    try:
        await asyncio.wait_for(svc.leading.wait(), 20)
        await until_archived(SchedHandle(svc, task), lambda n: n >= 1)
        (got,) = await client.history(state="discarded")
        assert got.id == "lost1" and "worker lost" in (got.error or "")
        assert got.attempts[-1].outcome == "lost"
    finally:
        svc.stop()
        await asyncio.wait_for(task, 15)


async def test_history_merges_every_nodes_archive(client, start_scheduler, tmp_path):  # noqa: F811
    """Archives differ (a node added later, a follower that lagged while the leader pruned):
    one node's answer is not the history, so the client merges all of them."""
    from chronos.jobs import new_record
    from chronos.models import JobSpec
    from chronos.states import transition

    a = await start_scheduler(archive_path=str(tmp_path / "a.sqlite3"))
    b = await start_scheduler(lead=False, archive_path=str(tmp_path / "b.sqlite3"))
    for node in (a, b):
        await asyncio.wait_for(node.service.archiver.ready.wait(), 10)

    def finished(job_id: str, at: float) -> object:
        rec = new_record(job_id, JobSpec(task="t.merge"), at, JobState.AVAILABLE)
        return transition(transition(rec, JobState.RUNNING, at + 1), JobState.COMPLETED, at + 2)

    now = time.time()
    await a.service.archiver.db.add([finished("only-a", now - 20)])
    await b.service.archiver.db.add([finished("only-b", now - 10)])
    for _ in range(4):  # with one answering node per request, half of these would miss a job
        assert [r.id for r in await client.history(task="t.merge")] == ["only-b", "only-a"]
    assert [r.id for r in await client.history(task="t.merge", limit=1)] == ["only-b"]


# --- indexes, text search, cursor, retention (issue 15) ------------------------------------------------


def _done_record(job_id: str, at: float, *, task: str = "t", error: str | None = None, traceback: str | None = None):  # type: ignore[no-untyped-def]
    from chronos.jobs import new_record
    from chronos.models import Attempt, JobSpec
    from chronos.states import transition

    rec = new_record(job_id, JobSpec(task=task), at - 1, JobState.AVAILABLE)
    running = transition(rec, JobState.RUNNING, at - 0.5)
    attempts = [Attempt(number=1, started_at=at - 0.5, ended_at=at, outcome="error", error=error,
                        traceback=traceback)]
    state = JobState.DISCARDED if error else JobState.COMPLETED
    return transition(running, state, at, attempts=attempts, error=error)


async def test_text_search_uses_the_index_and_keeps_substring_semantics(tmp_path):
    db = await ArchiveDB(tmp_path / "fts.sqlite3", "ns").open()
    try:
        rows = [_done_record(f"j{i}", 1000.0 + i, error=f"KeyError: 'user_{i}'" if i % 2 else None,
                          traceback=f'File "x.py", line {i}\nKeyError' if i % 2 else None) for i in range(40)]
        rows.append(_done_record("quoted", 2000.0, error='ValueError: say "hi" 50%_done'))
        await db.add(rows)
        plan = await (await db.db.execute(
            "EXPLAIN QUERY PLAN SELECT rowid FROM jobs_fts WHERE jobs_fts MATCH ?", ('"user_7"',))).fetchall()
        assert any("VIRTUAL TABLE INDEX" in str(r) for r in plan)  # the trigram index, not a scan
        assert [r.id for r in await db.query(HistoryQuery(text="USER_7'"))] == ["j7"]  # case-insensitive
        assert {r.id for r in await db.query(HistoryQuery(text="line 3"))} == {"j3", "j31", "j33", "j35", "j37", "j39"}
        assert [r.id for r in await db.query(HistoryQuery(text='"hi" 50%_'))] == ["quoted"]  # quotes, % and _
        assert [r.id for r in await db.query(HistoryQuery(text="hi"))] == ["quoted"]  # under 3 characters: LIKE
        assert await db.query(HistoryQuery(text="user_8")) == []  # even jobs have no error
        # Newest finished first, and the cursor pages through without a gap or a repeat.
        seen: list[str] = []
        cursor = None
        while True:
            page = await db.query(HistoryQuery(text="KeyError", limit=7, cursor=cursor))
            seen += [r.id for r in page]
            cursor = history_cursor(page, 7)
            if cursor is None:
                break
        assert seen == [f"j{i}" for i in range(39, 0, -2)]
        # Replaced (a retried job finished again): the text index follows the row.
        await db.add([_done_record("j7", 3000.0, error="TimeoutError: slow")])
        assert await db.query(HistoryQuery(text="user_7'")) == []
        assert [r.id for r in await db.query(HistoryQuery(text="slow"))] == ["j7"]
        # Retention: rows finished before the cutoff go, from the text index too.
        assert await db.expire(1020.0) == 19  # j0..j19, but j7 finished again later
        assert await db.count() == 22
        assert {r.id for r in await db.query(HistoryQuery(text="KeyError"))} == {f"j{i}" for i in range(21, 40, 2)}
    finally:
        await db.close()


async def test_an_archive_made_before_the_text_index_gets_one(tmp_path):
    import aiosqlite

    path = tmp_path / "old.sqlite3"
    db = await ArchiveDB(path, "ns").open()
    await db.add([_done_record("a", 10.0, error="OSError: disk full"), _done_record("b", 11.0)])
    await db.close()
    async with aiosqlite.connect(path) as raw:  # as an older chronos left it: no FTS table, no triggers
        for name in ("jobs_fts_ins", "jobs_fts_del", "jobs_fts_upd"):
            await raw.execute(f"DROP TRIGGER {name}")
        await raw.execute("DROP TABLE jobs_fts")
        await raw.commit()
    db = await ArchiveDB(path, "ns").open()
    try:
        assert [r.id for r in await db.query(HistoryQuery(text="disk full"))] == ["a"]
    finally:
        await db.close()


async def test_history_pages_with_the_cursor_through_nats(client, start_worker, start_scheduler, tmp_path):  # noqa: F811
    await start_worker(registry())
    sched = await start_scheduler(lead=False, archive_path=str(tmp_path / "p.sqlite3"))
    ids = [await client.submit("a.ok", [i]) for i in range(7)]
    for i in ids:
        assert (await client.wait(i, 15)).state == JobState.COMPLETED
    await until_archived(sched, lambda n: n >= 7)
    everything = [r.id for r in await client.history()]
    pages: list[str] = []
    cursor = None
    while True:
        page = await client.history(limit=3, cursor=cursor)
        pages += [r.id for r in page]
        cursor = history_cursor(page, 3)
        if cursor is None:
            break
    assert pages == everything and sorted(pages) == sorted(ids)
    with pytest.raises(ValidationError, match="cursor"):
        await client.history(cursor="yesterday")


async def test_an_archiver_cancelled_while_starting_stops_its_sqlite_threads(client, tmp_path):
    """aiosqlite's worker threads are not daemons: one left open kept `chronos dev` from exiting
    after Ctrl-C (a cancel between the archive's opens skipped their close)."""
    import threading

    from chronos.scheduler.archiver import Archiver

    def sqlite_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}

    before = sqlite_threads()
    archiver = Archiver(client.conn, path=tmp_path / "a.sqlite3")
    task = asyncio.ensure_future(archiver.run())
    while archiver.db._db is None:  # cancelled right after the first open, before the rest
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for t in sqlite_threads() - before:
        t.join(10)
        assert not t.is_alive()
