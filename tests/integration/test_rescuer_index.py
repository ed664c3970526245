"""The rescuer follows running jobs through the job index: a pass reads the running records
only, not the whole bucket (issue 15: cost follows running jobs, not all jobs)."""

from __future__ import annotations

import asyncio
import time

from chronos.jobs import JobOps, new_record
from chronos.models import Attempt
from chronos.states import JobState

from .test_scheduler import start_scheduler  # noqa: F401  (fixture)


async def _scheduler(client, start_scheduler):  # noqa: F811
    """A leading scheduler whose index has caught up, its rescuer run by hand; and JobOps."""
    sched = await start_scheduler(rescuer_tick=3600.0)  # passes by hand below
    await asyncio.wait_for(sched.service.archiver.index.caught_up.wait(), 20)
    await client.register_tasks(["r.noop"])
    return sched.service, JobOps(client.conn)


async def _indexed(index, rows: int) -> None:
    async def wait() -> None:
        while await index.row_count() < rows:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(wait(), 20)


async def test_a_pass_reads_only_running_records_and_still_rescues(client, start_scheduler):  # noqa: F811
    svc, ops = await _scheduler(client, start_scheduler)
    now = time.time()
    # Finished jobs the rescuer must not read, one by one...
    for i in range(200):
        rec = new_record(f"done{i:04d}", client.build_spec("r.noop"), now - 100, JobState.COMPLETED,
                         finished_at=now - 100)
        await (await ops.create_nowait(rec))
    # ...and one job running on a worker that is gone.
    lost = new_record("lost0001", client.build_spec("r.noop", max_attempts=3), now - 100, JobState.RUNNING,
                      worker="ghost", attempt=1, attempts=[Attempt(number=1, started_at=now - 100, worker="ghost")])
    await (await ops.create_nowait(lost))
    index = svc.archiver.index
    await _indexed(index, 201)
    rescuer = svc.rescuer
    assert rescuer is not None and rescuer.index is index
    rescuer.rescue_after = 5
    assert await rescuer.step() == 1
    assert rescuer.scanned == 1  # the one running record, not 201
    assert dict(rescuer.rescued) == {"lost0001": "retryable"}
    assert (await client.get("lost0001")).state is JobState.RETRYABLE


async def test_a_pass_does_not_read_running_records_written_lately(client, start_scheduler):  # noqa: F811
    """A running job whose record changed within rescue_after cannot be lost yet: the index says
    so, and the pass does not read it (a read per running job was most of a pass's cost)."""
    svc, ops = await _scheduler(client, start_scheduler)
    now = time.time()
    for i in range(50):  # started just now, on a worker the rescuer does not know (yet)
        rec = new_record(f"young{i:04d}", client.build_spec("r.noop"), now, JobState.RUNNING, worker="ghost",
                         attempt=1, attempts=[Attempt(number=1, started_at=now, worker="ghost")])
        await (await ops.create_nowait(rec))
    old = new_record("old00001", client.build_spec("r.noop", max_attempts=3), now - 100, JobState.RUNNING,
                     worker="ghost", attempt=1, attempts=[Attempt(number=1, started_at=now - 100, worker="ghost")])
    await (await ops.create_nowait(old))
    await _indexed(svc.archiver.index, 51)
    rescuer = svc.rescuer
    assert rescuer is not None
    rescuer.rescue_after = 30
    assert await rescuer.step() == 1
    assert rescuer.scanned == 1  # the old one only
    assert dict(rescuer.rescued) == {"old00001": "retryable"}
    assert (await client.get("young0000")).state is JobState.RUNNING
