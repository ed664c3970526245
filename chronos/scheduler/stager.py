"""Stager: promotes parked (scheduled) jobs at their exact run_at. Leader only.

Parked jobs wait as ``JobMessage`` on per-minute subjects ``<ns>.delayed.<minute>``
(see ``delayed.py``). The stager keeps only the near horizon in memory:

* at start it loads every minute subject up to ``now + horizon`` (past minutes
  included: jobs the previous leader never promoted run at once);
* every ``tick`` seconds it loads the minutes that have entered the horizon;
* a core subscription on ``<ns>.delayed.>`` adds jobs parked while it runs, so
  a job due in half a second does not wait for a tick.

Firing comes from an in-memory timer heap (sleep until the earliest due time,
woken early when an earlier item arrives), never from a poll tick. The
compare-and-set below is sent about one round trip (smoothed round trip plus
four times its deviation, at least ``min_ahead`` and at most ``max_ahead``) before ``run_at`` so that its answer arrives near ``run_at``;
the work message itself is never published before ``run_at``, so a job never
becomes runnable early (the record may read ``available`` a millisecond early).

Promotion of (id, gen) is a compare-and-set from ``scheduled`` to ``available``
on the revision the parked message carries (one re-read on conflict), then the
work publish with ``Nats-Msg-Id`` ``j:<id>:<gen>``. Two leaders promoting the same
job: one CAS wins, so one run. A leader that dies between its CAS and its publish
leaves the job ``available`` (never attempted) with its parked message still there:
the next leader publishes it again, and the message id makes that a no-op if the
first publish did go out. A
job cancelled or run early (``Client.run_now``) is no longer ``scheduled`` at
this gen and is skipped. Afterwards the parked message is deleted by its
stream sequence; a job whose spec signature does not verify (signing.py) is
cancelled with the reason instead, never published. Jobs that came in through the core subscription (whose
sequence is unknown) are deleted by the next scan of their minute.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from .. import cas, codec
from ..cancellation import raise_if_cancelling
from ..clock import SYSTEM_CLOCK, Clock
from ..delayed import minute_of
from ..errors import ChronosError, ConflictError, IllegalTransitionError
from ..jobs import JobOps, job_event
from ..models import Event, JobMessage, JobRecord
from ..states import JobState, transition

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (job id, gen)


@dataclass
class _Parked:
    due: float
    record: JobRecord
    rev: int
    minute: int
    seq: int | None = None  # DELAYED stream sequence, when known
    fired: bool = False


class _Promotion(NamedTuple):
    """The decision on one parked job: the record to publish (or None), whether this call
    promoted it, and (record, revision, reason) when its signature is refused instead."""

    record: JobRecord | None
    won: bool
    refuse: tuple[JobRecord, int, str] | None = None


@dataclass
class StagerStats:
    promoted: int = 0
    republished: int = 0  # found available but never attempted: published again (the message id dedupes)
    skipped: int = 0
    refused: int = 0  # the spec's signature did not verify (signing.py): never published
    lateness: list[float] = field(default_factory=list)  # seconds past due at promotion (CAS done)
    fire_lateness: list[float] = field(default_factory=list)  # seconds past due when the timer fired


def _key_of(msg: Msg) -> Key | None:
    """(id, gen) from the ``park:<id>:<gen>`` message id that delayed.park sets; None if absent."""
    mid = (msg.headers or {}).get("Nats-Msg-Id", "")
    if not mid.startswith("park:"):
        return None
    job_id, _, gen = mid[5:].rpartition(":")
    try:
        return (job_id, int(gen))
    except ValueError:
        return None


class Stager:
    def __init__(
        self,
        ops: JobOps,
        *,
        clock: Clock = SYSTEM_CLOCK,
        horizon: float | None = None,
        tick: float = 2.0,
        rescan_every: float = 15.0,
        is_leader: Callable[[], bool] = lambda: True,
        concurrency: int = 256,
        keep_lateness: int = 10_000,
        spin: float = 0.0,  # the CAS goes out >= min_ahead early, so the timer need not spin for it
        max_ahead: float = 0.005,
        min_ahead: float = 0.002,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.on_event = on_event  # scheduled -> available is announced like any transition
        self.spin = spin
        # The compare-and-set is sent up to one round trip (estimated, at most max_ahead) before
        # run_at; the work message still never leaves before run_at (see _promote).
        self.max_ahead = max_ahead
        # At least this early: a round trip that spikes past the estimate would make the job late,
        # and the p99 lateness is what operators feel; the record reads `available` that much early.
        self.min_ahead = min_ahead
        self._rtt = 0.0  # smoothed compare-and-set round trip and its mean deviation (as TCP's RTO)
        self._rtt_dev = 0.0
        self.ops = ops
        self.conn = ops.conn
        self.names = ops.names
        self.clock = clock
        self.horizon = ops.conn.settings.scheduler.horizon if horizon is None else horizon
        self.tick = tick
        self.rescan_every = rescan_every
        self.is_leader = is_leader
        self.stats = StagerStats()
        self._keep_lateness = keep_lateness
        self._entries: dict[Key, _Parked] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._counter = itertools.count()
        self._done: dict[Key, int] = {}  # handled, parked message not yet deleted -> minute
        self._watermark = -1  # every minute <= this has been loaded
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self.ready = asyncio.Event()
        self.promoted = asyncio.Event()  # pulsed after each promotion, for tests and benches

    # --- public ------------------------------------------------------------------------
    def pending(self) -> int:
        return sum(1 for e in self._entries.values() if not e.fired)

    async def run(self) -> None:
        sub = await self.conn.nc.subscribe(self.names.delayed_wildcard(), cb=self._on_live)
        try:
            await self._initial_load()
            raise_if_cancelling()
            self.ready.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._load_loop(tg), name="stager-load")
                await self._fire_loop(tg)
        finally:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                log.debug("stager unsubscribe: %s", exc)

    # --- loading -----------------------------------------------------------------------
    def _horizon_minute(self) -> int:
        return minute_of(self.clock.now() + self.horizon)

    async def _minutes_present(self) -> list[int]:
        info = await self.conn.js.stream_info(self.names.delayed_stream, subjects_filter=self.names.delayed_wildcard())
        prefix = self.names.delayed_root + "."
        out = []
        for subject in (info.state.subjects or {}):
            try:
                out.append(int(subject[len(prefix):]))
            except ValueError:
                continue
        return sorted(out)

    async def _initial_load(self) -> None:
        wm = self._horizon_minute()
        for minute in await self._minutes_present():
            if minute <= wm:
                await self._scan(minute)
        self._watermark = wm

    async def _load_loop(self, tg: asyncio.TaskGroup) -> None:
        last_rescan = self.clock.monotonic()
        while True:
            raise_if_cancelling()
            await self.clock.sleep(self.tick)
            try:
                last_rescan = await self._load_step(last_rescan)
            except (nats.errors.Error, nats.js.errors.Error, ChronosError) as exc:
                log.warning("stager: loading parked jobs failed, trying again in %.1fs: %r", self.tick, exc)

    async def _load_step(self, last_rescan: float) -> float:
        wm = self._horizon_minute()
        if wm > self._watermark:
            # Only minutes that hold anything: an empty one costs a fetch timeout, and a clock that
            # jumps (a fake one, a long pause) brings many minutes into the horizon at once.
            for minute in await self._minutes_present():
                if self._watermark < minute <= wm:
                    await self._scan(minute)
                    raise_if_cancelling()
        self._watermark = max(self._watermark, wm)
        if self._done:
            # Handled jobs whose parked message's sequence was unknown (came in live): delete them now.
            for minute in sorted(set(self._done.values())):
                await self._scan(minute)
        if self.clock.monotonic() - last_rescan >= self.rescan_every:
            # Safety net for anything the live subscription missed (reconnects): re-read past minutes.
            last_rescan = self.clock.monotonic()
            now_minute = minute_of(self.clock.now())
            for minute in await self._minutes_present():
                if minute <= now_minute:
                    await self._scan(minute)
        return last_rescan

    async def _scan(self, minute: int) -> None:
        """Read one minute subject in full; add unknown jobs, learn sequences, delete handled ones."""
        subject = self.names.delayed_subject(minute)
        cfg = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL,
            inactive_threshold=10.0,
            mem_storage=True,
        )
        psub = await self.conn.js.pull_subscribe(subject, stream=self.names.delayed_stream, config=cfg)
        try:
            while True:
                try:
                    msgs = await psub.fetch(128, timeout=0.5)  # small: a big batch is parsed in one go
                except TimeoutError:  # nats-py raises its own subclass or, at times, the builtin one
                    raise_if_cancelling()  # the fetch may have swallowed our cancel
                    break
                raise_if_cancelling()
                for i, msg in enumerate(msgs):
                    await self._on_stored(msg, minute)
                    if i % 16 == 15:
                        # A batch takes ~15 µs a message; let due jobs fire in between, not after it.
                        await asyncio.sleep(0)
                if not msgs or msgs[-1].metadata.num_pending == 0:
                    break
        finally:
            try:
                await psub.unsubscribe()
            except nats.errors.Error as exc:
                log.debug("stager scan unsubscribe: %s", exc)

    async def _on_stored(self, msg: Msg, minute: int) -> None:
        seq = msg.metadata.sequence.stream
        # Rescans mostly meet jobs already known: tell them by the park message id, without
        # decoding the record (a rescan of a busy minute would otherwise stall the timer loop).
        key = _key_of(msg)
        if key is not None:
            if key in self._done:
                del self._done[key]
                await self._delete(seq)
                return
            known = self._entries.get(key)
            if known is not None:
                known.seq = seq
                return
        try:
            parked = codec.decode(msg.data, JobMessage)
        except ChronosError as exc:
            log.warning("dropping unreadable parked message %d: %s", seq, exc)
            await self._delete(seq)
            return
        key = (parked.record.id, parked.record.gen)
        if key in self._done:
            del self._done[key]
            await self._delete(seq)
            return
        entry = self._entries.get(key)
        if entry is not None:
            entry.seq = seq
            return
        self._add(parked, minute, seq)

    async def _on_live(self, msg: Msg) -> None:
        try:
            minute = int(msg.subject.rsplit(".", 1)[1])
            parked = codec.decode(msg.data, JobMessage)
        except (ValueError, IndexError, ChronosError):
            return
        if minute > self._horizon_minute():
            return  # loaded by a scan when its minute enters the horizon
        key = (parked.record.id, parked.record.gen)
        if key in self._entries or key in self._done:
            return
        self._add(parked, minute, None)

    def _add(self, parked: JobMessage, minute: int, seq: int | None) -> None:
        rec = parked.record
        due = rec.spec.run_at if rec.spec.run_at is not None else (rec.scheduled_at or 0.0)
        key = (rec.id, rec.gen)
        self._entries[key] = _Parked(due=due, record=rec, rev=parked.rev, minute=minute, seq=seq)
        if not self._heap or due < self._heap[0][0]:
            self._wake.set()
        heapq.heappush(self._heap, (due, next(self._counter), key))

    # --- firing --------------------------------------------------------------------------
    async def _fire_loop(self, tg: asyncio.TaskGroup) -> None:
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            ahead = min(max(self._rtt + 4 * self._rtt_dev, self.min_ahead), self.max_ahead)
            due = self._heap[0][0] - ahead
            delay = due - self.clock.now()
            if delay > self.spin:
                # Sleep until just before the earliest due time; an earlier arrival wakes us sooner.
                self._wake.clear()
                await self.clock.wait(self._wake, delay - self.spin)
                continue
            if delay > 0:
                # The last stretch: epoll sleeps in whole milliseconds (rounded up), so yield instead.
                await asyncio.sleep(0)
                continue
            while self._heap and self._heap[0][0] - ahead <= self.clock.now():
                _, _, key = heapq.heappop(self._heap)
                entry = self._entries.get(key)
                if entry is None or entry.fired:
                    continue
                entry.fired = True
                await self._slots.acquire()
                tg.create_task(self._promote(key, entry))
            await asyncio.sleep(0)  # let the promotions go out

    async def _promote(self, key: Key, entry: _Parked) -> None:
        try:
            if not self.is_leader():
                # Not trusted any more: leave it parked for whoever leads next.
                entry.fired = False
                self._entries.pop(key, None)
                return
            fired_late = self.clock.now() - entry.due  # negative by up to the round-trip lead
            promoted, won = await self._cas_promote(entry)
            if promoted is not None and not won:
                await self._publish(promoted)  # someone promoted it; maybe never published it
                self.stats.republished += 1
            elif promoted is not None:
                await self._until(entry.due)  # the CAS went out early; the job must not
                late = self.clock.now() - entry.due
                await self._publish(promoted)
                if self.on_event is not None:
                    self.on_event(job_event(promoted, message=f"promoted {late * 1000:.1f} ms after run_at"))
                self.stats.promoted += 1
                if len(self.stats.lateness) < self._keep_lateness:
                    self.stats.lateness.append(late)
                    self.stats.fire_lateness.append(fired_late)
                self.promoted.set()
                self.promoted.clear()
            else:
                self.stats.skipped += 1
            self._entries.pop(key, None)
            if entry.seq is not None:
                await self._delete(entry.seq)
            else:
                self._done[key] = entry.minute
        except Exception:
            # Leave it for the next leader or the next rescan; never kill the loop for one job.
            log.exception("stager: promoting job %s failed", key[0])
            self._entries.pop(key, None)
        finally:
            self._slots.release()

    async def _publish(self, record: JobRecord) -> None:
        subject, data, headers = self.ops.work_message(record, record.revision)
        await self.ops.publisher.request(subject, data, headers or {"Nats-Msg-Id": f"j:{record.id}:{record.gen}"})

    async def _cas_promote(self, entry: _Parked) -> tuple[JobRecord | None, bool]:
        """scheduled -> available with compare-and-set: (record, True) when this call promoted it;
        (record, False) when it is available but never attempted (publish again, deduped);
        (None, False) when it is no longer ours to promote."""
        parked = entry.record

        async def read() -> tuple[JobRecord | None, int]:
            fresh = await self.ops.read_or_none(parked.id)
            return fresh, 0 if fresh is None else fresh.revision

        def decide(rec: JobRecord | None, rev: int) -> JobRecord | cas.Stop[_Promotion]:
            if rec is None or rec.gen != parked.gen:
                return cas.Stop(_Promotion(None, False))
            refusal = self.ops.auth.check(rec)
            if refusal is not None:
                return cas.Stop(_Promotion(None, False, (rec, rev, refusal)))
            if rec.state is JobState.AVAILABLE and rec.attempt == 0 and rec is not parked:
                # Promoted by a leader that may have died before publishing: publish (deduped) again.
                return cas.Stop(_Promotion(rec, False))
            if rec.state is not JobState.SCHEDULED:
                return cas.Stop(_Promotion(None, False))
            try:
                return transition(rec, JobState.AVAILABLE, self.clock.now())
            except IllegalTransitionError:
                return cas.Stop(_Promotion(None, False))

        async def write(new: JobRecord, rev: int) -> _Promotion:
            sent = self.clock.monotonic()
            new.revision = await (await self.ops.write_nowait(new, rev))
            rtt = self.clock.monotonic() - sent
            self._rtt_dev += 0.25 * (abs(rtt - self._rtt) - self._rtt_dev)
            self._rtt += 0.125 * (rtt - self._rtt)
            return _Promotion(new, True)

        try:
            seen: tuple[JobRecord | None, int] = (parked, entry.rev)
            out = await cas.update(read, decide, write, seen=seen, attempts=3,
                                   what=f"job {parked.id}")
        except ConflictError:
            return None, False
        if out.refuse is not None:
            await self._refuse(*out.refuse)
        return out.record, out.won

    async def _refuse(self, rec: JobRecord, rev: int, reason: str) -> None:
        """Not vouched for by a trusted key: cancelled (or discarded) with the reason, never published."""
        self.stats.refused += 1
        log.error("stager: job %s (%s on queue %s) %s; not promoted", rec.id, rec.spec.task, rec.spec.queue, reason)
        to = JobState.CANCELLED if rec.state is JobState.SCHEDULED else JobState.DISCARDED
        try:
            new = transition(rec, to, self.clock.now(), error=reason, worker=None)
            await self.ops.write(new, rev)
        except (ConflictError, IllegalTransitionError):
            return  # it moved meanwhile; a later pass (or the worker) refuses it again
        if self.on_event is not None:
            self.on_event(job_event(new, error=reason))

    async def _until(self, due: float) -> None:
        """Wait for ``due`` on the wall clock: sleep most of a long wait, yield through the last ms."""
        while (left := due - self.clock.now()) > 0:
            if left > 0.0015:
                await self.clock.sleep(left - 0.001)
            else:
                await asyncio.sleep(0)  # a yield, not a wait: the last millisecond is spun

    async def _delete(self, seq: int) -> None:
        try:
            await self.conn.js.delete_msg(self.names.delayed_stream, seq)
        except nats.js.errors.NotFoundError:
            pass  # another leader got there first
        except nats.js.errors.APIError as exc:
            if getattr(exc, "err_code", None) not in (10057, 10037):  # message not found
                raise
