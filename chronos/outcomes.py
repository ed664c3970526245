"""How one attempt of a job ended: the values of ``Attempt.outcome``.

A ``StrEnum``: each member is the very string stored before this type existed, so records
written by older workers read the same and newer ones encode to the same bytes.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    COMPLETED = "completed"  # the task returned
    RETRY = "retry"  # the task raised Retry(delay)
    ERROR = "error"  # the task raised anything else
    TIMEOUT = "timeout"  # the worker stopped it at its timeout
    CANCELLED = "cancelled"  # Cancel raised, or an operator's cancel
    SHUTDOWN = "shutdown"  # its worker shut down first; handed back, no attempt spent
    SUPERSEDED = "superseded"  # a redelivery of it runs on another worker; this run was stopped
    LOST = "lost"  # its worker vanished (or never recorded the run); found by a later delivery or the rescuer
