"""SyncClient: the Client for synchronous code (Django and Flask views, scripts, Celery-style callers).

One background thread runs an event loop with one connected ``Client``; every call from any
thread is handed to it (``run_coroutine_threadsafe``) and waits for the answer. So a view
pays for the server round trips of its submit and nothing else: no event loop per call
(``asyncio.run`` per call costs ~17 ms here, mostly connect and topology checks), and calls
from many threads are pipelined on the one connection.

``sync_client()`` is the process-wide instance, created on first use and closed at exit. A
forked child (gunicorn, uwsgi preforking) gets a new one: threads and sockets do not survive
a fork.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from concurrent.futures import Future
from typing import Any, Coroutine, TypeVar

from .config import Settings, load_settings
from .errors import ChronosError

T = TypeVar("T")
log = logging.getLogger(__name__)

_STOP_TIMEOUT = 10.0


class SyncClient:
    """A thread-safe, blocking facade over one ``Client`` running on its own loop thread."""

    def __init__(self, settings: Settings | None = None, *, connect_timeout: float = 30.0) -> None:
        from .client import Client

        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="chronos-sync-client", daemon=True)
        self._closed = False
        self._pending: list[tuple[str, Any, dict[str, Any], Future[str]]] = []
        self._pending_lock = threading.Lock()
        self._drain_scheduled = False
        self._batches: set[asyncio.Task[None]] = set()
        self._thread.start()
        try:
            self._client: Client = self._call(Client.connect(settings or load_settings()), connect_timeout)
        except BaseException:
            self._stop_loop()
            raise

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._closed:
            coro.close()
            raise ChronosError("this SyncClient is closed")
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    @property
    def client(self) -> Any:
        """The async Client behind this one (use it only from its loop)."""
        return self._client

    # --- the Client's calls, blocking ----------------------------------------------------------
    def submit_job(self, task: str, args: Any = None, **options: Any) -> Any:
        """``Client.submit_job``, blocking: ``Submitted(id, outcome)`` (unique while active, debounce)."""
        return self._call(self._client.submit_job(task, args, **options))

    def submit(self, task: str, args: Any = None, **options: Any) -> str:
        """Submit one job; returns its id once the server has it (see ``Client.submit``).

        Submits from many threads at once are gathered into one pipelined ``submit_specs`` per
        loop turn: one coroutine per batch instead of one per job, which is what bounds the
        loop thread when eight request threads submit together.
        """
        if self._closed:
            raise ChronosError("this SyncClient is closed")
        fut: Future[str] = Future()
        with self._pending_lock:
            self._pending.append((task, args, options, fut))
            schedule = not self._drain_scheduled
            self._drain_scheduled = True
        if schedule:
            self._loop.call_soon_threadsafe(self._drain)
        return fut.result()

    def _drain(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._drain_scheduled = False
        if batch:
            t = self._loop.create_task(self._submit_batch(batch), name="chronos-sync-submit")
            self._batches.add(t)
            t.add_done_callback(self._batches.discard)

    async def _submit_batch(self, batch: list[tuple[str, Any, dict[str, Any], "Future[str]"]]) -> None:
        client = self._client
        specs: list[Any] = []
        futs: list[Future[str]] = []
        for task, args, options, fut in batch:
            try:
                if options.get("queue") is None and isinstance(task, str):
                    options = {**options, "queue": await client.task_queue(task)}
                specs.append(client.build_spec(task, args, **options))
                futs.append(fut)
            except BaseException as exc:  # this caller's mistake only
                fut.set_exception(exc)
        if not specs:
            return
        try:
            ids = await client.submit_specs(specs)
        except BaseException as exc:
            if len(specs) == 1:
                futs[0].set_exception(exc)
                return
            # A batch is all or nothing (nothing written): find whose job it was, one by one.
            for spec, fut in zip(specs, futs):
                try:
                    fut.set_result((await client.submit_specs([spec]))[0])
                except BaseException as one:
                    fut.set_exception(one)
            return
        for job_id, fut in zip(ids, futs):
            fut.set_result(job_id)

    def submit_specs(self, specs: Any) -> list[str]:
        return self._call(self._client.submit_specs(specs))

    def get(self, job_id: str) -> Any:
        return self._call(self._client.get(job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        return self._call(self._client.wait(job_id, timeout))

    def cancel(self, job_id: str, reason: str = "cancelled by operator") -> Any:
        return self._call(self._client.cancel(job_id, reason))

    def retry(self, job_id: str) -> Any:
        return self._call(self._client.retry(job_id))

    def call(self, coro_fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``await coro_fn(client, *args, **kwargs)`` on the client's loop, for anything else."""
        return self._call(coro_fn(self._client, *args, **kwargs))

    # --- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        try:
            self._call(self._client.close(), _STOP_TIMEOUT)
        except Exception as exc:  # closing is best effort; the connection dies with the loop anyway
            log.debug("closing the SyncClient's connection: %s", exc)
        finally:
            self._closed = True
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_STOP_TIMEOUT)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: SyncClient | None = None
_default_pid = 0
_lock = threading.Lock()


def sync_client(settings: Settings | None = None) -> SyncClient:
    """The process-wide SyncClient (created on first use from ``settings`` or ``load_settings()``)."""
    global _default, _default_pid
    client = _default
    if client is not None and _default_pid == os.getpid() and not client._closed:
        return client
    with _lock:
        if _default is None or _default_pid != os.getpid() or _default._closed:
            _default = SyncClient(settings)
            _default_pid = os.getpid()
        return _default


def _forget_after_fork() -> None:
    global _default
    _default = None  # the parent's loop thread does not exist here


def _close_at_exit() -> None:
    if _default is not None and _default_pid == os.getpid():
        _default.close()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_close_at_exit)
