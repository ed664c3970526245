"""Parsers for option values: durations, times, JSON and key=value arguments.

Every bad value raises BadOption, whose one-line message names the option;
the CLI prints it and exits 2 (a usage error).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from chronos import codec
from chronos.errors import ChronosError, ValidationError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?")  # 1e20 is a number: the range check names it
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class BadOption(ChronosError):
    """A command-line value that does not parse; the message starts with the option's name."""

    exit_code = 2

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option


def parse_duration(value: str, option: str) -> float:
    """``30s``, ``5m``, ``2h``, ``1d``, ``1h30m``, ``250ms`` or a bare number of seconds."""
    text = value.strip().lower()
    if _NUMBER.fullmatch(text):
        return float(text)
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise BadOption(option, f"{value!r} is not a duration (examples: 30s, 5m, 2h, 1d, 1h30m)")
    return total


def parse_time(value: str, option: str) -> float:
    """An ISO 8601 time; without an offset it is local time. Returns epoch seconds."""
    text = value.strip()
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise BadOption(
            option, f"{value!r} is not an ISO 8601 time (examples: 2030-01-31T09:30, 2030-01-31 09:30:00+02:00)"
        ) from None
    try:
        return dt.astimezone().timestamp() if dt.tzinfo is None else dt.timestamp()
    except (ValueError, OverflowError, OSError):  # e.g. year 1 in a zone east of UTC
        raise BadOption(option, f"{value!r} is outside the times chronos can handle") from None


def parse_time_or_ago(value: str, option: str, now: float) -> float:
    """An ISO 8601 time, or a duration meaning that long ago (``2h``): for --since/--until."""
    try:
        return now - parse_duration(value, option)
    except BadOption:
        pass
    try:
        return parse_time(value, option)
    except BadOption:
        raise BadOption(option, f"{value!r} is neither an ISO 8601 time nor a duration ago "
                                "(examples: 2030-01-31T09:30, 6h, 2d)") from None


def parse_json(value: str, option: str) -> Any:
    try:
        return codec.from_json(value)
    except ValidationError as exc:
        raise BadOption(option, str(exc)) from None


def parse_pairs(pairs: list[str], option: str) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON (``n=5``, ``ok=true``) keeps its type, else it is a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise BadOption(option, f"{pair!r} is not key=value")
        try:
            out[key] = codec.from_json(raw)
        except ValidationError:
            out[key] = raw
    return out


def parse_csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def is_job_id(value: str) -> bool:
    """Job ids are KV keys: letters, digits, '-' and '_' (checked before asking the server)."""
    return bool(_JOB_ID.fullmatch(value))
