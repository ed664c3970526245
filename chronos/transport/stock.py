"""The stock transport: nats-py's public API only (see the package docstring).

Every message reaches its subscription's callback, and every publish goes through
``Client.publish``: ``send_nowait`` queues it for one writer task (started when the
queue fills, gone when it is empty), so synchronous callers (PubAck callbacks, acks)
keep their order and their pipelining without touching nats-py's internals.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from . import PlainHandler, RawHandler, SendErrorHandler, parse_headers

log = logging.getLogger(__name__)


class StockTransport:
    name = "stock"

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._queue: deque[tuple[str, bytes, bytes, bytes | None]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._error_handlers: list[SendErrorHandler] = []
        # Subscriptions made without a callback, seen through the public subscribe (JetStream's
        # subscribe calls it too); dropped here once nothing else holds them.
        self._iterators: weakref.WeakSet[Subscription] = weakref.WeakSet()
        subscribe = nc.subscribe
        iterators = self._iterators

        async def tracked(subject: str, *args: Any, **kwargs: Any) -> Subscription:
            sub = await subscribe(subject, *args, **kwargs)
            cb = kwargs["cb"] if "cb" in kwargs else (args[1] if len(args) > 1 else None)
            if cb is None:
                iterators.add(sub)
            return sub

        nc.subscribe = tracked  # type: ignore[method-assign]

    def deliver_raw(self, sub: Subscription, handler: RawHandler) -> bool:
        return False

    def deliver_plain(self, sub: Subscription, handler: PlainHandler) -> bool:
        return False

    def undeliver(self, sub: Subscription) -> None:
        pass

    def send_nowait(self, subject: str, reply: bytes, payload: bytes, hdr: bytes | None) -> bool:
        if self._nc.is_closed:
            return False
        self._queue.append((subject, reply, payload, hdr))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        return True

    async def _write(self) -> None:
        queue, nc = self._queue, self._nc
        try:
            while queue:
                subject, reply, payload, hdr = queue.popleft()
                try:
                    await nc.publish(subject, payload, reply=reply.decode(), headers=parse_headers(hdr))
                except Exception as exc:  # closed, draining, reconnect buffer full: that message fails
                    self._failed(reply, exc)
        finally:
            self._writer = None
            while queue:  # cancelled (the loop is ending): nothing left will be sent
                self._failed(queue.popleft()[1], asyncio.CancelledError())

    def _failed(self, reply: bytes, exc: BaseException) -> None:
        if not reply:
            log.debug("send failed: %s", exc)
            return
        for handler in list(self._error_handlers):
            try:
                handler(reply, exc)
            except Exception:
                log.exception("send error handler failed")

    def add_error_handler(self, handler: SendErrorHandler) -> None:
        self._error_handlers.append(handler)

    def remove_error_handler(self, handler: SendErrorHandler) -> None:
        if handler in self._error_handlers:
            self._error_handlers.remove(handler)

    async def flush_queued(self) -> None:
        writer = self._writer
        if writer is not None:
            await asyncio.shield(writer)

    def iterator_subscriptions(self) -> list[Subscription]:
        return list(self._iterators)
