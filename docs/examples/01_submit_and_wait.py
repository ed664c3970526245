"""Submit a job and wait for its result.

A worker runs in this process on a queue of its own ("greetings"), so a `chronos dev`
worker next door does not take the job. Run `chronos dev` in one terminal and
`python docs/examples/01_submit_and_wait.py` in another.
"""

import asyncio
import logging

from chronos import Client, JobState, Registry, Settings, load_settings, task
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)
registry = Registry()


@task(name="greet", registry=registry)
async def greet(name: str) -> str:
    return f"hello, {name}"


async def main(settings: Settings) -> None:
    worker = WorkerService(settings, registry, queues=["greetings"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        job_id = await client.submit("greet", ["Ada"], queue="greetings")
        record = await client.wait(job_id, timeout=10)  # returns once the job is terminal

        assert record.state is JobState.COMPLETED
        assert record.result == "hello, Ada"
        log.info("job %s is %s: %r", job_id, record.state, record.result)
        worker.stop()  # graceful: stop fetching, let running jobs finish


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
