"""A run whose outcome write failed is rerun, and the record shows both runs (issue 13).

What a nats-server SIGKILL between a run and its outcome write did (red-team bulk run): the
write is lost, and the restarted server, whose consumer state had not reached disk, delivers
the message again as delivery 1. The rerun took the fast path and recorded one attempt.

Here the write fails once through a hook on the worker's write, with an error the worker does
not write again after (JetStream out of storage; a lost connection is retried instead, see
tests/faults/test_commit_after_server_loss.py), and the lost delivery count is the server's own doing: the job's durable consumer
is deleted and created again before the failure is reported, so the server delivers the
message afresh with a delivery count of 1.
"""

from __future__ import annotations

import asyncio

from chronos import Registry, current_job
from chronos.connection import ensure_queue_consumers
from chronos.outcomes import Outcome
from chronos.publisher import PublishError
from chronos.states import JobState

from ..conftest import wait_for_state


async def _rerun_after_a_lost_write(client, start_worker, *, running_written: bool):
    """Run ``counted(7)`` with its completed write lost once as above; return the final record and the runs.

    ``running_written``: the first run waits (on the record, with a timeout) until its ``running``
    write has landed, as one that outlives ``worker.running_write_after`` or takes the checked path."""
    runs: list[int] = []
    reg = Registry()

    async def counted(i: int) -> int:
        runs.append(i)
        if running_written and len(runs) == 1:
            ctx = current_job()
            assert ctx is not None
            await wait_for_state(client, ctx.job_id, "running", timeout=10)
        return i

    reg.register(counted, name="counted")
    h = await start_worker(reg)
    ex = h.service.executor
    conn = client.conn
    names = conn.names
    real_write_cb = ex.ops.write_cb
    failed = asyncio.Event()

    def write_cb(record, revision, callback):
        if failed.is_set() or record.state is not JobState.COMPLETED:
            return real_write_cb(record, revision, callback)
        failed.set()

        async def lose() -> None:
            # The server forgets the delivery (as one restarted from a stale consumer state), then
            # the write is reported lost: nothing reached the bucket.
            await conn.js.delete_consumer(names.jobs_stream, names.consumer_name("default", "default"))
            await ensure_queue_consumers(conn, "default")
            callback(None, PublishError(500, 10047, "insufficient storage resources available"))

        h.service.spawn(lose())
        return True

    ex.ops.write_cb = write_cb
    job_id = await client.submit("counted", [7])
    record = await wait_for_state(client, job_id, "completed", timeout=30)
    assert failed.is_set()
    return h, record, runs


async def test_a_rerun_after_a_failed_outcome_write_is_recorded(client, settings, start_worker):
    h, record, runs = await _rerun_after_a_lost_write(client, start_worker, running_written=False)
    _both_runs_recorded(h, record, runs)


async def test_a_rerun_is_not_refused_by_the_record_showing_the_failed_run_running_here(
        client, settings, start_worker):
    """The record says ``running`` on this worker (the first run's running write landed; the test
    above gets there only when its job is stored within 50 ms of the consumer's creation, or the run
    outlives ``running_write_after``). Each redelivery used to find itself among the worker's held
    jobs, take that for the first run still running, and stand down: the job stayed running, its
    message redelivered every ack_wait and never run again."""
    h, record, runs = await _rerun_after_a_lost_write(client, start_worker, running_written=True)
    _both_runs_recorded(h, record, runs)


def _both_runs_recorded(h, record, runs) -> None:
    assert runs == [7, 7]
    assert [a.outcome for a in record.attempts] == [Outcome.COMPLETED, Outcome.COMPLETED], record.attempts
    first, second = record.attempts
    assert "outcome write failed" in (first.error or "")
    assert first.worker == second.worker == h.service.id
    assert (first.number, second.number) == (1, 2) and record.attempt == 2
    assert not h.service.executor.unrecorded  # written, so forgotten
