"""Queue limits (operator settings) and the limits bucket: rate-limit state, concurrency slots, waiters.

A queue's limits are the key ``limit.<queue>`` of the queues bucket (the console writes it;
every worker watches it). Keys of ``<ns>_limits`` (``chronos/limits.py`` has the value types)::

    rate.<digest>          RateState      GCRA state of one (scope, name, key)   (workers write)
    slot.<digest>.<n>      SlotHolder     concurrency slot n of one (scope, name, key), with a
                                          per-message TTL (the lease): a dead worker's slot
                                          expires on the server's clock       (workers write)
    wait.<digest>.<job>    Waiter         a job seen waiting for a slot, expires by TTL

Every write is a compare-and-set on the key's revision (``Nats-Expected-Last-Subject-Sequence``),
so two workers never both take one slot or one rate turn. A slot is taken over an absent key
(revision 0), over a released one (its delete marker's revision), over a reservation for the
taking job (``SlotHolder.reserved``: handed over by the job that released it), over a value no
worker could have written (undecodable, or a holder whose own lease ran out long ago: a longer
TTL than any worker sets), or never.

Any worker credential can write this bucket (workers take and release slots), so readers do not
trust what they find: a rate state further ahead than its limit allows, or one that does not
decode, is reset by compare-and-set; a slot past its holder's lease (or stamped in the future)
is taken over. docs/concurrency-limits.md ("A stolen worker credential") lists what is left.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import msgspec

import nats.js.api
import nats.js.errors

from . import cas, codec
from .clock import SYSTEM_CLOCK, Clock
from .connection import Connection
from .errors import ConflictError, MalformedMessageError
from .limits import (
    Holder,
    LimitsSnapshot,
    LimitView,
    QueueLimit,
    Rate,
    RateState,
    SlotHolder,
    Waiter,
    bump_recent,
    digest,
    holder_is_sane,
    horizon,
    rate_now,
    reserve,
    tat_is_sane,
    waiting,
)
from .publisher import encode_headers, is_wrong_last_sequence
from .store.kv import KVStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# The limit types are this module's own (codec.py knows the stream wire types); one typed decoder each.
_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {
    t: msgspec.msgpack.Decoder(t) for t in (QueueLimit, RateState, SlotHolder, Waiter)}


def _decode(data: bytes | None, typ: type[T]) -> T:
    try:
        return _decoders[typ].decode(data or b"")  # type: ignore[no-any-return]
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessageError(f"invalid {typ.__name__}: {exc}") from None

RATE_PREFIX = "rate."
SLOT_PREFIX = "slot."
WAIT_PREFIX = "wait."
_DELETE_OPS = ("DEL", "PURGE")
SNAPSHOT_TOP = 200  # limits a snapshot lists (the most waited on); the rest are counted
SNAPSHOT_MAX_KEYS = 50_000  # keys a snapshot reads at most (per kind of key)
_MAX_SUBJECT_DETAILS = 100_000  # subjects one STREAM.INFO lists at most (the server's page)


class NoTurn(ConflictError):
    """No rate turn was reserved: the next free one is beyond the horizon. Ask again at ``retry_at``."""

    def __init__(self, name: str, retry_at: float) -> None:
        super().__init__(f"rate limit {name}: no turn within the horizon")
        self.retry_at = retry_at


@dataclass(slots=True)
class SlotLease:
    """A concurrency slot this process holds: renewed by compare-and-set, released by a delete."""

    key: str
    revision: int
    holder: SlotHolder
    lost: bool = False
    # A renewal in flight changes the revision: a release or hand-over asked for meanwhile waits for
    # it (sent with the old revision it would be refused, and the slot held until its lease ran out).
    renewing: bool = False
    after_renew: Callable[[], None] | None = None


class _Bucket:
    """Raw reads and compare-and-set writes on one bucket."""

    def __init__(self, conn: Connection, bucket: str) -> None:
        self.conn = conn
        self.bucket = bucket
        self._prefix = f"$KV.{bucket}."
        self._kv: Any = None
        self._store: KVStore | None = None

    async def kv(self) -> Any:
        if self._kv is None:
            self._kv = await self.conn.kv(self.bucket)
            self._store = KVStore(self._kv, self.conn.publisher, self.bucket)
        return self._kv

    async def store(self) -> KVStore:
        await self.kv()
        assert self._store is not None
        return self._store

    def subject(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> tuple[bytes | None, int]:
        """(value, revision): value None for an absent key (revision 0) or a deleted one (its marker's)."""
        kv = self._kv or await self.kv()
        try:
            e = await kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            entry = getattr(exc, "entry", None)
            return None, (entry.revision or 0) if entry is not None else 0
        return e.value, e.revision or 0

    async def cas(self, key: str, value: bytes, revision: int, ttl: float | None = None,
                  delete: bool = False) -> int:
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
        if delete:
            headers["KV-Operation"] = "DEL"
        if ttl is not None:
            headers["Nats-TTL"] = f"{max(1, math.ceil(ttl))}s"
        try:
            ack = await self.conn.publisher.request(self.subject(key), value, headers)
        except Exception as exc:
            if is_wrong_last_sequence(exc):
                raise ConflictError(f"{key} changed since it was read") from None
            raise
        return ack.seq


class LimitStore:
    """Reads and compare-and-set writes of queue limits (queues bucket) and limit state (limits bucket)."""

    def __init__(self, conn: Connection, clock: Clock = SYSTEM_CLOCK) -> None:
        self.conn = conn
        self.clock = clock
        self.names = conn.names
        self.state = _Bucket(conn, conn.names.limits_bucket)
        self.queues = _Bucket(conn, conn.names.queues_bucket)
        self._rate_cache: dict[str, tuple[RateState, int]] = {}
        self._rate_waiting: dict[str, list[asyncio.Future[float]]] = {}  # reservations waiting for a write
        self._rate_busy: set[str] = set()  # keys with a reservation write in flight here
        self._sending: set[asyncio.Task[None]] = set()  # releases sent the slow way (not connected yet)
        self._free_rev: dict[str, int] = {}  # slot key -> the revision it was last seen free at

    async def _get(self, key: str) -> tuple[bytes | None, int]:
        return await self.state.get(key)

    async def _cas(self, key: str, value: bytes, revision: int, ttl: float | None = None) -> int:
        return await self.state.cas(key, value, revision, ttl)

    def subject(self, key: str) -> str:
        return self.state.subject(key)

    # --- queue limits (operators) --------------------------------------------------------------
    async def queue_limit(self, queue: str) -> tuple[QueueLimit | None, int]:
        data, rev = await self.queues.get(self.names.queue_limit_key(queue))
        return (_decode(data, QueueLimit) if data else None), rev

    async def put_queue_limit(self, limit: QueueLimit, revision: int) -> int:
        """Compare-and-set; a limit with neither rate nor concurrency removes the key."""
        key = self.names.queue_limit_key(limit.queue)
        if limit.rate is None and limit.concurrency is None:
            if revision == 0:
                return 0
            return await self.queues.cas(key, b"", revision, delete=True)
        return await self.queues.cas(key, codec.encode(limit), revision)

    async def queue_limits(self) -> list[QueueLimit]:
        out = []
        for e in await (await self.queues.store()).entries(self.names.queue_limit_wildcard()):
            try:
                out.append(_decode(e.value, QueueLimit))
            except Exception:  # a foreign value: not ours to show
                continue
        return sorted(out, key=lambda q: q.queue)

    async def watch_queue_limits(self) -> AsyncIterator[tuple[str, QueueLimit | None]]:
        """(queue, its limit or None once removed): every current one first, then changes."""
        prefix = self.names.queue_limit_key("")
        async for e in (await self.queues.store()).watch(self.names.queue_limit_wildcard(), include_existing=True):
            limit = None
            if e.value:
                try:
                    limit = _decode(e.value, QueueLimit)
                except Exception:
                    limit = None
            yield e.key[len(prefix):], limit

    # --- rate limits (workers) --------------------------------------------------------------------
    async def reserve(self, scope: str, name: str, key: str | None, rate: Rate) -> float:
        """This job's start time under ``rate`` (now, or a later turn reserved for it).

        Reservations of one key made here while a write is in flight wait for it and then go
        together, as one compare-and-set for all of them: a flood of jobs does not turn into
        a flood of conflicting writes on one key."""
        k = RATE_PREFIX + digest(scope, name, key or "")
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        queue = self._rate_waiting.setdefault(k, [])
        queue.append(fut)
        if len(queue) == 1 and k not in self._rate_busy:
            self._rate_busy.add(k)
            try:
                while self._rate_waiting.get(k):
                    batch = self._rate_waiting.pop(k)
                    try:
                        starts = await self._reserve_batch(k, scope, name, key, rate, len(batch))
                    except BaseException as exc:
                        for f in batch:
                            if not f.done():
                                f.set_exception(exc if isinstance(exc, Exception) else ConflictError(str(exc)))
                        if not isinstance(exc, Exception):
                            raise
                        continue
                    for f, t in zip(batch, starts):
                        if f.done():
                            continue
                        if isinstance(t, NoTurn):
                            f.set_exception(t)
                        else:
                            f.set_result(t)
            finally:
                self._rate_busy.discard(k)
                for f in self._rate_waiting.pop(k, []):  # cancelled while leading: let them retry
                    if not f.done():
                        f.set_exception(ConflictError(f"rate limit {name}: try again"))
        return await fut

    async def _reserve_batch(self, k: str, scope: str, name: str, key: str | None, rate: Rate,
                             n: int) -> list[float | NoTurn]:
        starts: list[float | NoTurn] = []

        async def read() -> tuple[RateState | None, int]:
            data, rev = await self._get(k)
            if not data:
                return None, rev
            try:
                return _decode(data, RateState), rev
            except MalformedMessageError as exc:  # not written by a worker: reset (by compare-and-set)
                log.warning("rate limit %s%s: resetting an undecodable state (%s)", name,
                            f" [{key}]" if key else "", exc)
                return None, rev

        def decide(state: RateState | None, rev: int) -> RateState:
            now = self.clock.now()
            if state is not None and not (math.isfinite(state.tat) and tat_is_sane(state.tat, now, rate)):
                log.warning("rate limit %s%s: resetting a state %.0f s ahead, beyond what %s allows "
                            "(planted, or left by a slower limit)", name, f" [{key}]" if key else "",
                            state.tat - now, rate.text())
                state = None
            tat = state.tat if state is not None else now
            recent = state.recent if state is not None else []
            limit = now + horizon(rate)
            starts.clear()
            for _ in range(n):
                if tat > limit:  # a backlog beyond the horizon: no turn yet, ask again once one is near
                    starts.append(NoTurn(name, tat - horizon(rate) + rate.interval))
                    continue
                start, tat = reserve(tat, now, rate)
                starts.append(start)
                recent = bump_recent(recent, start)
            return RateState(tat=tat, scope=scope, name=name, key=key, limit=rate.text(), burst=rate.burst,
                             recent=recent)

        async def write(new: RateState, rev: int) -> list[float | NoTurn]:
            # The state expires once idle: by then the tat is in the past and absent means the same.
            ttl = max(60.0, new.tat - self.clock.now() + 60.0)
            new_rev = await self._cas(k, codec.encode(new), rev, ttl)
            self._rate_cache[k] = (new, new_rev)
            return list(starts)

        try:
            return await cas.update(read, decide, write, seen=self._rate_cache.get(k), attempts=50,
                                    what=f"rate limit {name}")
        except ConflictError:
            self._rate_cache.pop(k, None)
            raise

    # --- concurrency slots (workers) -----------------------------------------------------------------
    async def acquire(self, scope: str, name: str, key: str | None, limit: int, holder: SlotHolder,
                      lease: float, *,
                      dead: Callable[[list[str]], Awaitable[set[str]]] | None = None) -> SlotLease | None:
        """Take one of ``limit`` slots for ``holder`` (None: all are held). One try per free slot.

        A slot reserved for ``holder``'s job, or holding a value no worker could have written, counts
        as free. ``dead`` (given now and then by a long waiter): which of the holders' jobs are
        finished or gone; their slots (a release that never came, or a planted holder) are taken over."""
        base = self.slot_group(scope, name, key) + "."
        data = codec.encode(holder)
        held: list[tuple[str, int, str]] = []  # (slot key, revision, holder's job) seen held
        if limit == 1:
            k = base + "0"
            rev = self._free_rev.get(k)
            if rev is None:
                # Not known free here: most often it is held by someone (a waiter asking again),
                # so one read says so, where a write would be refused and then read anyway.
                value, rev = await self._get(k)
                if value is not None:
                    job = self._held_by(k, value, holder, lease)
                    if job is not None:
                        held.append((k, rev, job))
            if not held:
                return await self._take(k, rev, data, holder, lease)
        else:
            # Slots in a random order (workers racing for the same free slots spread out), read a few
            # at a time: a limit that is not full costs one small batch of reads, a full one all.
            order = [base + str(i) for i in range(limit)]
            random.shuffle(order)
            for i in range(0, limit, 16):
                keys = order[i:i + 16]
                seen = await asyncio.gather(*(self._get(k) for k in keys))
                for k, (value, rev) in zip(keys, seen):
                    job = self._held_by(k, value, holder, lease) if value is not None else None
                    if job is not None:
                        held.append((k, rev, job))
                        continue
                    got = await self._take(k, rev, data, holder, lease)
                    if got is not None:
                        return got
        if dead is not None and held:
            gone = await dead(sorted({job for _k, _rev, job in held}))
            for k, rev, job in held:
                if job in gone:
                    log.info("limit slot %s: its holder job %s is finished or gone; taking it over", k, job)
                    got = await self._take(k, rev, data, holder, lease, reclaim=True)
                    if got is not None:
                        return got
        return None

    def _held_by(self, k: str, value: bytes, holder: SlotHolder, lease: float) -> str | None:
        """The job holding slot ``k`` (None: ``holder`` may take it: reserved for its job, or not a
        value any worker writes)."""
        try:
            h = _decode(value, SlotHolder)
        except MalformedMessageError as exc:
            log.warning("limit slot %s: taking over an undecodable value (%s)", k, exc)
            return None
        if h.job_id == holder.job_id and (h.reserved or (h.worker == holder.worker and h.since == holder.since)):
            # Handed over to this job by the one that released it; or this very take, which landed
            # although its answer was lost (a timeout, a resend refused): ours, taken again by revision.
            return None
        if not holder_is_sane(h, self.clock.now(), lease):
            log.warning("limit slot %s: taking over a holder (job %s, worker %s) past any lease it could have "
                        "(written %.0f s ago, lease %.0f s)", k, h.job_id, h.worker,
                        self.clock.now() - (h.renewed or h.since), h.lease)
            return None
        return h.job_id

    async def _take(self, k: str, rev: int, data: bytes, holder: SlotHolder, lease: float,
                    reclaim: bool = False) -> SlotLease | None:
        """One slot key, seen free (or claimable) at ``rev``: compare-and-set it (once more if it was
        freed meanwhile). ``reclaim``: over a dead holder, once, never over a fresh one."""
        for _ in range(1 if reclaim else 2):
            try:
                new_rev = await self._cas(k, data, rev, lease)
            except ConflictError:
                self._free_rev.pop(k, None)
                if reclaim:
                    return None
                value, rev = await self._get(k)
                if value is not None and self._held_by(k, value, holder, lease) is not None:
                    return None  # held by someone
                continue  # released, expired or handed to us meanwhile: once more over what is there now
            self._free_rev.pop(k, None)
            return SlotLease(k, new_rev, holder)
        return None

    @staticmethod
    def slot_group(scope: str, name: str, key: str | None) -> str:
        """The common prefix of one limit's slot keys (``slot.<digest>``)."""
        return SLOT_PREFIX + digest(scope, name, key or "")

    async def renew(self, slot: SlotLease, lease: float) -> bool:
        """Set the slot's TTL again (compare-and-set on its revision). False: it was lost (expired, taken)."""
        if slot.lost:
            return False
        slot.holder.renewed = self.clock.now()
        slot.renewing = True
        ok = False
        try:
            slot.revision = await self._cas(slot.key, codec.encode(slot.holder), slot.revision, lease)
            ok = True
        except ConflictError:
            slot.lost = True
        finally:
            slot.renewing = False
            after, slot.after_renew = slot.after_renew, None
            if after is not None:
                after()  # the release or hand-over asked for meanwhile, over the new revision
        return ok

    def release_nowait(self, slot: SlotLease) -> asyncio.Future[Any] | None:
        """Delete the slot (guarded by its revision) without waiting; the marker expires by TTL."""
        if slot.lost:
            return None
        slot.lost = True
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_ack(ack: Any, exc: BaseException | None) -> None:
            if exc is None and ack is not None:
                self._free_rev[slot.key] = ack.seq
            elif exc is not None and not is_wrong_last_sequence(exc):
                log.warning("releasing limit slot %s failed (it expires with its lease): %s", slot.key, exc)
            if not done.done():
                done.set_result(None)

        def send() -> None:
            headers = {"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(slot.revision),
                       "Nats-TTL": "60s"}
            self._send_nowait(slot.key, b"", headers, on_ack)

        if slot.renewing:
            slot.after_renew = send
        else:
            send()
        return done

    def hand_over_nowait(self, slot: SlotLease, job_id: str, gen: int, ttl: float,
                         on_done: Callable[[int], None]) -> bool:
        """Give the slot straight to a waiting job (compare-and-set over our revision, a short TTL)
        instead of releasing it: only that job may take it, so a job woken for it does not find it
        taken by another. ``on_done(revision)`` once written; 0 if not (then it is released or lost)."""
        if slot.lost:
            return False
        slot.lost = True
        h = msgspec.structs.replace(slot.holder, job_id=job_id, gen=gen, since=self.clock.now(), renewed=0.0,
                                    lease=float(max(1, math.ceil(ttl))), reserved=True)

        def on_ack(ack: Any, exc: BaseException | None) -> None:
            if exc is not None and not is_wrong_last_sequence(exc):
                log.warning("handing limit slot %s over failed (it expires with its lease): %s", slot.key, exc)
            on_done(ack.seq if exc is None and ack is not None else 0)

        def send() -> None:
            headers = {"Nats-Expected-Last-Subject-Sequence": str(slot.revision),
                       "Nats-TTL": f"{max(1, math.ceil(ttl))}s"}
            self._send_nowait(slot.key, codec.encode(h), headers, on_ack)

        if slot.renewing:
            slot.after_renew = send
        else:
            send()
        return True

    def _send_nowait(self, key: str, value: bytes, headers: dict[str, str],
                     on_ack: Callable[[Any, BaseException | None], None]) -> None:
        if not self.conn.publisher.publish_cb(self.subject(key), value, encode_headers(headers), on_ack):
            async def send() -> None:
                try:
                    ack = await self.conn.publisher.request(self.subject(key), value, headers)
                    on_ack(ack, None)
                except Exception as exc:
                    on_ack(None, exc)
            task = asyncio.get_running_loop().create_task(send())
            self._sending.add(task)  # owned until done: the loop keeps only a weak reference
            task.add_done_callback(self._sending.discard)

    async def watch_slots(self) -> AsyncIterator[tuple[str, bool, int]]:
        """(slot key, deleted, revision) for every write of a slot by anyone, from now on."""
        async for e in (await self.state.store()).watch(SLOT_PREFIX + ">"):
            yield e.key, e.value is None, e.revision

    async def note_waiting(self, scope: str, name: str, key: str | None, job_id: str, for_seconds: float) -> None:
        """Record that ``job_id`` waits for a slot (for listings); sent, not awaited."""
        k = WAIT_PREFIX + digest(scope, name, key or "") + "." + job_id
        w = Waiter(job_id=job_id, scope=scope, name=name, key=key, since=self.clock.now())
        headers = {"Nats-TTL": f"{max(1, math.ceil(for_seconds))}s"}
        try:
            await self.conn.publisher.publish(self.subject(k), codec.encode(w), headers)
        except Exception as exc:  # listings only
            log.debug("waiter note failed: %s", exc)

    # --- the snapshot (consoles) -----------------------------------------------------------------------
    async def snapshot(self, top: int = SNAPSHOT_TOP, max_keys: int = SNAPSHOT_MAX_KEYS) -> LimitsSnapshot:
        """The ``top`` limits most waited on (then most held), and how many more have state.

        Bounded with many keys: rate states and slots are read (values, at most ``max_keys`` of
        each), waiters are only counted (their subjects, one stream-info request, no values)."""
        now = self.clock.now()
        (rate_entries, rates_cut), (slot_entries, slots_cut), (wait_counts, waits_cut), queues = await asyncio.gather(
            self._scan(RATE_PREFIX + ">", max_keys), self._scan(SLOT_PREFIX + ">", max_keys),
            self._count_waiters(max_keys), self.queue_limits())
        views: list[LimitView] = []
        slots: dict[str, LimitView] = {}
        for key, value in rate_entries:
            try:
                st = _decode(value, RateState)
            except MalformedMessageError:  # a value of another version, or planted: not listed
                continue
            r = _rate_of(st)
            views.append(LimitView(
                kind="rate", scope=st.scope, name=st.name, key=st.key, limit=st.limit,
                waiting=waiting(st.tat, now, r) if r else 0, rate_now=rate_now(st.recent, now),
                next_free_in=max(0.0, st.tat - (r.interval * (r.burst - 1) if r else 0.0) - now)))
        for key, value in slot_entries:
            try:
                h = _decode(value, SlotHolder)
            except MalformedMessageError:
                continue
            group, _, n = key.rpartition(".")  # "slot.<digest>", as the waiters' counts are keyed
            view = slots.get(group)
            if view is None:
                view = slots[group] = LimitView(kind="concurrency", scope=h.scope, name=h.name, key=h.key,
                                                limit=str(h.limit))
            view.holders.append(Holder(job_id=h.job_id, worker=h.worker, since=h.since,
                                       expires=(h.renewed or h.since) + h.lease, slot=int(n) if n.isdigit() else 0))
        unnamed: dict[int, str] = {}  # id(view) -> group: waiters of a limit with no holder right now
        for group, count in wait_counts.items():
            view = slots.get(group)
            if view is None:
                view = slots[group] = LimitView(kind="concurrency", scope="?", name="?", key=group[len(SLOT_PREFIX):])
                unnamed[id(view)] = group
            view.waiting = count
        for view in slots.values():
            view.holders.sort(key=lambda h: h.slot)
        views += slots.values()
        # The most waited on first, then the most held; the rest are counted, not listed.
        ranked = sorted(views, key=lambda v: (-v.waiting, -len(v.holders), v.scope, v.name, v.key or ""))
        shown = ranked[:max(0, top)]
        named = [v for v in shown if id(v) in unnamed]
        for v, w in zip(named, await asyncio.gather(*(self._waiter_note(unnamed[id(v)]) for v in named))):
            if w is not None:  # one wait note names the limit
                v.scope, v.name, v.key = w.scope, w.name, w.key
        shown.sort(key=lambda v: (v.scope, v.name, v.kind, v.key or ""))
        return LimitsSnapshot(at=now, queues=queues, limits=shown, omitted=len(ranked) - len(shown),
                              truncated=rates_cut or slots_cut or waits_cut)

    async def _scan(self, pattern: str, max_keys: int) -> tuple[list[tuple[str, bytes]], bool]:
        """(key, value) of at most ``max_keys`` live keys matching ``pattern`` (one ordered consumer,
        last value per key), and whether more were left unread. A callback, not ``sub.messages``:
        nats-py's iterator costs a task per message (10,000 keys: 0.8 s against 0.3 s)."""
        prefix = self.state.subject("")
        out: dict[str, bytes] = {}
        seen = [0]
        cut = [False]
        done = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            if done.is_set():
                return
            seen[0] += 1
            key = msg.subject[len(prefix):]
            headers = msg.headers
            op = headers.get("KV-Operation") if headers else None
            if op in _DELETE_OPS or (op is None and headers and "Nats-Marker-Reason" in headers):
                out.pop(key, None)
            else:
                out[key] = msg.data
            if msg.metadata.num_pending == 0:
                done.set()
            elif seen[0] >= max_keys:
                cut[0] = True
                done.set()

        try:
            sub = await self.conn.js.subscribe(
                prefix + pattern, stream=self.names.kv_stream(self.state.bucket), ordered_consumer=True, cb=on_msg,
                deliver_policy=nats.js.api.DeliverPolicy.LAST_PER_SUBJECT, inactive_threshold=60.0)
        except nats.js.errors.NotFoundError:
            return [], False
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                return [], False
            await asyncio.wait_for(done.wait(), 30.0)
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection already closed
                log.debug("limits scan unsubscribe: %s", exc)
        return list(out.items()), cut[0]

    async def _count_waiters(self, max_keys: int) -> tuple[dict[str, int], bool]:
        """Wait notes per slot group, from the stream's subject counts (no values are read)."""
        prefix = self.state.subject(WAIT_PREFIX)
        info = await self.conn.js.stream_info(self.names.kv_stream(self.state.bucket), subjects_filter=prefix + ">")
        subjects = (info.state.subjects or {}) if info.state is not None else {}
        counts: dict[str, int] = {}
        for n, subject in enumerate(subjects):
            if n >= max_keys:
                return counts, True
            group = SLOT_PREFIX + subject[len(prefix):].rpartition(".")[0]
            counts[group] = counts.get(group, 0) + 1
        return counts, len(subjects) >= _MAX_SUBJECT_DETAILS

    async def _waiter_note(self, group: str) -> Waiter | None:
        found, _cut = await self._scan(f"{WAIT_PREFIX}{group[len(SLOT_PREFIX):]}.>", 1)
        for _key, value in found:
            try:
                return _decode(value, Waiter)
            except MalformedMessageError:
                return None
        return None


def _rate_of(st: RateState) -> Rate | None:
    from .limits import parse_rate

    try:
        return parse_rate(st.limit.split(" ")[0], "rate", st.burst)
    except Exception:
        return None
