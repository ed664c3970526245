"""Search (--where on args and annotations) through a scheduler's job index, checked against the KV."""

from __future__ import annotations

import asyncio
from typing import Any

import aiosqlite
import pytest

from chronos import listing, readmodel
from chronos.clientapi.bulk import Bulk
from chronos.listing import count_matches, match_ids
from chronos.readmodel import MAX_ARGS_TEXT, JobsQuery
from chronos.states import JobState
from chronos.where import parse

from .test_listing import all_pages, scanned, serving
from .test_scheduler import SchedHandle, start_scheduler  # noqa: F401  (fixture)

TASKS = ["s.kw", "s.pos"]


async def submit_search_mix(client: Any, n: int = 36) -> list[str]:
    """Keyword jobs (customer, flags, nested), positional jobs, annotations, a few cancelled, one big."""
    await client.register_tasks(TASKS)
    specs = []
    for i in range(n):
        if i % 2 == 0:
            args: Any = {"customer_id": i % 4, "name": f"c{i % 3}", "nested": {"level": i % 5}}
            if i % 6 == 0:
                args["dry_run"] = i % 12 == 0  # true, false, or (odd i / other) missing
            if i == 10:
                args["customer_id"] = "2"  # text, not the number 2
        else:
            args = [{"x": i % 3}, i]
        ann = {"team": "billing" if i % 3 == 0 else "search"} if i % 4 != 1 else {}
        specs.append(client.build_spec(TASKS[i % 2], args, queue="qa" if i % 5 else "qb",
                                       tags=["even"] if i % 2 == 0 else ["odd"], annotations=ann))
    ids = []
    for start in range(0, n, 9):
        ids += await client.submit_specs(specs[start:start + 9])
    for job_id in ids[::7]:
        await client.cancel(job_id)
    return ids


WHERES: list[list[str]] = [
    ["args.customer_id=2"], ['args.customer_id="2"'], ["args.customer_id!=2"], ["args.customer_id>=2"],
    ["args.customer_id<1"], ["args.name=c1"], ["args.nested.level=3"], ["args.dry_run"], ["!args.dry_run"],
    ["args.dry_run=true"], ["args.dry_run=false"], ["args[0].x=1"], ["args[1]>20"], ["annotations.team=billing"],
    ["annotations.team!=billing"], ["!annotations.team"], ["args.customer_id=2", "annotations.team=search"],
    ["args.customer_id=99"],
]


async def test_where_agrees_with_a_scan_of_the_kv_alone_and_with_every_other_filter(client, start_scheduler):  # noqa: F811
    await submit_search_mix(client)
    index = await serving(await start_scheduler(lead=False))
    before = index.ingested
    others: list[dict[str, Any]] = [{}, {"states": ["available"]}, {"states": ["available", "cancelled"]},
                                    {"queue": "qa"}, {"task": "s.kw"}, {"tag": "even"},
                                    {"tag": "odd", "states": ["available"]}]
    nonempty = 0
    for where in WHERES:
        for other in others:
            want = await scanned(client, where=where, **other)
            nonempty += bool(want)
            got = await all_pages(client, 4, where=where, **other)
            assert got == want, (where, other)
    assert nonempty > 60  # the cases match something (an index that answered nothing would fail)
    # The index answered (no scan): a page of a selective path holds the newest matches.
    page = await client.list(limit=2, where=["annotations.team=billing"])
    assert [r.id for r in page.jobs] == (await scanned(client, where=["annotations.team=billing"]))[:2]
    assert index.ingested >= before


async def test_a_search_out_of_time_answers_part_of_a_page_with_a_cursor_that_resumes(
        client, start_scheduler, monkeypatch):  # noqa: F811
    monkeypatch.setattr(readmodel, "_WINDOW", 4)
    monkeypatch.setattr(readmodel, "_MAX_WINDOW", 4)
    ids = await submit_search_mix(client, 40)
    index = await serving(await start_scheduler(lead=False))
    want = await scanned(client, where=["args.customer_id=0"])
    assert len(want) >= 3
    # A budget too small for a second window: each answer is one window of 4 rows.
    q = JobsQuery(where=["args.customer_id=0"], limit=50, budget=1e-9)
    seen: list[str] = []
    partial = 0
    cursor = None
    while True:
        reply = await index.page(JobsQuery(where=q.where, limit=q.limit, budget=q.budget, cursor=cursor))
        assert reply.scanned <= 4
        partial += reply.partial
        seen += reply.ids
        cursor = reply.next
        if cursor is None:
            break
    assert seen == want
    assert partial >= len(ids) // 4 - 1
    # Count and id walk resume the same way.
    assert await count_matches(client.conn, client.ops, JobsQuery(where=q.where)) == (len(want), True)
    walked = [i async for page in match_ids(client.conn, client.ops, JobsQuery(where=q.where), page=2) for i in page]
    assert walked == want
    # The client's listing returns a short page with a cursor when its own budget runs out.
    monkeypatch.setattr(listing, "_MIN_BUDGET", 1e-9)
    page = await client.list(limit=50, where=["args.customer_id=0"], budget=0.0)
    assert len(page.jobs) < len(want) and page.next is not None and not page.exact


async def test_big_args_are_candidates_and_the_kv_decides(client, start_scheduler):  # noqa: F811
    await client.register_tasks(["s.big"])
    big = await client.submit("s.big", {"customer_id": 7, "blob": "x" * (MAX_ARGS_TEXT + 10)})
    other = await client.submit("s.big", {"customer_id": 8, "blob": "y" * (MAX_ARGS_TEXT + 10)})
    small = await client.submit("s.big", {"customer_id": 7})
    index = await serving(await start_scheduler(lead=False))
    async with index.r.execute("SELECT id, big FROM live_args WHERE ns = ?", (index.ns,)) as cur:
        flags = dict(await cur.fetchall())
    assert flags == {big: 1, other: 1, small: 0}
    reply = await index.page(JobsQuery(where=["args.customer_id=7"]))
    assert set(reply.ids) == {big, other, small}  # the index cannot tell the big ones apart
    assert [r.id for r in (await client.list(where=["args.customer_id=7"])).jobs] == [small, big]


async def test_paging_a_search_is_stable_under_concurrent_writes(client, start_scheduler):  # noqa: F811
    ids = await submit_search_mix(client, 40)
    await serving(await start_scheduler(lead=False))
    stop = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            await client.submit(TASKS[0], {"customer_id": 1, "name": "new"}, queue="qa")
            i += 1

    older = set(await scanned(client, where=["args.customer_id=1"]))
    task = asyncio.create_task(writer())
    try:
        seen = await all_pages(client, 3, where=["args.customer_id=1"])
    finally:
        stop.set()
        await task
    assert len(seen) == len(set(seen))  # no job twice
    assert older <= set(seen)  # every match that existed before the walk, once
    assert len(ids) == 40


async def test_index_equals_the_kv_after_a_kill_a_replay_and_an_old_file(client, start_scheduler, tmp_path):  # noqa: F811
    path = str(tmp_path / "node.sqlite3")
    ids = await submit_search_mix(client, 30)
    sched = await start_scheduler(lead=False, archive_path=path)
    await serving(sched)
    # Killed mid-stream: writes go on while it dies (the task is cancelled, nothing drains).
    writes = asyncio.gather(*(client.submit(TASKS[0], {"customer_id": 2, "name": "late"}) for _ in range(20)))
    sched.task.cancel()
    await asyncio.gather(sched.task, return_exceptions=True)
    await writes
    for job_id in ids[1:6]:
        try:
            await client.retry(job_id) if (await client.get(job_id)).state is JobState.CANCELLED \
                else await client.cancel(job_id)
        except Exception:  # already finished: nothing to change
            pass

    async def check() -> None:
        for where in (["args.customer_id=2"], ["annotations.team=billing"], ["!args.dry_run"]):
            for other in ({}, {"states": ["cancelled"]}, {"tag": "even"}):
                assert await all_pages(client, 5, where=where, **other) == await scanned(client, where=where, **other)

    index = await serving(await start_scheduler(lead=False, archive_path=path))  # resumes from its applied sequence
    assert index.rebuilds == 0
    await check()


async def test_old_file_without_the_args_index_is_rebuilt(client, start_scheduler, tmp_path):  # noqa: F811
    path = str(tmp_path / "node.sqlite3")
    await submit_search_mix(client, 20)
    sched = await start_scheduler(lead=False, archive_path=path)
    index = await serving(sched)
    rows = await index.row_count()
    await sched.stop()
    async with aiosqlite.connect(path) as db:  # as a file written before live_args existed
        await db.execute("DELETE FROM live_args")
        await db.execute("DELETE FROM meta WHERE key LIKE 'index_schema:%'")
        await db.commit()
    index2 = await serving(await start_scheduler(lead=False, archive_path=path))
    assert index2.rebuilds == 1 and await index2.row_count() == rows
    assert await all_pages(client, 50, where=["args.customer_id=2"]) == await scanned(client, where=["args.customer_id=2"])


async def test_bulk_skips_a_job_that_changed_state_and_writes_one_audit_entry(client, start_scheduler):  # noqa: F811
    from chronos import audit

    ids = await submit_search_mix(client, 24)
    await serving(await start_scheduler(lead=False))
    bulk = Bulk.of(client)
    q = client.jobs.query(states=["available"], where=["args.customer_id=2"])
    n, complete = await bulk.count(q)
    matched = [i async for page in match_ids(client.conn, client.ops, q) for i in page]
    assert complete and n == len(matched) >= 3
    # One match is cancelled by someone else after the ids were read: its turn finds it changed.
    await client.cancel(matched[1])
    before = len(await audit.read(client.conn, limit=1000))

    async def stale_ids(_q: Any) -> Any:
        yield matched  # the index's answer from before the change

    bulk._index_ids = stale_ids  # type: ignore[method-assign]
    seen: list[int] = []
    report = await bulk.cancel_all(q, matched=n, progress=lambda r: seen.append(r.handled), concurrency=4)
    assert (report.done, report.skipped, report.failed) == (n - 1, 1, 0)
    assert seen[-1] == n and sorted(seen) == seen
    for job_id in matched:
        assert (await client.get(job_id)).state is JobState.CANCELLED
    entries = (await audit.read(client.conn, limit=1000))[before:]
    assert [(e.action, e.target) for e in entries] == [("bulk_cancel", "state=available AND args.customer_id=2")]
    assert entries[0].detail and entries[0].detail["matched"] == n
    assert len(ids) == 24


@pytest.mark.parametrize("text", ["args.=1", "foo.x=1", "args.x=[1,", "args=1", "args.x=[1]", "annotations.a>1"])
def test_bad_filters_are_refused(text):
    with pytest.raises(Exception) as exc:
        parse(text)
    assert "--where" in str(exc.value)


async def test_index_answers_equal_the_kv_after_a_sigkill_mid_writes(client, settings, tmp_path):
    """A scheduler process SIGKILLed while jobs are written restarts on its file; the index's own
    answers (ids, before any KV re-check) equal a scan of the KV."""
    import os
    import signal
    import time

    from chronos.bench._scheduler import spawn_scheduler
    from chronos.listing import ask_index
    from chronos.readmodel import JobsReply

    path = tmp_path / "node.sqlite3"
    await submit_search_mix(client, 30)

    async def index_holds(n: int, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            c = await client.counts(fallback=False, timeout=1.0)
            if c is not None and c.total >= n:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no index holding {n} jobs within {timeout}s")

    procs = []
    try:
        procs.append(spawn_scheduler(settings.nats.url, settings.namespace, archive=path, node_id="k1"))
        await index_holds(30)
        stop = asyncio.Event()

        async def writer() -> int:
            n = 0
            while not stop.is_set():
                await client.submit_specs([client.build_spec(TASKS[0], {"customer_id": 2, "name": f"w{n}-{i}"})
                                           for i in range(20)])
                n += 20
            return n

        task = asyncio.create_task(writer())
        await index_holds(90)
        os.killpg(procs[0].pid, signal.SIGKILL)  # mid-stream: no drain, no close
        procs[0].wait(10)
        stop.set()
        written = await task
        total = 30 + written
        procs.append(spawn_scheduler(settings.nats.url, settings.namespace, archive=path, node_id="k2"))
        await index_holds(total)
        for where, other in ((["args.customer_id=2"], {}), (["annotations.team=billing"], {}),
                             (["!args.dry_run"], {"tag": "even"}), (["args.customer_id=2"], {"states": ["available"]})):
            want = await scanned(client, where=where, **other)
            reply = await ask_index(client.conn, JobsQuery(where=where, limit=1000, budget=2.0, **other), JobsReply)
            assert reply is not None and reply.next is None
            assert reply.ids == want, (where, other)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
