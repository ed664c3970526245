"""What a job spec may hold: the limits and ``check_spec``, run before any write.

Pure (no I/O), so a refused job leaves nothing behind. ``submit.Submitter.build_spec`` turns
submit arguments into a checked ``JobSpec``; ``check_spec`` alone is the bulk path's check.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from .. import codec
from ..errors import PayloadTooLargeError, ValidationError
from ..ids import key_digest
from ..models import Backoff, JobSpec, Uniqueness
from ..subjects import PRIORITIES, is_valid_token

MAX_TASK_NAME = 256
MAX_UNIQUE_KEY = 1024  # bytes; it travels in a Nats-Msg-Id header
MAX_METADATA = 16 * 1024  # tags and annotations together, encoded
MAX_TIMEOUT = 366 * 86400.0
LATEST_RUN_AT = 253402128000.0  # 9999-12-30T00:00:00Z: dates show in any local zone up to here
UNIQUE_MODES = ("while_active",)  # ``unique=``; debounce is its own option (``debounce=``)
MAX_DEBOUNCE = 366 * 86400.0
DEBOUNCE_MAX_WAIT_FACTOR = 10  # without ``debounce_max``: a stream of submits postpones a run at most 10 windows


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
    if (spec.run_at is None and spec.timeout is None and spec.unique_key is None and spec.unique is None and not spec.tags
            and not spec.annotations and spec.backoff == _DEFAULT_BACKOFF and type(spec.max_attempts) is int
            and spec.max_attempts >= 1 and type(spec.args) in (list, dict)
            and (spec.task, spec.queue, spec.priority) in _GOOD_NAMES):
        return  # the bulk-submit case: a few field reads instead of the checks below
    _check_spec(spec)
    if len(_GOOD_NAMES) < 10_000:
        _GOOD_NAMES.add((spec.task, spec.queue, spec.priority))


def uniqueness(task: str, args: Any, *, unique: Any = None, unique_key: str | None = None,
               debounce: Any = None, debounce_max: Any = None) -> Uniqueness | None:
    """The ``Uniqueness`` of a submit's ``unique``/``debounce`` options, or None (no such option:
    ``unique_key`` alone keeps its older meaning, a dedupe inside the duplicate window).
    Every problem names its field."""
    if unique is None and debounce is None:
        if debounce_max is not None:
            raise ValidationError("debounce_max: only with debounce")
        return None
    if unique is not None:
        mode = unique.replace("-", "_") if isinstance(unique, str) else unique
        if mode not in UNIQUE_MODES:
            raise ValidationError(f"unique: {unique!r} is not a mode (one of: {', '.join(UNIQUE_MODES)})")
        if debounce is not None:
            raise ValidationError("debounce: give either unique or debounce, not both (a debounce is unique while scheduled)")
    max_wait = None
    if debounce is not None:
        if not _is_number(debounce) or not math.isfinite(debounce) or debounce <= 0:
            raise ValidationError("debounce: must be a positive number of seconds")
        if debounce > MAX_DEBOUNCE:
            raise ValidationError(f"debounce: must be at most {MAX_DEBOUNCE:g} seconds (a year)")
        if debounce_max is None:
            max_wait = float(debounce) * DEBOUNCE_MAX_WAIT_FACTOR
        elif not _is_number(debounce_max) or not math.isfinite(debounce_max) or debounce_max < debounce:
            raise ValidationError("debounce_max: must be a number of seconds, at least the debounce")
        else:
            max_wait = float(debounce_max)
    elif debounce_max is not None:
        raise ValidationError("debounce_max: only with debounce")
    if unique_key is None:
        if debounce is not None and not args:
            raise ValidationError("debounce: needs a key: give unique_key, or args to tell submits apart")
        key = "args:" + key_digest(msgspec.json.encode(args, order="sorted").decode())
    else:
        key = unique_key
    return Uniqueness(mode="debounce" if debounce is not None else "while_active", key=key,
                      debounce=float(debounce) if debounce is not None else None, max_wait=max_wait)


def unique_options(unique: Any = None, debounce: Any = None, debounce_max: Any = None) -> dict[str, Any]:
    """The unique/debounce submit options checked without args (a task's defaults, ``with_options``):
    normalised, or ValidationError naming the field."""
    probe = uniqueness("", [0], unique=unique, debounce=debounce, debounce_max=debounce_max)
    out: dict[str, Any] = {}
    if probe is not None:
        if probe.mode == "while_active":
            out["unique"] = "while_active"
        else:
            out["debounce"] = probe.debounce
            if debounce_max is not None:
                out["debounce_max"] = probe.max_wait
    return out


def unique_digest(spec: JobSpec) -> str:
    """Where the holder of ``spec``'s unique-while-active or debounce key is kept: per mode and task
    (an explicit key names a job of this task, not of any task)."""
    u = spec.unique
    assert u is not None
    return key_digest(f"{u.mode}\0{spec.task}\0{u.key}")


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
    u = spec.unique
    if u is not None:
        if spec.unique_key is not None:
            raise ValidationError("unique_key: with unique or debounce the key is the unique's own")
        if not isinstance(u, Uniqueness) or u.mode not in (*UNIQUE_MODES, "debounce"):
            raise ValidationError("unique: not a known mode")
        if not isinstance(u.key, str) or not u.key or not _printable(u.key) or len(u.key.encode()) > MAX_UNIQUE_KEY:
            raise ValidationError(f"unique_key: must be 1 to {MAX_UNIQUE_KEY} bytes of printable UTF-8 text")
        if u.mode == "debounce":
            if not _is_number(u.debounce) or not math.isfinite(u.debounce) or not 0 < u.debounce <= MAX_DEBOUNCE:
                raise ValidationError("debounce: must be a positive number of seconds")
            if u.max_wait is not None and (not _is_number(u.max_wait) or not math.isfinite(u.max_wait)
                                           or u.max_wait < u.debounce):
                raise ValidationError("debounce_max: must be a number of seconds, at least the debounce")
        elif u.debounce is not None or u.max_wait is not None:
            raise ValidationError("debounce: only in debounce mode")
    for t in spec.tags:
        if not isinstance(t, str) or not t or not _utf8(t) or not _printable(t):
            # A tag is a label shown in one table cell and matched whole by --tag: no CR, LF, tab.
            raise ValidationError("tags: every tag must be non-empty printable UTF-8 text (no control characters)")
    for k, v in spec.annotations.items():
        if not isinstance(k, str) or not isinstance(v, str) or not _utf8(k) or not _utf8(v):
            raise ValidationError("annotations: keys and values must be UTF-8 strings")
    if spec.tags or spec.annotations:
        size = len(codec.encode([spec.tags, spec.annotations]))
        if size > MAX_METADATA:
            raise PayloadTooLargeError(f"tags/annotations: {size} bytes is over the {MAX_METADATA} byte limit")
