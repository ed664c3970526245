"""Cancel a job that has not started: it is ``cancelled`` at once and never runs.

The worker has one slot and it is busy, so the second job waits in the queue;
``client.cancel`` ends it there. A worker that later receives its message skips it.
"""

import asyncio
import logging

from chronos import Client, JobState, Registry, Settings, load_settings
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    ran: list[str] = []
    busy, release = asyncio.Event(), asyncio.Event()

    async def export(name: str) -> str:
        ran.append(name)
        if name == "big":
            busy.set()
            await release.wait()  # hold the only slot until told
        return name

    registry = Registry()
    registry.register(export, name="export")
    worker = WorkerService(settings, registry, queues=["exports"], concurrency=1)
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        await client.submit("export", ["big"], queue="exports")
        await busy.wait()  # the worker's only slot is taken
        waiting = await client.submit("export", ["small"], queue="exports")

        record = await client.cancel(waiting, reason="not needed any more")
        assert record.state is JobState.CANCELLED  # at once: it was pending

        release.set()
        after = await client.submit("export", ["after"], queue="exports")
        assert (await client.wait(after, timeout=10)).state is JobState.COMPLETED
        assert ran == ["big", "after"]  # "small" was skipped, never run
        assert (await client.get(waiting)).error == "not needed any more"
        log.info("job %s: %s", waiting, record.state)
        worker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
