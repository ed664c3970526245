"""Feeds: the only bridge between async chronos calls and the UI.

Every network call runs in a Textual worker started here, and every result
reaches the UI as a message from ``messages.py``:

* the supervisor connects (retrying until it can), subscribes to events, takes
  the counts from a scheduler's job index (polled every ``counts_every`` seconds;
  no record is read) or, with no index answering, seeds the tally from one scan
  of the job records; then it polls the cluster
  (consumers, workers, leader, DLQ depths) every ``interval`` seconds and
  reports connection losses and recoveries;
* the event follower feeds every lifecycle event into the Tally and a tail
  buffer; it never posts per event;
* a timer posts one coalescing StatsChanged (and EventsTail) every 3/4 ``interval``
  (150 ms by default, so a late tick on a busy host still lands inside 250 ms);
* loads (a page of jobs, a job, schedules, the DLQ) reply to the screen that
  asked; actions (retry, cancel, ...) reply to the app, and are refused here
  too when the console is read-only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from textual.app import App
from textual.message import Message
from textual.message_pump import MessagePump
from textual.worker import Worker

from chronos.clock import Clock
from chronos.config import Settings
from chronos.errors import ChronosError
from chronos.models import Event

from .data import Connection, JobQuery
from .messages import (
    ActionDone,
    ActionFailed,
    ClusterChanged,
    ConnectionChanged,
    DlqLoaded,
    EventsTail,
    JobLoaded,
    JobsLoaded,
    LimitsLoaded,
    LoadFailed,
    QueuesLoaded,
    SchedulesLoaded,
    StatsChanged,
)
from .source import ClientSource, Source
from .tally import Tally, ring

log = logging.getLogger("chronos.tui")

Call = Callable[[Source], Awaitable[Any]]


def describe(exc: BaseException) -> str:
    """One line for the operator: chronos errors say what went wrong already; others get their type."""
    text = str(exc)
    if isinstance(exc, ChronosError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Feeds:
    def __init__(self, app: App[Any], settings: Settings, source: Source | None, clock: Clock, *,
                 readonly: bool = False, interval: float = 0.2, tail: int = 500,
                 connect: Callable[[Settings, Clock], Awaitable[Source]] | None = None) -> None:
        self.app = app
        self.settings = settings
        self.source = source
        self.clock = clock
        self.readonly = readonly
        self.interval = interval
        self.tally = Tally()
        self.tail = ring(tail)
        self._seq = 0
        self._posted_seq = -1
        self._last_stats: Any = None
        self._connect = connect or ClientSource.connect
        self._inflight: dict[str, Worker[Any]] = {}
        self.connected = False
        self.polls = 0  # cluster polls done, and record scans (seeds) done: for tests and tools
        self.seeds = 0
        self.counts_every = 1.0
        self._indexed = False  # the counts come from a job index (polled), not from records and events
        self._counts_at = 0.0

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.app.run_worker(self._supervise(), name="feeds.supervisor", group="feeds", exclusive=True)
        self.app.set_interval(self.interval * 0.75, self._tick, name="feeds.tick")

    async def close(self) -> None:
        if self.source is not None:
            try:
                await self.source.close()
            except Exception as exc:  # closing on exit; nothing left to tell
                log.debug("closing the source failed: %s", exc)

    def _post(self, message: Message) -> None:
        self.app.post_message(message)

    async def _supervise(self) -> None:
        since = self.clock.now()
        attempts = 0
        while self.source is None:
            try:
                self.source = await self._connect(self.settings, self.clock)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempts += 1
                self._post(ConnectionChanged(Connection(False, describe(exc), since, attempts)))
                await asyncio.sleep(min(5.0, 0.25 * 2 ** min(attempts, 5)))
        self.connected = True
        self._post(ConnectionChanged(Connection(True, since=self.clock.now())))
        # Subscribe before the scan, so nothing that happens while scanning is missed; the
        # tally ignores what the scan already counted (events carry their time).
        stream = await self.source.events()
        self.app.run_worker(self._follow(stream), name="feeds.events", group="feeds-events", exclusive=True)
        await self._seed()
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            ok = self.source.connected()
            detail = "connection lost"
            if ok:
                try:
                    cluster = await asyncio.wait_for(self.source.cluster(), max(2.0, 8 * self.interval))
                    self.polls += 1
                    self._post(ClusterChanged(cluster))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    ok, detail = False, describe(exc)
            if ok and self._indexed and loop.time() - self._counts_at >= self.counts_every:
                await self._seed()
            if ok != self.connected:
                if not ok:
                    since = self.clock.now()
                    attempts = 0
                else:
                    await self._seed(fresh=True)  # events were missed while away
                self.connected = ok
            if not ok:
                attempts += 1
                self._post(ConnectionChanged(Connection(False, detail, since, attempts)))
            elif attempts:
                attempts = 0
                self._post(ConnectionChanged(Connection(True, since=self.clock.now())))
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def _seed(self, fresh: bool = False) -> None:
        assert self.source is not None
        counts = getattr(self.source, "counts", None)
        if counts is not None:
            self._counts_at = asyncio.get_running_loop().time()
            try:
                found = await counts()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("job index counts failed: %s", exc)
                found = None
            if found is not None:
                self.tally.set_counts(found)
                self._indexed = True
                self.seeds += 1
                return
            if self._indexed:  # the index went away: count from records and events again
                self._indexed = False
                self.tally.set_counts(None)
                fresh = True
        try:
            records = await self.source.records()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("could not seed job counts: %s", exc)
            return
        self.tally.seed(records, self.clock.now(), fresh=fresh)
        self.seeds += 1

    async def _follow(self, stream: AsyncIterator[list[Event]]) -> None:
        assert self.source is not None
        tally, tail = self.tally, self.tail
        while True:
            try:
                async for batch in stream:
                    add, seq = tally.add, self._seq
                    for ev in batch:
                        add(ev)
                        seq += 1
                        tail.append((seq, ev))
                    self._seq = seq
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("event feed stopped (%s); resubscribing", exc)
            await asyncio.sleep(1.0)
            try:
                stream = await self.source.events()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("resubscribing to events failed: %s", exc)

    def _tick(self) -> None:
        stats = self.tally.snapshot(self.clock.now())
        if stats != self._last_stats:
            self._last_stats = stats
            self._post(StatsChanged(stats))
        if self._seq != self._posted_seq:
            self._posted_seq = self._seq
            self._post(EventsTail(tuple(self.tail)))

    def resync(self) -> None:
        if self.source is not None:
            self.app.run_worker(self._seed(fresh=True), name="feeds.seed", group="feeds-seed", exclusive=True)

    # --- loads: reply to the screen that asked ---------------------------------------------------------
    def load_jobs(self, query: JobQuery, reply_to: MessagePump, *, force: bool = False) -> None:
        self._load("jobs", reply_to, lambda s: s.jobs(query), JobsLoaded, force)

    def load_job(self, job_id: str, reply_to: MessagePump, *, force: bool = False) -> None:
        self._load("job", reply_to, lambda s: s.job(job_id), JobLoaded, force)

    def load_schedules(self, reply_to: MessagePump, *, force: bool = False) -> None:
        self._load("schedules", reply_to, lambda s: s.schedules(), SchedulesLoaded, force)

    def load_dlq(self, reply_to: MessagePump, *, force: bool = False) -> None:
        self._load("dlq", reply_to, lambda s: s.dlq(), DlqLoaded, force)

    def load_queues(self, reply_to: MessagePump, *, force: bool = False) -> None:
        self._load("queues", reply_to, lambda s: s.queues(), QueuesLoaded, force)

    def load_limits(self, reply_to: MessagePump, *, force: bool = False) -> None:
        self._load("limits", reply_to, lambda s: s.limits(), LimitsLoaded, force)

    def _load(self, what: str, reply_to: MessagePump, call: Call, wrap: Callable[[Any], Message],
              force: bool) -> None:
        """One load per (kind, screen) at a time: a periodic reload skips while one is running,
        a forced one (new filter) replaces it."""
        source = self.source
        if source is None:
            reply_to.post_message(LoadFailed(what, "not connected yet"))
            return
        key = f"{what}:{id(reply_to)}"
        running = self._inflight.get(key)
        if running is not None and not running.is_finished:
            if not force:
                return
            running.cancel()

        async def go() -> None:
            try:
                result = await call(source)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reply_to.post_message(LoadFailed(what, describe(exc)))
                return
            reply_to.post_message(wrap(result))

        self._inflight[key] = self.app.run_worker(go(), name=f"load.{what}", group=f"load-{key}")

    # --- actions: reply to the app -------------------------------------------------------------------
    def act(self, verb: str, target: str, call: Call, describe_result: Callable[[Any], str] | None = None) -> bool:
        """Run one operator action; False (and a notice) when refused."""
        if self.readonly:
            self.app.notify(f"read-only console: {verb} is disabled", severity="warning")
            return False
        source = self.source
        if source is None:
            self.app.notify("not connected", severity="error")
            return False

        async def go() -> None:
            try:
                result = await call(source)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._post(ActionFailed(verb, target, describe(exc)))
                return
            self._post(ActionDone(verb, target, describe_result(result) if describe_result else "", result))

        self.app.run_worker(go(), name=f"action.{verb}", group="actions")
        return True
