"""Fleet-wide rate and concurrency limits at the worker: the gate a limited job passes before it runs.

Which limits apply to a job: its task's (``TaskDef.limits``, declared on ``@chronos.task``; per
key when it has a ``limit_key``) and its queue's (operator settings, followed by a KV watch). A
job with none pays nothing: ``applies()`` is two dictionary lookups, no round trip.

The gate, for a job with limits, before any state change::

    concurrency slots  take one slot per concurrency limit (compare-and-set on a slot key with a
                       per-message TTL, the lease); all held -> wait
    rate turns         a valid ticket on the record (a turn reserved at an earlier hand-back) is
                       used; else reserve a turn by GCRA (compare-and-set on the rate key). A turn
                       later than now -> wait, holding that turn in a ticket
    run                the slots go with the job (renewed every lease/3 here, released when the
                       job is done with: completed, retried, cancelled, discarded, shut down)

Waiting is a hand-back: the record counts the delivery as handed back (so no attempt is spent;
``_runs_in_gen`` subtracts it), with the ticket if a turn was reserved, and the message is
nak'ed with the delay (the reserved turn for a rate). The worker slot is free at once.

A job waiting for a concurrency slot is **parked** here instead: its message stays unacknowledged
(as a nak'ed one does) in a per-limit FIFO, and is nak'ed for immediate redelivery when a slot
may be free::

    a job of that limit finishes here   the slot is handed over to the oldest job parked here
                                        (a compare-and-set writing a reservation only that job
                                        may take, short TTL), then that job is nak'ed
    a slot of that limit is deleted     (released elsewhere; one KV watch on ``slot.>`` per worker)
                                        the oldest job parked here is nak'ed
    its poll runs out                   only the oldest job parked here for a limit polls, after
                                        a third of the lease (at most ``PARK_CAP``): what notices
                                        a dead worker's slot expiring (that makes no event); the
                                        others only keep their messages from redelivery with
                                        in-progress acks every third of ack_wait
    the worker stops                    every parked job is nak'ed

A redelivered job goes through the gate again (a delivery, counted as handed back if it waits
again), so parking changes nothing the record or JetStream sees: only how soon it comes back. Each hand-back is a delivery: past ``repark_at`` deliveries the job is given a
fresh generation and work message (under a pending marker, so a worker dying in between leaves
it to the rescuer) and the old message is terminated, so JetStream's ``max_deliver`` backstop
never sends a long-waiting job to the DLQ.

A job whose args lack its limit key is discarded with that one-line reason, never retried.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from .. import cas
from ..cancellation import raise_if_cancelling
from ..clock import Clock
from ..errors import ConflictError, JobNotFoundError
from ..limits import LimitError, QueueLimit, Rate, SlotHolder, key_of
from ..limitstore import LimitStore, NoTurn, SlotLease
from ..models import JobMessage, JobRecord, LimitTicket, PendingWrite
from ..states import TERMINAL, JobState
from .executor import MAX_ATTEMPTS_KEPT, add_unrecorded
from .follow import follow
from .registry import TaskDef

if TYPE_CHECKING:
    from .executor import Executor, Running

log = logging.getLogger(__name__)

POLL_FIRST = 0.1  # a job waiting for a slot asks again after this, growing x1.5 ...
POLL_CAP = 1.0  # ... up to this (with jitter, so waiters on one key spread out)
# A parked job (see the module doc) is woken by releases; its own poll only has to notice a slot
# that expired (a dead worker's), so it is long: a third of the lease, at most this.
PARK_CAP = 5.0
# A slot deleted this recently (seen by the watch) wakes a job that parks for it at once: it read
# the slot as held just before the release, whose event came before the job was parked.
RECENT_FREE = 0.25
MAX_PARKED = 5000  # jobs parked per worker; past it a waiter is nak'ed with its poll delay
HANDOVER_TTL = 2.0  # a reservation the woken job never takes (gone meanwhile) frees the slot after this
DEAD_CHECK_EVERY = 3  # a waiter's every 3rd delivery checks whether the holders' jobs are finished
# Every 8th release here is a plain delete even with jobs parked here: a hand-over keeps the slot on
# this worker, and under a steady overload of one key the jobs parked on other workers would never
# get it. A delete wakes the oldest parked on every worker (this one too) and they race for it.
FAIR_EVERY = 8
# A turn at most LEAD ahead is waited for here (a short sleep in the job's worker slot) rather than
# handed back; a hand-back comes back ARRIVE ahead of its turn (redelivery and the pull take some ms).
LEAD = 0.06
ARRIVE = 0.03
# A turn missed by more than LATE (the job came back late: a busy worker, a loaded host) is not
# used: turns used late would bunch up and break the rate over short windows. A new one is taken.
LATE = 0.05


class _Parked:
    __slots__ = ("msg", "job_id", "gen", "group", "timer", "done", "until")

    def __init__(self, msg: Any, job_id: str, gen: int, group: str, until: float) -> None:
        self.msg = msg
        self.job_id = job_id
        self.gen = gen
        self.group = group
        self.timer: asyncio.TimerHandle | None = None
        self.done = False
        self.until = until  # loop time its poll runs out


class Limiter:
    """One per worker: queue limits (watched), slot leases held here, and the gate."""

    def __init__(self, store: LimitStore, clock: Clock, worker_id: str, lease: float, max_deliver: int) -> None:
        self.store = store
        self.clock = clock
        self.worker_id = worker_id
        self.lease = max(2.0, float(math.ceil(lease)))  # the server's TTLs are whole seconds
        # Hand-backs of one message before it is re-parked with a fresh generation: well inside
        # max_deliver, so JetStream never gives up on a job that only waits.
        self.repark_at = max(2, min(20, max_deliver // 2))
        self.queue_limits: dict[str, QueueLimit] = {}
        self._queue_rates: dict[str, Rate | None] = {}
        self._held: dict[int, list[SlotLease]] = {}  # Running.key -> its slots
        self.waited = 0  # hand-backs over a limit
        self.reparked = 0
        self.loaded = asyncio.Event()
        self._parked: dict[str, deque[_Parked]] = {}  # slot group -> jobs parked here, oldest first
        self.parked = 0
        self.handed_over = 0  # slots given straight to a parked job
        self.woken = {"handover": 0, "released": 0, "poll": 0, "unclaimed": 0, "stop": 0}
        self._handed: dict[str, int] = {}  # slot key -> revision of a hand-over not yet seen taken
        self._releases = 0
        self._want_slot_watch = asyncio.Event()  # set at the first park
        self._naks: set[asyncio.Task[None]] = set()
        ack_wait = getattr(getattr(getattr(store.conn, "settings", None), "worker", None), "ack_wait", 5.0)
        self.keep_every = max(0.2, float(ack_wait) / 3)  # in-progress acks of parked messages
        self.park_poll = min(PARK_CAP, self.lease / 3)
        self._freed: dict[str, float] = {}  # slot group -> loop time the watch saw a slot of it deleted

    # --- queue limits ------------------------------------------------------------------------
    def _set_queue(self, queue: str, limit: QueueLimit | None) -> None:
        if limit is None or (limit.rate is None and limit.concurrency is None):
            self.queue_limits.pop(queue, None)
            self._queue_rates.pop(queue, None)
            return
        try:
            rate = limit.parsed_rate()
        except LimitError as exc:  # written by something other than the client's checks
            log.warning("queue %s: ignoring a malformed rate limit: %s", queue, exc)
            rate = None
        self.queue_limits[queue] = limit
        self._queue_rates[queue] = rate

    async def load(self) -> None:
        """Every queue's limits, before the first fetch."""
        for q in await self.store.queue_limits():
            self._set_queue(q.queue, q)
        self.loaded.set()

    async def watch(self) -> None:
        """Follow queue limit changes, and slot releases for parked jobs, until cancelled; then
        every parked job is nak'ed for another worker."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_queue_limits())
                tg.create_task(self._watch_slots())
        finally:
            self.unpark_all()

    async def _watch_slots(self) -> None:
        await self._want_slot_watch.wait()  # a worker that never parks never watches
        while True:
            try:
                async for key, deleted, rev in self.store.watch_slots():
                    if self._handed and key in self._handed and rev > self._handed[key]:
                        del self._handed[key]  # the job it was handed to took it (or it was released)
                    if not deleted:
                        continue
                    group = key.rpartition(".")[0]
                    p = self._oldest(group)
                    if p is not None:
                        self._wake(p, "released")
                    else:
                        self._note_freed(group)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # parked jobs still poll; the watch restarts
                log.warning("limit slot watch failed (retrying): %s", exc)
            raise_if_cancelling()
            await self.clock.sleep(1.0)

    async def _watch_queue_limits(self) -> None:
        # Started over after a reconnect (a change written after a server restart otherwise
        # arrived 18 s late) or a failure; the limits in hand stay in force meanwhile (follow.py).
        await follow(self.store.conn.nc, self._follow_queue_limits, "queue limits")

    async def _follow_queue_limits(self) -> None:
        async for queue, limit in self.store.watch_queue_limits():
            self._set_queue(queue, limit)

    async def renew_loop(self) -> None:
        """Renew every slot held here well inside the lease (a lost slot is logged)."""
        every = self.lease / 3
        while True:
            await self.clock.sleep(every)
            raise_if_cancelling()
            leases = [s for slots in list(self._held.values()) for s in slots if not s.lost]
            if not leases:
                continue
            results = await asyncio.gather(*(self.store.renew(s, self.lease) for s in leases),
                                           return_exceptions=True)
            for s, ok in zip(leases, results):
                if ok is False:
                    log.warning("limit slot %s of job %s was lost (its lease ran out); the job runs on "
                                "and another may start", s.key, s.holder.job_id)
                elif isinstance(ok, BaseException):
                    log.warning("renewing limit slot %s failed: %s", s.key, ok)

    # --- the gate -------------------------------------------------------------------------------
    def applies(self, taskdef: TaskDef, queue: str) -> bool:
        return taskdef.limits is not None or queue in self.queue_limits

    def release(self, run: "Running") -> None:
        """The job is done with here: give its slots back (sent, not awaited), each straight to the
        oldest job parked here for it if there is one."""
        slots = self._held.pop(run.key, None)
        if slots:
            for s in slots:
                self._releases += 1
                p = self._oldest(s.key.rpartition(".")[0]) if self._releases % FAIR_EVERY else None
                if p is None:
                    self.store.release_nowait(s)
                    continue
                self._detach(p)

                def woke(rev: int, p: _Parked = p, key: str = s.key) -> None:
                    self._nak_now(p, "handover")  # after the reservation is written: it finds it
                    if rev:
                        self.handed_over += 1
                        self._handed[key] = rev
                        asyncio.get_running_loop().call_later(HANDOVER_TTL + 0.25, self._unclaimed, key, rev)

                if not self.store.hand_over_nowait(s, p.job_id, p.gen, HANDOVER_TTL, woke):
                    self._nak_now(p, "handover")

    def _unclaimed(self, key: str, rev: int) -> None:
        """A slot handed over HANDOVER_TTL ago and not written since (the watch saw nothing): the job
        never took it (gone meanwhile) and it expired, which makes no event. Wake the next here."""
        if self._handed.get(key) != rev:
            return
        del self._handed[key]
        p = self._oldest(key.rpartition(".")[0])
        if p is not None:
            self._wake(p, "unclaimed")

    # --- parked jobs ----------------------------------------------------------------------------
    def _note_freed(self, group: str) -> None:
        now = asyncio.get_running_loop().time()
        self._freed[group] = now
        if len(self._freed) > 4096:  # forget old ones (only the last RECENT_FREE seconds matter)
            self._freed = {g: t for g, t in self._freed.items() if now - t < RECENT_FREE}

    def _park(self, group: str, msg: Any, job_id: str, gen: int, delay: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        head = self._oldest(group) is None  # only the oldest polls: one expiry check per limit is enough
        p = _Parked(msg, job_id, gen, group, now + delay if head else math.inf)
        self._parked.setdefault(group, deque()).append(p)
        self.parked += 1
        self._want_slot_watch.set()
        freed = self._freed.pop(group, None)
        if freed is not None and now - freed < RECENT_FREE:
            self._wake(p, "released")
            return
        p.timer = loop.call_later(min(delay, self.keep_every), self._tick, p)

    def _tick(self, p: _Parked) -> None:
        """A parked job's timer: its poll ran out (wake it), or keep its message from redelivery."""
        if p.done:
            return
        loop = asyncio.get_running_loop()
        left = p.until - loop.time()
        if left <= 0.01:
            self._wake(p, "poll")
            return
        if p.msg.reply:
            self.store.conn.publisher.send_nowait(p.msg.reply, b"+WPI")  # lost: it comes back by ack_wait
        p.timer = loop.call_later(min(left, self.keep_every), self._tick, p)

    def _oldest(self, group: str) -> _Parked | None:
        q = self._parked.get(group)
        while q:
            if not q[0].done:
                return q[0]
            q.popleft()
        return None

    def _detach(self, p: _Parked) -> None:
        p.done = True
        self.parked -= 1
        if p.timer is not None:
            p.timer.cancel()
        q = self._parked.get(p.group)
        if q is not None:
            try:
                q.remove(p)
            except ValueError:
                pass
            if not q:
                del self._parked[p.group]
            else:
                nxt = self._oldest(p.group)
                if nxt is not None and nxt.until == math.inf:  # the new oldest takes over the poll
                    loop = asyncio.get_running_loop()
                    nxt.until = loop.time() + self.park_poll * random.uniform(0.5, 1.0)
                    if nxt.timer is not None:
                        nxt.timer.cancel()
                    nxt.timer = loop.call_later(min(nxt.until - loop.time(), self.keep_every), self._tick, nxt)

    def _wake(self, p: _Parked, why: str) -> None:
        if p.done:
            return
        self._detach(p)
        self._nak_now(p, why)

    def _nak_now(self, p: _Parked, why: str) -> None:
        """Redeliver now (to whichever worker pulls next): it goes through the gate again."""
        self.woken[why] += 1
        reply = p.msg.reply
        if not reply:
            return
        pub = self.store.conn.publisher
        if not pub.send_nowait(reply, b"-NAK"):  # disconnected: sent once back (or redelivered by ack_wait)
            task = asyncio.get_running_loop().create_task(pub.send(reply, b"-NAK"))
            self._naks.add(task)
            task.add_done_callback(self._naks.discard)

    def unpark_all(self) -> None:
        for q in list(self._parked.values()):
            for p in list(q):
                self._wake(p, "stop")

    def holds(self) -> int:
        return sum(len(v) for v in self._held.values())

    async def gate(self, ex: "Executor", run: "Running", job: JobMessage, taskdef: TaskDef, delivered: int) -> bool:
        """True: run the job (its slots are held for ``run``). False: it was handed back, re-parked,
        discarded or found stale, and the message is dealt with."""
        try:
            return await self._gate(ex, run, job, taskdef, delivered)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the limits bucket unreachable, say: never run a job unchecked
            slots = self._held.pop(run.key, None)
            for s in slots or ():
                self.store.release_nowait(s)
            log.warning("job %s: its limits could not be checked (%s); handed back", job.record.id, exc)
            await self._wait(ex, run, job.record, job.rev, delivered, 1.0, None, "limits not checked")
            return False

    async def _gate(self, ex: "Executor", run: "Running", job: JobMessage, taskdef: TaskDef, delivered: int) -> bool:
        record, rev = job.record, job.rev
        spec = record.spec
        # (scope, name, key) per limit
        conc: list[tuple[str, str, str | None, int]] = []
        rates: list[tuple[str, str, str | None, Rate]] = []
        tl = taskdef.limits
        if tl is not None:
            try:
                key = key_of(spec.args, tl.key)
            except LimitError as exc:
                await ex._discard(run.msg, record, rev, f"unrunnable: {exc}", None)
                return False
            if tl.concurrency is not None:
                conc.append(("task", spec.task, key, tl.concurrency))
            if tl.rate is not None:
                rates.append(("task", spec.task, key, tl.rate))
        ql = self.queue_limits.get(spec.queue)
        if ql is not None:
            if ql.concurrency is not None:
                conc.append(("queue", spec.queue, None, ql.concurrency))
            qr = self._queue_rates.get(spec.queue)
            if qr is not None:
                rates.append(("queue", spec.queue, None, qr))
        if not conc and not rates:
            return True

        ticket = None
        current = record
        if delivered > 1:
            # A hand-back may have left a ticket: the record as written then, not as carried.
            try:
                fresh = await ex.ops.read(record.id)
            except JobNotFoundError:
                await ex.acks.ack(run.msg)
                return False
            if fresh.gen != record.gen or fresh.state in TERMINAL or fresh.state is JobState.SCHEDULED:
                await ex.acks.ack(run.msg)  # stale: a newer message exists, or it is finished
                return False
            if fresh.state is JobState.RUNNING and fresh.worker == ex.worker_id \
                    and ex.host.is_running_here(fresh.id, besides=run):
                return True  # redelivered while it runs here: the executor leaves it to that run
            current = fresh
            # Decide and write on the record as it is now: the carried one is stale after a hand-back.
            record, rev = fresh, fresh.revision
        t = current.limit_ticket
        if t is not None and t.gen == current.gen and t.delivery == delivered:
            ticket = t
        now = self.clock.now()
        held: list[SlotLease] = []
        # A long waiter checks now and then whether the holders' jobs are finished (a release lost,
        # or a holder planted by a stolen credential naming a finished job): one record read each.
        dead = self._dead(ex) if delivered >= DEAD_CHECK_EVERY and delivered % DEAD_CHECK_EVERY == 0 else None
        for scope, name, key, limit in conc:
            holder = SlotHolder(job_id=record.id, worker=self.worker_id, since=now, scope=scope, name=name,
                                key=key, limit=limit, lease=self.lease, gen=record.gen)
            lease = await self.store.acquire(scope, name, key, limit, holder, self.lease, dead=dead)
            if lease is None:
                for s in held:
                    self.store.release_nowait(s)
                n = max(0, delivered - 1)
                parking = self.parked < MAX_PARKED
                if parking:  # woken by a release; the poll is only for a slot that expires
                    delay = self.park_poll * random.uniform(0.5, 1.0)
                else:
                    delay = min(POLL_CAP, POLL_FIRST * 1.5 ** n) * random.uniform(0.75, 1.25)
                carry = LimitTicket(record.gen, delivered + 1, ticket.at) if ticket is not None else None
                await self.store.note_waiting(scope, name, key, record.id, delay + 2.0)
                await self._wait(ex, run, record, rev, delivered, delay, carry,
                                 f"{scope} {name}{f' [{key}]' if key else ''} has all {limit} slots taken",
                                 park=self.store.slot_group(scope, name, key) if parking else None)
                return False
            held.append(lease)
        if rates:
            start: float | None = None
            if ticket is not None and ticket.at >= self.clock.now() - LATE:
                start = ticket.at
            if start is None:
                try:
                    start = max([await self.store.reserve(scope, name, key, rate) for scope, name, key, rate in rates])
                except NoTurn as exc:  # a backlog beyond the horizon: no turn yet, ask again near one
                    for s in held:
                        self.store.release_nowait(s)
                    await self._wait(ex, run, record, rev, delivered, max(0.05, exc.retry_at - self.clock.now()),
                                     None, "over its rate limit, beyond the horizon")
                    return False
                except ConflictError:  # the rate key kept changing: come back in a moment, without a turn
                    for s in held:
                        self.store.release_nowait(s)
                    await self._wait(ex, run, record, rev, delivered, 0.05, None, "rate key busy")
                    return False
            delay = start - self.clock.now()
            if delay > LEAD:
                for s in held:
                    self.store.release_nowait(s)
                carry = LimitTicket(record.gen, delivered + 1, start)
                await self._wait(ex, run, record, rev, delivered, delay - ARRIVE, carry, "over its rate limit")
                return False
            if delay > 0:
                await self.clock.sleep(delay)  # its turn is a few ms away: not worth a hand-back
        if held:
            self._held[run.key] = held
        return True

    def _dead(self, ex: "Executor") -> Any:
        async def dead(job_ids: list[str]) -> set[str]:
            out: set[str] = set()
            for job_id in job_ids[:16]:
                try:
                    rec = await ex.ops.read(job_id)
                except JobNotFoundError:
                    out.add(job_id)
                    continue
                if rec.state in TERMINAL:
                    out.add(job_id)
            return out
        return dead

    async def _wait(self, ex: "Executor", run: "Running", record: JobRecord, rev: int, delivered: int,
                    delay: float, ticket: LimitTicket | None, why: str, park: str | None = None) -> None:
        """Hand the job back for ``delay`` seconds without spending an attempt (or re-park it).
        ``park``: the slot group it waits for; it is parked here (see the module doc)."""
        self.waited += 1
        if delivered >= self.repark_at:
            if await self._repark(ex, run, record, rev, ticket):
                return
        msg_gen = record.gen

        def decide(rec: JobRecord, _rev: int) -> JobRecord | cas.Stop[str]:
            if rec.gen != msg_gen or rec.state in TERMINAL or rec.state is JobState.SCHEDULED:
                return cas.Stop("stale")
            same_gen = rec.delivered_gen == rec.gen
            accounted = rec.delivered if same_gen else 0
            if accounted >= delivered:
                return cas.Stop("counted")  # a later delivery is recorded already
            now = self.clock.now()
            attempts = list(rec.attempts)
            attempt_no = add_unrecorded(attempts, rec.attempt, accounted, delivered, now)
            return msgspec.structs.replace(
                rec, delivered=delivered, delivered_gen=rec.gen, handed_back=(rec.handed_back if same_gen else 0) + 1,
                attempt=attempt_no, attempts=attempts[-MAX_ATTEMPTS_KEPT:], limit_ticket=ticket)

        async def write(new: JobRecord, rev: int) -> str:
            await (await ex.ops.write_nowait(new, rev))
            return "written"

        try:
            done = await cas.update(lambda: ex.ops.read_versioned(record.id), decide, write,
                                    seen=(record, rev), what=f"job {record.id}")
        except JobNotFoundError:
            done = "stale"
        except ConflictError:
            done = "unrecorded"  # kept changing: handed back anyway; a later delivery counts it
        if done == "stale":
            await ex.acks.ack(run.msg)
            return
        log.debug("job %s: %s; handed back for %.3fs", record.id, why, delay)
        if park is not None:
            self._park(park, run.msg, record.id, record.gen, delay)
            return
        await ex.acks.nak(run.msg, max(0.001, delay))

    async def _repark(self, ex: "Executor", run: "Running", record: JobRecord, rev: int,
                      ticket: LimitTicket | None) -> bool:
        """A fresh generation and work message for a job that has waited through many deliveries;
        the old message is terminated. False when it could not be done (then it is handed back)."""
        ops = ex.ops
        msg_gen = record.gen

        def decide(rec: JobRecord, _rev: int) -> JobRecord | cas.Stop[None]:
            if rec.gen != msg_gen or rec.state in TERMINAL or rec.state is JobState.SCHEDULED:
                return cas.Stop(None)
            gen = rec.gen + 1
            t = LimitTicket(gen, 1, ticket.at) if ticket is not None else None
            return msgspec.structs.replace(rec, gen=gen, delivered=0, handed_back=0, delivered_gen=gen,
                                           updated_at=self.clock.now(), limit_ticket=t)

        async def write(new: JobRecord, rev: int) -> JobRecord:
            key, marked = await ops.mark_pending([PendingWrite(new.id, new.gen, new.attempt)], "limit")
            marker_rev = (await ops.publisher.wait(marked)).seq
            try:
                new = await ops.write(new, rev)
            except ConflictError:
                await ops.publisher.wait(await ops.unmark(key, marker_rev))
                raise
            await ops.publish_work(new, new.revision)
            await ops.publisher.wait(await ops.unmark(key, marker_rev))
            return new

        try:
            new = await cas.update(lambda: ops.read_versioned(record.id), decide, write,
                                   seen=(record, rev), what=f"job {record.id}")
        except JobNotFoundError:
            await ex.acks.ack(run.msg)
            return True
        except Exception as exc:  # no permission, server trouble: the plain hand-back still works
            log.warning("job %s: could not re-park it with a fresh generation (%s); handing it back", record.id, exc)
            return False
        await ex.acks.term(run.msg)  # stale now (its generation is old) and never redelivered
        if new is not None:
            self.reparked += 1
            log.info("job %s waited through %d deliveries; re-parked as generation %d", record.id,
                     record.delivered, new.gen)
        return True

