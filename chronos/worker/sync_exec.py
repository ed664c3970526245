"""Runs sync (``def``) task functions off the event loop: in threads, or in processes that can be killed.

Threads (``worker.sync_executor = "thread"``, the default) are cheap but cannot be
stopped: a timed-out or cancelled call keeps its thread until the function returns.
The attempt says so, and the thread stays counted as busy (``stuck``) so the worker
never fetches more sync jobs than it has free threads. The timeout clock starts
when the thread starts, so a job never "times out" waiting for one.

Processes (``"process"``) cost a fork per job (a forkserver: the worker's threads
are never forked) but are hard-killed (SIGKILL) on timeout, cancel and shutdown.
The task function is found in the child by module and qualified name, so it must be
importable (a module-level function, as ``--tasks`` gives); its arguments and
result cross a pipe (pickled).
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import logging
import multiprocessing
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from .context import JobContext, set_current

if TYPE_CHECKING:
    from ..clock import Clock
    from .executor import Running

log = logging.getLogger(__name__)

KINDS = ("thread", "process")
STUCK_THREAD = "the thread could not be stopped and may still be running"
KILLED_PROCESS = "its process was killed"
NOT_STARTED = "it never started (no thread was free)"


class NotStarted(Exception):
    """The call was interrupted before a thread took it."""


class ChildError(Exception):
    """An exception raised in a task's process that could not be sent back as itself."""


class SyncRunner:
    def __init__(self, kind: str, size: int, clock: "Clock", on_free: Callable[[], None] = lambda: None,
                 preload: list[str] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"sync executor kind must be one of {', '.join(KINDS)}")
        self.kind = kind
        self.size = size
        self.clock = clock
        self.on_free = on_free
        self.stuck = 0  # threads still running a call whose job was already finished (interrupted)
        self.pool: ThreadPoolExecutor | None = None
        self._ctx: Any = None
        if kind == "thread":
            self.pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="chronos-task")
        else:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            self._ctx = multiprocessing.get_context(method)
            if method == "forkserver" and preload:
                # The forkserver imports the task modules once; each job's fork then starts warm.
                self._ctx.set_forkserver_preload(sorted(set(preload)))

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def call(self, run: "Running", fn: Callable[..., Any], args: Any, kwargs: dict[str, Any],
                   timeout: float) -> Any:
        if self.kind == "thread":
            return await self._in_thread(run, fn, args, kwargs, timeout)
        return await self._in_process(run, fn, args, kwargs, timeout)

    # --- threads ---------------------------------------------------------------------------
    async def _in_thread(self, run: "Running", fn: Callable[..., Any], args: Any, kwargs: dict[str, Any],
                         timeout: float) -> Any:
        assert self.pool is not None
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # current_job() inside the thread
        clock = self.clock
        started = [False]

        def body() -> Any:
            started[0] = True
            run.deadline = clock.monotonic() + timeout  # the clock starts with the thread
            return context.run(fn, *args, **kwargs)

        cf: Future[Any] = self.pool.submit(body)
        cf.add_done_callback(lambda f: loop.call_soon_threadsafe(self._thread_done, run))
        try:
            return await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            # wrap_future has cancelled cf: that worked only if no thread had taken it yet.
            if not started[0] and cf.cancelled():
                run.stuck = NOT_STARTED
            elif not cf.done():
                run.stuck = STUCK_THREAD
                self.stuck += 1
            raise

    def _thread_done(self, run: "Running") -> None:
        if run.stuck == STUCK_THREAD:
            self.stuck -= 1
            run.stuck = "finished"
            log.warning("job %s: its thread returned only now, after the job was interrupted (%s)",
                        run.job_id, run.interrupt)
            self.on_free()

    # --- processes ------------------------------------------------------------------------------
    async def _in_process(self, run: "Running", fn: Callable[..., Any], args: Any, kwargs: dict[str, Any],
                          timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        ctx = run.ctx
        info = (ctx.job_id, ctx.task, ctx.attempt, ctx.max_attempts, ctx.worker_id) if ctx else None
        recv, send = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_child_main, args=(fn.__module__, fn.__qualname__, args, kwargs, send, info),
                                 daemon=True, name=f"chronos-task-{run.job_id}")
        try:
            proc.start()
        finally:
            send.close()
        run.deadline = self.clock.monotonic() + timeout
        ready = loop.create_future()
        fd = recv.fileno()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        except asyncio.CancelledError:
            proc.kill()  # hard stop: nothing of the call survives the interrupt
            run.stuck = KILLED_PROCESS
            raise
        finally:
            loop.remove_reader(fd)
            if run.stuck == KILLED_PROCESS or not proc.is_alive():
                proc.join(0.5)
        try:
            kind, payload, tb = recv.recv()
        except (EOFError, OSError):
            proc.join(1.0)
            raise ChildError(f"the task's process ended (exit code {proc.exitcode}) before returning") from None
        finally:
            recv.close()
        proc.join(5.0)
        if kind == "ok":
            return payload
        if isinstance(payload, BaseException):
            payload.__chronos_tb__ = tb  # type: ignore[attr-defined]
            raise payload
        err = ChildError(payload)
        err.__chronos_tb__ = tb  # type: ignore[attr-defined]
        raise err


def _resolve(module: str, qualname: str) -> Callable[..., Any]:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    taskdef = getattr(obj, "__chronos_taskdef__", None)  # a @chronos.task handle: the function it wraps
    if taskdef is not None:
        obj = taskdef.fn
    return obj


def _child_main(module: str, qualname: str, args: Any, kwargs: dict[str, Any], send: Any,
                info: tuple[Any, ...] | None) -> None:
    import pickle

    if info is not None:
        set_current(JobContext(*info))
    try:
        fn = _resolve(module, qualname)
        result = fn(*args, **kwargs)
        out: tuple[str, Any, str | None] = ("ok", result, None)
    except BaseException as exc:  # the parent decides what it means
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            pickle.dumps(exc)
            out = ("err", exc, tb)
        except Exception:
            out = ("err", f"{type(exc).__name__}: {exc}", tb)
    try:
        send.send(out)
    except Exception as exc:  # an unpicklable result
        send.send(("err", f"the task's result could not be sent back: {type(exc).__name__}: {exc}", None))
    send.close()
