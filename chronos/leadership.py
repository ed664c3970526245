"""Leader election on one JetStream KV key: a small, suspicious lease.

States and moves (one ``LeaderLease`` per process and role)::

        +------------------------------------------------------------+
        |                                                            |
        v         read: key free, then                               |
   +----------+   create(key, msg_ttl=ttl) succeeds   +--------+     |
   | follower | ------------------------------------> | leader | ----+ renew every ttl/3:
   +----------+                                       +--------+       CAS on the revision
     |      ^        renew refused (revision moved)       |            + Nats-TTL again
     |      |        renew error, or no answer inside     |
     +------+        the trust window                     |
   poll every ttl/4, <------------------------------------+
   or at once when   resign on shutdown: step down first,
   the key is        then delete guarded by the revision
   deleted           (a successor wins without waiting for the TTL)

Term
    A term begins with a successful ``create``; its id is the revision that
    create got (``term``). Every renewal is a compare-and-set on the latest
    revision, so the revision is also a fencing token: a stale holder's write
    is refused by the server. The stored value (``LeaseHolder``) names the
    node, host and pid; its ``term`` is 0 in the very first entry (the revision
    is not known until the server assigns it) and the term id after that.

Trust window
    A term is trusted only until ``attempt_started + ttl - margin``, where
    ``attempt_started`` is read from the monotonic clock *before* the create or
    renew request is sent. The server starts the key's TTL when it stores the
    write, which is later, so the holder always stops trusting its lease before
    the key can expire and a successor can create it. No wall clocks are
    compared across hosts. ``is_leader`` checks the window every time it is
    read; act on leadership only right after checking it.

Step down when in doubt
    Any renew error, any refusal and any renewal that has not answered when
    the trust window closes ends the term at once (``leader.lost``). The old
    key then expires by its TTL unless it was ours and we resign.

Details that are easy to get wrong (see NATS-FACTS.md)
    * NATS TTLs are whole seconds, at least 1; ``ttl`` is floored to an int.
    * nats-py's ``kv.update`` writes no TTL, so a lease renewed with it would
      never expire. Renewal publishes to ``$KV.<bucket>.<key>`` with
      ``Nats-Expected-Last-Subject-Sequence`` and ``Nats-TTL`` together.
    * The lease bucket has no ``limit_marker_ttl``: with it nats-py misreads
      the server's marker and ``create`` fails until the marker expires.
    * TTL expiry leaves no marker, so followers poll; a resignation's delete
      marker is seen by a core subscription on the key and wakes them early.

Modelled on River's ``internal/leadership`` (term identity, trust window,
conservative failure handling) and Oban's ``Peers.Database`` (the leader
renews more often than followers poll, and removes its row on exit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from . import codec
from .cancellation import raise_if_cancelling
from .clock import SYSTEM_CLOCK, Clock
from .connection import Connection
from .errors import ConflictError, MalformedMessageError, UnsupportedVersionError
from .lease import LeaderInfo, LeaseHolder
from .models import Event

__all__ = [
    "KVLeaseBackend",
    "LeaderInfo",
    "LeaderLease",
    "LeaseBackend",
    "LeaseHolder",
    "LeaseRecord",
    "MemoryLeaseBackend",
    "TrustWindow",
    "read_leader",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

_WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream: wrong last sequence (plain and constant forms)
_KV_OP = "KV-Operation"
_DELETE_OPS = ("DEL", "PURGE")


# --- what a backend read returns (LeaseHolder and LeaderInfo live in lease.py) ----


class LeaseRecord(msgspec.Struct, frozen=True):
    """What a backend read returns: the raw value and what the server knows about it."""

    data: bytes
    revision: int
    stored_at: float | None = None  # server wall time of the last write
    ttl: float | None = None  # seconds, from the write's Nats-TTL


# --- trust arithmetic ----------------------------------------------------------


class TrustWindow:
    """A term is trusted until ``attempt_started + ttl - margin`` on the monotonic clock.

    ``start()`` must be read before the request goes out; ``extend(started)``
    after it succeeds. The reply's arrival time never extends trust, so a slow
    round trip shortens the window instead of stretching it past the key's TTL.
    """

    def __init__(self, clock: Clock, ttl: float, margin: float) -> None:
        self._clock = clock
        self.ttl = ttl
        self.margin = margin
        self.until: float | None = None

    def start(self) -> float:
        return self._clock.monotonic()

    def extend(self, started: float) -> None:
        self.until = started + self.ttl - self.margin

    def clear(self) -> None:
        self.until = None

    def trusted(self) -> bool:
        return self.until is not None and self._clock.monotonic() < self.until

    def remaining(self) -> float:
        if self.until is None:
            return 0.0
        return max(0.0, self.until - self._clock.monotonic())


# --- backends ------------------------------------------------------------------


class LeaseBackend(Protocol):
    """One key with create, compare-and-set renew, guarded release, read and a release hint."""

    async def create(self, value: bytes, ttl: int) -> int:
        """Store ``value`` with a TTL if the key is free; return the revision. ConflictError if held."""
        ...

    async def renew(self, value: bytes, revision: int, ttl: int) -> int:
        """Replace the value and restart its TTL if ``revision`` is still the latest; else ConflictError."""
        ...

    async def release(self, revision: int) -> None:
        """Delete the key if ``revision`` is still the latest; else ConflictError."""
        ...

    async def read(self) -> LeaseRecord | None:
        """The live value, or None when the key is free."""
        ...

    async def watch(self, on_release: Callable[[], None]) -> None:
        """Call ``on_release`` whenever the key may have been deleted; run until cancelled."""
        ...


def _is_wrong_last(exc: BaseException) -> bool:
    return getattr(exc, "err_code", None) in _WRONG_LAST_SEQUENCE


def _ttl_seconds(header: str | None) -> float | None:
    if not header:
        return None
    text = header.strip().lower()
    try:
        return float(text[:-1]) if text.endswith("s") else float(text)
    except ValueError:
        return None


class KVLeaseBackend:
    """The lease on ``names.lease_bucket``: the real thing."""

    def __init__(self, conn: Connection, key: str) -> None:
        self._conn = conn
        self._bucket = conn.names.lease_bucket
        self._key = key
        self._subject = conn.names.kv_subject(self._bucket, key)
        self._stream = conn.names.kv_stream(self._bucket)

    @property
    def key(self) -> str:
        return self._key

    async def create(self, value: bytes, ttl: int) -> int:
        kv = await self._conn.kv(self._bucket)
        try:
            return await kv.create(self._key, value, msg_ttl=ttl)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ConflictError(f"lease {self._key} is held") from None
        except nats.js.errors.KeyNotFoundError:
            # create's own re-read raced an expiry; the key is free now, the next poll takes it.
            raise ConflictError(f"lease {self._key} changed during create") from None

    async def renew(self, value: bytes, revision: int, ttl: int) -> int:
        # Not kv.update: it drops the TTL and the lease would never expire. Both headers in one write.
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(revision)}
        try:
            ack = await self._conn.js.publish(self._subject, value, headers=headers, msg_ttl=ttl)
        except nats.js.errors.APIError as exc:
            if _is_wrong_last(exc):
                raise ConflictError(f"lease {self._key} moved past revision {revision}") from None
            raise
        return ack.seq

    async def release(self, revision: int) -> None:
        kv = await self._conn.kv(self._bucket)
        try:
            await kv.delete(self._key, last=revision)
        except nats.js.errors.APIError as exc:
            if _is_wrong_last(exc):
                raise ConflictError(f"lease {self._key} moved past revision {revision}") from None
            raise

    async def read(self) -> LeaseRecord | None:
        try:
            msg = await self._conn.js.get_msg(self._stream, subject=self._subject)
        except nats.js.errors.NotFoundError:
            return None
        headers = msg.headers or {}
        if headers.get(_KV_OP) in _DELETE_OPS:
            return None
        stored_at = msg.time.timestamp() if getattr(msg, "time", None) is not None else None
        return LeaseRecord(
            data=msg.data or b"",
            revision=msg.seq or 0,
            stored_at=stored_at,
            ttl=_ttl_seconds(headers.get(api.Header.MSG_TTL.value)),
        )

    async def watch(self, on_release: Callable[[], None]) -> None:
        # A core subscription on the key's subject sees every write, including a resign's
        # delete marker. It is only a hint to poll now: a refused write also shows up here.
        async def on_msg(msg: Msg) -> None:
            if (msg.headers or {}).get(_KV_OP) in _DELETE_OPS:
                on_release()

        sub = await self._conn.nc.subscribe(self._subject, cb=on_msg)
        try:
            await asyncio.Event().wait()
        finally:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:  # connection already gone; nothing to release
                log.debug("lease watch unsubscribe: %s", exc)


class MemoryLeaseBackend:
    """An in-process lease with server-like TTL expiry on the injected clock, for unit tests."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seq = 0
        self._value: bytes | None = None
        self._revision = 0
        self._expires = 0.0
        self._stored_at = 0.0
        self._ttl = 0
        self._listeners: list[Callable[[], None]] = []

    def _live(self) -> bool:
        return self._value is not None and self._clock.monotonic() < self._expires

    def _store(self, value: bytes, ttl: int) -> int:
        self._seq += 1
        self._value, self._revision, self._ttl = value, self._seq, ttl
        self._expires = self._clock.monotonic() + ttl
        self._stored_at = self._clock.now()
        return self._seq

    async def create(self, value: bytes, ttl: int) -> int:
        if self._live():
            raise ConflictError("lease is held")
        return self._store(value, ttl)

    async def renew(self, value: bytes, revision: int, ttl: int) -> int:
        if not self._live() or revision != self._revision:
            raise ConflictError(f"lease moved past revision {revision}")
        return self._store(value, ttl)

    async def release(self, revision: int) -> None:
        if not self._live() or revision != self._revision:
            raise ConflictError(f"lease moved past revision {revision}")
        self._seq += 1  # the delete marker takes a revision, as in a stream
        self._value = None
        for fn in list(self._listeners):
            fn()

    async def read(self) -> LeaseRecord | None:
        if not self._live():
            return None
        assert self._value is not None
        return LeaseRecord(self._value, self._revision, self._stored_at, float(self._ttl))

    async def watch(self, on_release: Callable[[], None]) -> None:
        self._listeners.append(on_release)
        try:
            await asyncio.Event().wait()
        finally:
            self._listeners.remove(on_release)


# --- the lease -----------------------------------------------------------------


class _Expired(Exception):
    """An awaited step ran out of its time budget on the injected clock."""


def _consume_result(task: asyncio.Future[Any]) -> None:
    # A step abandoned at its deadline may still fail later; retrieve it so asyncio stays quiet.
    if not task.cancelled():
        task.exception()


def _default_node_id() -> str:
    # The random part tells two leases in one process apart (tests, or two roles).
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def _holder_of(record: LeaseRecord) -> LeaseHolder | None:
    try:
        holder = codec.decode(record.data, LeaseHolder)
    except (MalformedMessageError, UnsupportedVersionError) as exc:  # show nothing rather than guess
        log.warning("unreadable lease value at revision %d: %s", record.revision, exc)
        return None
    # The term's first entry carries term 0; its own revision is the term id.
    return holder if holder.term else msgspec.structs.replace(holder, term=record.revision)


def _info(record: LeaseRecord, clock: Clock) -> LeaderInfo | None:
    holder = _holder_of(record)
    if holder is None:
        return None
    expires_in = None
    if record.stored_at is not None and record.ttl is not None:
        expires_in = max(0.0, record.stored_at + record.ttl - clock.now())
    return LeaderInfo(
        node=holder.node,
        host=holder.host,
        pid=holder.pid,
        acquired_at=holder.acquired_at,
        term=holder.term,
        revision=record.revision,
        ttl=record.ttl,
        expires_in=expires_in,
    )


async def read_leader(conn: Connection, *, role: str = "scheduler", clock: Clock = SYSTEM_CLOCK) -> LeaderInfo | None:
    """Who holds ``role``'s lease right now, without contending; None when nobody does."""
    record = await KVLeaseBackend(conn, conn.names.leader_key(role)).read()
    return None if record is None else _info(record, clock)


class LeaderLease:
    """Contend for one lease; lead while it is held and trusted, follow otherwise.

    ``run()`` loops until cancelled and resigns on the way out. State can be
    observed through ``is_leader`` (checks the trust window), the ``leading``
    and ``following`` events, ``ready`` (set once the first attempt finished),
    and ``leader.gained`` / ``leader.lost`` Events passed to ``on_event``
    (for example ``EventPublisher.emit``).
    """

    def __init__(
        self,
        conn: Connection | None = None,
        *,
        role: str = "scheduler",
        ttl: float | None = None,
        node_id: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        on_event: Callable[[Event], None] | None = None,
        margin: float | None = None,
        renew_every: float | None = None,
        poll_every: float | None = None,
        backend: LeaseBackend | None = None,
    ) -> None:
        if backend is None:
            if conn is None:
                raise ValueError("LeaderLease needs a connection or a backend")
            backend = KVLeaseBackend(conn, conn.names.leader_key(role))
        if ttl is None:
            if conn is None:
                raise ValueError("ttl: required when no connection gives settings")
            ttl = conn.settings.scheduler.lease_ttl
        if ttl < 1:
            raise ValueError(f"ttl: NATS TTLs are whole seconds, at least 1; got {ttl}")
        self.role = role
        self.ttl = int(ttl)  # floored, so our arithmetic matches what the server enforces
        self.margin = self.ttl / 5 if margin is None else margin
        self.renew_every = self.ttl / 3 if renew_every is None else renew_every
        self.poll_every = self.ttl / 4 if poll_every is None else poll_every
        if not 0 <= self.margin < self.ttl:
            raise ValueError(f"margin: must be in [0, ttl), got {self.margin}")
        if self.renew_every >= self.ttl - self.margin:
            raise ValueError("renew_every: must be shorter than ttl - margin, or the term lapses between renewals")
        self.node_id = node_id or _default_node_id()
        self._backend = backend
        self._clock = clock
        self._on_event = on_event
        self._trust = TrustWindow(clock, self.ttl, self.margin)
        self._leading = False
        self._revision: int | None = None
        self._term: int | None = None
        self._value: LeaseHolder | None = None
        self._holder: LeaseHolder | None = None
        self._next_renew = 0.0
        self._wake = asyncio.Event()
        self.leading = asyncio.Event()
        self.following = asyncio.Event()
        self.following.set()
        self.ready = asyncio.Event()

    # --- what callers read -------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True only while a term is held and still inside its trust window."""
        return self._leading and self._trust.trusted()

    @property
    def term(self) -> int | None:
        """The current term's id (the revision that began it) while leading."""
        return self._term if self._leading else None

    @property
    def revision(self) -> int | None:
        """The latest revision written in this term: the fencing token for the next renewal."""
        return self._revision if self._leading else None

    @property
    def holder(self) -> LeaseHolder | None:
        """Who holds the lease as last seen: ourselves while leading, else the last read."""
        return self._value if self._leading else self._holder

    @property
    def trusted_until(self) -> float | None:
        """Monotonic time at which the current term stops being trusted."""
        return self._trust.until if self._leading else None

    async def wait_gained(self) -> None:
        await self.leading.wait()

    async def wait_lost(self) -> None:
        await self.following.wait()

    async def leader_info(self) -> LeaderInfo | None:
        """Who holds the lease and roughly how long it has left, read from the server."""
        record = await self._backend.read()
        return None if record is None else _info(record, self._clock)

    # --- single steps (run() is these in a loop) -------------------------------

    async def try_acquire(self) -> bool:
        """One create attempt; True if this node now leads."""
        if self._leading:
            return True
        value = LeaseHolder(
            node=self.node_id, host=socket.gethostname(), pid=os.getpid(), acquired_at=self._clock.now()
        )
        started = self._trust.start()
        try:
            rev = await self._within(self._backend.create(codec.encode(value), self.ttl), self.ttl - self.margin)
        except ConflictError:
            return False
        except _Expired:
            log.warning("lease %s: create got no answer within %.1fs; not claiming", self.role, self.ttl - self.margin)
            return False
        self._trust.extend(started)
        if not self._trust.trusted():  # the injected clock jumped past the window
            self._trust.clear()
            return False
        self._revision = rev
        self._term = rev
        self._value = msgspec.structs.replace(value, term=rev)
        self._next_renew = started + self.renew_every
        self._set_leading(True, f"term {rev}")
        return True

    async def renew(self) -> bool:
        """One compare-and-set renewal that also restarts the key's TTL; False means the term is over."""
        if not self._leading:
            return False
        assert self._value is not None and self._revision is not None
        budget = self._trust.remaining()
        if budget <= 0:
            self._step_down("trust window closed before the renewal was sent")
            return False
        started = self._trust.start()
        # The next renewal is scheduled from this attempt, so a slow reply does not stretch the period.
        self._next_renew = started + self.renew_every
        try:
            rev = await self._within(self._backend.renew(codec.encode(self._value), self._revision, self.ttl), budget)
        except ConflictError:
            self._step_down("refused: the lease moved to another revision")
            return False
        except _Expired:
            self._step_down(f"renewal unanswered when the trust window closed ({budget:.2f}s)")
            return False
        except Exception as exc:  # any doubt ends the term
            self._step_down(f"renewal failed: {exc!r}")
            return False
        if not self._leading:  # resigned while the renewal was in flight
            return False
        self._revision = rev
        self._trust.extend(started)
        return True

    async def resign(self) -> bool:
        """Step down now and delete the key if it is still ours, so a successor need not wait out the TTL."""
        if not self._leading:
            return False
        revision = self._revision
        assert revision is not None
        # Stop trusting first: the key must never be free while we still act as leader.
        self._step_down("resigned", level=logging.INFO)
        try:
            await self._within(self._backend.release(revision), max(1.0, self.margin))
        except ConflictError:
            log.info("lease %s: already moved on at resign; nothing to release", self.role)
            return False
        except Exception as exc:  # _Expired included: the key then simply runs out its TTL
            log.warning("lease %s: release failed (%r); the key expires within %ss", self.role, exc, self.ttl)
            return False
        return True

    # --- the loop --------------------------------------------------------------

    async def run(self) -> None:
        """Contend until cancelled; on the way out resign if leading, then re-raise."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch(), name=f"lease-watch-{self.role}")
                tg.create_task(self._elect(), name=f"lease-elect-{self.role}")
        finally:
            await self.resign()

    async def _elect(self) -> None:
        failing = False
        while True:
            # A task that was asked to stop must not go on to win or hold a lease (cancellation.py).
            raise_if_cancelling()
            try:
                if self._leading:
                    await self._lead_step()
                else:
                    await self._follow_step()
                failing = False
            except Exception as exc:
                # Network trouble while following (or a bug): keep contending, but say so once.
                log.log(logging.DEBUG if failing else logging.WARNING, "lease %s: %r", self.role, exc)
                failing = True
                if self._leading:
                    self._step_down(f"unexpected error: {exc!r}")
                await self._pause(self.poll_every)

    async def _follow_step(self) -> None:
        self._wake.clear()  # a release seen from here on cuts the next pause short
        # Every network call runs in its own task under _within, so this task only ever awaits
        # asyncio.wait, which never loses a cancellation.
        record = await self._within(self._backend.read(), self.ttl)
        if record is None:
            if await self.try_acquire():
                self.ready.set()
                return
            record = await self._within(self._backend.read(), self.ttl)  # lost the race: learn who won
        self._holder = None if record is None else _holder_of(record)
        self.ready.set()
        await self._pause(self.poll_every)

    async def _lead_step(self) -> None:
        await self._pause(self._next_renew - self._clock.monotonic())
        self._wake.clear()
        await self.renew()

    async def _watch(self) -> None:
        while True:
            # In its own task for the same reason as _follow_step: this task awaits only asyncio.wait.
            watch = asyncio.ensure_future(self._backend.watch(self._wake.set))
            try:
                await asyncio.wait((watch,))
            finally:
                if not watch.done():
                    watch.cancel()
                    watch.add_done_callback(_consume_result)
            if not watch.cancelled() and watch.exception() is not None:
                # Only a hint; polling still finds every change.
                log.debug("lease %s: watch failed: %r", self.role, watch.exception())
            await self._clock.sleep(self.poll_every)

    # --- helpers -----------------------------------------------------------------

    async def _within(self, aw: Awaitable[T], seconds: float) -> T:
        """Await ``aw`` for at most ``seconds`` of the injected clock; raise _Expired after that."""
        work = asyncio.ensure_future(aw)
        timer = asyncio.ensure_future(self._clock.sleep(max(0.0, seconds)))
        try:
            await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not work.done():
                work.cancel()
                work.add_done_callback(_consume_result)
        if work.done():
            return work.result()
        raise _Expired(f"no answer within {seconds:.2f}s")

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0 or self._wake.is_set():
            return
        try:
            await self._within(self._wake.wait(), seconds)
        except _Expired:
            pass

    def _set_leading(self, leading: bool, reason: str, level: int = logging.WARNING) -> None:
        term = self._term
        self._leading = leading
        if leading:
            self.following.clear()
            self.leading.set()
            log.info("lease %s: gained by %s (%s)", self.role, self.node_id, reason)
            self._emit("leader.gained", f"{self.role} term {term}")
        else:
            self.leading.clear()
            self.following.set()
            log.log(level, "lease %s: lost by %s, term %s: %s", self.role, self.node_id, term, reason)
            self._emit("leader.lost", f"{self.role} term {term}: {reason}")

    def _step_down(self, reason: str, level: int = logging.WARNING) -> None:
        if not self._leading:
            return
        self._trust.clear()
        self._set_leading(False, reason, level)
        self._holder = None
        self._revision = None
        self._term = None

    def _emit(self, kind: str, message: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(Event(kind=kind, at=self._clock.now(), worker=self.node_id, message=message))
        except Exception:  # a listener must not break the lease
            log.exception("lease %s: event listener failed", self.role)
