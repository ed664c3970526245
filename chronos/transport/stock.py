"""The stock transport: nats-py's public API only (see the package docstring).

Every message reaches its subscription's callback and every publish goes through
``Client.publish``; chronos works unchanged, with more per-message overhead.
"""

from __future__ import annotations

import weakref
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from . import PlainHandler, RawHandler


class StockTransport:
    name = "stock"

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
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

    def write_nowait(self, frame: bytes, payload_size: int) -> bool:
        return False

    def iterator_subscriptions(self) -> list[Subscription]:
        return list(self._iterators)
