"""A lean pipelined JetStream publisher.

nats-py's ``publish_async`` costs a NUID, a random token, an ``asyncio.wait_for``
and a done-callback per message; on the hot path that overhead is the limit.
This publisher sends every message with a reply subject under one wildcard
inbox, names each by a counter, and bounds what is in flight with a window.
PubAcks are parsed with msgspec; one timer (the sweeper) fails those that never
come. One round trip is ~0.25 ms here, so the throughput comes from never
awaiting one per message.

Subjects come from subjects.py, built from validated tokens, and header blocks are
encoded once by the caller. Each message goes to the connection's transport
(chronos/transport) without a coroutine: the fast one writes the frame into
nats-py's buffer and delivers PubAcks from the read loop; the stock one queues the
message for ``Client.publish`` in a writer task. When the fast one refuses
(disconnected, or at nats-py's pending-bytes limit), awaitable calls use
``Client.publish`` themselves and synchronous ones return False, so nats-py's
reconnect buffering and flush rules apply. A message over the server's
``max_payload`` (headers included) fails its own call with PayloadTooLargeError,
whatever the transport, instead of reaching the server, which would close the
connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import deque
from typing import Any, Callable, Sequence

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .errors import PayloadTooLargeError
from .transport import Transport, parse_headers, select_transport


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    count: int = 0  # an atomic batch's commit: how many it stored (``seq`` is the last one's)


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Reply(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    count: int = 0
    error: _ApiError | None = None


_reply_decoder = msgspec.json.Decoder(_Reply)
log = logging.getLogger(__name__)

# Called with (PubAck, None) or (None, exception) when a publish sent with publish_cb settles.
AckCallback = Callable[["PubAck | None", "BaseException | None"], None]

# JetStream error codes we act on.
WRONG_LAST_SEQUENCE = 10071
ATOMIC_DISABLED = 10174  # the stream lacks allow_atomic (made before this version)
# The server refuses an atomic batch of more messages than this (10199).
MAX_BATCH = 1000
REPLY_GRACE = 0.5  # seconds after a reconnect before the PubAcks lost with the connection are failed
_HDR_START = b"NATS/1.0\r\n"


class PublishError(Exception):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


SYNC_NAME_PREFIX = "chronos-embedded-sync-"  # + the sync mode: the name chronos/embedded.py gives its server


def embedded_server_name(sync: str) -> str:
    """The ``server_name`` an embedded server started with a known ``sync_interval`` announces."""
    return f"{SYNC_NAME_PREFIX}{sync}-{os.getpid()}"


def known_sync(nc: Any) -> str | None:
    """The server's fsync mode when it told us (an embedded server: ``"always"`` or an interval), else None.

    No client API carries ``sync_interval`` (durability.py); the servers chronos starts itself
    (``chronos dev``, the benchmarks, tests that pick a mode) put it in their ``server_name``,
    which reaches every client in the INFO handshake."""
    info = getattr(nc, "_server_info", None) or {}
    name = str(info.get("server_name") or "")
    if not name.startswith(SYNC_NAME_PREFIX):
        return None
    return name[len(SYNC_NAME_PREFIX):].rsplit("-", 1)[0] or None


def atomic_batches_for(setting: bool | str, nc: Any) -> bool:
    """Whether writes go in atomic batches (``nats.atomic_batches``: true, false or "auto").

    Measured (docs/durability.md, bench throughput): under ``sync_interval: always`` a batch
    costs one fsync where separate writes cost one each, so batching is what keeps a durable
    server fast (about 5x); under lazy fsync a batch costs the server more CPU per message than
    separate publishes (18-38 us against 11-13 us) and its commit takes milliseconds, about
    15-25% of end-to-end throughput. Both are equally correct: a batch is all or nothing, and
    every caller falls back to the per-message path.

    "auto" batches unless the server is known to fsync lazily. Unknown (any server chronos did
    not start: the client cannot read ``sync_interval`` without a system-account user or a
    monitoring URL, durability.py) counts as ``always``: that is what the shipped deploy
    configs and deploy/README.md prescribe, and guessing wrong that way costs a lazy server
    about a fifth of its speed, while guessing wrong the other way costs a durable one four
    fifths. An operator who runs lazy fsync on purpose sets ``false``.
    """
    from .config import atomic_batches_mode

    mode = atomic_batches_mode(setting)
    if mode != "auto":
        return bool(mode)
    sync = known_sync(nc)
    return sync is None or sync == "always"


class Publisher:
    def __init__(self, nc: NATS, window: int = 4096, timeout: float = 10.0, *,
                 transport: Transport | None = None, atomic: bool | str = True) -> None:
        self._nc = nc
        # Atomic batches wanted (atomic_batches_for): when False, publish_batch_cb sends nothing
        # and every caller takes its per-message path.
        self.atomic = atomic_batches_for(atomic, nc)
        self._transport = transport or select_transport("auto", nc)
        self._send = self._transport.send_nowait
        self._window = window
        self._timeout = timeout
        self._prefix = ""
        self._counter = 0
        # A future for publish(), a callback for publish_cb(); both are settled by _resolve.
        # Keyed by the reply token (a counter, so insertion order is send order: the sweeper
        # finds what is overdue from the front without a timestamp per message).
        self._pending: dict[bytes, asyncio.Future[PubAck] | AckCallback] = {}
        self._space = asyncio.Event()
        self._space.set()
        self._room_below = window  # _space is set once fewer than this are in flight
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Tokens up to this were sent before the connection dropped: their PubAcks are gone with
        # it (a reply goes to the connection that asked). Failed soon after the reconnect, not at
        # ``timeout``: a worker then writes its finished jobs' outcomes again at once, before a
        # restarted server hands their messages to another worker (bench crash --kill server).
        self._lost_upto = 0
        self._back_at: float | None = None
        self.lost_on_reconnect = 0  # PubAcks failed that way
        # Bound at start(): asyncio.get_running_loop() costs a getpid() syscall per call on 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        if self._sub is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._prefix = f"{self._nc.new_inbox()}."
        self._prefix_b = self._prefix.encode()
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply, pending_msgs_limit=-1,
                                             pending_bytes_limit=-1)
        self._transport.add_error_handler(self._on_send_error)
        self._install_fast_path()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def connection_lost(self) -> None:
        """The connection dropped (nats-py's disconnected callback): what is awaiting its PubAck now
        will not get it. Those still pending ``REPLY_GRACE`` after the reconnect are failed (a
        publish nats-py held back and sent on the new connection is answered within it)."""
        self._lost_upto = self._counter
        self._back_at = None

    def fail_pending(self) -> int:
        """Fail every PubAck awaited now (a worker's drain, its grace over, with the server away:
        what waits for it settles at once instead of at ``timeout``). How many."""
        pending = list(self._pending.values())
        self._pending.clear()
        for entry in pending:
            _settle(entry, None, nats.errors.ConnectionReconnectingError())
        self._space.set()
        return len(pending)

    def _fail_lost(self, now: float) -> bool:
        """Fail the PubAcks lost with the last connection, once it is back and the grace is over."""
        if not self._lost_upto or not self._nc.is_connected:
            return False
        if self._back_at is None:
            self._back_at = now
        if now - self._back_at < REPLY_GRACE:
            return False
        lost = [token for token in self._pending if int(token) <= self._lost_upto]
        self._lost_upto = 0
        for token in lost:
            entry = self._pending.pop(token, None)
            if entry is not None:
                self.lost_on_reconnect += 1
                _settle(entry, None, nats.errors.ConnectionReconnectingError())
        return bool(lost)

    async def _sweep(self) -> None:
        """Fail futures whose PubAck never came (server gone); one timer for all, not one per message."""
        loop = asyncio.get_running_loop()
        marks: deque[tuple[float, int]] = deque()  # (time, last token sent by then)
        every = min(1.0, self._timeout / 4)
        last = loop.time()
        while True:
            # A connection lost: ticks of 0.1 s until its PubAcks are failed, soon after the reconnect.
            await asyncio.sleep(0.1 if self._lost_upto else every)
            now = loop.time()
            if self._fail_lost(now):
                self._space.set()
            if now - last < every:
                continue
            last = now
            marks.append((now, self._counter))
            overdue = 0  # every token up to this one was sent at least `timeout` ago
            while marks and marks[0][0] <= now - self._timeout:
                overdue = marks.popleft()[1]
            expired = []
            for token in self._pending:
                if int(token) > overdue:
                    break
                expired.append(token)
            for token in expired:
                entry = self._pending.pop(token, None)
                if entry is not None:
                    _settle(entry, None, nats.errors.TimeoutError())
            if expired:
                self._space.set()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        try:  # what the transport still holds (acks, commits) goes out before the connection drains
            await asyncio.wait_for(self._transport.flush_queued(), self._timeout)
        except Exception as exc:
            log.debug("flushing queued messages: %s", exc)
        self._transport.remove_error_handler(self._on_send_error)
        if self._sub is not None:
            self._transport.undeliver(self._sub)
            try:
                await self._sub.unsubscribe()
            except Exception:  # connection already closed; nothing left to release server-side
                pass
            self._sub = None
        pending = list(self._pending.values())
        self._pending.clear()
        for entry in pending:
            _settle(entry, None, nats.errors.ConnectionClosedError())

    @property
    def nc(self) -> NATS:
        return self._nc

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def window(self) -> int:
        return self._window

    async def wait_for_room(self, below: int) -> None:
        """Wait until fewer than ``below`` PubAcks are outstanding (bulk senders pace on this)."""
        while len(self._pending) >= below:
            self._space.clear()
            self._room_below = below
            await self._space.wait()

    def _install_fast_path(self) -> None:
        """PubAcks resolve from the read loop where the transport offers it; else ``_on_reply`` does."""
        cut = len(self._prefix_b)
        resolve = self._resolve
        pending = self._pending
        decode = _reply_decoder.decode

        def on_ack(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            # The common case inline (a callback and a plain PubAck): two calls less per message.
            token = subject[cut:]
            entry = pending.get(token)
            if entry is not None and data and not isinstance(entry, asyncio.Future) and b'"error"' not in data:
                del pending[token]
                if len(pending) < self._room_below:
                    self._space.set()
                try:
                    reply_ = decode(data)
                except msgspec.DecodeError:
                    entry(None, PublishError(0, 0, f"unreadable PubAck: {data[:80]!r}"))
                    return True
                entry(PubAck(reply_.stream, reply_.seq, reply_.duplicate, reply_.count), None)
                return True
            resolve(token, data)
            return True

        assert self._sub is not None
        self._transport.deliver_raw(self._sub, on_ack)

    def _on_send_error(self, reply: bytes, exc: BaseException) -> None:
        if reply.startswith(self._prefix_b):
            entry = self._pending.pop(reply[len(self._prefix_b):], None)
            if len(self._pending) < self._room_below:
                self._space.set()
            if entry is not None:
                _settle(entry, None, exc)

    async def _on_reply(self, msg: Msg) -> None:
        self._resolve(msg.subject[len(self._prefix) :].encode(), msg.data)

    def _resolve(self, token: bytes, data: bytes) -> None:
        entry = self._pending.pop(token, None)
        if len(self._pending) < self._room_below:
            self._space.set()
        if entry is None:
            return
        if not data:
            # A 503 "no responders" status: no stream listens on the subject.
            _settle(entry, None, nats.js.errors.NoStreamResponseError())
            return
        try:
            reply = _reply_decoder.decode(data)
        except msgspec.DecodeError:
            _settle(entry, None, PublishError(0, 0, f"unreadable PubAck: {data[:80]!r}"))
            return
        if reply.error is not None:
            e = reply.error
            _settle(entry, None, PublishError(e.code, e.err_code, e.description))
        else:
            _settle(entry, PubAck(reply.stream, reply.seq, reply.duplicate, reply.count), None)

    def _too_large(self, subject: str, payload: bytes, hdr: bytes | None) -> PayloadTooLargeError | None:
        size = len(payload) + (len(hdr) if hdr else 0)
        limit = self._nc.max_payload
        if size > limit > 0:
            return PayloadTooLargeError(f"message to {subject} is {size} bytes (headers included); "
                                        f"the server's max_payload is {limit}")
        return None

    def publish_cb(self, subject: str, payload: bytes, hdr: bytes | None, callback: AckCallback) -> bool:
        """Send now and call ``callback`` when the PubAck (or a failure) arrives, from the read loop.

        No future and no task wake-up per message: the worker commits a finished job this way.
        False, with nothing sent, when the window is full or the connection is down; the caller
        then takes the awaitable path (``publish``), which waits for room or a reconnect.
        """
        if len(self._pending) >= self._window:
            return False
        if len(payload) + (len(hdr) if hdr else 0) > self._nc.max_payload:
            return False  # the awaitable path raises PayloadTooLargeError
        self._counter += 1
        token = b"%d" % self._counter
        if not self._send(subject, self._prefix_b + token, payload, hdr):
            return False
        self._pending[token] = callback
        return True

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None, *, hdr: bytes | None = None
    ) -> asyncio.Future[PubAck]:
        """Send now; return a future for the PubAck. Waits only when the window is full.
        Raises PayloadTooLargeError (nothing sent) for a message over the server's max_payload."""
        if headers and hdr is None:
            hdr = encode_headers(headers)
        too_large = self._too_large(subject, payload, hdr)
        if too_large is not None:
            raise too_large
        while len(self._pending) >= self._window:
            self._space.clear()
            self._room_below = self._window
            await self._space.wait()
        self._counter += 1
        token = b"%d" % self._counter
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[PubAck] = loop.create_future()
        self._pending[token] = fut
        if not self._send(subject, self._prefix_b + token, payload, hdr):
            try:
                await self._nc.publish(subject, payload, reply=self._prefix + token.decode(),
                                       headers=headers or parse_headers(hdr))
            except BaseException:
                self._pending.pop(token, None)  # never sent: nothing will settle it
                if len(self._pending) < self._room_below:
                    self._space.set()
                raise
        return fut

    def publish_batch_cb(self, items: Sequence[tuple[str, bytes, bytes | None]], callback: AckCallback) -> bool:
        """Send ``items`` (subject, payload, header block or None) as one atomic batch to one stream
        and call ``callback`` with the commit's PubAck (``seq`` is the last message's, ``count``
        how many; the batch's messages get consecutive sequences) or the batch's error.

        Under ``sync_interval: always`` a batch costs about one fsync where separate publishes cost
        one each (NATS-FACTS.md). All or nothing: one failed compare-and-set or duplicate message
        id fails the whole batch and nothing is stored, so callers fall back to sending each alone.
        Every message but the last is a plain publish; the last carries ``Nats-Batch-Commit`` and
        the reply subject. False, nothing committed, when the window is full, the connection is
        down or the transport refuses part way: a partly sent batch is never committed and the
        server drops it (callers then take their per-message path).
        """
        n = len(items)
        if not self.atomic or not 0 < n <= MAX_BATCH or len(self._pending) >= self._window:
            return False
        limit = self._nc.max_payload
        batch_id = _next_batch()
        send = self._send
        for i, (subject, payload, hdr) in enumerate(items, 1):
            extra = hdr[len(_HDR_START):-2] if hdr and hdr.startswith(_HDR_START) else b""
            last = i == n
            block = b"%sNats-Batch-Id: %s\r\nNats-Batch-Sequence: %d\r\n%s%s\r\n" % (
                _HDR_START, batch_id, i, extra, b"Nats-Batch-Commit: 1\r\n" if last else b"")
            if len(payload) + len(block) > limit:
                return False
            if not last:
                if not send(subject, b"", payload, block):
                    return False
                continue
            self._counter += 1
            token = b"%d" % self._counter
            if not send(subject, self._prefix_b + token, payload, block):
                return False
            self._pending[token] = callback
        return True

    def send_nowait(self, subject: str, payload: bytes) -> bool:
        """Fire-and-forget publish from synchronous code; False (nothing sent) while disconnected."""
        return self._send(subject, b"", payload, None)

    async def send(self, subject: str, payload: bytes) -> None:
        """Fire-and-forget publish (acks, naks, in-progress), through the same lean path."""
        if not self.send_nowait(subject, payload):
            await self._nc.publish(subject, payload)

    async def request(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> PubAck:
        fut = await self.publish(subject, payload, headers)
        return await self.wait(fut)

    async def wait(self, fut: asyncio.Future[PubAck]) -> PubAck:
        """The sweeper fails a future after ``timeout``, so a plain await is bounded."""
        return await fut

    async def flush(self) -> None:
        await self._nc.flush()


_B36 = b"0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> bytes:
    out = bytearray()
    while True:
        n, d = divmod(n, 36)
        out.append(_B36[d])
        if not n:
            return bytes(out)


# Every message of a batch keeps its Nats-Batch-Id header in the stream (the server stores and
# delivers it), so the id is short: a random per-process prefix (7 base-36 digits, 36 bits) and
# a counter, about 9 characters where 16 hex digits were (the header names are the server's).
_batch_prefix = _base36(int.from_bytes(os.urandom(5), "big") >> 4).ljust(7, b"0")
_batch_ids = itertools.count(1)


def _next_batch() -> bytes:
    """A batch id unique per process run (the server allows 64 characters)."""
    return _batch_prefix + _base36(next(_batch_ids))


def _settle(entry: asyncio.Future[PubAck] | AckCallback, ack: PubAck | None, exc: BaseException | None) -> None:
    if isinstance(entry, asyncio.Future):
        if not entry.done():
            if exc is None:
                entry.set_result(ack)  # type: ignore[arg-type]
            else:
                entry.set_exception(exc)
        return
    try:
        entry(ack, exc)
    except Exception:  # a callback's bug must not break the read loop or the sweeper
        log.exception("PubAck callback failed")


# What a write or request raises for want of a connection (a timeout: no answer in time, the
# server gone or restarting). Whether it landed is unknown; a compare-and-set retry tells.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError, nats.errors.NoServersError,
    nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError, nats.errors.ConnectionDrainingError,
    nats.errors.NoRespondersError, ConnectionError, TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """No answer, or a server not ready to answer (a 503 while JetStream starts or a stream
    elects its leader): the same write or read may succeed once the server is back."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, PublishError):
        return exc.code == 503
    return isinstance(exc, (nats.js.errors.ServiceUnavailableError, nats.js.errors.NoStreamResponseError))


def is_wrong_last_sequence(exc: BaseException) -> bool:
    if isinstance(exc, PublishError):
        return exc.err_code == WRONG_LAST_SEQUENCE
    if isinstance(exc, nats.js.errors.APIError):
        return getattr(exc, "err_code", None) == WRONG_LAST_SEQUENCE
    return False


def cas_header(revision: int) -> bytes:
    return b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: %d\r\n\r\n" % revision


def encode_headers(headers: dict[str, str]) -> bytes:
    """The NATS/1.0 header block; header values here are ours (numbers, ids), never user newlines."""
    return b"NATS/1.0\r\n" + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items()) + b"\r\n"


def headers_for_cas(revision: int, extra: dict[str, Any] | None = None) -> dict[str, str]:
    hdr = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
    if extra:
        hdr.update({k: str(v) for k, v in extra.items()})
    return hdr


class Acks:
    """JetStream acknowledgements sent without a round trip.

    Failures are logged, not raised: if an ack is lost the server redelivers,
    and the redelivery finds the record terminal and is acked then.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._pub = publisher

    async def _send(self, msg: Msg, payload: bytes) -> None:
        if not msg.reply:
            return
        try:
            await self._pub.send(msg.reply, payload)
        except Exception as exc:
            log.debug("ack %r failed: %s", payload[:5], exc)

    async def ack(self, msg: Msg) -> None:
        await self._send(msg, b"+ACK")

    def ack_nowait(self, msg: Msg) -> None:
        """Ack from synchronous code (a PubAck callback); falls back to a task while disconnected."""
        if msg.reply and not self._pub.send_nowait(msg.reply, b"+ACK"):
            task = asyncio.get_running_loop().create_task(self.ack(msg))
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def nak(self, msg: Msg, delay: float = 0.0) -> None:
        if delay > 0:
            await self._send(msg, b'-NAK {"delay": %d}' % int(delay * 1e9))
        else:
            await self._send(msg, b"-NAK")

    async def term(self, msg: Msg) -> None:
        await self._send(msg, b"+TERM")

    async def in_progress(self, msg: Msg) -> None:
        await self._send(msg, b"+WPI")


_background: set[asyncio.Task[None]] = set()  # strong references until done


def delivery_info(msg: Msg) -> tuple[int, float]:
    """(times JetStream delivered this message, when it was stored in epoch seconds), from its ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``, or the
    12+ token form with domain and account hash in front. One split, no Metadata object.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[4]), int(tokens[7]) / 1e9
    if len(tokens) >= 12:
        return int(tokens[6]), int(tokens[9]) / 1e9
    meta = msg.metadata
    return meta.num_delivered, meta.timestamp.timestamp()  # nats-py gives a datetime


def delivery_count(msg: Msg) -> int:
    return delivery_info(msg)[0]


def delivery_timestamp(msg: Msg) -> float:
    return delivery_info(msg)[1]
