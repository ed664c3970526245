"""`chronos submit --unique-mode/--unique-key/--debounce`, progress in `jobs get` and `submit --wait`."""

from __future__ import annotations

from chronos import current_job
from chronos.worker.registry import Registry

from . import tasks as test_tasks
from .conftest import cli_json, one_error_line, submit


async def steps(n: int) -> str:
    job = current_job()
    for i in range(n):
        await job.progress((i + 1) / n, f"part {i + 1}")
        if i + 1 < n:
            # Each report is its own write (the writer writes at most one per 0.5 s), so the
            # follower sees every one; the task's pace is the test's fixture, not an assertion.
            import asyncio

            await asyncio.sleep(0.6)
    return "copied"


def _registry() -> Registry:
    reg = Registry()
    reg.merge(test_tasks.registry)
    reg.register(steps, name="t.steps")
    return reg


def test_unique_while_active_says_already_active(cli, register_tasks):
    register_tasks()
    first = cli("submit", "t.add", "--args", "[1, 2]", "--unique-mode", "while-active", "--unique-key", "sum",
                "--in", "1h")
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("submitted ")
    job_id = first.stdout.split()[1]
    again = cli("submit", "t.add", "--args", "[5, 6]", "--unique-mode", "while-active", "--unique-key", "sum")
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith(f"already active: {job_id} ")
    human = cli("jobs", "get", job_id)
    assert "while active, key sum" in human.stdout
    as_json = cli_json(cli, "submit", "t.add", "--args", "[5, 6]", "--unique-mode", "while-active",
                       "--unique-key", "sum")
    assert as_json["id"] == job_id and as_json["outcome"] == "active"
    # By args: no key given.
    a = submit(cli, "t.add", "--args", "[7, 7]", "--unique-mode", "while-active", "--in", "1h")
    b = cli("submit", "t.add", "--args", "[7, 7]", "--unique-mode", "while-active")
    assert b.stdout.startswith(f"already active: {a} ")


def test_debounce_says_debounced(cli, register_tasks):
    register_tasks()
    first = submit(cli, "t.add", "--args", "[1, 1]", "--debounce", "1h", "--unique-key", "d")
    r = cli("submit", "t.add", "--args", "[2, 2]", "--debounce", "1h", "--unique-key", "d")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"debounced: {first} ") and "scheduled, runs" in r.stdout
    rec = cli_json(cli, "jobs", "get", first)
    assert rec["spec"]["args"] == [2, 2] and rec["spec"]["unique"]["mode"] == "debounce"


def test_bad_unique_and_debounce_options_are_one_line_exit_2_nothing_stored(cli, register_tasks):
    register_tasks()
    cases = [
        (("--unique-mode", "forever"), "--unique-mode"),
        (("--debounce", "0s", "--unique-key", "k"), "--debounce"),
        (("--debounce", "soon", "--unique-key", "k"), "--debounce"),
        (("--debounce", "-5s", "--unique-key", "k"), "--debounce"),
        (("--unique-key", "k"), "--unique-key"),
        (("--debounce-max", "5m", "--unique-key", "k"), "--debounce"),
        (("--debounce", "30s", "--in", "5m"), "--debounce"),
        (("--unique-mode", "while-active", "--debounce", "30s"), "--debounce"),
    ]
    for options, option in cases:
        r = cli("submit", "t.add", "--args", "[1, 2]", *options)
        assert r.exit_code == 2, (options, r.output)
        assert option in one_error_line(r), (options, r.stderr)
    # A debounce with neither key nor args: refused by the library, naming the field.
    r = cli("submit", "t.add", "--debounce", "30s")
    assert r.exit_code == 2, r.output
    assert "debounce: needs a key" in one_error_line(r)
    assert cli_json(cli, "jobs", "list")["items"] == []


def test_submit_wait_prints_progress_and_get_shows_it(cli, worker):
    worker(_registry())
    r = cli("submit", "t.steps", "--args", "[3]", "--wait")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("progress ")]
    # Not a terminal: one plain line per new report, in order (the bar is for terminals).
    assert lines and lines[-1] == "progress 100% part 3", r.stdout
    assert lines == sorted(lines, key=lambda ln: int(ln.split()[1].rstrip("%")))
    job_id = r.stdout.split()[1].rstrip(";")
    human = cli("jobs", "get", job_id)
    assert "100% part 3 (attempt 1" in human.stdout
