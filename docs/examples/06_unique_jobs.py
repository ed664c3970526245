"""A unique key: submitting the same key twice gives one job and the first job's id.

The key becomes the work message's ``Nats-Msg-Id``, so JetStream drops the duplicate
inside the stream's duplicate window (``jobs.duplicate_window``, 600 s by default).
"""

import asyncio
import logging
import uuid

from chronos import Client, JobState, Registry, Settings, load_settings
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    builds: list[str] = []

    async def build_report(day: str) -> str:
        builds.append(day)
        return f"report for {day}"

    registry = Registry()
    registry.register(build_report, name="build_report")
    worker = WorkerService(settings, registry, queues=["reports"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        # A fresh key per run, so running this example twice inside the window still makes a job.
        key = f"report:2026-11-23:{uuid.uuid4().hex[:8]}"
        first = await client.submit("build_report", ["2026-11-23"], queue="reports", unique_key=key)
        second = await client.submit("build_report", ["2026-11-23"], queue="reports", unique_key=key)
        assert second == first

        assert (await client.wait(first, timeout=10)).state is JobState.COMPLETED
        assert builds == ["2026-11-23"]  # built once
        log.info("unique key %s -> job %s, built %d time(s)", key, first, len(builds))
        worker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
