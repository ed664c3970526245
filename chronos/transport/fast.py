"""The fast transport: hot subscriptions straight from nats-py's protocol parser, frames
straight into its outgoing buffer. Every nats-py private this needs is named in ``missing``.

nats-py turns every incoming message into a ``Msg``, parses its headers, puts it
on the subscription's queue and wakes the subscription's task to run the
callback. For the two message kinds chronos receives per job (PubAcks to the
publisher's inbox, job messages to a worker's pull inbox) that machinery was
the largest CPU cost left: about 38 % of a bulk submit (py-spy). A handler
registered here runs synchronously inside the read loop instead.

A handler gets ``(subject, reply, data, headers)`` as raw bytes and returns True
when it took the message; False sends it down nats-py's normal path (so rare
cases, such as status messages with headers, keep the ordinary callback). This
wraps nats-py's private ``_process_msg(sid, subject, reply, data, headers)``.

The protocol parser itself was next: nats-py's ``Parser.parse`` tries a regular
expression per control line and awaits a coroutine per message, 14 % of a
worker's CPU (py-spy, prequeued drain). ``_FastParser`` reads ``MSG``/``HMSG``
lines with ``find`` and ``split`` and calls a registered handler directly; any
other line (PING, PONG, INFO, +OK, -ERR) goes to the stock parser, which keeps
the same state fields, so the two can hand over at any point. It is installed
by switching the class of the connection's parser object, so state held in the
middle of a message survives the switch.

Writing: ``Client.publish`` is a coroutine that re-encodes headers and checks the
subject per call. ``write_nowait`` appends a ready frame to nats-py's ``_pending``
buffer and wakes its flusher, as ``Client.publish`` does, keeping its rules: only
while connected (reconnect buffering stays nats-py's), never past ``pending_size``
(nats-py would force a flush there; the caller's awaitable path does it), and the
``out_msgs``/``out_bytes`` stats. Messages a handler takes count in ``in_msgs``/``in_bytes``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ProtocolError
from nats.protocol import parser as _stock

from . import PlainHandler, RawHandler
from .stock import StockTransport

Handler = RawHandler

_ATTR = "_chronos_fast_handlers"
_STOCK = "_chronos_stock_process_msg"  # nats-py's own, for messages a handler declines
_CONNECTED = getattr(NATS, "CONNECTED", 1)
log = logging.getLogger(__name__)


def missing(nc: NATS) -> list[str]:
    """Every nats-py internal the fast transport uses that ``nc`` (or nats-py) lacks; empty: all there."""
    out = []
    for attr, kind in (("_process_msg", None), ("_status", None), ("_pending", list), ("_pending_data_size", int),
                       ("_max_pending_size", int), ("_flush_queue", asyncio.Queue), ("stats", dict)):
        value = getattr(nc, attr, None)
        if value is None or (kind is not None and not isinstance(value, kind)):
            out.append(f"Client.{attr}")
    if not hasattr(NATS, "CONNECTED"):
        out.append("Client.CONNECTED")
    ps = getattr(nc, "_ps", None)
    if type(ps) is not _stock.Parser and type(ps) is not _FastParser:
        out.append("Client._ps (a nats.protocol.parser.Parser)")
    else:
        for field in ("buf", "state", "needed", "header_needed", "msg_arg", "nc"):
            if not hasattr(ps, field):
                out.append(f"Parser.{field}")
    for const in ("AWAITING_CONTROL_LINE", "AWAITING_MSG_PAYLOAD", "MAX_CONTROL_LINE_SIZE"):
        if not hasattr(_stock, const):
            out.append(f"nats.protocol.parser.{const}")
    if "_client" not in {f.name for f in dataclasses.fields(Msg)}:
        out.append("Msg._client")
    code = getattr(Subscription.__init__, "__code__", None)
    if code is None or "_id" not in code.co_names:  # the sid, set in __init__ as self._id
        out.append("Subscription._id")
    return out


class FastTransport(StockTransport):
    name = "fast"

    def __init__(self, nc: NATS) -> None:
        super().__init__(nc)
        max_pending = nc._max_pending_size
        self._max_pending = max_pending if max_pending > 0 else float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        _install(nc)

    def deliver_raw(self, sub: Subscription, handler: RawHandler) -> bool:
        sid = getattr(sub, "_id", None)
        if not isinstance(sid, int):
            return False
        getattr(self._nc, _ATTR)[sid] = handler
        return True

    def deliver_plain(self, sub: Subscription, handler: PlainHandler) -> bool:
        nc = self._nc

        def raw(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            parsed = None
            if headers is not None:
                # A status (``NATS/1.0 404 ...``, 408, 409, 100) goes to the callback. Any other
                # header block is what the server stored with the message (an atomic batch's id and
                # sequence, a Nats-Msg-Id: every job message a bulk submit sends): read here, not
                # down nats-py's path (a Msg parsed, queued, and a task woken per job).
                parsed = _plain_headers(headers)
                if parsed is None:
                    return False
            handler(Msg(_client=nc, subject=subject.decode(), reply=reply.decode(), data=data, headers=parsed))
            return True

        return self.deliver_raw(sub, raw)

    def undeliver(self, sub: Subscription) -> None:
        getattr(self._nc, _ATTR).pop(getattr(sub, "_id", None), None)

    def send_nowait(self, subject: str, reply: bytes, payload: bytes, hdr: bytes | None) -> bool:
        if hdr:
            frame = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
                subject.encode(), reply, len(hdr), len(hdr) + len(payload), hdr, payload)
        elif reply:
            frame = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply, len(payload), payload)
        else:
            frame = b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
        return self.write_nowait(frame, len(payload))

    def write_nowait(self, frame: bytes, payload_size: int) -> bool:
        """Queue a ready PUB/HPUB frame in nats-py's outgoing buffer; False (nothing queued) while not
        connected (draining counts as not) or when it would pass nats-py's pending-bytes limit."""
        nc = self._nc
        if nc._status != _CONNECTED:
            return False
        size = nc._pending_data_size + len(frame)
        if size > self._max_pending:  # Client.publish would force a flush here: let the caller take it
            return False
        nc._pending.append(frame)
        nc._pending_data_size = size
        stats = nc.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += payload_size
        queue = nc._flush_queue
        if queue is not None and queue.empty():
            loop = self._loop
            if loop is None:  # bound once: get_running_loop() costs a getpid() per call on 3.11
                loop = self._loop = asyncio.get_running_loop()
            queue.put_nowait(loop.create_future())  # the flusher resolves it
        return True


def _install(nc: NATS) -> None:
    """Wrap ``_process_msg`` and switch the parser's class, once per connection."""
    if getattr(nc, _ATTR, None) is not None:
        return
    original = nc._process_msg
    table: dict[int, Handler] = {}
    stats = nc.stats

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        handler = table.get(sid)
        if handler is not None:
            try:
                if handler(subject, reply, data, headers):
                    stats["in_msgs"] += 1
                    stats["in_bytes"] += len(data)
                    return
            except Exception:
                # Never let one message end nats-py's read loop: that leaves a connection that
                # looks alive and reads nothing. A job message dropped here is redelivered
                # after ack_wait; a lost PubAck times out in the publisher's sweeper.
                log.exception("fast path handler for sid %s failed on %r", sid, subject[:120])
                return
        await original(sid, subject, reply, data, headers)  # type: ignore[arg-type]  # nats-py types it bytes, passes None

    setattr(nc, _ATTR, table)
    setattr(nc, _STOCK, original)
    nc._process_msg = process_msg  # type: ignore[method-assign]
    ps = nc._ps
    if type(ps) is _stock.Parser:
        ps.__class__ = _FastParser


_HDR_LINE = b"NATS/1.0\r\n"


def _plain_headers(block: bytes) -> dict[str, str] | None:
    """The headers of a message without a status line; None for a status message or a block this
    cannot read (not UTF-8: nats-py's own path reads it, reports it and still delivers the message;
    raising here dropped the job on every delivery until max_deliver, red-team finding)."""
    if not block.startswith(_HDR_LINE):
        return None
    out: dict[str, str] = {}
    try:
        for line in block[len(_HDR_LINE):].split(b"\r\n"):
            key, sep, value = line.partition(b":")
            if sep:
                out[key.strip().decode()] = value.strip().decode()
    except UnicodeDecodeError:
        return None
    return out


class _FastParser(_stock.Parser):
    """nats-py's parser with a fast lane for ``MSG``/``HMSG`` (see the module docstring)."""

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf += data
        nc = self.nc
        table: dict[int, Handler] = getattr(nc, _ATTR, None) or {}
        pos = 0
        taken = taken_bytes = 0  # into nc.stats once per read, not per message
        try:
            while pos < len(buf):
                if self.state == _stock.AWAITING_MSG_PAYLOAD:  # a payload that an earlier read cut short
                    arg = self.msg_arg
                    subject, sid, reply = arg["subject"], arg["sid"], arg["reply"]
                    hsize, needed = self.header_needed, self.needed
                else:
                    if buf.startswith(b"MSG ", pos):
                        head = 4
                    elif buf.startswith(b"HMSG ", pos):
                        head = 5
                    else:  # another op, or too few bytes to tell: the stock parser takes it from here
                        del buf[:pos]
                        pos = 0
                        await _stock.Parser.parse(self)
                        return
                    end = buf.find(b"\r\n", pos)
                    if end < 0:
                        if len(buf) - pos > _stock.MAX_CONTROL_LINE_SIZE:
                            raise ProtocolError("nats: control line too long")
                        break
                    args = bytes(buf[pos + head:end]).split()
                    try:
                        if head == 5:
                            hsize = int(args[-2])
                            del args[-2]
                        else:
                            hsize = 0
                        needed = int(args[-1])
                        subject, sid = args[0], int(args[1])
                        reply = args[2] if len(args) == 4 else b""
                    except (IndexError, ValueError):
                        raise ProtocolError("nats: malformed MSG") from None
                    pos = end + 2
                if len(buf) - pos < needed + 2:  # wait for the rest; the stock fields keep the place
                    self.msg_arg = {"subject": subject, "sid": sid, "reply": reply}
                    self.header_needed, self.needed = hsize, needed
                    self.state = _stock.AWAITING_MSG_PAYLOAD
                    break
                if hsize:
                    headers: bytes | None = bytes(buf[pos:pos + hsize])
                    payload = bytes(buf[pos + hsize:pos + needed])
                else:
                    headers = None
                    payload = bytes(buf[pos:pos + needed])
                pos += needed + 2
                if self.state != _stock.AWAITING_CONTROL_LINE:
                    self.state, self.header_needed = _stock.AWAITING_CONTROL_LINE, 0
                handler = table.get(sid)
                if handler is not None:
                    try:  # inline, not through _dispatch: one call less per message
                        if handler(subject, reply, payload, headers):
                            taken += 1
                            taken_bytes += needed - hsize
                            continue
                    except Exception:
                        log.exception("fast path handler failed on %r", subject[:120])
                        continue  # dropped: redelivered (job) or timed out by the sweeper (PubAck)
                del buf[:pos]
                pos = 0
                await getattr(nc, _STOCK, nc._process_msg)(sid, subject, reply, payload, headers)
                if self.buf is not buf:  # the connection was reset meanwhile
                    return
        finally:
            if pos and self.buf is buf:
                del buf[:pos]
            if taken:
                stats = nc.stats
                stats["in_msgs"] += taken
                stats["in_bytes"] += taken_bytes
