"""The rescuer's pass over pending markers: nothing to read ends at once, and a marker is still found
(``_scan.scan_entries`` asks the consumer how much it holds before it fetches)."""

from __future__ import annotations

import time

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
