"""Attempts run out: the job is discarded into the DLQ with its traceback; replay it once fixed.

Any exception other than Retry or Cancel is a failure: retried with backoff until
``max_attempts`` is spent, then the job is ``discarded`` and a DLQ entry keeps the
reason, the traceback and the spec. ``dlq_replay`` runs it again (fresh attempt
budget) and removes the entry.
"""

import asyncio
import logging

from chronos import Backoff, Client, JobState, Registry, Settings, load_settings
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    provider_up = asyncio.Event()  # a payment provider that is down until we "fix" it

    async def charge(order: str) -> str:
        if not provider_up.is_set():
            raise ConnectionError("payment provider unreachable")
        return f"charged {order}"

    registry = Registry()
    registry.register(charge, name="charge")
    worker = WorkerService(settings, registry, queues=["payments"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        job_id = await client.submit("charge", ["order-7"], queue="payments", max_attempts=2,
                                     backoff=Backoff(kind="fixed", base=0.1, jitter=False))
        record = await client.wait(job_id, timeout=10)
        assert record.state is JobState.DISCARDED
        assert [a.outcome for a in record.attempts] == ["error", "error"]

        entry = await client.dlq_get(job_id)  # by job id, or by the entry's sequence number
        assert entry.reason.startswith("attempts exhausted (2/2)")
        assert "ConnectionError: payment provider unreachable" in entry.traceback
        log.info("DLQ entry %d: %s", entry.seq, entry.reason)

        provider_up.set()  # the fix is deployed: replay the entry
        await client.dlq_replay(entry.seq)
        record = await client.wait(job_id, timeout=10)
        assert record.state is JobState.COMPLETED and record.result == "charged order-7"
        assert job_id not in [e.job_id for e in await client.dlq_list()]
        worker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
