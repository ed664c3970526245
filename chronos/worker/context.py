"""What a running task can know about itself: ``chronos.current_job()``."""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field


@dataclass(slots=True)
class JobContext:
    job_id: str
    task: str
    attempt: int
    max_attempts: int
    worker_id: str
    cancel_reason: str | None = None
    _cancel_event: asyncio.Event | None = field(default=None, repr=False)

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
