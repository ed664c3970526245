"""Progress: a long task reports how far it is; the record and ``progress`` events show it.

``await current_job().progress(fraction, message)`` is rate-limited (about two writes a second per
job), and the last report is written before the job's outcome. See docs/progress.md.
"""

import asyncio
import logging

from chronos import Client, JobState, Registry, Settings, current_job, load_settings
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    async def copy_files(n: int) -> int:
        job = current_job()
        for i in range(n):
            await asyncio.sleep(0)  # the copying
            await job.progress((i + 1) / n, f"file {i + 1} of {n}")
        return n

    registry = Registry()
    registry.register(copy_files, name="copy_files")
    worker = WorkerService(settings, registry, queues=["files"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        seen: list[float] = []
        job_id = await client.submit("copy_files", [500], queue="files")
        record = await client.wait(job_id, timeout=10,
                                   on_update=lambda r: r.progress and seen.append(r.progress.fraction))
        assert record.state is JobState.COMPLETED
        assert record.progress is not None and record.progress.fraction == 1.0
        assert record.progress.message == "file 500 of 500"
        assert len(seen) < 50  # 500 reports, a few writes
        log.info("job %s: %d reports, %d progress writes seen, last %r", job_id, 500, len(seen),
                 record.progress.message)
        worker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
