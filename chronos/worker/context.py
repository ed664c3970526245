"""What a running task can know about itself: ``chronos.current_job()``."""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field


@dataclass
class JobContext:
    job_id: str
    task: str
    attempt: int
    max_attempts: int
    worker_id: str
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str | None = None

    @property
    def cancelled(self) -> bool:
        """Cooperative cancel: long tasks check this (or await ``cancel_requested``) and stop early."""
        return self.cancel_requested.is_set()


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("chronos_job", default=None)


def current_job() -> JobContext | None:
    return _current.get()


def set_current(ctx: JobContext) -> contextvars.Token[JobContext | None]:
    return _current.set(ctx)


def reset_current(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)
