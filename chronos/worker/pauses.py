"""Which of this worker's queues an operator has paused, as the queues bucket says.

``load()`` reads every flag before the first pull (a worker started while a queue is paused
never pulls from it); ``run()`` then follows the flags with a KV watch and calls ``on_change``
so the fetch loop skips, or takes up again, that queue's pullers at once. Jobs already
running are not touched.

A pull request already open when the pause arrives is left to run out: the server keeps a
request even when its inbox is unsubscribed and delivers to it (measured: such a job came back
only after ack_wait). A job it hands over is given back by ``hand_back``: recorded like any
hand-back (no attempt spent; the record accounts for the delivery, so the next one is not taken
for a lost run) and nak'ed for ``min(1 s, poll_expires)``: requests opened before the pause end
within ``poll_expires``, so a job bounces at most twice with the defaults (2 s), however many
workers there are, and a resume right after a pause delays such a job by 1 s at most.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
from nats.aio.msg import Msg

from .. import cas, codec
from ..connection import Connection
from ..errors import ChronosError, ConflictError, JobNotFoundError
from ..models import JobMessage, JobRecord
from ..publisher import delivery_info
from ..queueflags import QueueFlags, QueuePause
from ..states import TERMINAL, JobState
from .executor import MAX_ATTEMPTS_KEPT, Executor, add_unrecorded
from .follow import follow

log = logging.getLogger(__name__)


class PauseWatch:
    def __init__(self, conn: Connection, queues: list[str], on_change: Callable[[], None]) -> None:
        self.flags = QueueFlags(conn)
        self.queues = set(queues)
        self.on_change = on_change
        self.paused: set[str] = set()
        self.seen = 0  # flag changes read, for tests to wait on
        self.restarts = 0  # watches started over after a reconnect

    async def load(self) -> None:
        """Every flag now; a queue with none (or a deleted one) is not paused."""
        flags = await self.flags.all()
        for queue in self.queues:
            self._apply(queue, flags.get(queue))

    async def run(self) -> None:
        """Follow the flags; after a reconnect (or a failed watch) start over from a fresh read
        (follow.py: nats-py alone noticed a restarted server 18 s late)."""
        await follow(self.flags.conn.nc, self._follow, "queue pause", on_restart=self._restarted)

    def _restarted(self) -> None:
        self.restarts += 1

    async def _follow(self) -> None:
        await self.load()
        async for queue, flag in self.flags.watch():
            self.seen += 1
            self._apply(queue, flag)

    def _apply(self, queue: str, flag: QueuePause | None) -> None:
        if queue not in self.queues:
            return
        paused = flag is not None and flag.paused
        if paused == (queue in self.paused):
            return
        if paused:
            assert flag is not None
            self.paused.add(queue)
            log.info("queue %s paused by %s%s: not pulling from it", queue, flag.by or flag.user or "?",
                     f" ({flag.reason})" if flag.reason else "")
        else:
            self.paused.discard(queue)
            log.info("queue %s resumed", queue)
        self.on_change()


async def hand_back(ex: Executor, msg: Msg, delay: float) -> None:
    """Give back a job delivered for a paused queue, its delivery recorded as a hand-back."""
    try:
        job = codec.decode(msg.data, JobMessage)
    except ChronosError:
        await ex.acks.nak(msg, delay)  # malformed: the executor deals with it once the queue runs
        return
    delivered, _ = delivery_info(msg)
    msg_gen = job.record.gen

    def decide(rec: JobRecord, _rev: int) -> JobRecord | cas.Stop[str]:
        if rec.gen != msg_gen or rec.state in TERMINAL or rec.state is JobState.SCHEDULED:
            return cas.Stop("stale")
        same_gen = rec.delivered_gen == rec.gen
        accounted = rec.delivered if same_gen else 0
        if accounted >= delivered:
            return cas.Stop("counted")
        now = ex.clock.now()
        attempts = list(rec.attempts)
        attempt_no = add_unrecorded(attempts, rec.attempt, accounted, delivered, now)
        return msgspec.structs.replace(
            rec, delivered=delivered, delivered_gen=rec.gen, handed_back=(rec.handed_back if same_gen else 0) + 1,
            updated_at=now, attempt=attempt_no, attempts=attempts[-MAX_ATTEMPTS_KEPT:])

    async def write(new: JobRecord, rev: int) -> str:
        await (await ex.ops.write_nowait(new, rev))
        return "written"

    try:
        done = await cas.update(lambda: ex.ops.read_versioned(job.record.id), decide, write,
                                seen=(job.record, job.rev), what=f"job {job.record.id}")
    except JobNotFoundError:
        done = "stale"
    except ConflictError:
        done = "unrecorded"  # kept changing: handed back anyway; a later delivery counts it
    if done == "stale":
        await ex.acks.ack(msg)  # an old generation or a finished job: nothing to run
        return
    log.debug("job %s: queue %s is paused; handed back for %.1fs", job.record.id, job.record.spec.queue, delay)
    await ex.acks.nak(msg, delay)
