"""The max-deliveries backstop: a message JetStream stopped delivering goes to the DLQ.

After ``max_deliver`` deliveries the server sends an advisory and leaves the
message in the work-queue stream (NATS-FACTS). One worker per namespace (a queue
group) fetches it by sequence, writes the DLQ entry, marks the record discarded
and deletes the message. Our own attempt counting normally discards first.
"""

from __future__ import annotations

import json
import logging

import nats.js.errors
from nats.aio.msg import Msg

from .. import codec
from ..clock import Clock
from ..errors import ChronosError, ConflictError
from ..jobs import JobOps
from ..models import DLQEntry, JobMessage
from ..states import TERMINAL, JobState

log = logging.getLogger(__name__)


class MaxDeliveriesHandler:
    def __init__(self, ops: JobOps, clock: Clock) -> None:
        self.ops = ops
        self.clock = clock
        self.moved = 0

    async def subscribe(self) -> object:
        names = self.ops.names
        return await self.ops.conn.nc.subscribe(
            names.max_deliveries_advisory(), queue=f"{names.ns}-advisories", cb=self.handle
        )

    async def handle(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries") or 1)
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable max-deliveries advisory: %r", msg.data[:200])
            return
        stream = self.ops.names.jobs_stream
        try:
            raw = await self.ops.conn.js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            return  # acked or moved meanwhile
        reason = f"max deliveries reached ({deliveries}): JetStream stopped redelivering it"
        now = self.clock.now()
        queue = (raw.subject or "").rsplit(".", 1)[-1] or "default"
        try:
            job = codec.decode(raw.data or b"", JobMessage)
        except ChronosError as exc:
            await self.ops.publish_dlq(DLQEntry(reason=f"{reason}; malformed: {exc}", at=now,
                                                subject=raw.subject, raw=raw.data), queue)
        else:
            record = job.record
            await self.ops.publish_dlq(DLQEntry(reason=reason, at=now, job_id=record.id, spec=record.spec,
                                                attempts=record.attempt, subject=raw.subject), queue)
            try:
                current = await self.ops.read(record.id)
                if current.state not in TERMINAL and current.gen == record.gen:
                    await self.ops.move(current, JobState.DISCARDED, error=reason)
            except (ChronosError, ConflictError) as exc:
                log.info("max-deliveries: record %s not updated: %s", record.id, exc)
        # Ack it by stream sequence: the work-queue stream then drops it. Workers may not delete
        # stream messages (chronos/permissions.py); an ack works on a message past max_deliver.
        consumer = str(advisory.get("consumer") or "")
        if consumer:
            await self.ops.conn.nc.publish(self.ops.names.ack_subject(consumer, int(deliveries), seq), b"+ACK")
        self.moved += 1
        log.warning("message %d moved to the DLQ after %s deliveries", seq, deliveries)
