"""Operator cancels of running jobs, as this worker learns them from the control bucket.

``Client.cancel`` of a running job sets ``cancel_requested`` on its record and writes a
``CancelRequest`` under ``cancel.<job id>``. This watch signals the job's task (its context's
``cancel_requested`` event) and gives it ``worker.cancel_grace`` before the service's sweeper
hard-stops it. A cancel of a job not running here is remembered (boundedly), so a delivery of
that job that arrives later is skipped without calling its task (the executor's fast path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from .. import codec
from ..clock import Clock
from ..errors import ChronosError
from ..jobs import JobOps
from ..models import CancelRequest
from .executor import Running
from .follow import follow

log = logging.getLogger(__name__)

MAX_REMEMBERED = 100_000


class CancelWatch:
    def __init__(self, ops: JobOps, clock: Clock, grace: float, running: Callable[[], Iterable[Running]]) -> None:
        self.ops = ops
        self.clock = clock
        self.grace = grace
        self.running = running
        self._pending: dict[str, tuple[int, str]] = {}  # job id -> (gen, reason)
        self.seen = 0  # requests read, for tests to wait on
        self.restarts = 0  # watches started over after a reconnect

    async def load(self) -> None:
        """Read the cancels already written (before the first fetch: see the executor's fast path)."""
        control = await self.ops.control()
        for entry in await control.entries("cancel.>"):
            try:
                req = codec.decode(entry.value or b"", CancelRequest)
            except ChronosError:
                continue
            self._remember(req)

    def take(self, job_id: str, gen: int) -> str | None:
        """The reason of a cancel of (job, gen) that came before its delivery, taken once."""
        found = self._pending.get(job_id)
        if found is None or found[0] != gen:
            return None
        del self._pending[job_id]
        return found[1]

    async def run(self) -> None:
        """Signal cancels of running jobs; hard-stop them after the grace (the service's sweeper).
        Started over after a reconnect or a failure (follow.py): without that, a cancel written
        after a server restart reached the worker only when nats-py noticed, 18 s later."""
        await follow(self.ops.conn.nc, self._follow, "cancel", on_restart=self._restarted)

    def _restarted(self) -> None:
        self.restarts += 1

    async def _follow(self) -> None:
        control = await self.ops.control()
        # include_existing: cancels written before this worker started must be known too.
        async for entry in control.watch("cancel.>", include_existing=True):
            if entry.value is None:
                continue
            try:
                req = codec.decode(entry.value, CancelRequest)
            except ChronosError:
                continue
            self.seen += 1
            for run in self.running():
                if run.job_id == req.job_id and run.gen == req.gen:
                    self._signal(run, req.reason)
                    break
            else:
                self._remember(req)

    def _remember(self, req: CancelRequest) -> None:
        # Not running here (yet): remember it so a delivery of this job is skipped, boundedly.
        self._pending[req.job_id] = (req.gen, req.reason)
        while len(self._pending) > MAX_REMEMBERED:
            self._pending.pop(next(iter(self._pending)))

    def _signal(self, run: Running, reason: str) -> None:
        if run.ctx is not None:
            run.ctx.cancel_reason = reason
            run.ctx.cancel_requested.set()
        # The sweeper hard-stops it after the grace; no timer task that outlives the job.
        run.cancel_deadline = min(run.cancel_deadline, self.clock.monotonic() + self.grace)
