"""What a running task can know about itself: ``chronos.current_job()``."""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ValidationError

MAX_PROGRESS_MESSAGE = 200  # characters kept of a progress message


class _Yield:
    """What ``progress()`` returns: awaiting it yields to the loop once (so a tight async loop lets
    the writer run); not awaiting it (a sync task) is fine too, it is not a coroutine."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        yield


_YIELD = _Yield()


@dataclass(slots=True)
class JobContext:
    job_id: str
    task: str
    attempt: int
    max_attempts: int
    worker_id: str
    cancel_reason: str | None = None
    _cancel_event: asyncio.Event | None = field(default=None, repr=False)
    # Set by the worker (worker/progress.py): takes (fraction, message), from any thread.
    _progress: Callable[[float, str | None], Any] | None = field(default=None, repr=False)

    def progress(self, fraction: float, message: str | None = None) -> Awaitable[None]:
        """Report how far the job is (0..1) and what it is doing: stored on the job's record and
        sent as a ``progress`` event, at most about twice a second (the last report is always
        written before the job's outcome). ``await`` it in async tasks; call it plainly in sync
        (``def``) tasks run in threads. Outside a worker (a plain call of the function) it does
        nothing; in a task run in a process (``sync_executor = "process"``) neither."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
                or not 0.0 <= fraction <= 1.0:
            raise ValidationError(f"progress: fraction must be a number from 0 to 1, not {fraction!r}")
        if message is not None:
            if not isinstance(message, str):
                raise ValidationError("progress: message must be a string")
            message = message[:MAX_PROGRESS_MESSAGE]
        if self._progress is not None:
            self._progress(float(fraction), message)
        return _YIELD

    @property
    def cancel_requested(self) -> asyncio.Event:
        """Set when an operator cancels the job; long tasks may ``await`` it.

        Made on first use: most jobs never look, and an Event per job showed in the worker's profile.
        """
        if self._cancel_event is None:
            self._cancel_event = asyncio.Event()
        return self._cancel_event

    @property
    def cancelled(self) -> bool:
        """Cooperative cancel: long tasks check this (or await ``cancel_requested``) and stop early."""
        return self._cancel_event is not None and self._cancel_event.is_set()


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("chronos_job", default=None)


def current_job() -> JobContext | None:
    return _current.get()


def set_current(ctx: JobContext) -> contextvars.Token[JobContext | None]:
    return _current.set(ctx)


def reset_current(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)
