"""Schedule store operations on the schedules KV bucket (key = schedule name).

The ``Schedule`` Struct lives in models.py; when it fires is ``cron.parse_schedule``.
Writers other than ``put_new`` use compare-and-set on the revision they read.
"""

from __future__ import annotations

from typing import Any

import msgspec
import nats.js.errors

from . import codec
from .connection import Connection
from .cron import CronSchedule, IntervalSchedule, parse_schedule
from .errors import ChronosError, ConflictError, ScheduleNotFoundError, ValidationError
from .models import Schedule
from .store.kv import KVStore
from .subjects import is_valid_token

OVERLAP = ("allow", "skip", "replace")
MISFIRE = ("skip", "run-once", "catch-up")


def timing_of(s: Schedule) -> CronSchedule | IntervalSchedule:
    """The pure schedule (next_after) for a stored schedule."""
    return parse_schedule(cron=s.cron, every=s.every, tz=s.tz, anchor=s.anchor)


def validate(s: Schedule) -> CronSchedule | IntervalSchedule:
    """Raise ValidationError naming the field; return the parsed timing."""
    if not isinstance(s.name, str) or not is_valid_token(s.name):
        raise ValidationError(f"name: {s.name!r} is not a valid schedule name (1-64 letters, digits, '_' or '-')")
    if s.overlap not in OVERLAP:
        raise ValidationError(f"overlap: {s.overlap!r} is not one of {', '.join(OVERLAP)}")
    if s.misfire not in MISFIRE:
        raise ValidationError(f"misfire: {s.misfire!r} is not one of {', '.join(MISFIRE)}")
    if not isinstance(s.catch_up_max, int) or s.catch_up_max < 1:
        raise ValidationError("catch_up_max: must be a whole number of at least 1")
    return timing_of(s)


class ScheduleStore:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.bucket = conn.names.schedules_bucket
        self._store: KVStore | None = None

    async def store(self) -> KVStore:
        if self._store is None:
            self._store = KVStore(await self.conn.kv(self.bucket), self.conn.publisher, self.bucket)
        return self._store

    async def get(self, name: str) -> Schedule:
        entry = await (await self.store()).get(name)
        if entry is None or not entry.value:
            raise ScheduleNotFoundError(f"no schedule named {name!r}")
        s = codec.decode(entry.value, Schedule)
        s.revision = entry.revision
        return s

    async def list(self) -> list[Schedule]:
        out = []
        for entry in await (await self.store()).entries():
            try:
                s = codec.decode(entry.value or b"", Schedule)
            except ChronosError:
                continue
            s.revision = entry.revision
            out.append(s)
        return out

    async def create(self, s: Schedule) -> Schedule:
        """Store a new schedule; ValidationError if the name is taken."""
        kv = await self.conn.kv(self.bucket)
        try:
            # nats-py's create also succeeds over a delete marker (a removed schedule's name).
            rev = await kv.create(s.name, codec.encode(s))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ValidationError(f"name: a schedule named {s.name!r} already exists") from None
        return msgspec.structs.replace(s, revision=rev)

    async def update(self, s: Schedule, **changes: Any) -> Schedule:
        """Compare-and-set at ``s.revision``; ConflictError if it moved."""
        new = msgspec.structs.replace(s, **changes)
        rev = await (await self.store()).update(s.name, codec.encode(new), s.revision)
        new.revision = rev
        return new

    async def modify(self, name: str, change: Any, attempts: int = 5) -> Schedule:
        """Read, ``change(schedule) -> dict of changes``, compare-and-set; re-read on conflict."""
        for _ in range(attempts):
            s = await self.get(name)
            try:
                return await self.update(s, **change(s))
            except ConflictError:
                continue
        raise ConflictError(f"schedule {name} kept changing; try again")

    async def delete(self, name: str) -> None:
        await self.get(name)  # not found -> ScheduleNotFoundError
        await (await self.store()).delete(name)
