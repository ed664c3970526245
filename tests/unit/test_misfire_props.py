"""Misfire policies as pure functions: ``cron.plan_due_fires`` against a small reference model.

The model enumerates every fire of an interval schedule in ``(base, now]`` by arithmetic and
applies docs/schedules.md literally: a fire at most ``grace`` old is on time and always fires;
of the older (missed) ones, ``skip`` makes none, ``run-once`` the latest, ``catch-up N`` the
latest N. The planner instead looks back from the cutoff in doubling windows, so the property
also covers long outages it never walks.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronos.cron import IntervalSchedule, parse_schedule, plan_due_fires
from chronos.errors import ValidationError

POLICIES = ("skip", "run-once", "catch-up")


def reference(seconds: float, anchor: float, base: float, now: float, grace: float,
              misfire: str, n: int) -> tuple[list[float], float | None]:
    """(the fires to make, the latest due fire) by brute force."""
    k = math.floor((base - anchor) / seconds) - 2
    due = []
    while (t := anchor + k * seconds) <= now:
        if t > base:
            due.append(t)
        k += 1
    missed = [t for t in due if now - t > grace]
    on_time = [t for t in due if now - t <= grace]
    keep = {"skip": 0, "run-once": 1, "catch-up": n}[misfire]
    chosen = missed[len(missed) - keep:] if keep else []
    return chosen + on_time, (due[-1] if due else None)


@settings(max_examples=600, deadline=None)
@given(
    seconds=st.one_of(st.integers(1, 120).map(float), st.floats(1.0, 90.0, allow_nan=False)),
    anchor=st.integers(0, 10_000).map(float),
    base_offset=st.floats(0, 500, allow_nan=False),
    downtime=st.one_of(st.floats(0, 400, allow_nan=False), st.floats(400, 200_000, allow_nan=False)),
    grace=st.one_of(st.just(11.0), st.floats(0, 130, allow_nan=False)),
    misfire=st.sampled_from(POLICIES),
    n=st.integers(1, 25),
)
def test_plan_matches_the_reference_model(seconds, anchor, base_offset, downtime, grace, misfire, n):
    base = anchor + base_offset  # the last fire made (or the creation time)
    now = base + downtime
    want, latest = reference(seconds, anchor, base, now, grace, misfire, n)
    plan = plan_due_fires(IntervalSchedule(seconds, anchor), base, now, grace=grace, misfire=misfire,
                          catch_up_max=n, limit=10_000)
    assert plan.fires == want
    assert plan.latest == latest
    assert plan.fires == sorted(set(plan.fires))
    assert all(base < t <= now for t in plan.fires)


@settings(max_examples=150, deadline=None)
@given(
    cron=st.sampled_from(["*/5 * * * *", "*/7 * * * *", "0 9-17 * * 1-5", "30 */3 * * * *", "30 2 * * *"]),
    tz=st.sampled_from(["UTC", "America/New_York", "Europe/Berlin"]),
    base=st.integers(1_767_225_600, 1_767_225_600 + 365 * 86400).map(float),
    downtime=st.floats(0, 3 * 86400, allow_nan=False),
    grace=st.floats(0, 200, allow_nan=False),
    misfire=st.sampled_from(POLICIES),
    n=st.integers(1, 12),
)
def test_cron_plan_matches_a_walk_from_base(cron, tz, base, downtime, grace, misfire, n):
    """For cron timings the reference walks every fire from ``base`` (the planner does not)."""
    timing = parse_schedule(cron=cron, tz=tz)
    now = base + downtime
    due, t = [], timing.next_after(base)
    while t <= now:
        due.append(t)
        t = timing.next_after(t)
    missed = [t for t in due if now - t > grace]
    keep = {"skip": 0, "run-once": 1, "catch-up": n}[misfire]
    want = (missed[len(missed) - keep:] if keep else []) + [t for t in due if now - t <= grace]
    plan = plan_due_fires(timing, base, now, grace=grace, misfire=misfire, catch_up_max=n, limit=10_000)
    assert plan.fires == want
    assert plan.latest == (due[-1] if due else None)


# The cases the issue reported (every 10 s, scheduler down 61 s, grace 11 s). The last fire made
# was at +0 (the fires are at +4, +14, ... in the issue; shifted here), the scheduler is back at
# +61: due are +10..+60, of which +50 and +60 are inside the grace.
@pytest.mark.parametrize(
    ("misfire", "n", "expected"),
    [
        ("skip", 1, [50, 60]),
        ("run-once", 1, [40, 50, 60]),  # the latest missed fire, then the on-time ones
        ("catch-up", 3, [20, 30, 40, 50, 60]),  # the cap applies to the missed ones only
        ("catch-up", 2, [30, 40, 50, 60]),
    ],
)
def test_the_reported_cases(misfire, n, expected):
    plan = plan_due_fires(IntervalSchedule(10.0, 0.0), 0.0, 61.0, grace=11.0, misfire=misfire,
                          catch_up_max=n, limit=1000)
    assert plan.fires == expected and plan.latest == 60


def test_a_fire_exactly_at_the_grace_is_on_time():
    plan = plan_due_fires(IntervalSchedule(10.0, 0.0), 0.0, 21.0, grace=11.0, misfire="skip",
                          catch_up_max=1, limit=1000)
    assert plan.fires == [10.0, 20.0]


def test_a_long_outage_is_not_walked():
    # Ten years of one-second fires: the planner looks back from the cutoff only.
    plan = plan_due_fires(IntervalSchedule(1.0, 0.0), 0.0, 10 * 365 * 86400.0, grace=11.0,
                          misfire="catch-up", catch_up_max=3, limit=1000)
    now = 10 * 365 * 86400.0
    assert plan.fires == [now - 14, now - 13, now - 12] + [now - i for i in range(11, -1, -1)]


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValidationError, match="misfire"):
        plan_due_fires(IntervalSchedule(10.0, 0.0), 0.0, 61.0, grace=11.0, misfire="later",
                       catch_up_max=1, limit=1000)
