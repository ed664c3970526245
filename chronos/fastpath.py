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
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS

Handler = Callable[[bytes, bytes, bytes, "bytes | None"], bool]

_ATTR = "_chronos_fast_handlers"
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
        nc._process_msg = process_msg  # type: ignore[method-assign]
    handlers[sid] = handler
    return True


def unregister(nc: NATS, sid: int | None) -> None:
    handlers: dict[int, Handler] | None = getattr(nc, _ATTR, None)
    if handlers is not None and sid is not None:
        handlers.pop(sid, None)
