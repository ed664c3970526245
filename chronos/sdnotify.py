"""sd_notify without a dependency: READY=1, WATCHDOG=1 and STOPPING=1 on systemd's datagram socket.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace)
and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. Those are read in ``config.systemd_env()``
(the only reader of the environment); this module only speaks the protocol::

    start ──service ready──► READY=1 ──every watchdog/2──► WATCHDOG=1 ... ──stop──► STOPPING=1

Without a socket every call is a no-op, so ``chronos serve`` is silent outside systemd.
A failed send is logged at debug level and never raised: the service must not die
because its supervisor went away.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from .config import SystemdEnv

log = logging.getLogger(__name__)


class Notifier:
    """Sends notification datagrams to ``socket_path`` (None: does nothing)."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self.socket_path = socket_path
        self.watchdog_usec = watchdog_usec if socket_path else None
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: SystemdEnv) -> "Notifier":
        return cls(env.notify_socket, env.watchdog_usec)

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of what systemd allows, as sd_watchdog_enabled(3) advises."""
        if not self.watchdog_usec:
            return None
        return self.watchdog_usec / 1e6 / 2

    def notify(self, state: str) -> bool:
        """Send one ``KEY=value`` (newline-separated for several). True if it was sent."""
        if not self.socket_path:
            return False
        address = self.socket_path
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(state.encode(), address)
            return True
        except OSError as exc:
            log.debug("sd_notify %r to %s failed: %s", state, self.socket_path, exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def watchdog_loop(self) -> None:
        """Ping at half the watchdog timeout until cancelled. Returns at once without a watchdog.

        The pings come from the service's event loop, so a loop that is stuck (a blocking
        call in a task) stops them and systemd restarts the service.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
