"""chronos: a distributed job scheduler over NATS JetStream."""

from .client import Client
from .config import Settings, load_settings
from .errors import Cancel, ChronosError, Retry
from .models import Backoff, JobRecord, JobSpec
from .states import JobState
from .worker.context import current_job
from .worker.registry import Registry, task

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
    "Settings",
    "current_job",
    "load_settings",
    "task",
]
