"""A delayed job: ``delay=`` (or ``run_at=``) parks it as ``scheduled`` until its time.

A scheduler promotes it when due, so this example runs a SchedulerService next to the
worker. (Next to `chronos dev`, whose scheduler already leads, this one stands by and
the dev scheduler does the promoting.)
"""

import asyncio
import logging
import time

from chronos import Client, JobState, Registry, Settings, load_settings
from chronos.scheduler import SchedulerService
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    ran_at: list[float] = []

    async def remind(text: str) -> str:
        ran_at.append(time.time())
        return text

    registry = Registry()
    registry.register(remind, name="remind")
    scheduler = SchedulerService(settings)
    worker = WorkerService(settings, registry, queues=["reminders"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(scheduler.run())
        tg.create_task(worker.run())
        await scheduler.ready.wait()
        await worker.ready.wait()

        job_id = await client.submit("remind", ["stand up"], queue="reminders", delay=1.0)
        record = await client.get(job_id)
        assert record.state is JobState.SCHEDULED

        record = await client.wait(job_id, timeout=15)
        assert record.state is JobState.COMPLETED
        assert ran_at[0] >= record.spec.run_at  # not before its time
        log.info("job %s ran %.2fs after its run_at", job_id, ran_at[0] - record.spec.run_at)
        worker.stop()
        scheduler.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
