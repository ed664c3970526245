"""Submit many jobs at once with ``submit_specs``: pipelined, with progress.

Build each JobSpec with ``client.build_spec`` (it validates like ``submit``), then send
them together; there is no round trip per job. ``progress(n)`` is called with the number
submitted so far (every 1,000 jobs on a big batch, and at the end).
"""

import asyncio
import logging

from chronos import Client, JobState, Registry, Settings, load_settings, task
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)
registry = Registry()
N = 300


@task(name="square", registry=registry)
async def square(n: int) -> int:
    return n * n


async def main(settings: Settings) -> None:
    worker = WorkerService(settings, registry, queues=["bulk"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        specs = [client.build_spec("square", [n], queue="bulk") for n in range(N)]
        progress: list[int] = []
        ids = await client.submit_specs(specs, progress=progress.append)
        assert len(ids) == N and progress[-1] == N
        log.info("submitted %d jobs (progress calls: %s)", N, progress)

        records = [await client.wait(job_id, timeout=20) for job_id in ids]
        assert all(r.state is JobState.COMPLETED for r in records)
        assert [r.result for r in records] == [n * n for n in range(N)]
        worker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
