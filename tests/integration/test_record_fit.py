"""A record its runs grow past the server's message limit still gets its outcome written.

Submit leaves 8 KiB of room under the server's ``max_payload``; a result, errors and tracebacks
(in characters that UTF-8 may make 3-4 bytes) can outgrow it. Before, that write failed before it
was sent and the job ran again and again (21 runs of a ``max_attempts=2`` job), its record
blaming a lost worker or server. Now the write gives up old tracebacks, attempts and then the
result (chronos/recordfit.py), and the job runs exactly as often as its record says.
"""

from __future__ import annotations

from chronos import Registry
from chronos.models import Backoff
from chronos.states import JobState

from ..conftest import wait_for_state


FAST = Backoff(base=0.05, cap=0.1)


def big_args(client) -> list[str]:
    server_max = client.conn.nc.max_payload
    return ["x" * (server_max - 12 * 1024)]  # just under submit's ceiling


async def test_a_big_result_on_big_args_completes_once_with_the_result_dropped(client, start_worker):
    runs: list[int] = []
    reg = Registry()

    async def big_result(blob: str) -> str:
        runs.append(1)
        return "r" * 60_000

    reg.register(big_result, name="fit.result")
    await start_worker(reg)
    job_id = await client.submit("fit.result", big_args(client), max_attempts=2)
    rec = await wait_for_state(client, job_id, JobState.COMPLETED)
    assert len(runs) == 1 and rec.attempt == 1
    assert rec.result_truncated and "result dropped" in rec.result


async def test_failures_with_wide_errors_run_exactly_max_attempts(client, start_worker):
    runs: list[int] = []
    reg = Registry()

    async def wide_failure(blob: str) -> None:
        runs.append(1)
        raise RuntimeError("€" * 16_000)  # 3 bytes each: the error and traceback outgrow the room

    reg.register(wide_failure, name="fit.fail")
    await start_worker(reg)
    job_id = await client.submit("fit.fail", big_args(client), max_attempts=3, backoff=FAST)
    rec = await wait_for_state(client, job_id, JobState.DISCARDED, timeout=30)
    assert len(runs) == 3 and rec.attempt == 3
    assert [a.outcome for a in rec.attempts][-1] == "error"
    assert all(a.outcome == "error" for a in rec.attempts)  # no run blamed on a lost worker
    assert len(await client.dlq_list()) == 1
