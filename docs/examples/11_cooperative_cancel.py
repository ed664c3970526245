"""Cancel a running job: the task sees ``current_job().cancelled`` and stops cleanly.

``client.cancel`` on a running job sets a cooperative signal; the task checks it between
steps and raises Cancel with its own reason. A task that ignores the signal is
hard-stopped after a grace period.
"""

import asyncio
import logging
from contextlib import aclosing

from chronos import Cancel, Client, JobState, Registry, Settings, current_job, load_settings, task
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)
registry = Registry()


@task(name="crawl", registry=registry)
async def crawl(pages: int) -> int:
    job = current_job()
    for page in range(pages):
        if job.cancelled:
            raise Cancel(f"stopped after {page} pages ({job.cancel_reason})")
        await asyncio.sleep(0.02)  # fetch one page
    return pages


async def main(settings: Settings) -> None:
    worker = WorkerService(settings, registry, queues=["crawler"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        job_id = await client.submit("crawl", [10_000], queue="crawler")
        # Wait until the worker has recorded the job as running.
        async with aclosing(client.watch(job_id=job_id, kinds=["running"], history=60)) as events:
            await anext(events)

        await client.cancel(job_id, reason="operator asked")
        record = await client.wait(job_id, timeout=10)

        assert record.state is JobState.CANCELLED
        assert record.error.startswith("stopped after") and "operator asked" in record.error
        log.info("job %s: %s", job_id, record.error)
        worker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
