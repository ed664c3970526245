"""One msgpack Encoder, one typed Decoder per message type, versioned envelopes.

Nothing else in chronos encodes or decodes wire or stored bytes.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import msgspec

from .errors import MalformedMessageError, UnsupportedVersionError, ValidationError
from .lease import LeaseHolder
from .models import (
    CancelRequest,
    DLQEntry,
    EventBatch,
    JobMessage,
    JobRecord,
    TaskInfo,
    WorkerHeartbeat,
)

CURRENT_VERSION = 1

_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()

T = TypeVar("T")

_decoders: dict[type, msgspec.msgpack.Decoder] = {
    t: msgspec.msgpack.Decoder(t)
    for t in (JobMessage, JobRecord, DLQEntry, EventBatch, WorkerHeartbeat, TaskInfo, CancelRequest, LeaseHolder)
}


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode(data: bytes, typ: type[T]) -> T:
    """Decode ``data`` as ``typ``; a malformed payload raises MalformedMessageError with the reason."""
    try:
        obj = _decoders[typ].decode(data)
    except msgspec.ValidationError as exc:
        raise MalformedMessageError(f"invalid {typ.__name__}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedMessageError(f"not a msgpack {typ.__name__}: {exc}") from None
    version = getattr(obj, "v", CURRENT_VERSION)
    if version > CURRENT_VERSION:
        raise UnsupportedVersionError(
            f"{typ.__name__} has version {version}; this chronos understands up to {CURRENT_VERSION}"
        )
    return obj


def to_builtins(obj: Any) -> Any:
    """Plain dicts and lists, for JSON output."""
    return msgspec.to_builtins(obj)


def to_json(obj: Any) -> bytes:
    return _json_encoder.encode(obj)


def from_json(data: str | bytes) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        if _lone_surrogate(data):  # msgspec says "Input data was truncated" for these
            raise ValidationError("invalid JSON: a \\ud800-\\udfff escape outside a surrogate pair "
                                  "is not text") from None
        raise ValidationError(f"invalid JSON: {exc}") from None


def _lone_surrogate(data: str | bytes) -> bool:
    """Whether JSON msgspec refused is valid but for an escaped lone surrogate (Python's json takes those)."""
    if b"\\u" not in (data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")):
        return False
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


_SCALARS = (type(None), bool, int, str)


def check_json_compatible(value: Any, field: str = "args") -> None:
    """Raise ValidationError unless ``value`` is made of JSON types only (dict keys must be strings)."""
    if type(value) in _SCALARS or (type(value) in (list, dict) and not value):
        return  # the common cases (no args, no result) without a walk: this runs once per job
    try:
        _walk(value, field)
    except RecursionError:
        raise ValidationError(f"{field}: nested too deeply (or refers to itself)") from None


def _walk(v: Any, path: str) -> None:
    if v is None or isinstance(v, (bool, int, str)):
        return
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValidationError(f"{path}: {v} is not a JSON number")
        return
    if isinstance(v, (list, tuple)):
        for i, item in enumerate(v):
            _walk(item, f"{path}[{i}]")
        return
    if isinstance(v, dict):
        for k, item in v.items():
            if not isinstance(k, str):
                raise ValidationError(f"{path}: key {k!r} is not a string")
            _walk(item, f"{path}.{k}")
        return
    raise ValidationError(f"{path}: {type(v).__name__} is not JSON-compatible")


def cap_result(value: Any, limit: int) -> tuple[Any, bool]:
    """Return (value, truncated). A result too big or not JSON-compatible is replaced by a short note."""
    if value is None:
        return None, False
    try:
        if not isinstance(value, (str, int, float, bool, list, dict)):
            # Structs, dataclasses, datetimes, enums...: stored as their JSON form, so a task
            # handle's result() converts them back to the declared return type.
            value = msgspec.to_builtins(value)
        check_json_compatible(value, "result")
        size = len(_encoder.encode(value))
    except (ValidationError, TypeError):
        return repr(value)[:200], True
    if size <= limit:
        return value, False
    return f"<result of {size} bytes dropped: over the {limit} byte limit>", True


# --- schedules -------------------------------------------------------------------
from .models import Schedule

_decoders[Schedule] = msgspec.msgpack.Decoder(Schedule)
