"""A task that raises Cancel stops for good: state ``cancelled``, no retry, no DLQ entry.

Use it when running again cannot help (bad input, a resource that is gone).
"""

import asyncio
import logging

from chronos import Cancel, Client, JobState, Registry, Settings, load_settings, task
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)
registry = Registry()


@task(name="import_file", registry=registry)
async def import_file(path: str) -> int:
    if not path.endswith(".csv"):
        raise Cancel(f"{path} is not a CSV file; retrying will not help")
    return 42  # rows imported


async def main(settings: Settings) -> None:
    worker = WorkerService(settings, registry, queues=["imports"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        job_id = await client.submit("import_file", ["photo.png"], queue="imports", max_attempts=5)
        record = await client.wait(job_id, timeout=10)

        assert record.state is JobState.CANCELLED
        assert record.attempt == 1  # one attempt, although five were allowed
        assert record.error == "photo.png is not a CSV file; retrying will not help"
        assert job_id not in [e.job_id for e in await client.dlq_list()]
        log.info("job %s: %s (%s)", job_id, record.state, record.error)
        worker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
