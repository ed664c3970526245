"""Pull requests on one durable consumer, through the raw ``CONSUMER.MSG.NEXT`` API.

nats-py's ``fetch`` waits for each batch inside one call and cannot leave a long
poll open while other consumers are asked; the worker needs both to serve four
priorities from one pool of slots. A Puller keeps at most one request open and
counts what that request may still deliver (``outstanding``): those are slots
reserved for it, so the worker never holds more work than it can run.

A request can be lost without an answer (the server went away after taking it, or the
request went into a dying socket). It is then released by its local deadline
(``expire``, which the worker checks whatever its free count) or at once on a
reconnect (``reset``). Each request has its own reply subject (``<inbox>.<n>``), so
a late status of a released request (408, 409) is ignored rather than ending the
request open now. A job message carries its own subject, not the inbox, so a late
job cannot be told apart that way: with no request open it goes to ``on_stale``
(the worker naks it); with one open it counts against that one (an overshoot of at
most the lost request's batch, once, after a server came back).

A request refused outright (503: no consumer answers, e.g. one deleted by an admin; 409:
deleted, or over a server limit) rests the puller: it is not asked again for 0.1 s, doubling
to 2 s while the refusals go on, and back to none on the first delivery or ordinary end. Without
that, the fetch loop asked again at once: about 20 refusals in 20 ms, each a warning.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..connection import Connection

log = logging.getLogger(__name__)

OnMessage = Callable[[Msg, "Puller"], None]
OnStale = Callable[[Msg], None]


class Puller:
    def __init__(self, conn: Connection, priority: str, queue: str, on_message: OnMessage,
                 on_idle: Callable[[], None], on_stale: OnStale | None = None) -> None:
        self.conn = conn
        self.priority = priority
        self.queue = queue
        self.consumer = conn.names.consumer_name(priority, queue)
        self._next_subject = conn.names.consumer_next(self.consumer)
        self._on_message = on_message
        self._on_idle = on_idle
        self._on_stale = on_stale
        self.inbox = conn.nc.new_inbox()
        self._n = 0
        self._reply = f"{self.inbox}.0"  # the reply subject of the current (or last) request
        self.outstanding = 0
        self.lost = 0  # requests released without an answer (deadline passed, or a reconnect)
        self.delivered = 0  # messages delivered for the current/last request
        self.request_done = asyncio.Event()
        self.request_done.set()
        self._deadline = 0.0
        self._sub: Subscription | None = None
        self._rest = 0.0  # the current back-off after refused requests (0: none)
        self.rest_until = 0.0  # loop time before which it is not asked (see the module doc)
        self.refused = 0  # requests refused (503, 409) in all

    async def start(self) -> None:
        self._sub = await self.conn.nc.subscribe(f"{self.inbox}.*", cb=self._on_msg)
        # Job messages straight from the read loop where the transport offers it; status replies
        # (and everything on the stock transport) take ``_on_msg``.
        self.conn.transport.deliver_plain(self._sub, self._take)

    async def stop(self) -> None:
        if self._sub is not None:
            self.conn.transport.undeliver(self._sub)
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # connection closing; the server drops the interest anyway
                log.debug("puller unsubscribe: %s", exc)
            self._sub = None

    @property
    def busy(self) -> bool:
        """A request is open (or presumed open until its deadline)."""
        if self.outstanding > 0:
            self.expire(asyncio.get_running_loop().time())
        return self.outstanding > 0

    @property
    def deadline(self) -> float:
        """When the open request is presumed lost (loop time); infinite with none open."""
        return self._deadline if self.outstanding > 0 else float("inf")

    def expire(self, now: float) -> None:
        """Release an open request past its deadline: no answer came, so it was lost."""
        if self.outstanding > 0 and now > self._deadline:
            log.warning("pull request on %s got no answer by its deadline; releasing its %d slots",
                        self.consumer, self.outstanding)
            self.lost += 1
            self._end_request()

    def reset(self) -> None:
        """The connection was re-established: a request open before is gone with the old one."""
        if self.outstanding > 0:
            log.info("pull request on %s released after a reconnect (%d slots)", self.consumer, self.outstanding)
            self.lost += 1
            self._end_request()

    async def request(self, batch: int, *, no_wait: bool, expires: float) -> None:
        """Open a request for up to ``batch`` messages (``no_wait``: answer at once, even with none)."""
        self._n += 1
        self._reply = reply = f"{self.inbox}.{self._n}"
        self.outstanding = batch
        self.delivered = 0
        self.request_done.clear()
        self._deadline = asyncio.get_running_loop().time() + expires + 2.0
        body: dict[str, object] = {"batch": batch}
        if no_wait:
            body["no_wait"] = True
        else:
            body["expires"] = int(expires * 1e9)
        await self.conn.nc.publish(self._next_subject, json.dumps(body).encode(), reply=reply)

    def _end_request(self) -> None:
        self.outstanding = 0
        self.request_done.set()
        self._on_idle()

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if headers and "Status" in headers and not msg.data:
            if msg.subject != self._reply or self.outstanding <= 0:
                return  # the end of a request already released: not the open one's
            status = headers.get("Status")
            if status == "100":  # idle heartbeat
                return
            if status in ("404", "408"):
                self._rest = 0.0
            else:
                self.refused += 1
                first = self._rest == 0.0
                self._rest = min(2.0, self._rest * 2 or 0.1)
                self.rest_until = asyncio.get_running_loop().time() + self._rest
                log.log(logging.WARNING if first else logging.DEBUG, "pull on %s ended with %s %s; asking again in "
                        "%.1fs", self.consumer, status, headers.get("Description", ""), self._rest)
            self._end_request()
            return
        self._take(msg)

    @property
    def resting(self) -> bool:
        """Its last request was refused and its back-off has not run out (see the module doc)."""
        return self._rest > 0.0 and asyncio.get_running_loop().time() < self.rest_until

    def _take(self, msg: Msg) -> None:
        if self.outstanding <= 0:
            # Delivered for a request released as lost, none open now: no slot is reserved for it.
            if self._on_stale is not None:
                self._on_stale(msg)
            return
        self.delivered += 1
        self.outstanding -= 1
        self._rest = 0.0
        self._on_message(msg, self)
        if self.outstanding <= 0:
            self._end_request()
