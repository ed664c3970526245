"""A task that raises Retry runs again after the delay it asks for, then succeeds.

Retry(delay) is an outcome, not an error: the job goes to ``retryable``, its message
is nak'ed with that delay, and the attempt counts against ``max_attempts``.
"""

import asyncio
import logging

from chronos import Client, JobState, Registry, Retry, Settings, current_job, load_settings, task
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)
registry = Registry()


@task(name="fetch_rates", registry=registry)
async def fetch_rates(currency: str) -> str:
    job = current_job()
    if job.attempt < 3:  # the upstream is busy the first two times
        raise Retry(delay=0.2, reason=f"upstream busy on attempt {job.attempt}")
    return f"{currency} rates fetched on attempt {job.attempt}"


async def main(settings: Settings) -> None:
    worker = WorkerService(settings, registry, queues=["rates"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        job_id = await client.submit("fetch_rates", ["EUR"], queue="rates", max_attempts=5)
        record = await client.wait(job_id, timeout=10)

        assert record.state is JobState.COMPLETED
        assert record.attempt == 3
        assert [a.outcome for a in record.attempts] == ["retry", "retry", "completed"]
        assert record.attempts[0].error == "upstream busy on attempt 1"
        log.info("job %s: %s", job_id, record.result)
        worker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
