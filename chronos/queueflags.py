"""Queue pause flags: one key per queue in the queues bucket (``paused.<queue>``), no TTL.

The console writes a flag (``Client.pause_queue`` / ``resume_queue``, audited first); every
worker reads them all before its first pull and then follows them with a KV watch, so a
change reaches the whole fleet as fast as the server pushes it. A resume is written as a flag
with ``paused`` false (who resumed, when), not a delete, so ``chronos queues list`` can say
who touched the queue last. The bucket refuses rollup headers and only the console role may
write it (chronos/permissions.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import nats.js.errors

from .connection import Connection, TopologyMissingError
from .store.kv import KVStore


class QueuePause(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A queue's pause state as the last operator left it."""

    queue: str
    paused: bool
    at: float  # when it was paused (or resumed)
    by: str = ""  # the operator's login, as the acting machine reports it
    user: str = ""  # the NATS user that wrote it
    reason: str = ""


_decoder = msgspec.msgpack.Decoder(QueuePause)
_encoder = msgspec.msgpack.Encoder()


def decode_flag(data: bytes | None) -> QueuePause | None:
    """None for a deleted or unreadable flag (an unreadable one pauses nothing)."""
    if not data:
        return None
    try:
        return _decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


class QueueFlags:
    """Read, write and follow the pause flags of one namespace."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.names = conn.names
        self._store: KVStore | None = None

    async def store(self) -> KVStore:
        if self._store is None:
            bucket = self.names.queues_bucket
            try:
                kv = await self.conn.kv(bucket)
            except nats.js.errors.BucketNotFoundError:
                raise TopologyMissingError(f"bucket {bucket} does not exist (made by a chronos before queue "
                                           "pauses): run `chronos admin init` with admin credentials") from None
            self._store = KVStore(kv, self.conn.publisher, bucket)
        return self._store

    def queue_of(self, key: str) -> str:
        return key[len(self.names.pause_key("")):]

    async def all(self) -> dict[str, QueuePause]:
        """Every queue with a flag (paused or resumed), by queue name."""
        store = await self.store()
        out: dict[str, QueuePause] = {}
        for entry in await store.entries(self.names.pause_wildcard()):
            flag = decode_flag(entry.value)
            if flag is not None:
                out[self.queue_of(entry.key)] = flag
        return out

    async def get(self, queue: str) -> QueuePause | None:
        entry = await (await self.store()).get(self.names.pause_key(queue))
        return decode_flag(entry.value) if entry is not None else None

    async def put(self, flag: QueuePause) -> int:
        """Write a flag and wait for the server to store it; returns its revision."""
        return await (await self.store()).put(self.names.pause_key(flag.queue), _encoder.encode(flag))

    async def watch(self) -> AsyncIterator[tuple[str, QueuePause | None]]:
        """``(queue, flag)`` for every flag now (include_existing), then for every change."""
        store = await self.store()
        async for entry in store.watch(self.names.pause_wildcard(), include_existing=True):
            yield self.queue_of(entry.key), decode_flag(entry.value)
