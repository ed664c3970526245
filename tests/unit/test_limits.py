"""chronos/limits.py: the syntax, the limit key of a job's args, and GCRA (no server)."""

from __future__ import annotations

import pytest

from chronos.limits import (
    LimitError,
    Rate,
    bump_recent,
    key_of,
    parse_rate,
    rate_now,
    reserve,
    task_limits,
    waiting,
)


@pytest.mark.parametrize("text, count, per", [("50/s", 50, 1.0), ("600/m", 600, 60.0), ("1000/h", 1000, 3600.0),
                                              (" 7 / s ", 7, 1.0)])
def test_rates_parse(text, count, per):
    r = parse_rate(text)
    assert (r.count, r.per, r.burst) == (count, per, 1)
    assert r.interval == pytest.approx(per / count)


@pytest.mark.parametrize("bad", ["10/x", "0/s", "-1/s", "abc", "", "5", "5/", "/s", "1.5/s", 5, None])
def test_malformed_rates_name_the_field(bad):
    with pytest.raises(LimitError, match=r"^rate_limit: "):
        parse_rate(bad, "rate_limit")


def test_task_limits_check_every_field():
    assert task_limits() is None
    tl = task_limits(rate_limit="5/s", burst=3, concurrency=2, limit_key="a.b")
    assert tl.rate == Rate(5, 1.0, 3) and tl.concurrency == 2 and tl.key == "a.b"
    assert task_limits(concurrency=1, limit_key=0).key == "0"
    for kwargs, field in [({"burst": 2}, "burst"), ({"concurrency": 1001}, "concurrency"),
                          ({"concurrency": True}, "concurrency"), ({"limit_key": "x"}, "limit_key"),
                          ({"concurrency": 1, "limit_key": "a..b"}, "limit_key"),
                          ({"rate_limit": "1/s", "burst": 0}, "burst")]:
        with pytest.raises(LimitError, match=f"^{field}: "):
            task_limits(**kwargs)


def test_key_of_follows_names_positions_paths_and_functions():
    args = {"customer": {"id": 7, "tags": ["a", "b"]}, "n": 1}
    assert key_of(args, "customer.id") == "7"
    assert key_of(args, "customer.tags.1") == "b"
    assert key_of([10, {"k": "v"}], "1.k") == "v"
    assert key_of([10, 20], "0") == "10"
    assert key_of(args, lambda a: f"c{a['customer']['id']}") == "c7"
    assert key_of(args, None) is None
    with pytest.raises(LimitError, match=r"^limit_key: the job's args have no 'customer.name'"):
        key_of(args, "customer.name")
    with pytest.raises(LimitError, match=r"^limit_key: .*not a string or number"):
        key_of(args, "customer")
    with pytest.raises(LimitError, match=r"^limit_key: the key function failed"):
        key_of(args, lambda a: a["nope"])
    with pytest.raises(LimitError):
        key_of([1], "3")


def test_gcra_spaces_turns_and_allows_the_burst():
    r = Rate(10, 1.0)  # one every 0.1 s
    tat, starts = 100.0, []
    for _ in range(5):
        start, tat = reserve(tat, 100.0, r)
        starts.append(start)
    assert starts == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])
    assert waiting(tat, 100.0, r) == 5
    # Idle for a while: the next start is now, not a turn in the past.
    start, tat = reserve(tat, 200.0, r)
    assert start == 200.0 and tat == pytest.approx(200.1)
    b = Rate(10, 1.0, burst=3)
    tat, starts = 0.0, []
    for _ in range(5):
        start, tat = reserve(tat, 50.0, b)
        starts.append(start)
    assert starts == pytest.approx([50.0, 50.0, 50.0, 50.1, 50.2])  # three at once, then spaced


def test_the_recent_rate():
    recent: list[tuple[int, int]] = []
    for t in [100.1, 100.5, 101.2, 102.9, 104.0, 104.5]:
        recent = bump_recent(recent, t)
    assert rate_now(recent, 105.0) == pytest.approx(6 / 5)
    assert len(bump_recent(recent, 200.0)) == 1  # old seconds dropped
