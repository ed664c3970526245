"""Purger: removes acknowledged work messages from the jobs stream, in bulk (leader only).

The jobs stream has limits retention (connection.py): an ack is consumer state, not a delete.
Under ``sync_interval: always`` a work-queue ack is a delete and so an fsync per job; here the
leader purges, every ``tick``, each queue consumer's subject up to that consumer's ack floor,
one request (``$JS.API.STREAM.PURGE.<stream>`` with ``filter`` and ``seq``) per subject.

Why it never removes an unacknowledged message: a consumer's ack floor is the stream sequence
at and below which every message of its filter is acknowledged (a message past
``max_deliver`` is not: the floor waits until the max-deliveries backstop has moved it to the
DLQ and acked it). A subject is purged only below the lowest ack floor of every
acknowledging consumer whose filter overlaps it, so a second consumer on the same messages
(an operator's, a re-created one) holds the purge back. A subject no consumer serves is never
purged: its messages wait for a worker. Non-acknowledging consumers (ordered readers) have no
say. Acks only move forward, so a floor read before the purge is still a floor after it.

The floor does move past a message that hit ``max_deliver`` (it is no longer pending) once a
later message is acked, possibly before the max-deliveries backstop (worker/advisories.py) has
read it by sequence to move it to the DLQ. So a subject is purged only up to the floor it had
``grace`` seconds ago (a delay line per subject): every message purged has been below the floor,
and so past its advisory, for at least that long.

A stream made as work-queue (before this version) needs none of this: the pass does nothing.

The purge right cannot be limited to acknowledged messages: a stolen scheduler credential can
purge queued ones, leaving their records ``available`` with nothing to deliver them. So the
leader also looks for lost messages (``repair_lost``, every ``rescue_after``, with the job index):
a queue whose consumer holds nothing (no message pending or awaiting an ack) on two looks in a
row while the index counts jobs available there has lost them. Each such record older than
``rescue_after`` and named by no pending marker (those are the rescuer's) is republished as a new
generation (compare-and-set, then its work message; a first message that did survive would be
stale by its gen). Only a queue holding nothing: with
messages still held, which records lack theirs cannot be told, and a new generation for a job
whose first message still waits could run it twice (the worker's fast path); such a queue is
repaired once it drains.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any, Callable

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api

from ..clock import SYSTEM_CLOCK, Clock
from ..connection import Connection, work_stream_is_limits
from ..errors import ConflictError
from ..jobs import PENDING_PREFIX, JobOps, decode_marker
from ..readmodel import JobIndex
from ..states import JobState
from ._scan import scan_entries

log = logging.getLogger(__name__)


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both NATS subject filters (``*`` one token, ``>`` the rest)."""
    ta, tb = a.split("."), b.split(".")
    for x, y in zip(ta, tb):
        if x == ">" or y == ">":
            return True
        if x != y and x != "*" and y != "*":
            return False
    return len(ta) == len(tb)


def purge_floors(consumers: list[tuple[list[str], int, bool]]) -> dict[str, int]:
    """``{subject filter: purge below or at this stream sequence}`` from
    ``(filters, ack floor stream seq, acknowledges)`` of every consumer of the stream.
    A consumer without filters reads the whole stream (filter ``>``)."""
    acking = [(fs or [">"], floor) for fs, floor, acks in consumers if acks]
    out: dict[str, int] = {}
    for filters, _ in acking:
        for f in filters:
            if ">" in f or "*" in f:
                continue  # only concrete queue subjects are purged (one durable per priority and queue)
            floor = min(fl for fs, fl in acking if any(subjects_overlap(f, g) for g in fs))
            out[f] = min(out.get(f, floor), floor)
    return out


GRACE = 10.0  # seconds a message stays below the ack floor before it may be purged


class Purger:
    def __init__(self, conn: Connection, *, tick: float = 1.0, grace: float = GRACE,
                 is_leader: Callable[[], bool] = lambda: True, clock: Clock = SYSTEM_CLOCK,
                 ops: JobOps | None = None, index: JobIndex | None = None, rescue_after: float = 30.0) -> None:
        self.ops = ops
        self.index = index
        self.rescue_after = rescue_after
        self.republished: list[str] = []  # job ids whose lost work message was republished
        self._empty_before: set[tuple[str, str]] = set()  # (priority, queue) found holding nothing last look
        self._next_lost_check = 0.0
        self.conn = conn
        self.names = conn.names
        self.tick = tick
        self.grace = grace
        self.is_leader = is_leader
        self.clock = clock
        self.purged = 0  # messages removed so far
        self.passes = 0
        self._done: dict[str, int] = {}  # subject -> the floor last purged to
        self._seen: dict[str, deque[tuple[float, int]]] = {}  # subject -> (when, floor), oldest first

    def _aged(self, subject: str, floor: int, now: float) -> int:
        """The highest floor ``subject`` had at least ``grace`` seconds ago (0 if none yet)."""
        seen = self._seen.setdefault(subject, deque())
        if not seen or seen[-1][1] != floor:
            seen.append((now, floor))
        target = 0
        while seen and seen[0][0] <= now - self.grace:
            target = seen[0][1]
            if len(seen) > 1 and seen[1][0] <= now - self.grace:
                seen.popleft()
                continue
            break
        return target

    async def run(self) -> None:
        while True:
            if self.is_leader():
                try:
                    await self.pass_once()
                    if self.clock.now() >= self._next_lost_check:
                        self._next_lost_check = self.clock.now() + self.rescue_after
                        await self.repair_lost()
                except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError) as exc:
                    log.warning("purging acknowledged work messages failed (will retry): %s", exc)
            await self.clock.sleep(self.tick)

    async def pass_once(self) -> int:
        """Purge every queue subject below its ack floor; returns how many messages went."""
        js = self.conn.js
        stream = self.names.jobs_stream
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return 0
        self.passes += 1
        if not work_stream_is_limits(info) or not info.state.messages:
            return 0
        purged = 0
        now = self.clock.now()
        for subject, current in purge_floors(await self._consumers(stream)).items():
            floor = self._aged(subject, current, now)
            if floor <= self._done.get(subject, 0) or not self.is_leader():
                continue
            reply = await self.conn.nc.request(f"$JS.API.STREAM.PURGE.{stream}",
                                               json.dumps({"filter": subject, "seq": floor + 1}).encode(),
                                               timeout=10.0)
            body: dict[str, Any] = json.loads(reply.data or b"{}")
            if "error" in body:
                log.warning("purging %s below %d: %s", subject, floor + 1, body["error"].get("description"))
                continue
            self._done[subject] = floor
            purged += int(body.get("purged") or 0)
        self.purged += purged
        return purged

    async def _consumers(self, stream: str, *, with_pending: bool = False) -> list[Any]:
        out: list[Any] = []
        offset = 0
        while True:
            infos = await self.conn.js.consumers_info(stream, offset=offset or None)
            for ci in infos:
                cfg = ci.config
                filters = list(cfg.filter_subjects or []) or ([cfg.filter_subject] if cfg.filter_subject else [])
                acks = cfg.ack_policy not in (api.AckPolicy.NONE, None)
                row = (filters, ci.ack_floor.stream_seq if ci.ack_floor else 0, acks)
                if with_pending:
                    row += ((ci.num_pending or 0) + (ci.num_ack_pending or 0),)
                out.append(row)
            if len(infos) < 256:
                return out
            offset += len(infos)

    async def repair_lost(self) -> int:
        """Republish, as a new generation, the available jobs of queues whose consumer holds nothing
        (twice in a row) though the index counts jobs there (see the module doc). Returns how many."""
        if self.ops is None or self.index is None or not self.index.caught_up.is_set():
            return 0
        # Jobs a pending marker names are the rescuer's to repair (same id, same gen); read before
        # the consumers, so a marker gone by now had its message out before they were read.
        marked: set[str] = set()
        async for entries in scan_entries(self.conn, self.names.control_bucket, keys=PENDING_PREFIX + ">"):
            for e in entries:
                marker = decode_marker(e.value or b"")
                marked.update(j.id for j in (marker.jobs if marker is not None else []))
        stream = self.names.jobs_stream
        held: dict[tuple[str, str], int] = {}
        for filters, _, _, pending in await self._consumers(stream, with_pending=True):
            for f in filters:
                parts = f.split(".")
                if len(parts) >= 2 and "*" not in f and ">" not in f:
                    key = (parts[-2], parts[-1])
                    held[key] = held.get(key, 0) + pending
        waiting: dict[tuple[str, str], int] = {}
        for queue, priority, state, n in (await self.index.counts(window=0.0)).rows:
            if state == JobState.AVAILABLE.value and (priority, queue) in held:
                waiting[(priority, queue)] = waiting.get((priority, queue), 0) + n
        empty = {k for k, n in waiting.items() if n > 0 and held.get(k, 1) == 0}
        lost, self._empty_before = empty & self._empty_before, empty
        if not lost:
            return 0
        now = self.clock.now()
        done = 0
        after: str | None = None
        while self.is_leader():
            ids = await self.index.ids_in_state(JobState.AVAILABLE.value, limit=1000, after=after)
            for rec in await asyncio.gather(*(self.ops.read_or_none(i) for i in ids)):
                if rec is None or rec.state is not JobState.AVAILABLE or (rec.spec.priority, rec.spec.queue) not in lost \
                        or now - rec.updated_at <= self.rescue_after or rec.id in marked:
                    continue
                try:
                    new = await self.ops.write(msgspec.structs.replace(rec, gen=rec.gen + 1, updated_at=now), rec.revision)
                except ConflictError:
                    continue  # it moved meanwhile: someone else has it
                await self.ops.publish_work(new, new.revision)
                self.republished.append(rec.id)
                done += 1
            if len(ids) < 1000:
                break
            after = ids[-1]
        if done:
            log.warning("%d available jobs had no work message (their queue's consumer held nothing): "
                        "republished each as a new generation", done)
        return done
