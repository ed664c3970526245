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
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any, Callable

import nats.errors
import nats.js.errors
from nats.js import api

from ..clock import SYSTEM_CLOCK, Clock
from ..connection import Connection, work_stream_is_limits

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
                 is_leader: Callable[[], bool] = lambda: True, clock: Clock = SYSTEM_CLOCK) -> None:
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

    async def _consumers(self, stream: str) -> list[tuple[list[str], int, bool]]:
        out: list[tuple[list[str], int, bool]] = []
        offset = 0
        while True:
            infos = await self.conn.js.consumers_info(stream, offset=offset or None)
            for ci in infos:
                cfg = ci.config
                filters = list(cfg.filter_subjects or []) or ([cfg.filter_subject] if cfg.filter_subject else [])
                acks = cfg.ack_policy not in (api.AckPolicy.NONE, None)
                out.append((filters, ci.ack_floor.stream_seq if ci.ack_floor else 0, acks))
            if len(infos) < 256:
                return out
            offset += len(infos)
