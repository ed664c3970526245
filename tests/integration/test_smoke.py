from chronos import Registry
from chronos.states import JobState

from ..conftest import wait_for_state


async def test_submit_runs_to_completed(client, start_worker):
    reg = Registry()

    async def add(a, b):
        return a + b

    reg.register(add, name="add")

    await start_worker(reg)
    job_id = await client.submit("add", [2, 3])
    rec = await client.wait(job_id, timeout=20)
    assert rec.state == JobState.COMPLETED
    assert rec.result == 5
    assert rec.attempt == 1
