"""The rescuer's pass over pending markers: nothing to read ends at once, and a marker is still found
(``_scan.scan_entries`` asks the consumer how much it holds before it fetches)."""

from __future__ import annotations

import time

import msgspec

from chronos.clock import FakeClock
from chronos.jobs import PENDING_PREFIX, JobOps, new_record
from chronos.models import PendingWrite
from chronos.scheduler._scan import scan_entries
from chronos.scheduler.rescuer import Rescuer
from chronos.states import JobState


async def markers(client) -> list[str]:
    conn = client.conn
    out: list[str] = []
    async for entries in scan_entries(conn, conn.names.control_bucket, keys=PENDING_PREFIX + ">"):
        out += [e.key for e in entries]
    return out


async def test_a_marker_is_found_and_repaired_and_none_left_is_an_empty_scan(client):
    assert await markers(client) == []  # empty: returns (the fetch's wait is not needed to know)
    await client.register_tasks(["r.noop"])
    ops = JobOps(client.conn)
    now = time.time()
    # A writer that died between its record and its work message: marker and record, no message.
    rec = new_record("orphan01", client.build_spec("r.noop"), now, JobState.AVAILABLE)
    key, marked = await ops.mark_pending([PendingWrite(rec.id, rec.gen, rec.attempt)], "test")
    await marked
    await (await ops.create_nowait(rec))
    assert await markers(client) == [key]
    rescuer = Rescuer(ops, clock=FakeClock(now + 60), rescue_after=5)  # the marker is a minute old
    assert await rescuer.repair() == 1
    assert rescuer.repaired == ["orphan01"]
    assert await markers(client) == []  # the marker went with the repair
    info = await client.conn.js.stream_info(client.names.jobs_stream)
    assert info.state.messages == 1  # the work message, published once


async def test_a_record_no_subject_can_carry_is_discarded_not_republished(client):
    # Written before submit checked queues this way (a trailing newline), or forged: publishing its
    # work message would make the server close the leader's connection on every pass.
    await client.register_tasks(["r.noop"])
    ops = JobOps(client.conn)
    now = time.time()
    spec = msgspec.structs.replace(client.build_spec("r.noop"), queue="ok\n")
    rec = new_record("badqueue", spec, now, JobState.AVAILABLE)
    _, marked = await ops.mark_pending([PendingWrite(rec.id, rec.gen, rec.attempt)], "test")
    await marked
    await (await ops.create_nowait(rec))
    rescuer = Rescuer(ops, clock=FakeClock(now + 60), rescue_after=5)
    assert await rescuer.repair() == 0
    assert rescuer.refused == ["badqueue"] and rescuer.repaired == []
    got = await client.get("badqueue")
    assert got.state is JobState.DISCARDED and "cannot name a work subject" in (got.error or "")
    assert client.conn.nc.is_connected  # the connection was never dropped by the server
    assert await markers(client) == []
    info = await client.conn.js.stream_info(client.names.jobs_stream)
    assert info.state.messages == 0


class StubIndex:
    """The job index as the rescuer sees it: caught up or not, and the ids in a state."""

    def __init__(self, running: list[str]) -> None:
        import asyncio

        self.caught_up = asyncio.Event()
        self.running = running

    async def ids_in_state(self, state: str, *, limit: int = 1000, after: str | None = None,
                           updated_before: float | None = None) -> list[str]:
        assert state == "running"  # every one of them older than updated_before, in this stub
        return [i for i in sorted(self.running) if after is None or i > after][:limit]


async def test_no_bucket_scan_while_the_index_catches_up_and_markers_are_repaired_meanwhile(client):
    await client.register_tasks(["r.noop"])
    ops = JobOps(client.conn)
    now = time.time()
    lost = new_record("lost0001", client.build_spec("r.noop"), now - 100, JobState.RUNNING, worker="ghost",
                      attempt=1)
    await (await ops.create_nowait(lost))
    orphan = new_record("orphan02", client.build_spec("r.noop"), now, JobState.AVAILABLE)
    _, marked = await ops.mark_pending([PendingWrite(orphan.id, orphan.gen, orphan.attempt)], "test")
    await marked
    await (await ops.create_nowait(orphan))
    index = StubIndex([lost.id])
    rescuer = Rescuer(ops, clock=FakeClock(now + 60), rescue_after=5, index=index)
    assert await rescuer.step() == 1  # the marker's job, republished
    assert rescuer.scanned == 0 and rescuer.repaired == ["orphan02"]
    assert (await client.get(lost.id)).state is JobState.RUNNING  # not looked at yet
    index.caught_up.set()
    assert await rescuer.step() == 1
    assert rescuer.scanned == 1 and dict(rescuer.rescued) == {"lost0001": "retryable"}
