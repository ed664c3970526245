"""The ChronosError tree, plus the job-outcome signals Retry and Cancel.

User mistakes raise a ChronosError subclass with a one-line message; the CLI
prints that line and exits non-zero. Retry and Cancel are not errors: a task
raises them to choose its outcome (like arq's Retry and River's JobSnooze/JobCancel).
"""

from __future__ import annotations


class ChronosError(Exception):
    """Base of every error chronos raises on purpose."""

    exit_code = 1


class ValidationError(ChronosError, ValueError):
    """Bad input: the message names the field and what is wrong with it."""


class UnknownTaskError(ValidationError):
    pass


class PayloadTooLargeError(ValidationError):
    pass


class NotFoundError(ChronosError, LookupError):
    pass


class JobNotFoundError(NotFoundError):
    pass


class ScheduleNotFoundError(NotFoundError):
    pass


class IllegalTransitionError(ChronosError):
    """A state change the table in states.py does not allow."""


class ConflictError(ChronosError):
    """A compare-and-set lost: someone else wrote the record first."""


class ConnectionFailedError(ChronosError):
    """The NATS server cannot be reached."""

    exit_code = 3


class ConfigError(ChronosError):
    pass


class PermissionDeniedError(ChronosError):
    """The NATS server refused a subject to these credentials: "permission denied: <subject> (role <role>)"."""

    exit_code = 6


class UnsupportedVersionError(ChronosError):
    """A stored or wire message is newer than this code understands."""


class MalformedMessageError(ChronosError):
    """A message on a job subject cannot be decoded into a job."""


# --- outcome signals raised by tasks -------------------------------------------


class Retry(Exception):
    """Raise from a task to run it again after ``delay`` seconds (counts as an attempt)."""

    def __init__(self, delay: float = 0.0, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = max(0.0, float(delay))
        self.reason = reason


class Cancel(Exception):
    """Raise from a task to stop it for good: no retry, state cancelled."""

    def __init__(self, reason: str = "cancelled by task") -> None:
        super().__init__(reason)
        self.reason = reason


class JobTimeout(Exception):
    """The task ran past its timeout; treated like any failure (retried with backoff)."""
