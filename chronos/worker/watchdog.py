"""A thread that notices a blocked event loop and keeps the worker's held jobs from being redelivered.

An ``async def`` task that blocks the loop (``time.sleep``, CPU work) stops every
coroutine of the worker, including the in-progress acks that hold its jobs. Past
``ack_wait`` JetStream would hand those jobs to another worker while they still run
here: a double run. This thread does not depend on the loop: the loop stamps
``beat`` every 50 ms (a timer of its own, started by ``start()``); when the stamp is older than a quarter
of ``ack_wait`` the loop is called blocked, an error is logged, and the thread
sends ``+WPI`` for every held job over a connection of its own (nats-py is not
thread-safe, so it has its own event loop and client), until the loop runs again
or a job passes its timeout (then it is let go: a blocked loop cannot enforce the
timeout, and a job blocked forever must not be held forever).

Real time, not the injected Clock, on purpose: what is measured is how long the real event
loop did not run, and the thread has no loop of the worker's to sleep on. A test on a fake
clock therefore still has a working watchdog.

What it cannot cover: messages the server delivered into the socket while the loop
was blocked are unknown to the worker until it runs again; when it does, deliveries
taken during ``ack_wait`` after the block go through the checked start path, which
finds a newer delivery recorded and leaves them to it (``Executor.suspect``, set from
this thread as soon as a block is seen, so it holds before the loop reads the socket).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable, Sequence

from ..config import Settings

log = logging.getLogger(__name__)

Held = Callable[[], Sequence[tuple[str, str, float]]]  # (job id, ack reply subject, deadline) per held job


class LoopWatchdog:
    def __init__(self, settings: Settings, held: Held, *, name: str,
                 on_block: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.held = held
        self.on_block = on_block  # called from this thread when a block begins
        self.name = name
        ack_wait = settings.worker.ack_wait
        self.block_after = max(0.2, ack_wait / 4)  # a loop this late is blocked
        self.every = max(0.2, ack_wait / 3)  # in-progress acks while it is, well inside ack_wait
        self.beat = time.monotonic()  # stamped by the loop
        self.blocked_since: float | None = None
        self.resumed_at = -1e18  # when the loop last ran again after a block
        self.blocks = 0
        self.longest = 0.0
        self.kept_alive = 0  # in-progress acks sent by this thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._let_go: set[str] = set()
        self._stamper: asyncio.TimerHandle | None = None

    def _stamp(self) -> None:
        """On the worker's loop, every 50 ms: the sign that the loop runs."""
        self.beat = time.monotonic()
        if not self._stop.is_set():
            self._stamper = asyncio.get_running_loop().call_later(0.05, self._stamp)

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread; called on the worker's loop, which it then watches."""
        self._stamp()
        self._thread = threading.Thread(target=self._main, name="chronos-watchdog", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        if self._stamper is not None:
            self._stamper.cancel()
        if self._thread is not None:
            self._thread.join(5.0)

    def recently_blocked(self, window: float) -> bool:
        return self.blocked_since is not None or time.monotonic() - self.resumed_at < window

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:  # never takes the worker down; say why it stopped watching
            self.error = exc
            log.error("loop watchdog stopped: %s", exc)
        finally:
            self._ready.set()

    async def _run(self) -> None:
        from ..connection import connect

        conn = await connect(self.settings, name=f"chronos-watchdog-{self.name}")
        self._ready.set()
        last_wpi = 0.0
        try:
            while not self._stop.is_set():
                await asyncio.sleep(0.1)
                now = time.monotonic()
                lag = now - self.beat
                if lag >= self.block_after:
                    if self.blocked_since is None:
                        self.blocked_since = self.beat
                        self.blocks += 1
                        self.on_block()
                        log.error("the worker's event loop is blocked (%.1fs so far): a task blocks it (time.sleep or "
                                  "CPU work in an async def?). Keeping its %d held jobs alive from the watchdog "
                                  "thread; no new work is taken while it is blocked", lag, len(self.held()))
                    if now - last_wpi >= self.every:
                        last_wpi = now
                        await self._keep_alive(conn, now)
                elif self.blocked_since is not None:
                    took = now - self.blocked_since
                    self.longest = max(self.longest, took)
                    self.blocked_since = None
                    self.resumed_at = now
                    log.warning("the worker's event loop ran again after being blocked for %.1fs", took)
        finally:
            await conn.close()

    async def _keep_alive(self, conn: object, now: float) -> None:
        nc = conn.nc  # type: ignore[attr-defined]
        for job_id, reply, deadline in self.held():
            if now > deadline + self.settings.worker.ack_wait:
                if job_id in self._let_go:
                    continue
                self._let_go.add(job_id)
                log.error("job %s is past its timeout while the loop is still blocked: no longer kept alive; "
                          "JetStream will redeliver it (the record will show both runs)", job_id)
                continue
            await nc.publish(reply, b"+WPI")
            self.kept_alive += 1
        await nc.flush()
