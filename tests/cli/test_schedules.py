"""`chronos schedules add|edit|list|get|next|pause|resume|remove|backfill|export-crontab`."""

from __future__ import annotations

import json
import re
import shlex
import time
from datetime import UTC, datetime

import pytest

from chronos.embedded import free_port

from .conftest import cli_json, items, one_error_line


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


@pytest.fixture
def tasks(register_tasks):
    register_tasks("t.add", "t.boom")


def test_add_list_get_remove(cli, tasks):
    r = cli("schedules", "add", "nightly", "t.add", "--cron", "30 2 * * *", "--tz", "Europe/Berlin",
            "--args", "[1, 2]", "--priority", "high", "--timeout", "90s", "--max-attempts", "3",
            "--overlap", "skip", "--misfire", "catch-up", "--catch-up-max", "4")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("added schedule nightly: t.add cron 30 2 * * * (Europe/Berlin) on default/high; next fire ")
    added = cli_json(cli, "schedules", "add", "tick", "t.add", "--every", "5m", "--arg", "a=1", "--arg", "b=2")
    assert (added["every"], added["args"], added["cron"], added["paused"]) == (300.0, {"a": 1, "b": 2}, None, False)
    assert added["next_fire_time"] == added["anchor"] + 300

    listing = items(cli, "schedules", "list")
    assert [s["name"] for s in listing] == ["nightly", "tick"]
    nightly = listing[0]
    # Stable keys: the stored fields, then what is computed.
    for key in ("name", "task", "args", "cron", "every", "tz", "queue", "priority", "timeout", "max_attempts",
                "overlap", "misfire", "catch_up_max", "paused", "paused_until", "last_fire_time", "last_job_id",
                "created_at", "updated_at", "next_fire_time", "paused_now", "last_job_fire_time", "last_job_state"):
        assert key in nightly
    assert (nightly["tz"], nightly["timeout"], nightly["max_attempts"], nightly["overlap"], nightly["misfire"],
            nightly["catch_up_max"]) == ("Europe/Berlin", 90.0, 3, "skip", "catch-up", 4)

    human = cli("schedules", "list")
    assert human.exit_code == 0, human.output
    header = human.stdout.splitlines()[0].split()
    assert header == ["NAME", "WHEN", "TZ", "NEXT", "FIRE", "LAST", "FIRE", "PAUSED", "TASK"]
    row = next(line for line in human.stdout.splitlines() if line.startswith("tick"))
    assert "every 5m" in row and re.search(r"\d\d:\d\d(:\d\d)? \(in [45]m", row) and "t.add" in row
    assert "2 schedules" in human.stdout

    shown = cli("schedules", "get", "nightly")
    assert shown.exit_code == 0, shown.output
    for text in ("cron 30 2 * * *", "Europe/Berlin", "default / high", "catch-up (at most 4)", "1m30s"):
        assert text in shown.stdout
    assert re.search(r"next fire\s+\w{3} \d{4}-\d\d-\d\d 02:30:00 CES?T \(\+0[12]00\), in ", shown.stdout)
    assert cli_json(cli, "schedules", "get", "tick")["name"] == "tick"

    assert cli("schedules", "remove", "tick").stdout.strip() == "removed schedule tick"
    assert cli_json(cli, "schedules", "remove", "nightly") == {"removed": "nightly"}
    assert items(cli, "schedules", "list") == []
    assert cli("schedules", "list").stdout.strip() == "no schedules"


def test_list_by_pattern_and_global_json(cli, tasks):
    for name in ("report-a", "report-b", "cleanup"):
        assert cli("schedules", "add", name, "t.add", "--every", "1h").exit_code == 0
    assert [s["name"] for s in items(cli, "schedules", "list", "--match", "report-*")] == ["report-a", "report-b"]
    r = cli("--json", "schedules", "list")
    assert [s["name"] for s in json.loads(r.stdout)["items"]] == ["cleanup", "report-a", "report-b"]
    assert cli("schedules", "list", "--match", "x*").stdout.strip() == "no schedule matches 'x*'"


def test_edit(cli, tasks):
    cli("schedules", "add", "e", "t.add", "--every", "1h")
    r = cli("schedules", "edit", "e", "--cron", "0 9 * * 1-5", "--tz", "America/New_York", "--priority", "low")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "updated schedule e: cron, priority, tz"
    s = cli_json(cli, "schedules", "get", "e")
    assert (s["cron"], s["every"], s["tz"], s["priority"]) == ("0 9 * * 1-5", None, "America/New_York", "low")
    s = cli_json(cli, "schedules", "edit", "e", "--task", "t.boom", "--args", '{"message": "m"}')
    assert (s["task"], s["args"]) == ("t.boom", {"message": "m"})


def test_next_in_the_schedules_timezone(cli, tasks):
    cli("schedules", "add", "ny", "t.add", "--cron", "30 2 * * *", "--tz", "America/New_York")
    report = cli_json(cli, "schedules", "next", "ny", "--count", "3")
    assert (report["name"], report["tz"], report["when"]) == ("ny", "America/New_York", "cron 30 2 * * *")
    times = [f["at"] for f in report["fire_times"]]
    assert len(times) == 3 and times == sorted(times) and times[0] > time.time()
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT0[23]:[03]0:00-0[45]:00", f["wall"]) for f in report["fire_times"])
    human = cli("schedules", "next", "ny", "--count", "2")
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    assert lines[0] == "ny: cron 30 2 * * *, times in America/New_York"
    assert len(lines) == 3 and all(re.search(r" E[SD]T \(-0[45]00\)  in \d", ln) for ln in lines[1:])


def test_next_dry_run_of_a_definition(cli):
    report = cli_json(cli, "schedules", "next", "--cron", "0 12 * * *", "--tz", "Asia/Tokyo", "--count", "2")
    assert report["name"] is None and report["tz"] == "Asia/Tokyo"
    assert [f["wall"][10:] for f in report["fire_times"]] == ["T12:00:00+09:00"] * 2
    every = cli_json(cli, "schedules", "next", "--every", "90s", "--count", "3")
    at = [f["at"] for f in every["fire_times"]]
    assert at[1] - at[0] == 90 and at[2] - at[1] == 90


def test_pause_resume_by_name_and_pattern(cli, tasks):
    for name in ("etl-a", "etl-b", "mail"):
        cli("schedules", "add", name, "t.add", "--every", "1m")
    r = cli("schedules", "pause", "mail")
    assert r.stdout.strip() == "paused mail (until resumed)"
    assert cli_json(cli, "schedules", "get", "mail")["next_fire_time"] is None
    assert "yes" in next(ln for ln in cli("schedules", "list").stdout.splitlines() if ln.startswith("mail"))

    paused = items(cli, "schedules", "pause", "--match", "etl-*", "--for", "2h")
    assert [s["name"] for s in paused] == ["etl-a", "etl-b"]
    assert all(abs(s["paused_until"] - (time.time() + 7200)) < 60 for s in paused)
    row = next(ln for ln in cli("schedules", "list").stdout.splitlines() if ln.startswith("etl-a"))
    assert re.search(r"until .*\(in (1h59m|2h)\)", row)

    until = datetime.now().astimezone().replace(microsecond=0).timestamp() + 86400
    r = cli("schedules", "pause", "mail", "--until", datetime.fromtimestamp(until).isoformat())
    assert r.exit_code == 0 and r.stdout.startswith("paused mail until ")
    assert cli_json(cli, "schedules", "get", "mail")["paused_until"] == until

    assert [s["name"] for s in items(cli, "schedules", "resume", "--match", "*")] == ["etl-a", "etl-b", "mail"]
    assert not any(s["paused"] for s in items(cli, "schedules", "list"))
    assert cli("schedules", "resume", "mail").stdout.strip() == "resumed mail"


def test_add_paused(cli, tasks):
    s = cli_json(cli, "schedules", "add", "later", "t.add", "--every", "1m", "--paused")
    assert s["paused"] and s["paused_now"] and s["next_fire_time"] is None
    assert cli("schedules", "add", "later2", "t.add", "--every", "1m", "--paused").stdout.endswith("; paused\n")


def test_backfill_is_idempotent(cli, tasks):
    s = cli_json(cli, "schedules", "add", "bf", "t.add", "--every", "1m", "--args", "[1, 1]")
    since = iso(s["anchor"] - 300)  # six fires: anchor - 300 .. anchor
    first = cli_json(cli, "schedules", "backfill", "bf", "--since", since)
    assert (len(first["fires"]), first["made"], first["existing"]) == (6, 6, 0)
    assert [f["fire_time"] for f in first["fires"]] == [s["anchor"] - 300 + 60 * i for i in range(6)]
    r = cli("schedules", "backfill", "bf", "--since", since)
    assert r.exit_code == 0, r.output
    assert re.fullmatch(r"backfilled bf: 6 fire times in .* \.\. .*; 0 jobs made, 6 existed already\n", r.stdout)
    job = cli_json(cli, "jobs", "get", first["fires"][0]["job_id"])
    assert (job["schedule_id"], job["fire_time"], job["spec"]["args"]) == ("bf", s["anchor"] - 300, [1, 1])
    # An empty window says so.
    r = cli("schedules", "backfill", "bf", "--since", iso(s["anchor"] - 50), "--until", iso(s["anchor"] - 10))
    assert r.exit_code == 0 and "nothing to do" in r.stdout


def test_backfill_many_with_progress_and_the_limit(cli, tasks):
    cli("schedules", "add", "fast", "t.add", "--every", "1s")
    r = cli("schedules", "backfill", "fast", "--since", "250s")  # over 200 fires: with a progress bar
    assert r.exit_code == 0, r.output
    assert re.search(r"backfilled fast: 25\d fire times in .*; 25\d jobs made, 0 existed already", r.stdout)
    again = cli_json(cli, "schedules", "backfill", "fast", "--since", "200s")
    assert again["existing"] >= 195 and again["made"] <= 5  # only fires newer than the first run are new
    r = cli("schedules", "backfill", "fast", "--since", "5m", "--until", "4m")
    assert r.exit_code == 0, r.output
    assert "60 fire times" in r.stdout or "61 fire times" in r.stdout
    # Over scheduler.max_backfill: refused, nothing made.
    r = cli("schedules", "backfill", "fast", "--since", "2h", "--until", "1h", env={"CHRONOS_SCHEDULER__MAX_BACKFILL": "100"})
    assert r.exit_code == 2  # a value the server refuses: bad input
    line = one_error_line(r)
    assert line.startswith("error: since: the window") and "scheduler.max_backfill = 100" in line


def test_export_crontab(cli, tasks):
    cli("schedules", "add", "nightly", "t.add", "--cron", "0 3 * * *", "--tz", "Europe/Paris", "--args", "[5, 5]")
    cli("schedules", "add", "held", "t.add", "--every", "1h", "--paused")
    r = cli("schedules", "export-crontab")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("# chronos schedules, namespace ")
    i = lines.index("CRON_TZ=Europe/Paris")
    assert lines[i - 1].startswith("# chronos: name=nightly when='cron 0 3 * * *' tz=Europe/Paris task=t.add")
    minute, hour, dom, month, dow, command = lines[i + 1].split(" ", 5)
    assert (minute, hour, dom, month, dow) == ("0", "3", "*", "*", "*")
    assert shlex.split(command)[:5] == ["chronos", "submit", "t.add", "--args", "[5,5]"]
    held = [ln for ln in lines if ln.startswith("# chronos: name=held")]  # (the namespace may hold "3600")
    assert held[0].startswith("# chronos: name=held when='every 1h'") and held[0].endswith(" paused")
    start = lines.index(held[0])
    block = lines[start : lines.index("", start)]
    assert block[1:] == ["# CRON_TZ=UTC", block[2]] and block[2].startswith("# ")  # a paused entry is commented out
    again = cli_json(cli, "schedules", "export-crontab")["crontab"].splitlines()
    # The same crontab, but for the header's export time (two exports may straddle a second).
    assert again[1:] == lines[1:] and again[0].startswith("# chronos schedules, namespace ")


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["add", "n", "t.add"], "--cron: give one of --cron EXPR or --every DURATION"),
        (["add", "n", "t.add", "--cron", "* * * * *", "--every", "1m"], "--cron: give either"),
        (["add", "n", "t.add", "--cron", "61 * * * *"], "--cron: minute field '61'"),
        (["add", "n", "t.add", "--cron", "* * *"], "--cron: '* * *' has 3 fields"),
        (["add", "n", "t.add", "--cron", "@sometimes"], "--cron: unknown alias '@sometimes'"),
        (["add", "n", "t.add", "--cron", "0 0 30 2 *"], "--cron: '0 0 30 2 *' never fires"),
        (["add", "n", "t.add", "--every", "0"], "--every: interval must be greater than 0"),
        (["add", "n", "t.add", "--every", "500ms"], "--every: interval must be at least 1 second"),
        (["add", "n", "t.add", "--every", "soon"], "--every: 'soon' is not a duration"),
        (["add", "n", "t.add", "--cron", "* * * * *", "--tz", "Mars/Base"], "--tz: unknown timezone 'Mars/Base'"),
        (["add", "n", "t.add", "--every", "1m", "--args", "[1,"], "--args: invalid JSON"),
        (["add", "n", "t.add", "--every", "1m", "--args", '"x"'], "--args: must be a JSON list"),
        (["add", "n", "t.add", "--every", "1m", "--args", "[]", "--arg", "a=1"], "--arg: give either"),
        (["add", "n", "t.add", "--every", "1m", "--arg", "novalue"], "--arg: 'novalue' is not key=value"),
        (["add", "n", "t.add", "--every", "1m", "--priority", "urgent"], "--priority: 'urgent' is not one of"),
        (["add", "n", "t.add", "--every", "1m", "--overlap", "sometimes"], "--overlap: 'sometimes' is not one of"),
        (["add", "n", "t.add", "--every", "1m", "--misfire", "never"], "--misfire: 'never' is not one of"),
        (["add", "n", "t.add", "--every", "1m", "--catch-up-max", "0"], "--catch-up-max: must be at least 1"),
        (["add", "n", "t.add", "--every", "1m", "--timeout", "0"], "--timeout: must be more than zero"),
        (["add", "n", "t.add", "--every", "1m", "--max-attempts", "0"], "--max-attempts: must be at least 1"),
        (["edit", "n"], "edit: nothing to change"),
        (["edit", "n", "--cron", "bad"], "--cron: 'bad' has 1 fields"),
        (["next"], "--cron: give one of"),
        (["next", "n", "--count", "0"], "--count: must be from 1 to 10000"),
        (["next", "n", "--cron", "* * * * *"], "--cron: give a schedule NAME or"),
        (["pause"], "--match: give a schedule NAME or --match GLOB"),
        (["pause", "n", "--match", "x*"], "--match: give a schedule NAME or --match GLOB"),
        (["pause", "n", "--until", "2001-01-01T00:00"], "--until: '2001-01-01T00:00' is not in the future"),
        (["pause", "n", "--until", "tomorrow"], "--until: 'tomorrow' is not an ISO 8601 time"),
        (["pause", "n", "--until", "2099-01-01T00:00", "--for", "1h"], "--for: give either --until or --for"),
        (["pause", "n", "--for", "a while"], "--for: 'a while' is not a duration"),
        (["resume"], "--match: give a schedule NAME or --match GLOB"),
        (["backfill", "n", "--since", "last week"], "--since: 'last week' is neither an ISO 8601 time nor a duration"),
        (["backfill", "n", "--since", "1h", "--until", "x"], "--until: 'x' is neither"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(cli, args, needle):
    r = cli("schedules", *args)
    assert r.exit_code == 2, r.output
    assert needle in one_error_line(r)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["backfill", "n"], "Missing option '--since'"),
        (["add", "n"], "Missing argument 'task'"),
        (["next", "n", "--count", "many"], "--count"),
        (["frobnicate"], "No such command"),
    ],
)
def test_click_usage_errors(cli, args, needle):
    r = cli("schedules", *args)
    assert r.exit_code == 2
    assert needle in one_error_line(r)


def test_refused_values_exit_2_taken_names_5_and_store_nothing(cli, tasks):
    cases = [
        (["add", "q", "t.add", "--every", "1m", "--queue", "nobody-serves-this"], "queue: unknown queue 'nobody-serves-this'"),
        (["add", "q", "t.add", "--every", "1m", "--queue", "bad queue"], "queue: 'bad queue' is not a valid name"),
        (["add", "q", "no.such.task", "--every", "1m"], "unknown task 'no.such.task'"),
        (["add", "bad name", "t.add", "--every", "1m"], "name: 'bad name' is not a valid schedule name"),
    ]
    for args, needle in cases:
        r = cli("schedules", *args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in one_error_line(r)
    assert items(cli, "schedules", "list") == []

    assert cli("schedules", "add", "dup", "t.add", "--every", "1m").exit_code == 0
    r = cli("schedules", "add", "dup", "t.add", "--every", "1h")
    assert r.exit_code == 5 and "a schedule named 'dup' already exists" in one_error_line(r)
    assert cli_json(cli, "schedules", "get", "dup")["every"] == 60.0
    r = cli("schedules", "edit", "dup", "--queue", "nobody-serves-this")
    assert r.exit_code == 2 and "queue: unknown queue" in one_error_line(r)
    r = cli("schedules", "backfill", "dup", "--since", "1h", "--until", "2999-01-01T00:00:00+00:00")
    assert r.exit_code == 2 and "until: 2999-01-01T00:00:00+00:00 is in the future" in one_error_line(r)
    r = cli("schedules", "pause", "--match", "nothing-*")
    assert r.exit_code == 4 and "no schedule matches 'nothing-*'" in one_error_line(r)


@pytest.mark.parametrize(
    "args",
    [["get", "ghost"], ["next", "ghost"], ["pause", "ghost"], ["resume", "ghost"], ["remove", "ghost"],
     ["backfill", "ghost", "--since", "1h"], ["edit", "ghost", "--priority", "low"], ["get", "no.such"]],
)
def test_unknown_schedule_is_not_found(cli, args):
    r = cli("schedules", *args)
    assert r.exit_code == 4
    assert "no schedule named" in one_error_line(r)


def test_server_down_exits_3(cli):
    down = f"nats://127.0.0.1:{free_port()}"
    r = cli("--server", down, "schedules", "list")
    assert r.exit_code == 3 and down in one_error_line(r)
