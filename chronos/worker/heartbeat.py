"""The worker's heartbeat in the workers bucket, and its view of its peers' heartbeats.

Each worker writes a ``WorkerHeartbeat`` (slots, running jobs, tasks, queues) every
``worker.heartbeat_interval`` to its own key; the bucket's TTL removes a dead worker's key.
Read back, the same bucket tells the executor whether a live peer serves a task this worker
lacks (its hand-back of foreign jobs) and for how long none has.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from .. import codec
from ..cancellation import raise_if_cancelling
from ..clock import Clock
from ..connection import Connection
from ..errors import ChronosError
from ..models import WorkerHeartbeat
from ..store.kv import KVStore

log = logging.getLogger(__name__)


class Heartbeat:
    """Writes this worker's heartbeat; ``run()`` until cancelled, ``remove()`` at the end."""

    def __init__(self, conn: Connection, worker_id: str, interval: float, clock: Clock,
                 snapshot: Callable[[], WorkerHeartbeat], on_sent: Callable[[], None] = lambda: None) -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.interval = interval
        self.clock = clock
        self.snapshot = snapshot
        self.sent = 0  # heartbeats written
        self.on_sent = on_sent

    async def run(self) -> None:
        subject = self.conn.names.kv_subject(self.conn.names.workers_bucket, self.worker_id)
        while True:
            try:
                await self.conn.publisher.request(subject, codec.encode(self.snapshot()))
                self.sent += 1
                self.on_sent()
            except Exception as exc:  # a missed heartbeat is logged, never fatal
                log.warning("heartbeat failed: %s", exc)
            raise_if_cancelling()
            await self.clock.sleep(self.interval)

    async def remove(self) -> None:
        if not self.conn.nc.is_connected:
            # A stop while the server is away: the delete would wait out its timeout (10 s, past
            # a drain's grace); the heartbeat's TTL removes the record.
            log.info("the server is away: this worker's heartbeat record expires by itself")
            return
        try:
            kv = await self.conn.kv(self.conn.names.workers_bucket)
            await kv.delete(self.worker_id)  # a marker, not a purge: buckets refuse rollups
        except Exception as exc:  # the heartbeat's TTL removes it anyway
            log.debug("heartbeat removal failed: %s", exc)


class Peers:
    """Other workers, read from the workers bucket on demand (only a foreign job asks)."""

    def __init__(self, conn: Connection, worker_id: str, heartbeat_interval: float, clock: Clock) -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.heartbeat_interval = heartbeat_interval
        self.clock = clock
        # worker id -> (heartbeat, its KV revision, local monotonic time that revision was first seen)
        self._peers: dict[str, tuple[WorkerHeartbeat, int, float]] = {}
        self._read_at = -math.inf
        self._since = math.inf  # the first read: absence is never counted from before it
        self._task_seen: dict[tuple[str, str], float] = {}  # (task, queue) -> last time a live worker had it
        self._failed = False
        self._lock = asyncio.Lock()

    async def task_absent_for(self, task: str, queue: str) -> float:
        """Seconds no live worker serving ``queue`` has registered ``task`` (0: one has it now).

        Live: its heartbeat entry changed within three heartbeat intervals (seen from here, so no
        clock is compared across hosts), or was first seen less than that ago (so a worker just
        started never calls a peer dead early), and it is not draining."""
        await self._read()
        now = self.clock.monotonic()
        live_window = 3 * self.heartbeat_interval + 2.0
        key = (task, queue)
        for hb, _rev, seen in self._peers.values():
            if now - seen <= live_window and hb.state == "running" and queue in hb.queues and task in hb.tasks:
                self._task_seen[key] = now
                return 0.0
        since = max(self._task_seen.get(key, -math.inf), self._since)
        return max(0.0, now - since)

    async def _read(self) -> None:
        async with self._lock:
            now = self.clock.monotonic()
            if now - self._read_at < min(1.0, self.heartbeat_interval):
                return
            self._read_at = now
            if self._since == math.inf:
                self._since = now
            try:
                kv = await self.conn.kv(self.conn.names.workers_bucket)
                entries = await KVStore(kv, self.conn.publisher, self.conn.names.workers_bucket).entries()
            except Exception as exc:  # unknown peers count as alive: nothing is discarded meanwhile
                (log.debug if self._failed else log.warning)(
                    "cannot read worker heartbeats (jobs of tasks not served here are handed back, never "
                    "discarded, until it can): %s", exc)
                self._failed = True
                self._task_seen = {k: now for k in self._task_seen}
                return
            peers: dict[str, tuple[WorkerHeartbeat, int, float]] = {}
            for e in entries:
                try:
                    hb = codec.decode(e.value or b"", WorkerHeartbeat)
                except ChronosError:
                    continue
                if hb.id == self.worker_id:
                    continue
                old = self._peers.get(hb.id)
                seen = old[2] if old is not None and old[1] == e.revision else now
                peers[hb.id] = (hb, e.revision, seen)
            self._peers = peers
