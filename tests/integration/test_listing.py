"""The job index (readmodel.py): listings and counts answered by a scheduler node, checked against the KV."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiosqlite

from chronos.listing import _scan
from chronos.readmodel import JobsQuery
from chronos.states import JobState

from .test_scheduler import SchedHandle, start_scheduler  # noqa: F401  (fixture)

TASKS = ["l.alpha", "l.beta"]


async def serving(sched: SchedHandle, timeout: float = 20.0) -> Any:
    archiver = sched.service.archiver
    assert archiver is not None
    await asyncio.wait_for(archiver.index_serving.wait(), timeout)
    return archiver.index


async def submit_mix(client: Any, n: int = 30) -> list[str]:
    """Jobs in several queues, tasks, tags and states (available, scheduled, cancelled)."""
    await client.register_tasks(TASKS)
    specs = []
    for i in range(n):
        specs.append(client.build_spec(TASKS[i % 2], [i], queue="qa" if i % 3 else "qb",
                                       tags=["even"] if i % 2 == 0 else ["odd", f"n{i}"],
                                       delay=3600 if i % 5 == 0 else None))
    ids = []
    for start in range(0, n, 10):  # a bulk submit stamps one created time: three make a time range
        ids += await client.submit_specs(specs[start:start + 10])
    for job_id in ids[::7]:
        await client.cancel(job_id)
    return ids


async def scanned(client: Any, **filters: Any) -> list[str]:
    q = JobsQuery(**filters, limit=1)
    page = await _scan(client.ops, q, 10**9)
    return [r.id for r in page.jobs]


async def all_pages(client: Any, limit: int, **filters: Any) -> list[str]:
    out: list[str] = []
    cursor = None
    while True:
        page = await client.list(limit=limit, cursor=cursor, **filters)
        out += [r.id for r in page.jobs]
        cursor = page.next
        if cursor is None:
            return out


async def test_index_answers_every_filter_like_a_scan_of_the_kv(client, start_scheduler):  # noqa: F811
    ids = await submit_mix(client)
    sched = await start_scheduler(lead=False)
    index = await serving(sched)
    t_mid = (await client.get(ids[15])).created_at
    cases: list[dict[str, Any]] = [
        {}, {"states": ["available"]}, {"states": ["scheduled"]}, {"states": ["cancelled"]},
        {"states": ["available", "cancelled"]}, {"queue": "qb"}, {"task": "l.beta"}, {"tag": "even"},
        {"tag": "n3"}, {"since": t_mid}, {"until": t_mid}, {"queue": "qa", "tag": "odd", "states": ["available"]},
    ]
    before = index.ingested
    for filters in cases:
        want = await scanned(client, **filters)
        assert want, filters  # every case matches something, so an empty answer fails
        got = await all_pages(client, 4, **filters)
        assert got == want, filters
        page = await client.list(limit=4, **filters)
        assert page.total == len(want) and page.exact
        assert [r.id for r in page.jobs] == want[:4]
        assert (page.next is None) == (len(want) <= 4)
    assert index.ingested >= before  # the index answered (no scan fallback raises here)
    # offset paging still works and agrees with the cursor
    page = await client.list(offset=5, limit=3)
    assert [r.id for r in page.jobs] == (await scanned(client))[5:8]


async def test_a_listing_reads_its_own_writes_and_counts_follow(client, start_scheduler):  # noqa: F811
    ids = await submit_mix(client, 12)
    sched = await start_scheduler(lead=False)
    await serving(sched)
    new = await client.submit(TASKS[0], [99], queue="qz")
    page = await client.list(queue="qz")
    assert [r.id for r in page.jobs] == [new]  # no wait: the index syncs to the stream's end first
    counts = await client.counts()
    recs = [await client.get(i) for i in [*ids, new]]
    for state in JobState:
        assert counts.by_state[state.value] == sum(1 for r in recs if r.state is state), state
    assert counts.by_queue["qz"] == {"available": 1}
    await client.cancel(new)
    assert (await client.counts()).by_queue["qz"] == {"cancelled": 1}
    assert [r.id for r in (await client.list(queue="qz", state="cancelled")).jobs] == [new]
    assert (await client.list(queue="qz", state="available")).jobs == []


async def test_paging_is_stable_under_concurrent_writes(client, start_scheduler):  # noqa: F811
    ids = await submit_mix(client, 40)
    sched = await start_scheduler(lead=False)
    await serving(sched)
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await client.submit(TASKS[1], [0], queue="qa")

    task = asyncio.create_task(writer())
    try:
        seen = await all_pages(client, 3, queue="qa")
    finally:
        stop.set()
        await task
    assert len(seen) == len(set(seen))  # no job twice
    older = {i for i in ids if (await client.get(i)).spec.queue == "qa"}
    assert older <= set(seen)  # every job that existed before the walk, once


async def test_replayed_stream_and_lost_deletes_leave_the_index_equal_to_the_kv(client, start_scheduler,  # noqa: F811
                                                                                  tmp_path):
    path = str(tmp_path / "node.sqlite3")
    ids = await submit_mix(client, 20)
    sched = await start_scheduler(lead=False, archive_path=path)
    index = await serving(sched)
    rows_before = await index.row_count()
    await sched.stop()
    # A replay: the file forgets how far it read, so the whole stream is applied again.
    async with aiosqlite.connect(path) as db:
        await db.execute("UPDATE meta SET value = '0' WHERE key LIKE 'index_seq:%'")
        await db.commit()
    # A lost delete: a record removed (as the pruner does, marker included) while the node was down.
    gone = ids[0]  # cancelled by submit_mix: a finished row, as pruned ones are
    assert (await client.get(gone)).state is JobState.CANCELLED
    store = await client.ops.store()
    await store.delete(gone)
    info = await client.conn.js.stream_info(client.names.kv_stream(client.names.jobs_bucket))
    await client.conn.js.delete_msg(client.names.kv_stream(client.names.jobs_bucket), info.state.last_seq)
    sched2 = await start_scheduler(lead=False, archive_path=path)
    index2 = await serving(sched2)
    assert index2.ingested >= len(ids) - 1  # read again from the start
    assert await index2.row_count() == rows_before  # the replay changed nothing; the lost delete is unseen
    want = await scanned(client)
    assert gone not in want
    assert await all_pages(client, 50) == want  # the listing reads records from the KV: never shows it
    # Reconcile (rows past the retention are read back from the KV) drops the row whose record is gone.
    index2.retention = -3600.0  # every finished row counts as expired for this check
    assert await index2.reconcile() == 1
    assert await index2.row_count() == len(want) == rows_before - 1
    counts = await client.counts()
    assert counts.total == len(want)


async def test_every_node_answers_alone_after_the_other_stops(client, start_scheduler, tmp_path):  # noqa: F811
    ids = await submit_mix(client, 10)
    a = await start_scheduler(archive_path=str(tmp_path / "a.sqlite3"))
    b = await start_scheduler(lead=False, archive_path=str(tmp_path / "b.sqlite3"))
    await serving(a)
    await serving(b)
    want = await scanned(client)
    assert await all_pages(client, 4) == want
    await a.stop()  # the leader goes; the follower's index keeps answering
    t0 = time.monotonic()
    assert await all_pages(client, 4) == want
    assert time.monotonic() - t0 < 3.0
    assert len(want) == len(ids)
