"""cron.py: field counts, aliases, zones, DST gap and fold, intervals, errors, dry runs, fire ids."""

from __future__ import annotations

from datetime import UTC, datetime, timezone
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronos.cron import (
    CronSchedule,
    IntervalSchedule,
    Schedule,
    fire_id,
    fire_times_between,
    next_n,
    parse_schedule,
    to_crontab_line,
)
from chronos.errors import ValidationError

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def ts(*args: int, tz: ZoneInfo | timezone = UTC, fold: int = 0) -> float:
    return datetime(*args, tzinfo=tz, fold=fold).timestamp()


def local(t: float, tz: ZoneInfo) -> tuple[str, str]:
    """(wall time, UTC offset) of an instant, for readable assertions."""
    d = datetime.fromtimestamp(t, tz)
    return d.strftime("%Y-%m-%d %H:%M:%S"), d.strftime("%z")


# --- expressions ----------------------------------------------------------------


def test_five_fields_fire_on_the_minute():
    s = CronSchedule("*/15 * * * *")
    assert next_n(s, ts(2026, 1, 1, 10, 7, 30), 3) == [
        ts(2026, 1, 1, 10, 15),
        ts(2026, 1, 1, 10, 30),
        ts(2026, 1, 1, 10, 45),
    ]


def test_six_fields_put_seconds_first():
    s = CronSchedule("30 */5 * * * *")
    assert next_n(s, ts(2026, 1, 1, 10, 0, 31), 2) == [ts(2026, 1, 1, 10, 5, 30), ts(2026, 1, 1, 10, 10, 30)]
    assert s.has_seconds


def test_next_after_is_strictly_after_an_exact_match():
    s = CronSchedule("0 3 * * *")
    assert s.next_after(ts(2026, 1, 1, 3, 0)) == ts(2026, 1, 2, 3, 0)
    assert s.next_after(ts(2026, 1, 1, 3, 0) - 0.001) == ts(2026, 1, 1, 3, 0)


@pytest.mark.parametrize(
    ("alias", "after", "expected"),
    [
        ("@hourly", (2026, 5, 5, 10, 20), (2026, 5, 5, 11, 0)),
        ("@daily", (2026, 5, 5, 10, 20), (2026, 5, 6, 0, 0)),
        ("@midnight", (2026, 5, 5, 10, 20), (2026, 5, 6, 0, 0)),
        ("@weekly", (2026, 5, 5, 10, 20), (2026, 5, 10, 0, 0)),  # 2026-05-10 is a Sunday
        ("@monthly", (2026, 5, 5, 10, 20), (2026, 6, 1, 0, 0)),
        ("@yearly", (2026, 5, 5, 10, 20), (2027, 1, 1, 0, 0)),
        ("@annually", (2026, 5, 5, 10, 20), (2027, 1, 1, 0, 0)),
        ("@DAILY", (2026, 5, 5, 10, 20), (2026, 5, 6, 0, 0)),
    ],
)
def test_aliases(alias, after, expected):
    assert CronSchedule(alias).next_after(ts(*after)) == ts(*expected)


def test_timezone_moves_wall_time():
    after = ts(2026, 6, 1, 0, 0)
    assert local(CronSchedule("0 9 * * *", "Europe/Berlin").next_after(after), BERLIN) == (
        "2026-06-01 09:00:00",
        "+0200",
    )
    assert CronSchedule("0 9 * * *", "Europe/Berlin").next_after(after) == ts(2026, 6, 1, 7, 0)
    assert CronSchedule("0 9 * * *", "America/New_York").next_after(after) == ts(2026, 6, 1, 13, 0)


def test_day_of_month_and_day_of_week_are_ored():
    # Vixie cron: with both restricted, either matching is enough.
    s = CronSchedule("0 0 13 * 5")
    fires = [local(t, ZoneInfo("UTC"))[0][:10] for t in next_n(s, ts(2026, 2, 1), 3)]
    assert fires == ["2026-02-06", "2026-02-13", "2026-02-20"]


# --- DST ------------------------------------------------------------------------


def test_new_york_spring_gap_fires_once_at_the_first_valid_instant():
    s = CronSchedule("30 2 * * *", "America/New_York")
    fires = next_n(s, ts(2026, 3, 7, 12, 0, tz=NY), 2)
    # 2026-03-08 02:30 does not exist in New York: it fires at 03:00 EDT, the end of the gap.
    assert local(fires[0], NY) == ("2026-03-08 03:00:00", "-0400")
    assert local(fires[1], NY) == ("2026-03-09 02:30:00", "-0400")
    assert fires[1] - fires[0] == 23.5 * 3600


def test_spring_gap_collapses_candidates_into_one_fire():
    s = CronSchedule("*/15 * * * *", "America/New_York")
    fires = next_n(s, ts(2026, 3, 8, 1, 40, tz=NY), 4)
    assert [local(t, NY) for t in fires] == [
        ("2026-03-08 01:45:00", "-0500"),
        ("2026-03-08 03:00:00", "-0400"),  # 02:00, 02:15, 02:30, 02:45 and 03:00 are one fire
        ("2026-03-08 03:15:00", "-0400"),
        ("2026-03-08 03:30:00", "-0400"),
    ]
    # The collapsed fire has the same id however it is reached.
    assert fire_id("s", fires[1]) == fire_id("s", ts(2026, 3, 8, 3, 0, tz=NY))


def test_new_york_fall_fold_fires_once_at_the_first_occurrence():
    s = CronSchedule("30 1 * * *", "America/New_York")
    fires = next_n(s, ts(2026, 10, 31, 12, 0, tz=NY), 2)
    assert local(fires[0], NY) == ("2026-11-01 01:30:00", "-0400")  # EDT, not EST
    assert local(fires[1], NY) == ("2026-11-02 01:30:00", "-0500")
    assert fires[1] - fires[0] == 25 * 3600


def test_fold_hour_is_not_repeated_for_frequent_schedules():
    s = CronSchedule("*/30 * * * *", "America/New_York")
    fires = next_n(s, ts(2026, 11, 1, 0, 50, tz=NY), 4)
    assert [local(t, NY) for t in fires] == [
        ("2026-11-01 01:00:00", "-0400"),
        ("2026-11-01 01:30:00", "-0400"),
        ("2026-11-01 02:00:00", "-0500"),  # 01:00 and 01:30 EST are skipped
        ("2026-11-01 02:30:00", "-0500"),
    ]


def test_from_inside_the_second_pass_of_a_fold():
    # 01:20 EST: 01:30 and 01:45 already fired as EDT, so the next fire is 02:00 EST.
    after = ts(2026, 11, 1, 1, 20, tz=NY, fold=1)
    assert local(CronSchedule("*/15 * * * *", "America/New_York").next_after(after), NY) == (
        "2026-11-01 02:00:00",
        "-0500",
    )
    assert local(CronSchedule("*/20 * * * * *", "America/New_York").next_after(after), NY) == (
        "2026-11-01 02:00:00",
        "-0500",
    )


def test_berlin_gap_and_fold():
    spring = CronSchedule("30 2 * * *", "Europe/Berlin")
    assert local(spring.next_after(ts(2026, 3, 29, 0, 0, tz=BERLIN)), BERLIN) == ("2026-03-29 03:00:00", "+0200")
    autumn = CronSchedule("30 2 * * *", "Europe/Berlin")
    first = autumn.next_after(ts(2026, 10, 25, 0, 0, tz=BERLIN))
    assert local(first, BERLIN) == ("2026-10-25 02:30:00", "+0200")
    assert local(autumn.next_after(first), BERLIN) == ("2026-10-26 02:30:00", "+0100")


def test_interval_ignores_dst():
    s = IntervalSchedule(3600, anchor=ts(2026, 3, 8, 0, 0, tz=NY))
    fires = next_n(s, ts(2026, 3, 8, 0, 30, tz=NY), 3)
    assert [f - fires[0] for f in fires] == [0, 3600, 7200]
    assert [local(t, NY)[0][11:] for t in fires] == ["01:00:00", "03:00:00", "04:00:00"]


# --- intervals --------------------------------------------------------------------


def test_interval_grid_and_anchor():
    s = IntervalSchedule(90, anchor=1000)
    assert s.next_after(1000) == 1090
    assert s.next_after(1089.9) == 1090
    assert s.next_after(999) == 1000
    assert s.next_after(9.5) == 10  # before the anchor the grid extends backwards
    assert s.next_after(10) == 100
    assert next_n(s, 1000, 3) == [1090, 1180, 1270]


def test_parse_every_accepts_units():
    assert parse_schedule(every="5m") == IntervalSchedule(300.0)
    assert parse_schedule(every="2h", anchor=60) == IntervalSchedule(7200.0, 60)
    assert parse_schedule(every=90) == IntervalSchedule(90)
    assert parse_schedule(cron="@daily", tz="Europe/Berlin") == CronSchedule("@daily", "Europe/Berlin")


# --- errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"cron": "61 * * * *"}, "cron:", "minute field '61'"),
        ({"cron": "0 25 * * *"}, "cron:", "hour field '25'"),
        ({"cron": "0 0 * 13 *"}, "cron:", "month field '13'"),
        ({"cron": "0 0 * * 9"}, "cron:", "day-of-week field '9'"),
        ({"cron": "75 0 0 * * *"}, "cron:", "second field '75'"),
        ({"cron": "* * *"}, "cron:", "3 fields"),
        ({"cron": "0 0 1 1 * 2026 x"}, "cron:", "7 fields"),
        ({"cron": "@reboot"}, "cron:", "unknown alias"),
        ({"cron": ""}, "cron:", "empty"),
        ({"cron": "0 0 30 2 *"}, "cron:", "never fires"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus_Mons"}, "tz:", "unknown timezone"),
        ({"every": 10, "tz": "Not/AZone"}, "tz:", "unknown timezone"),
        ({"every": 0}, "every:", "greater than 0"),
        ({"every": -30}, "every:", "greater than 0"),
        ({"every": "0s"}, "every:", "greater than 0"),
        ({"every": 0.25}, "every:", "at least 1 second"),
        ({"every": "soon"}, "every:", "not a duration"),
        ({}, "schedule:", "exactly one"),
        ({"cron": "* * * * *", "every": 5}, "schedule:", "exactly one"),
    ],
)
def test_bad_input_names_the_field(kwargs, field, fragment):
    with pytest.raises(ValidationError) as info:
        parse_schedule(**kwargs)
    message = str(info.value)
    assert message.startswith(field)
    assert fragment in message
    assert "\n" not in message


def test_constructors_validate_too():
    with pytest.raises(ValidationError, match="^tz:"):
        CronSchedule("* * * * *", "Nowhere/Land")
    with pytest.raises(ValidationError, match="^every:"):
        IntervalSchedule(0)


def test_decoding_a_stored_schedule_validates():
    with pytest.raises(msgspec.ValidationError, match="tz: unknown timezone"):
        msgspec.json.decode(b'{"expr": "* * * * *", "tz": "Atlantis/Capital"}', type=CronSchedule)
    ok = msgspec.json.decode(msgspec.json.encode(CronSchedule("@hourly", "Asia/Tokyo")), type=CronSchedule)
    assert ok == CronSchedule("@hourly", "Asia/Tokyo")


# --- dry runs, backfill, ids, export -------------------------------------------------


def test_next_n():
    s = CronSchedule("0 * * * *")
    assert next_n(s, ts(2026, 1, 1, 0, 0), 0) == []
    assert len(next_n(s, ts(2026, 1, 1, 0, 0), 24)) == 24
    with pytest.raises(ValidationError, match="^n:"):
        next_n(s, 0, -1)


def test_fire_times_between_is_half_open_and_limited():
    s = CronSchedule("0 * * * *")
    since, until = ts(2026, 1, 1, 0, 0), ts(2026, 1, 1, 3, 0)
    assert fire_times_between(s, since, until, limit=10) == [
        ts(2026, 1, 1, 1, 0),
        ts(2026, 1, 1, 2, 0),
        ts(2026, 1, 1, 3, 0),
    ]
    assert fire_times_between(s, since, until, limit=3) == next_n(s, since, 3)
    with pytest.raises(ValidationError, match="^limit: more than 2 fire times"):
        fire_times_between(s, since, until, limit=2)
    assert fire_times_between(s, until, since, limit=5) == []


def test_fire_id_is_deterministic():
    s = CronSchedule("*/5 * * * *", "Europe/Berlin")
    a = [fire_id("nightly", t) for t in next_n(s, ts(2026, 4, 1), 5)]
    b = [fire_id("nightly", t) for t in next_n(s, ts(2026, 4, 1), 5)]
    assert a == b
    assert len(set(a)) == 5
    assert a[0] == f"nightly:{int(ts(2026, 4, 1, 0, 5))}"
    assert fire_id("x", 1700000000.9) == "x:1700000000"


def test_schedules_satisfy_the_protocol():
    assert isinstance(CronSchedule("@daily"), Schedule)
    assert isinstance(IntervalSchedule(60), Schedule)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (CronSchedule("@daily", "Europe/Berlin"), "CRON_TZ=Europe/Berlin\n0 0 * * * run"),
        (CronSchedule("0 15 10 * * 1-5"), "CRON_TZ=UTC\n15 10 * * 1-5 run"),
        (IntervalSchedule(60), "CRON_TZ=UTC\n* * * * * run"),
        (IntervalSchedule(900, anchor=300), "CRON_TZ=UTC\n5-59/15 * * * * run"),
        (IntervalSchedule(3600, anchor=1200), "CRON_TZ=UTC\n20 * * * * run"),
        (IntervalSchedule(6 * 3600), "CRON_TZ=UTC\n0 */6 * * * run"),
        (IntervalSchedule(86400, anchor=ts(2026, 1, 1, 4, 30)), "CRON_TZ=UTC\n30 4 * * * run"),
        (IntervalSchedule(7 * 86400, anchor=ts(2026, 1, 4, 6, 0)), "CRON_TZ=UTC\n0 6 * * 0 run"),
    ],
)
def test_crontab_export(schedule, expected):
    assert to_crontab_line(schedule, "run") == expected
    assert to_crontab_line(schedule, "run", tz_line=False) == expected.split("\n")[-1]


@pytest.mark.parametrize(
    "schedule",
    [IntervalSchedule(90), IntervalSchedule(7 * 60), IntervalSchedule(60, anchor=30), CronSchedule("15 * * * * *")],
)
def test_crontab_export_comments_what_cron_cannot_say(schedule):
    line = to_crontab_line(schedule, "run job")
    assert line.startswith("# ")
    assert "\n" not in line
    assert line.endswith("run job")


# --- properties -----------------------------------------------------------------

_ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata", "America/Santiago"]
_EXPRS = ["*/7 * * * *", "30 2 * * *", "0 * * * *", "*/45 * * * * *", "15 1 * * 0", "@daily", "0 0 1 * *"]
# 2025-01-01 .. 2028-01-01: several DST transitions in every zone above.
_TIMES = st.floats(min_value=1735689600.0, max_value=1830297600.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(expr=st.sampled_from(_EXPRS), tz=st.sampled_from(_ZONES), t=_TIMES)
def test_next_after_is_strictly_increasing_and_skips_nothing(expr, tz, t):
    s = CronSchedule(expr, tz)
    first = s.next_after(t)
    second = s.next_after(first)
    assert t < first < second
    # Monotone: any instant between t and the first fire leads to that same fire.
    assert s.next_after((t + first) / 2) == first
    assert s.next_after(max(t, first - 0.5)) == first


@settings(max_examples=200, deadline=None)
@given(seconds=st.integers(min_value=1, max_value=10 * 86400), anchor=_TIMES, t=_TIMES)
def test_interval_next_after_is_strictly_increasing(seconds, anchor, t):
    s = IntervalSchedule(seconds, anchor)
    first = s.next_after(t)
    assert t < first <= t + seconds
    assert s.next_after(first) == pytest.approx(first + seconds)
