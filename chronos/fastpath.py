"""Deliver hot subscriptions straight from nats-py's protocol parser.

nats-py turns every incoming message into a ``Msg``, parses its headers, puts it
on the subscription's queue and wakes the subscription's task to run the
callback. For the two message kinds chronos receives per job (PubAcks to the
publisher's inbox, job messages to a worker's pull inbox) that machinery was
the largest CPU cost left: about 38 % of a bulk submit (py-spy). A handler
registered here runs synchronously inside the read loop instead.

A handler gets ``(subject, reply, data, headers)`` as raw bytes and returns True
when it took the message; False sends it down nats-py's normal path (so rare
cases, such as status messages with headers, keep the ordinary callback). This
leans on nats-py's private ``_process_msg(sid, subject, reply, data, headers)``
(nats-py is pinned); without it nothing is installed and the ordinary
callbacks do all the work.

The protocol parser itself was next: nats-py's ``Parser.parse`` tries a regular
expression per control line and awaits a coroutine per message, 14 % of a
worker's CPU (py-spy, prequeued drain). ``_FastParser`` reads ``MSG``/``HMSG``
lines with ``find`` and ``split`` and calls a registered handler directly; any
other line (PING, PONG, INFO, +OK, -ERR) goes to the stock parser, which keeps
the same state fields, so the two can hand over at any point. It is installed
by switching the class of the connection's parser object, so state held in the
middle of a message survives the switch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.errors import ProtocolError
from nats.protocol import parser as _stock


Handler = Callable[[bytes, bytes, bytes, "bytes | None"], bool]

_ATTR = "_chronos_fast_handlers"
_STOCK = "_chronos_stock_process_msg"  # nats-py's own, for messages a handler declines
log = logging.getLogger(__name__)


def register(nc: NATS, sid: int | None, handler: Handler) -> bool:
    """Route messages for subscription ``sid`` to ``handler``. False if nats-py offers no hook."""
    if sid is None:
        return False
    handlers: dict[int, Handler] | None = getattr(nc, _ATTR, None)
    if handlers is None:
        original = getattr(nc, "_process_msg", None)
        if original is None:
            return False
        handlers = {}
        table = handlers

        async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            handler = table.get(sid)
            if handler is not None:
                try:
                    if handler(subject, reply, data, headers):
                        return
                except Exception:
                    # Never let one message end nats-py's read loop: that leaves a connection that
                    # looks alive and reads nothing. A job message dropped here is redelivered
                    # after ack_wait; a lost PubAck times out in the publisher's sweeper.
                    log.exception("fast path handler for sid %s failed on %r", sid, subject[:120])
                    return
            await original(sid, subject, reply, data, headers)

        setattr(nc, _ATTR, handlers)
        setattr(nc, _STOCK, original)
        nc._process_msg = process_msg  # type: ignore[method-assign]
        ps = getattr(nc, "_ps", None)
        if type(ps) is _stock.Parser:
            ps.__class__ = _FastParser
    handlers[sid] = handler
    return True


def unregister(nc: NATS, sid: int | None) -> None:
    handlers: dict[int, Handler] | None = getattr(nc, _ATTR, None)
    if handlers is not None and sid is not None:
        handlers.pop(sid, None)


class _FastParser(_stock.Parser):
    """nats-py's parser with a fast lane for ``MSG``/``HMSG`` (see the module docstring)."""

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf += data
        nc = self.nc
        table: dict[int, Handler] = getattr(nc, _ATTR, None) or {}
        pos = 0
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
