"""A schedule makes a job on a timetable: here every second (``every=1``); cron works the same.

The scheduler holding the leader lease fires it; each fire is an ordinary job with
``schedule_id`` set. See docs/schedules.md for cron, time zones, overlap and misfire.
"""

import asyncio
import itertools
import logging

from chronos import Client, JobState, Registry, Settings, current_job, load_settings
from chronos.scheduler import SchedulerService
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    fired: asyncio.Queue[str] = asyncio.Queue()

    async def heartbeat() -> None:
        fired.put_nowait(current_job().job_id)

    registry = Registry()
    registry.register(heartbeat, name="heartbeat")
    scheduler = SchedulerService(settings)
    worker = WorkerService(settings, registry, queues=["heartbeats"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(scheduler.run())
        tg.create_task(worker.run())
        await scheduler.ready.wait()
        await worker.ready.wait()

        await client.add_schedule("example-heartbeat", "heartbeat", every=1, queue="heartbeats")
        try:
            fires = await client.next_fire_times("example-heartbeat", 3)  # a dry run
            assert [b - a for a, b in itertools.pairwise(fires)] == [1.0, 1.0]
            first = await asyncio.wait_for(fired.get(), 15)
            second = await asyncio.wait_for(fired.get(), 15)
        finally:
            await client.remove_schedule("example-heartbeat")

        assert first != second  # one job per fire
        record = await client.wait(first, timeout=10)
        assert record.state is JobState.COMPLETED
        assert record.schedule_id == "example-heartbeat" and record.fire_time is not None
        # A cron timetable, previewed without storing anything:
        assert len(client.preview_fire_times(cron="*/5 * * * *", tz="Europe/Berlin", count=3)) == 3
        log.info("schedule fired jobs %s and %s", first, second)
        worker.stop()
        scheduler.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
