"""Option parsers and output helpers (no server needed)."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest

from chronos.models import JobSpec
from chronos.cli._output import human_duration, plain, relative
from chronos.cli._parse import BadOption, parse_csv, parse_duration, parse_pairs, parse_time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("250ms", 0.25), ("90", 90),
     ("1.5h", 5400), ("1w", 604800), ("2M", 120)],
)
def test_durations(text, seconds):
    assert parse_duration(text, "--in") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "m", "5x", "5 m", "1h 30m", "-5s", "h1", "5m!"])
def test_bad_durations_name_the_option(text):
    with pytest.raises(BadOption, match=r"^--in: .* is not a duration") as info:
        parse_duration(text, "--in")
    assert info.value.exit_code == 2


def test_times():
    assert parse_time("2030-01-31T09:30:00+00:00", "--at") == datetime(2030, 1, 31, 9, 30, tzinfo=timezone.utc).timestamp()
    assert parse_time("2030-01-31T09:30:00Z", "--at") == datetime(2030, 1, 31, 9, 30, tzinfo=timezone.utc).timestamp()
    # No offset: local time.
    assert parse_time("2030-01-31 09:30", "--at") == datetime(2030, 1, 31, 9, 30).timestamp()
    with pytest.raises(BadOption, match="^--at: 'tomorrow' is not an ISO 8601 time"):
        parse_time("tomorrow", "--at")


def test_pairs_keep_json_types():
    assert parse_pairs(["n=5", "ok=true", "name=bob", "list=[1,2]", "empty="], "--arg") == {
        "n": 5, "ok": True, "name": "bob", "list": [1, 2], "empty": "",
    }
    with pytest.raises(BadOption, match="^--arg: '=1' is not key=value"):
        parse_pairs(["=1"], "--arg")


def test_csv():
    assert parse_csv(" a, b,,c ") == ["a", "b", "c"]
    assert parse_csv(None) == []


def test_relative_hints():
    assert relative(100, 100.2) == "now"
    assert relative(95, 100) == "5s ago"
    assert relative(280, 100) == "in 3m"
    assert relative(100 + 5400, 100) == "in 1h30m"
    assert relative(100 - 90061, 100) == "1d1h ago"
    assert human_duration(0.25) == "250ms"
    assert human_duration(2.5) == "2.5s"


def test_json_output_keeps_default_fields():
    spec = JobSpec(task="t")
    assert "queue" not in msgspec.to_builtins(spec)  # the wire format omits defaults
    out = plain(spec)
    assert out["queue"] == "default" and out["tags"] == [] and out["backoff"]["kind"] == "exponential"
