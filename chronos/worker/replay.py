"""Which first deliveries may skip the running write: a re-created consumer replays acked messages.

The executor defers a fresh job's ``running`` write (a short job is written once, available ->
completed) when the message is a first delivery and the record it carries is current. On a
limits-retention jobs stream (connection.py) an acknowledged message stays until the leader
purges it (scheduler/purger.py); a consumer deleted and made again starts from the stream's
first message and delivers those once more, each as a first delivery carrying the record as it
was at submit. Taken on the fast path, a completed job would run again before its stale
compare-and-set failed. So a first delivery takes the fast path only when its message was
stored after the consumer was created (both are server times; ``MARGIN`` absorbs skew between a
cluster's nodes). Everything else takes ``_start``: a compare-and-set before the task runs, which finds
the record terminal (or its gen moved) and acks the message without running it.

The consumer's creation time is read once per consumer (CONSUMER.INFO) and again when a first
delivery's consumer sequence is not above the last one seen: a re-created consumer counts from
1 again. On a work-queue stream (made before this version) acked messages are gone, so every
first delivery qualifies, as before. When the check cannot be made, the slow path is taken.

A restarted server replays too. A nats-server killed before its consumer state reached disk
delivers again, each as a first delivery, messages whose jobs already ran, were acked or were
cancelled (seen: cancelled jobs run a second time after a SIGKILL mid bulk cancel). So after
every reconnect the stream's last sequence is read once (STREAM.INFO), and a first delivery of
a message stored up to it takes the checked path, on either kind of stream: only the backlog of
the moment pays a compare-and-set before its run. A worker started after such a restart has no
reconnect to go by; the consumer-creation check does not see the replay either (see the README's
design notes).
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from ..connection import Connection, work_stream_is_limits

log = logging.getLogger(__name__)

# Seconds between a consumer's creation and the first message that may take the fast path. Both
# times are the server's: on one server their order is exact and this only sends the first 50 ms
# of messages to the checked path; in a cluster it absorbs that much clock skew between the node
# that stamped the consumer and the stream leader that stamped the message.
MARGIN = 0.05


class ReplayGuard:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._limits: bool | None = None  # the jobs stream keeps acked messages (read once)
        self._created: dict[str, float] = {}  # consumer -> its creation (epoch seconds)
        self._last: dict[str, int] = {}  # consumer -> the highest consumer sequence of a first delivery
        self._reading: dict[str, asyncio.Future[None]] = {}
        self.refreshes = 0
        # The connection's reconnect count the floor below was read for; None: read it again.
        self._reconnects: int | None = conn.nc.stats["reconnects"]
        self._floor = 0  # stream sequences up to this were stored before the last reconnect
        self._floor_read: asyncio.Future[None] | None = None
        self.floors = 0  # floors read (one per reconnect), for tests

    async def fresh(self, msg: Msg, stored_at: float) -> bool:
        """Whether this first delivery's message was stored after its consumer was made, and
        after the connection's last reconnect."""
        tokens = (msg.reply or "").split(".")
        if len(tokens) == 9:
            consumer, sseq, cseq = tokens[3], int(tokens[5]), int(tokens[6])
        elif len(tokens) >= 12:
            consumer, sseq, cseq = tokens[5], int(tokens[7]), int(tokens[8])
        else:
            return False
        if self._reconnects != self._conn.nc.stats["reconnects"]:
            await self._read_floor()
        if self._reconnects is None or sseq <= self._floor:
            return False  # stored before the server restarted (maybe): its delivery count may be stale
        if self._limits is False:
            return True
        last = self._last.get(consumer, 0)
        if cseq > last:
            self._last[consumer] = cseq
        if self._limits is None or consumer not in self._created or cseq <= last:
            await self._refresh(consumer)
            if self._limits is False:
                return True
        created = self._created.get(consumer)
        return created is not None and stored_at > created + MARGIN

    async def _read_floor(self) -> None:
        """After a reconnect: the stream's last sequence, below which first deliveries are suspect."""
        running = self._floor_read
        if running is not None:
            await asyncio.shield(running)
            return
        fut = asyncio.get_running_loop().create_future()
        self._floor_read = fut
        count = self._conn.nc.stats["reconnects"]
        self._reconnects = None  # until the read succeeds: a waiter let go by a failed one is not trusted
        try:
            info = await self._conn.js.stream_info(self._conn.names.jobs_stream)
            self._floor = max(self._floor, info.state.last_seq)
            self._reconnects = count
            self.floors += 1
        except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, ValueError) as exc:
            log.debug("reading the jobs stream after a reconnect: %s (first deliveries take the checked path)", exc)
        finally:
            self._floor_read = None
            fut.set_result(None)

    async def _refresh(self, consumer: str) -> None:
        running = self._reading.get(consumer)
        if running is not None:  # one read per consumer at a time; the others wait for it
            await asyncio.shield(running)
            return
        fut = asyncio.get_running_loop().create_future()
        self._reading[consumer] = fut
        try:
            js = self._conn.js
            stream = self._conn.names.jobs_stream
            if self._limits is None:
                self._limits = work_stream_is_limits(await js.stream_info(stream))
            if self._limits:
                info = await js.consumer_info(stream, consumer)
                self.refreshes += 1
                if info.created is not None:
                    self._created[consumer] = _epoch(info.created)
        except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, ValueError) as exc:
            log.debug("reading consumer %s: %s (its first deliveries take the checked path)", consumer, exc)
            self._created.pop(consumer, None)
        finally:
            del self._reading[consumer]
            fut.set_result(None)


def _epoch(created: object) -> float:
    """nats-py gives ``created`` as an RFC 3339 string (nanoseconds) or a datetime."""
    if hasattr(created, "timestamp"):
        return created.timestamp()  # type: ignore[no-any-return, attr-defined]
    from datetime import datetime

    text = str(created)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    if "." in text:  # Python takes at most microseconds
        head, _, rest = text.partition(".")
        digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    return datetime.fromisoformat(text).timestamp()
