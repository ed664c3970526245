"""What a job spec may hold: the limits and ``check_spec``, run before any write.

Pure (no I/O), so a refused job leaves nothing behind. ``submit.Submitter.build_spec`` turns
submit arguments into a checked ``JobSpec``; ``check_spec`` alone is the bulk path's check.
"""

from __future__ import annotations

import math
from typing import Any

from .. import codec
from ..errors import PayloadTooLargeError, ValidationError
from ..models import Backoff, JobSpec
from ..subjects import PRIORITIES, is_valid_token

MAX_TASK_NAME = 256
MAX_UNIQUE_KEY = 1024  # bytes; it travels in a Nats-Msg-Id header
MAX_METADATA = 16 * 1024  # tags and annotations together, encoded
MAX_TIMEOUT = 366 * 86400.0
LATEST_RUN_AT = 253402128000.0  # 9999-12-30T00:00:00Z: dates show in any local zone up to here


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _printable(text: str) -> bool:
    """No control characters (CR, LF, NUL, ...), no lone surrogates: safe in a NATS header."""
    return not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text) and _utf8(text)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_GOOD_NAMES: set[tuple[str, str, str]] = set()  # (task, queue, priority) already found valid
_DEFAULT_BACKOFF = Backoff()


def check_spec(spec: JobSpec) -> None:
    """Everything about one spec that can be checked without the server; ValidationError names
    the field. Run before any write, so a refused job leaves nothing behind."""
    if (spec.run_at is None and spec.timeout is None and spec.unique_key is None and not spec.tags
            and not spec.annotations and spec.backoff == _DEFAULT_BACKOFF and type(spec.max_attempts) is int
            and spec.max_attempts >= 1 and type(spec.args) in (list, dict)
            and (spec.task, spec.queue, spec.priority) in _GOOD_NAMES):
        return  # the bulk-submit case: a few field reads instead of the checks below
    _check_spec(spec)
    if len(_GOOD_NAMES) < 10_000:
        _GOOD_NAMES.add((spec.task, spec.queue, spec.priority))


def _check_spec(spec: JobSpec) -> None:
    if not isinstance(spec.task, str) or not spec.task.strip():
        raise ValidationError("task: must be a non-empty name")
    if len(spec.task) > MAX_TASK_NAME or not _printable(spec.task):
        raise ValidationError(f"task: must be at most {MAX_TASK_NAME} printable characters")
    if not isinstance(spec.args, (list, dict)):
        raise ValidationError("args: must be a list (positional) or an object (keyword arguments)")
    if not isinstance(spec.queue, str) or not is_valid_token(spec.queue):
        raise ValidationError(f"queue: {spec.queue!r} is not a valid name (1-64 letters, digits, '_' or '-')")
    if spec.priority not in PRIORITIES:
        raise ValidationError(f"priority: {spec.priority!r} is not one of {', '.join(PRIORITIES)}")
    if spec.run_at is not None:
        if not _is_number(spec.run_at) or not math.isfinite(spec.run_at):
            raise ValidationError("run_at: must be a finite time (epoch seconds)")
        if not 0 <= spec.run_at <= LATEST_RUN_AT:
            raise ValidationError("run_at: must be between 1970 and the end of year 9999")
    if spec.timeout is not None:
        if not _is_number(spec.timeout) or not math.isfinite(spec.timeout) or spec.timeout <= 0:
            raise ValidationError("timeout: must be a positive, finite number of seconds")
        if spec.timeout > MAX_TIMEOUT:
            raise ValidationError(f"timeout: must be at most {MAX_TIMEOUT:g} seconds (a year)")
    if not isinstance(spec.max_attempts, int) or isinstance(spec.max_attempts, bool) or spec.max_attempts < 1:
        raise ValidationError("max_attempts: must be a whole number of at least 1")
    b = spec.backoff
    if not all(_is_number(x) and math.isfinite(x) and x >= 0 for x in (b.base, b.cap)):
        raise ValidationError("backoff: base and cap must be finite and not negative")
    key = spec.unique_key
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ValidationError("unique_key: must be a non-empty string")
        if not _printable(key):
            raise ValidationError("unique_key: must be printable UTF-8 text (no CR, LF or other control characters)")
        if len(key.encode()) > MAX_UNIQUE_KEY:
            raise ValidationError(f"unique_key: must be at most {MAX_UNIQUE_KEY} bytes")
    for t in spec.tags:
        if not isinstance(t, str) or not t or not _utf8(t):
            raise ValidationError("tags: every tag must be a non-empty UTF-8 string")
    for k, v in spec.annotations.items():
        if not isinstance(k, str) or not isinstance(v, str) or not _utf8(k) or not _utf8(v):
            raise ValidationError("annotations: keys and values must be UTF-8 strings")
    if spec.tags or spec.annotations:
        size = len(codec.encode([spec.tags, spec.annotations]))
        if size > MAX_METADATA:
            raise PayloadTooLargeError(f"tags/annotations: {size} bytes is over the {MAX_METADATA} byte limit")
