"""Find jobs by their arguments (``where=``) and cancel every match in one bulk action.

A scheduler's job index answers the search: it walks the jobs newest first and tests a JSON
path into each job's args or annotations (chronos/where.py has the syntax). The bulk action
counts the matches, writes one audit entry, and cancels each job by compare-and-set.
"""

import asyncio
import logging

from chronos import Client, JobState, Settings, load_settings
from chronos.clientapi.bulk import Bulk
from chronos.scheduler.service import SchedulerService

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    scheduler = SchedulerService(settings, log_events=False)
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(scheduler.run())
        await client.register_tasks(["invoices.send"])
        specs = [client.build_spec("invoices.send", {"customer_id": c, "invoice": i}, delay=3600,
                                   annotations={"team": "billing"}) for i, c in enumerate([42, 7, 42, 9, 42])]
        ids = await client.submit_specs(specs)

        page = await client.list(where=["args.customer_id=42", "annotations.team=billing"])
        assert sorted(r.id for r in page.jobs) == sorted(ids[i] for i in (0, 2, 4))

        bulk = Bulk.of(client)
        query = client.jobs.query(states=["scheduled"], where=["args.customer_id=42"])
        matched, _ = await bulk.count(query)  # the dry run
        report = await bulk.cancel_all(query, matched=matched, reason="customer 42 closed the account")
        assert (report.matched, report.done, report.skipped, report.failed) == (3, 3, 0, 0)
        states = {i: (await client.get(i)).state for i in ids}
        assert [states[i] for i in ids] == [JobState.CANCELLED, JobState.SCHEDULED, JobState.CANCELLED,
                                            JobState.SCHEDULED, JobState.CANCELLED]
        log.info("cancelled %d of %d jobs matching customer 42", report.done, len(ids))
        scheduler.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
