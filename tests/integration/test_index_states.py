"""The job index's ``ids_in_state`` (what the rescuer follows): every id in the state, in id order,
page by page, read from the state index rather than a walk over every row of the namespace."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from chronos.jobs import JobOps, new_record
from chronos.models import Attempt
from chronos.states import JobState

from .test_scheduler import start_scheduler  # noqa: F401  (fixture)


async def test_ids_in_state_pages_through_one_state_on_its_index(client, start_scheduler):  # noqa: F811
    sched = await start_scheduler(rescuer_tick=3600.0)
    index = sched.service.archiver.index
    await asyncio.wait_for(index.caught_up.wait(), 20)
    await client.register_tasks(["r.noop"])
    ops = JobOps(client.conn)
    now = time.time()
    running, acks = [], []
    for i in range(1200):
        if i % 4 == 0:  # one in four running, on a live worker
            rec = new_record(f"run{i:05d}", client.build_spec("r.noop"), now, JobState.RUNNING, worker="w",
                             attempt=1, attempts=[Attempt(number=1, started_at=now, worker="w")])
            running.append(rec.id)
        else:
            rec = new_record(f"done{i:05d}", client.build_spec("r.noop"), now, JobState.COMPLETED, finished_at=now)
        acks.append(await ops.create_nowait(rec))
    await asyncio.gather(*acks)

    async def indexed() -> None:
        while await index.row_count() < 1200:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(indexed(), 30)
    statements: list[str] = []
    await index.r.set_trace_callback(statements.append)
    got: list[str] = []
    after = None
    while True:
        page = await index.ids_in_state("running", limit=120, after=after)
        got += page
        if len(page) < 120:
            break
        after = page[-1]
    await index.r.set_trace_callback(None)
    assert got == sorted(running)
    # The plan: a search of the state index, never the primary key over the whole namespace.
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert selects
    with sqlite3.connect(index.path) as db:
        for sql in selects:
            plan = " ".join(str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN " + sql))
            assert "live_state" in plan and "PRIMARY KEY" not in plan, plan
