"""A finished job leaves no reference cycle behind: refcounting frees it, not the collector.

A run's context held its progress hook, which held the run: ten objects a job were left to the
garbage collector, whose passes were then the largest single cost of a busy worker.
"""

from __future__ import annotations

import gc

from chronos import Registry
from chronos.worker.context import JobContext
from chronos.worker.executor import Running


async def test_finished_jobs_leave_no_cyclic_garbage(client, start_worker):
    reg = Registry()

    async def noop(i: int) -> int:
        return i

    reg.register(noop, name="noop")
    h = await start_worker(reg)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await client.submit_specs([client.build_spec("noop", [i]) for i in range(50)])
        ex = h.service.executor
        await h.service.changed.until(lambda: ex.processed >= 50 and not h.service.running, 30)
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, (Running, JobContext))]
        assert ex.processed == 50
        assert not left, f"{len(left)} runs or job contexts were freed only by the garbage collector"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
