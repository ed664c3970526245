"""The one seam between chronos and nats-py: every use of nats-py's private state lives here.

The rest of chronos talks to nats-py through its public API, plus the few hooks below,
which a ``Transport`` provides. Two implementations:

- ``stock`` (stock.py): public API only. Raw delivery is refused (callers keep their
  subscription callback); ``send_nowait`` queues the message for a writer task that
  calls ``Client.publish`` in order, so callers stay pipelined. Correct with any nats-py.
- ``fast`` (fast.py): today's hot path. Hot subscriptions are delivered from inside
  nats-py's read loop (its ``_process_msg`` and a parser subclass), and frames go
  straight into its outgoing buffer (``_pending``, ``_flush_queue``). It keeps what
  ``Client.publish`` would do: the pending-bytes limit (a write that would pass it is
  refused, so the caller's awaitable path flushes), the connection's stats, and the
  connected check (``max_payload`` is checked by the Publisher for both).

``select_transport`` runs at connect: with ``nats.transport = "auto"`` it probes the
nats-py version and every attribute fast.py needs, and falls back to stock with one
warning per process when something is off. ``"fast"`` or ``"stock"`` forces one.

Imports point one way: this package imports nats-py and chronos' errors and config types,
nothing else of chronos.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import TYPE_CHECKING, Callable, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..config import TRANSPORTS
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Settings

# (subject, reply, payload, headers or None) -> True when the handler took the message.
RawHandler = Callable[[bytes, bytes, bytes, "bytes | None"], bool]
# A message that is not a status reply, built for the handler, from the read loop.
PlainHandler = Callable[[Msg], None]
# (the reply subject of a message that could not be sent, why)
SendErrorHandler = Callable[[bytes, BaseException], None]

CHOICES = TRANSPORTS
# nats-py releases (major.minor) whose internals fast.py was read and tested against.
TESTED_NATS_PY = ("2.16",)

log = logging.getLogger(__name__)
_warned: set[str] = set()
_ATTR = "_chronos_transport"  # the transport bound to a connection (one per nc)


class Transport(Protocol):
    """What chronos needs from a connection beyond nats-py's public API."""

    name: str  # "fast" or "stock"

    def deliver_raw(self, sub: Subscription, handler: RawHandler) -> bool:
        """Hand ``sub``'s messages to ``handler`` from the read loop. False: not offered, the
        subscription's callback gets every message."""

    def deliver_plain(self, sub: Subscription, handler: PlainHandler) -> bool:
        """Like ``deliver_raw`` for messages that are not status replies, given as a ``Msg`` (with
        their headers, if any); status replies (404, 408, 409, 100) still reach the subscription's
        callback."""

    def undeliver(self, sub: Subscription) -> None:
        """Stop what ``deliver_raw``/``deliver_plain`` started (before unsubscribing)."""

    def send_nowait(self, subject: str, reply: bytes, payload: bytes, hdr: bytes | None) -> bool:
        """Send a message without a coroutine, in call order (``reply`` and ``hdr`` may be empty).
        False, nothing sent: the caller must use ``Client.publish`` itself."""

    def add_error_handler(self, handler: SendErrorHandler) -> None:
        """``handler(reply, exc)`` hears of a message ``send_nowait`` accepted but could not send."""

    def remove_error_handler(self, handler: SendErrorHandler) -> None: ...

    async def flush_queued(self) -> None:
        """Return once everything ``send_nowait`` accepted is in nats-py's hands."""

    def iterator_subscriptions(self) -> list[Subscription]:
        """Live subscriptions made without a callback (read through ``sub.messages``)."""


def nats_py_version() -> str:
    try:
        return importlib.metadata.version("nats-py")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def probe(nc: NATS) -> tuple[list[str], str | None]:
    """(what the fast transport lacks on ``nc``, a version warning or None)."""
    from .fast import missing

    version = nats_py_version()
    untested = None
    if ".".join(version.split(".")[:2]) not in TESTED_NATS_PY:
        untested = f"nats-py {version} is not a version the fast transport was tested with ({', '.join(TESTED_NATS_PY)})"
    return missing(nc), untested


def server_version(nc: NATS) -> str:
    """The connected server's version as its INFO gave it ("2.15.1"); empty when unknown."""
    v = nc.connected_server_version
    if (v.major, v.minor, v.patch, v.prerelease) == (0, 0, 0, "unknown"):  # nats-py's "not known" value
        return ""
    text = f"{v.major}.{v.minor}.{v.patch}"
    if v.prerelease:
        text += f"-{v.prerelease}"
    if v.build:
        text += f"+{v.build}"
    return text


def parse_headers(hdr: bytes | None) -> dict[str, str] | None:
    """A NATS/1.0 header block (as chronos encodes it) as the dict ``Client.publish`` takes."""
    if not hdr:
        return None
    lines = hdr.decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def select_transport(settings: Settings | str, nc: NATS) -> Transport:
    """The transport for ``nc`` per ``nats.transport`` (or a choice given directly); one per connection."""
    choice = settings if isinstance(settings, str) else settings.nats.transport
    if choice not in CHOICES:
        raise ConfigError(f"nats.transport: must be one of {', '.join(CHOICES)}, got {choice!r}")
    bound: Transport | None = getattr(nc, _ATTR, None)
    if bound is not None and (choice == "auto" or choice == bound.name):
        return bound
    from .fast import FastTransport
    from .stock import StockTransport

    transport: Transport
    if choice == "stock":
        transport = StockTransport(nc)
    else:
        lacks, untested = probe(nc)
        if choice == "fast":
            if lacks:
                raise ConfigError(f"nats.transport = \"fast\" needs nats-py internals that nats-py {nats_py_version()} "
                                  f"lacks ({'; '.join(lacks)}): set it to \"auto\" or \"stock\"")
            if untested:
                _warn_once(f"{untested}; using it anyway (nats.transport = \"fast\")")
            transport = FastTransport(nc)
        elif lacks or untested:
            why = untested if untested else f"nats-py {nats_py_version()} lacks {'; '.join(lacks)}"
            _warn_once(f"{why}: using the stock transport (public nats-py API only; slower hot path). "
                       "Set nats.transport = \"stock\" to silence this.")
            transport = StockTransport(nc)
        else:
            transport = FastTransport(nc)
    setattr(nc, _ATTR, transport)
    return transport


__all__ = ["CHOICES", "PlainHandler", "RawHandler", "SendErrorHandler", "TESTED_NATS_PY", "Transport",
           "nats_py_version", "parse_headers", "probe", "select_transport", "server_version"]
