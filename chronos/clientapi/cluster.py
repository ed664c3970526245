"""The cluster as a client sees it: the leader, workers, queue depths, queues and the namespace."""

from __future__ import annotations

import nats.js.errors

from .. import codec
from ..clock import Clock
from ..connection import Connection, ensure_queue_consumers
from ..errors import ChronosError, ValidationError
from ..leadership import read_leader
from ..lease import LeaderInfo
from ..models import WorkerHeartbeat
from ..store.kv import KVStore
from ..subjects import PRIORITIES, is_valid_token


class Cluster:
    def __init__(self, conn: Connection, clock: Clock) -> None:
        self.conn = conn
        self.settings = conn.settings
        self.names = conn.names
        self.clock = clock
        self._known_queues: set[str] = set(conn.settings.worker.queues)

    async def leader(self, role: str = "scheduler") -> LeaderInfo | None:
        """Who holds the scheduler lease (a ``LeaderInfo``: node, host, pid, term, expires_in), or None."""
        return await read_leader(self.conn, role=role, clock=self.clock)

    async def workers(self) -> list[WorkerHeartbeat]:
        kv = await self.conn.kv(self.names.workers_bucket)

        out = []
        for e in await KVStore(kv, self.conn.publisher, self.names.workers_bucket).entries():
            try:
                out.append(codec.decode(e.value or b"", WorkerHeartbeat))
            except ChronosError:
                continue
        return sorted(out, key=lambda w: w.id)

    async def queue_depths(self) -> dict[str, int]:
        """Jobs waiting or running per work subject (priority.queue).

        The jobs stream keeps acknowledged messages until the leader purges them (limits
        retention, scheduler/purger.py), so a subject a queue consumer serves counts that
        consumer's pending and unacknowledged messages; a subject no consumer serves counts its
        messages (nothing there is acknowledged or purged)."""
        info = await self.conn.js.stream_info(self.names.jobs_stream, subjects_filter=self.names.jobs_wildcard())
        subjects = dict(info.state.subjects or {})
        offset = 0
        while True:
            try:
                infos = await self.conn.js.consumers_info(self.names.jobs_stream, offset=offset or None)
            except nats.js.errors.NotFoundError:
                break
            for ci in infos:
                subject = ci.config.filter_subject or ""
                if subject.startswith(self.names.jobs_root + ".") and "*" not in subject and ">" not in subject:
                    subjects[subject] = (ci.num_pending or 0) + (ci.num_ack_pending or 0)
            if len(infos) < 256:
                break
            offset += len(infos)
        prefix = self.names.jobs_root + "."
        return {k[len(prefix):]: v for k, v in subjects.items() if v}

    async def ensure_queue(self, queue: str) -> None:
        if not is_valid_token(queue):
            raise ValidationError(f"queue: {queue!r} is not a valid name")
        await ensure_queue_consumers(self.conn, queue)
        self._known_queues.add(queue)

    async def check_queue(self, queue: str) -> None:
        """A schedule's queue must exist, or its jobs would wait forever: listed in worker.queues,
        made by ensure_queue, or served by a worker (workers create the queue's consumers at start)."""
        if queue in self._known_queues:
            return
        for priority in PRIORITIES:
            try:
                await self.conn.js.consumer_info(self.names.jobs_stream, self.names.consumer_name(priority, queue))
            except nats.js.errors.NotFoundError:
                continue
            self._known_queues.add(queue)
            return
        raise ValidationError(
            f"queue: unknown queue {queue!r}: no worker serves it and it is not in worker.queues "
            f"(known: {', '.join(sorted(self._known_queues)) or 'none'})"
        )

    async def namespace_exists(self) -> bool:
        """Whether the namespace has its jobs stream (read-only: one STREAM.INFO, nothing created)."""
        try:
            await self.conn.js.stream_info(self.names.jobs_stream)
        except nats.js.errors.NotFoundError:
            return False
        return True
