"""Workflows: a chain passes each result on; a chord calls its callback once with every result,
a failed child included as a ``Failure`` item. See docs/workflows.md."""

import asyncio
import logging

import chronos
from chronos import Client, Registry, Settings, load_settings
from chronos.worker.service import WorkerService
from chronos.workflows import Failure, Workflow, chain, chord, group

log = logging.getLogger(__name__)
registry = Registry()


@chronos.task(name="wf_example.fetch", registry=registry, queue="wf-example", max_attempts=1)
async def fetch(page: int) -> int:
    if page == 3:
        raise RuntimeError("page 3 is gone")
    return page * 100


@chronos.task(name="wf_example.total", registry=registry, queue="wf-example")
async def total(sizes: list) -> dict:  # type: ignore[type-arg]
    failed = [Failure.of(s) for s in sizes if Failure.of(s) is not None]
    return {"bytes": sum(s for s in sizes if Failure.of(s) is None), "failed": [f.job for f in failed if f]}


@chronos.task(name="wf_example.double", registry=registry, queue="wf-example")
async def double(x: int) -> int:
    return 2 * x


async def main(settings: Settings) -> None:
    worker = WorkerService(settings, registry, queues=["wf-example"])
    async with asyncio.TaskGroup() as tg, await Client.connect(settings) as client:
        tg.create_task(worker.run())
        await worker.ready.wait()

        # fetch(1) -> double(100) -> double(200)
        ref = await client.submit_workflow(Workflow(chain(fetch.s(1), double.s(), double.s())))
        assert await ref.result(timeout=10) == 400

        # four pages, one of them failing; the callback runs once and sees the failure in its place
        ref = await client.submit_workflow(Workflow(chord(group(fetch.s(p) for p in range(4)), total.s())))
        rec = await ref.wait(timeout=10)
        view = await client.workflow(ref.id)
        result = view.nodes[-1].result
        assert result == {"bytes": 300, "failed": [f"{ref.id}.3"]}
        assert rec.state == "failed" and rec.failed == [3]  # a node failed, the callback still ran
        log.info("workflow %s: %s; callback got %s", ref.id, rec.state, result)
        worker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(load_settings()))
