"""Where jobs for later wait until the scheduler's stager promotes them.

Parked jobs are messages on per-minute subjects ``<ns>.delayed.<minute>`` in the
delayed stream, so the stager loads only the minutes near now (bounded memory
however many jobs wait far ahead). The job record says ``scheduled``.
"""

from __future__ import annotations

from . import codec
from .connection import Connection
from .models import JobMessage, JobRecord


def minute_of(ts: float) -> int:
    return int(ts // 60)


async def park(conn: Connection, record: JobRecord, revision: int) -> None:
    run_at = record.spec.run_at or record.scheduled_at or 0.0
    subject = conn.names.delayed_subject(minute_of(run_at))
    data = codec.encode(JobMessage(record=record, rev=revision))
    await conn.publisher.request(subject, data, {"Nats-Msg-Id": f"park:{record.id}:{record.gen}"})
