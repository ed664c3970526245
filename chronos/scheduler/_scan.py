"""Stream the current records of a KV bucket in batches, with bounded memory.

``KVStore.entries()`` returns the whole bucket as one list; the leader's loops
that look at every job (pruner, rescuer) must not hold a million records at
once. This reads the bucket's stream through an ephemeral pull consumer
(last value per key, no acks) and yields one fetched batch at a time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
from nats.js import api

from ..cancellation import raise_if_cancelling
from ..clock import Clock
from ..connection import Connection
from ..errors import ChronosError
from ..store.base import Entry

log = logging.getLogger(__name__)

_DELETE_OPS = ("DEL", "PURGE")


async def scan_entries(conn: Connection, bucket: str, *, batch: int = 128,
                       wait: float = 1.0, keys: str = ">") -> AsyncIterator[list[Entry]]:
    """``keys``: a key filter (``pending.>``), so a pass costs what it looks at, not the bucket."""
    prefix = conn.names.kv_subject(bucket, "")
    cfg = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    psub = await conn.js.pull_subscribe(prefix + keys, stream=conn.names.kv_stream(bucket), config=cfg)
    try:
        # Nothing to read (the usual case for a filtered scan, e.g. no pending markers): say so now
        # instead of waiting out a fetch's full timeout; a rescuer pass took a second for nothing.
        if (await psub.consumer_info()).num_pending == 0:
            return
        while True:
            try:
                msgs = await psub.fetch(batch, timeout=wait)
            except TimeoutError:  # nats-py raises its own subclass or, at times, the builtin one
                return
            raise_if_cancelling()
            out = []
            for msg in msgs:
                headers = msg.headers or {}
                if headers.get("KV-Operation") in _DELETE_OPS or "Nats-Marker-Reason" in headers:
                    continue
                out.append(Entry(msg.subject[len(prefix):], msg.data, msg.metadata.sequence.stream))
            if out:
                yield out
            if not msgs or msgs[-1].metadata.num_pending == 0:
                return
    finally:
        try:
            await psub.unsubscribe()
        except nats.errors.Error as exc:
            log.debug("scan unsubscribe: %s", exc)


async def paced_passes(name: str, step: Callable[[], Awaitable[object]], clock: Clock, tick: float) -> None:
    """Run ``step`` (a full pass over a bucket) forever: every ``tick`` seconds, but resting at least
    4x as long as a pass took, so a big bucket costs at most ~20% of a core and the stager's timer
    keeps the loop to itself meanwhile. A failed pass is logged and tried again next time."""
    log_ = logging.getLogger(f"chronos.scheduler.{name}")
    while True:
        began = clock.monotonic()
        try:
            await step()
        except (ChronosError, OSError) as exc:
            log_.warning("%s: step failed: %r", name, exc)
        raise_if_cancelling()
        await clock.sleep(max(tick, 4 * (clock.monotonic() - began)))
