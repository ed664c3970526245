"""Pause a queue across the fleet, then resume it: jobs wait, nothing is lost, no attempt spent.

``pause_queue`` writes a flag every worker watches: no worker pulls from the queue any more,
while submits go on and their jobs wait. ``queues()`` shows who paused it and what waits;
``resume_queue`` lets every worker pull again at once. See docs/queues.md.
"""

import asyncio
import logging

from chronos import Client, JobState, Registry, Settings, load_settings
from chronos.worker.service import WorkerService

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    ran: list[int] = []

    async def send_mail(n: int) -> int:
        ran.append(n)
        return n

    registry = Registry()
    registry.register(send_mail, name="send_mail")
    workers = [WorkerService(settings, registry, queues=["mail"]) for _ in range(2)]
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        for w in workers:
            tg.create_task(w.run())
            await w.ready.wait()

        await client.pause_queue("mail", reason="smtp relay down")
        for w in workers:  # each worker learns it from its watch, within milliseconds
            await w.changed.until(lambda w=w: "mail" in w.pauses.paused, 10)
        # Requests a worker opened just before the pause run out within poll_expires; a job one of
        # them hands over is given back (docs/queues.md). Wait for them, so the count below is exact.
        for w in workers:
            while any(p.busy for p in w.pullers):
                await asyncio.sleep(0.05)

        ids = [await client.submit("send_mail", [n], queue="mail") for n in range(5)]
        while (mail := next(q for q in await client.queues() if q.name == "mail")).waiting < 5:
            await asyncio.sleep(0.05)
        assert mail.paused and mail.reason == "smtp relay down" and ran == []
        log.info("mail paused by %s: %d waiting, %d workers serve it", mail.paused_by, mail.waiting, mail.workers)

        await client.resume_queue("mail")
        for job_id in ids:
            record = await client.wait(job_id, timeout=15)
            assert record.state is JobState.COMPLETED and record.attempt == 1
        assert sorted(ran) == list(range(5))
        for w in workers:
            w.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
