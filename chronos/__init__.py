"""chronos: a distributed job scheduler over NATS JetStream."""

from .client import Client
from .config import Settings, load_settings
from .errors import Cancel, ChronosError, Retry
from .models import Backoff, JobRecord, JobSpec
from .states import JobState
from .worker.context import current_job
from .worker.registry import Registry, task
from .worker.service import WorkerService

__all__ = [
    "Backoff",
    "Cancel",
    "ChronosError",
    "Client",
    "JobRecord",
    "JobSpec",
    "JobState",
    "Registry",
    "Retry",
    "SchedulerService",
    "Settings",
    "current_job",
    "load_settings",
    "WorkerService",
    "task",
]


def __getattr__(name: str) -> object:
    # The scheduler package is imported on first use: workers and clients never need it.
    if name == "SchedulerService":
        from .scheduler import SchedulerService

        return SchedulerService
    raise AttributeError(f"module 'chronos' has no attribute {name!r}")
