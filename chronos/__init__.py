"""chronos: a distributed job scheduler over NATS JetStream.

The public surface, imported on first use (PEP 562): ``import chronos`` in a tasks module,
the CLI or the console loads neither the worker nor the scheduler.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Backoff": ".models",
    "Cancel": ".errors",
    "ChronosError": ".errors",
    "Client": ".client",
    "JobFailedError": ".tasks",
    "JobRecord": ".models",
    "JobRef": ".tasks",
    "JobSpec": ".models",
    "JobState": ".states",
    "Registry": ".worker.registry",
    "Retry": ".errors",
    "SchedulerService": ".scheduler",
    "Settings": ".config",
    "SyncClient": ".sync",
    "SyncJobRef": ".tasks",
    "Task": ".tasks",
    "WorkerService": ".worker.service",
    "close_client": ".tasks",
    "current_job": ".worker.context",
    "load_settings": ".config",
    "set_client": ".tasks",
    "sync_client": ".sync",
    "task": ".tasks",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .client import Client
    from .config import Settings, load_settings
    from .errors import Cancel, ChronosError, Retry
    from .models import Backoff, JobRecord, JobSpec
    from .scheduler import SchedulerService
    from .states import JobState
    from .sync import SyncClient, sync_client
    from .tasks import JobFailedError, JobRef, SyncJobRef, Task, close_client, set_client, task
    from .worker.context import current_job
    from .worker.registry import Registry
    from .worker.service import WorkerService


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chronos' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
