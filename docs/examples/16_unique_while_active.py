"""Unique while active: one job per key while it is pending or running, with no time window.

A submit of a key whose job is still active returns that job (``outcome == "active"``); once
the job has finished, the next submit makes a new one. See docs/unique-jobs.md.
"""

import asyncio
import logging
import uuid

from chronos import Client, JobState, Registry, Settings, load_settings
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    release = asyncio.Event()
    synced: list[int] = []

    async def sync_customer(customer: int) -> int:
        await release.wait()  # a long sync: the key stays held while it runs
        synced.append(customer)
        return customer

    registry = Registry()
    registry.register(sync_customer, name="sync_customer")
    worker = WorkerService(settings, registry, queues=["crm"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        key = f"customer:42:{uuid.uuid4().hex[:8]}"  # fresh per run, so a rerun starts clean
        first = await client.submit_job("sync_customer", [42], queue="crm", unique="while_active", unique_key=key)
        again = await client.submit_job("sync_customer", [42], queue="crm", unique="while_active", unique_key=key)
        assert first.outcome == "created" and again == (first.id, "active")

        release.set()
        assert (await client.wait(first.id, timeout=10)).state is JobState.COMPLETED
        later = await client.submit_job("sync_customer", [42], queue="crm", unique="while_active", unique_key=key)
        assert later.outcome == "created" and later.id != first.id  # finished: the key was free again
        assert (await client.wait(later.id, timeout=10)).state is JobState.COMPLETED
        assert synced == [42, 42]
        log.info("key %s: job %s, then (after it finished) job %s", key, first.id, later.id)
        worker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
