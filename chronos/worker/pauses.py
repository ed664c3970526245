"""Which of this worker's queues an operator has paused, as the queues bucket says.

``load()`` reads every flag before the first pull (a worker started while a queue is paused
never pulls from it); ``run()`` then follows the flags with a KV watch and calls ``on_change``
so the fetch loop skips, or takes up again, that queue's pullers at once. Jobs already
running are not touched. A job delivered for a request opened just before the pause is
handed back (nak), not run; the service does that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..connection import Connection
from ..queueflags import QueueFlags, QueuePause

log = logging.getLogger(__name__)


class PauseWatch:
    def __init__(self, conn: Connection, queues: list[str], on_change: Callable[[], None]) -> None:
        self.flags = QueueFlags(conn)
        self.queues = set(queues)
        self.on_change = on_change
        self.paused: set[str] = set()
        self.seen = 0  # flag changes read, for tests to wait on

    async def load(self) -> None:
        for queue, flag in (await self.flags.all()).items():
            self._apply(queue, flag)

    async def run(self) -> None:
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
