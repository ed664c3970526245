"""Pull requests on one durable consumer, through the raw ``CONSUMER.MSG.NEXT`` API.

nats-py's ``fetch`` waits for each batch inside one call and cannot leave a long
poll open while other consumers are asked; the worker needs both to serve four
priorities from one pool of slots. A Puller keeps at most one request open and
counts what that request may still deliver (``outstanding``): those are slots
reserved for it, so the worker never holds more work than it can run.
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


class Puller:
    def __init__(self, conn: Connection, priority: str, queue: str, on_message: OnMessage,
                 on_idle: Callable[[], None]) -> None:
        self.conn = conn
        self.priority = priority
        self.queue = queue
        self.consumer = conn.names.consumer_name(priority, queue)
        self._next_subject = conn.names.consumer_next(self.consumer)
        self._on_message = on_message
        self._on_idle = on_idle
        self.inbox = conn.nc.new_inbox()
        self.outstanding = 0
        self.delivered = 0  # messages delivered for the current/last request
        self.request_done = asyncio.Event()
        self.request_done.set()
        self._deadline = 0.0
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.conn.nc.subscribe(self.inbox, cb=self._on_msg)
        # Job messages (no headers) straight from the read loop where the transport offers it;
        # status and headed messages (and all of them on the stock transport) take ``_on_msg``.
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
        loop = asyncio.get_running_loop()
        if self.outstanding > 0 and loop.time() > self._deadline:
            log.debug("pull request on %s timed out locally; releasing %d slots", self.consumer, self.outstanding)
            self._end_request()
        return self.outstanding > 0

    async def request(self, batch: int, *, no_wait: bool, expires: float) -> None:
        """Open a request for up to ``batch`` messages (``no_wait``: answer at once, even with none)."""
        self.outstanding = batch
        self.delivered = 0
        self.request_done.clear()
        self._deadline = asyncio.get_running_loop().time() + expires + 2.0
        body: dict[str, object] = {"batch": batch}
        if no_wait:
            body["no_wait"] = True
        else:
            body["expires"] = int(expires * 1e9)
        await self.conn.nc.publish(self._next_subject, json.dumps(body).encode(), reply=self.inbox)

    def _end_request(self) -> None:
        self.outstanding = 0
        self.request_done.set()
        self._on_idle()

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if headers and "Status" in headers and not msg.data:
            status = headers.get("Status")
            if status == "100":  # idle heartbeat
                return
            if status not in ("404", "408"):
                log.warning("pull on %s ended with %s %s", self.consumer, status, headers.get("Description", ""))
            self._end_request()
            return
        self._take(msg)

    def _take(self, msg: Msg) -> None:
        self.delivered += 1
        self.outstanding -= 1
        self._on_message(msg, self)
        if self.outstanding <= 0:
            self._end_request()
