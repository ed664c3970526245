"""Follow a job's lifecycle events with ``client.watch``.

Every state change publishes a typed event; ``watch`` yields them live, or from
``history`` seconds back (read from the events stream), filtered by kind, queue or job.
"""

import asyncio
import logging
from contextlib import aclosing

from chronos import Client, Registry, Settings, load_settings, task
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)
registry = Registry()


@task(name="resize", registry=registry)
async def resize(image: str, width: int) -> str:
    await asyncio.sleep(0.2)  # some work
    return f"{image}@{width}px"


async def main(settings: Settings) -> None:
    worker = WorkerService(settings, registry, queues=["images"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        job_id = await client.submit("resize", ["cat.jpg", 640], queue="images")
        kinds = []
        # history=60: start a minute back, so events sent before we began watching are included.
        async with aclosing(client.watch(job_id=job_id, history=60)) as events:
            async for event in events:
                kinds.append(event.kind)
                log.info("%s %s attempt=%d worker=%s", event.kind, event.job_id, event.attempt, event.worker)
                if event.kind == "completed":
                    break

        # Events from different publishers (the submitter's `available`, the worker's `running`)
        # are not ordered among themselves; the record is the truth about order.
        assert "available" in kinds and kinds[-1] == "completed", kinds
        worker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
