"""Fleet-wide limits: at most one running job per customer, and a queue's rate set live.

``concurrency=1`` with ``limit_key="customer"`` lets one job per customer run at a time across
every worker; a job that finds its customer busy waits without spending an attempt. A queue's
rate is an operator setting every worker picks up at once. See docs/concurrency-limits.md and
docs/rate-limits.md.
"""

import asyncio
import logging
import time

from chronos import Client, JobState, Registry, Settings, load_settings
from chronos.limits import task_limits
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    starts: list[float] = []

    async def sync_customer(customer: str) -> str:
        running[customer] = running.get(customer, 0) + 1
        peak[customer] = max(peak.get(customer, 0), running[customer])
        starts.append(time.monotonic())
        await asyncio.sleep(0.02)
        running[customer] -= 1
        return customer

    registry = Registry()
    # As @chronos.task(concurrency=1, limit_key="customer") declares it on a module's function:
    registry.register(sync_customer, name="sync_customer", limits=task_limits(concurrency=1, limit_key="customer"))
    workers = [WorkerService(settings, registry, queues=["customers"]) for _ in range(2)]
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        for w in workers:
            tg.create_task(w.run())
            await w.ready.wait()
        await client.set_queue_limit("customers", rate="20/s")  # live: both workers watch it
        for w in workers:
            while "customers" not in w.limiter.queue_limits:
                await asyncio.sleep(0.01)

        ids = [await client.submit("sync_customer", {"customer": f"c{i % 3}"}, queue="customers")
               for i in range(12)]
        for job_id in ids:
            record = await client.wait(job_id, timeout=30)
            assert record.state is JobState.COMPLETED and record.attempt == 1  # waiting spent nothing
        assert max(peak.values()) == 1  # never two of one customer at once, on either worker
        assert max(starts) - min(starts) >= 11 / 20 - 0.05  # 12 starts at 20/s
        log.info("12 jobs over 3 customers: one at a time each, %.1f starts/s",
                 (len(starts) - 1) / (max(starts) - min(starts)))
        await client.clear_queue_limit("customers")
        for w in workers:
            w.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
