"""run_service(): signals, one TaskGroup, a grace period. Shared by `chronos serve` and `chronos dev`.

A service is a coroutine function ``main(stop)`` that runs until it is done or
until the ``stop`` event is set, then shuts itself down (the worker stops
fetching, waits up to its ``shutdown_grace`` for running jobs, returns the rest
to the queue and drains its connection). Shutdown, in two phases (STYLE 7)::

    running ──SIGTERM/SIGINT──► stopping ──all services returned──► STOPPED
                                   │
                                   ├── `grace` seconds pass ──┐
                                   └── a second signal ───────┴──► every service task cancelled: FORCED

A third signal gets whatever handler was there before (by default SIGTERM kills the
process and SIGINT raises KeyboardInterrupt).

Every service runs in the one ``asyncio.TaskGroup`` here: when one fails, the
others are cancelled and its exception is raised from ``run_service``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from enum import StrEnum
from typing import Any, Awaitable, Callable, Sequence

from .config import Settings
from .gctune import tune_gc
from .sdnotify import Notifier
from .worker.registry import Registry, load_tasks
from .worker.service import WORKER_GC_GEN0, WorkerService

log = logging.getLogger(__name__)

ServiceMain = Callable[[asyncio.Event], Awaitable[Any]]

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


class Outcome(StrEnum):
    FINISHED = "finished"  # every service returned on its own (burst mode, a one-shot task)
    STOPPED = "stopped"  # a stop was requested and every service shut down within the grace
    FORCED = "forced"  # a second signal or the grace ran out: what was left was cancelled


async def run_service(
    *mains: ServiceMain,
    grace: float,
    stop: asyncio.Event | None = None,
    signals: Sequence[signal.Signals] = SIGNALS,
    notifier: Notifier | None = None,
) -> Outcome:
    """Run ``mains`` together until all return; a signal (or ``stop.set()``) asks them to stop.

    ``grace`` is how long services get after the stop request before they are
    cancelled; give it the worker's ``shutdown_grace`` plus time to drain.
    Signal handlers are installed only in the main thread (elsewhere, use ``stop``).
    With a ``notifier`` (systemd's NOTIFY_SOCKET), READY=1 goes out once every main that
    has a ``ready`` event has set it, WATCHDOG=1 at half the watchdog timeout, and
    STOPPING=1 when the stop begins.
    """
    if not mains:
        raise ValueError("run_service needs at least one service")
    stop = stop if stop is not None else asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()
    restore_handlers = _install_handlers(loop, signals, stop, force)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(m(stop), name=f"service-{i}:{getattr(m, '__qualname__', m)}")
                     for i, m in enumerate(mains)]
            systemd = None
            if notifier is not None and notifier.enabled:
                systemd = tg.create_task(_systemd(notifier, mains, stop), name="runtime-sd-notify")
            try:
                outcome = await _supervise(tg, tasks, stop, force, grace)
            finally:
                if systemd is not None:
                    systemd.cancel()
        return outcome
    except BaseExceptionGroup as eg:
        # One failing service is the common case (often nested in the service's own task group):
        # raise its error as is, so callers see a plain exception and the CLI one clear line.
        leaves = _leaves(eg)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise
    finally:
        restore_handlers()
        if notifier is not None and notifier.enabled and not stop.is_set():
            notifier.stopping("finished")  # the services returned on their own (burst mode)


async def _systemd(notifier: Notifier, mains: Sequence[ServiceMain], stop: asyncio.Event) -> None:
    """READY=1 once every service is ready, WATCHDOG=1 pings meanwhile, STOPPING=1 on stop."""
    readies = [e for e in (getattr(m, "ready", None) for m in mains) if isinstance(e, asyncio.Event)]
    pinger = asyncio.ensure_future(notifier.watchdog_loop())
    all_ready = asyncio.ensure_future(asyncio.gather(*(e.wait() for e in readies)))
    stop_wait = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({all_ready, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if all_ready.done() and not stop.is_set():
            notifier.ready(f"running {len(mains)} service(s)")
            log.debug("sd_notify: READY=1")
        await stop_wait
        notifier.stopping("shutting down")
        await pinger  # keep the watchdog fed through the grace period; cancelled when services return
    finally:
        for t in (pinger, all_ready, stop_wait):
            t.cancel()
        await asyncio.gather(pinger, all_ready, stop_wait, return_exceptions=True)


def _leaves(eg: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in eg.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _supervise(
    tg: asyncio.TaskGroup, tasks: list[asyncio.Task[Any]], stop: asyncio.Event, force: asyncio.Event, grace: float
) -> Outcome:
    stop_wait = tg.create_task(stop.wait(), name="runtime-stop-wait")
    try:
        pending: set[asyncio.Task[Any]] = set(tasks)
        while pending and not stop.is_set():
            _, still = await asyncio.wait({*pending, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            pending = still - {stop_wait}
        if not pending:
            return Outcome.STOPPED if stop.is_set() else Outcome.FINISHED
        log.info("stopping: waiting up to %.1fs for services to shut down", grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        force_wait = tg.create_task(force.wait(), name="runtime-force-wait")
        try:
            while pending and not force.is_set() and (left := deadline - loop.time()) > 0:
                await asyncio.wait({*pending, force_wait}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                pending = {t for t in tasks if not t.done()}
        finally:
            force_wait.cancel()
        if not pending:
            return Outcome.STOPPED
        why = "second signal" if force.is_set() else f"still running after {grace:g}s"
        log.warning("%s: cancelling %d service task(s)", why, len(pending))
        for t in pending:
            t.cancel()
        await asyncio.wait(pending)
        return Outcome.FORCED
    finally:
        stop_wait.cancel()


def _install_handlers(
    loop: asyncio.AbstractEventLoop, signals: Sequence[signal.Signals], stop: asyncio.Event, force: asyncio.Event
) -> Callable[[], None]:
    """Route ``signals`` to stop/force; returns the function that puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        log.debug("not in the main thread: no signal handlers (use the stop event)")
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in signals}
    received = 0

    def restore() -> None:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)
        previous.clear()

    def on_signal(sig: signal.Signals) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.warning("%s: shutting down gracefully; send it again to force", sig.name)
            stop.set()
        elif received == 2:
            log.warning("%s again: forcing shutdown (one more gets the default action)", sig.name)
            force.set()
            restore()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    return restore


# --- services --------------------------------------------------------------------------------------------
def worker_registry(settings: Settings, task_specs: Sequence[str] = (), *, builtins: bool = True) -> Registry:
    """The tasks a worker runs: the built-in ``shell`` and ``http`` (unless ``builtins`` is false),
    then ``module:attr`` specs (from ``task_specs``, else ``settings.worker.tasks``)."""
    from .worker.builtin import builtin_registry

    reg = builtin_registry(settings) if builtins else Registry()
    load_tasks(list(task_specs) or list(settings.worker.tasks), reg)
    return reg


class WorkerMain:
    """A WorkerService as a ``main(stop)`` for run_service; ``service.ready`` is set once it fetches."""

    def __init__(self, settings: Settings, registry: Registry, *, tune_gc: bool = False, **kwargs: Any) -> None:
        self.service = WorkerService(settings, registry, **kwargs)
        self.tune_gc = tune_gc  # only when the process is chronos's own (`chronos serve worker`, `chronos dev`)

    @property
    def ready(self) -> asyncio.Event:
        return self.service.ready

    async def __call__(self, stop: asyncio.Event) -> None:
        svc = self.service
        if self.tune_gc:
            tune_gc(WORKER_GC_GEN0)  # after the task modules are imported (the registry)
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(svc.run(), name=f"worker-{svc.id}")
            relay = tg.create_task(_call_when_set(stop, svc.stop), name="worker-stop-relay")
            await asyncio.wait({run, relay}, return_when=asyncio.FIRST_COMPLETED)
            if run.done():
                relay.cancel()


def tune_gc_for_timers() -> None:
    """For a dedicated scheduler process: fewer, shorter collector pauses under the stager's timers.

    Collector pauses were a visible part of the delayed-job lateness tail (bench precision p99
    about 2.9 ms before, 2.3-2.5 ms after). See gctune.py.
    """
    tune_gc(50_000, 50, 100)


class SchedulerMain:
    """A SchedulerService as a ``main(stop)`` for run_service; ``service.ready`` is set once it contends."""

    def __init__(self, settings: Settings, *, tune_gc: bool = False, **kwargs: Any) -> None:
        from .scheduler import SchedulerService

        self.service = SchedulerService(settings, **kwargs)
        self.tune_gc = tune_gc  # only when the process is the scheduler's alone (`chronos serve scheduler`)

    @property
    def ready(self) -> asyncio.Event:
        return self.service.ready

    async def __call__(self, stop: asyncio.Event) -> None:
        svc = self.service
        if self.tune_gc:
            tune_gc_for_timers()
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(svc.run(), name="scheduler")
            relay = tg.create_task(_call_when_set(stop, svc.stop), name="scheduler-stop-relay")
            await asyncio.wait({run, relay}, return_when=asyncio.FIRST_COMPLETED)
            if run.done():
                relay.cancel()


async def _call_when_set(event: asyncio.Event, fn: Callable[[], None]) -> None:
    await event.wait()
    fn()


class WithMetrics:
    """A service main plus its Prometheus endpoint; the endpoint serves until the service returns
    (through the whole graceful shutdown), then closes."""

    def __init__(self, main: "WorkerMain | SchedulerMain", metrics: Any) -> None:
        self.main = main
        self.metrics = metrics  # a chronos.metrics.MetricsMain

    @property
    def ready(self) -> asyncio.Event:
        return self.main.ready

    @property
    def service(self) -> Any:
        return self.main.service

    async def __call__(self, stop: asyncio.Event) -> None:
        done = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.metrics(done), name="metrics")
            try:
                await self.main(stop)
            finally:
                done.set()


def with_metrics(main: "WorkerMain | SchedulerMain", settings: Settings, port: int | None = None) -> ServiceMain:
    """``main`` with a metrics endpoint on ``port`` (else ``settings.metrics.port``); as is when that is 0."""
    port = settings.metrics.port if port is None else port
    if not port:
        return main
    from .metrics import MetricsMain, SchedulerMetrics, WorkerMetrics

    metrics = (WorkerMetrics(main.service) if isinstance(main, WorkerMain)
               else SchedulerMetrics(main.service, settings))
    return WithMetrics(main, MetricsMain(metrics, port, settings.metrics.host))
