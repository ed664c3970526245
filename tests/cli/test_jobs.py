"""`chronos submit`, `jobs list|get|cancel|retry|run-now`, top-level `retry` and `cancel`."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta

from .conftest import cli_json, job_state, listed, one_error_line, submit, wait_state, wait_until


def test_submit_then_get_and_list(cli, register_tasks):
    register_tasks()
    r = cli("submit", "t.add", "--args", "[2, 3]", "--tag", "x", "--tag", "y", "--priority", "high",
            "--queue", "default", "--timeout", "1m30s", "--max-attempts", "3", "--unique", "k1")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("submitted ") and "t.add on default/high: available" in r.stdout
    job_id = r.stdout.split()[1]

    rec = cli_json(cli, "jobs", "get", job_id)
    assert rec["id"] == job_id
    assert rec["state"] == "available"
    spec = rec["spec"]
    # Stable keys: every field is present, defaults included.
    assert spec == {**spec, "task": "t.add", "args": [2, 3], "queue": "default", "priority": "high",
                    "max_attempts": 3, "timeout": 90.0, "unique_key": "k1", "tags": ["x", "y"], "run_at": None}
    for key in ("created_at", "updated_at", "attempt", "attempts", "result", "error", "finished_at", "scheduled_at"):
        assert key in rec

    human = cli("jobs", "get", job_id)
    assert human.exit_code == 0
    assert job_id in human.stdout and "t.add" in human.stdout and "x, y" in human.stdout and "1m30s" in human.stdout

    listing = wait_until(lambda: (r := cli("jobs", "list")).exit_code == 0 and job_id in r.stdout and r, timeout=5)
    assert job_id in listing.stdout and "available" in listing.stdout
    assert re.search(r"\d\d:\d\d:\d\d \((now|\d+s ago)\)", listing.stdout)  # local time with a relative hint
    assert "1-1 of 1" in listing.stdout


def test_submit_with_keyword_pairs_and_unique_key(cli, register_tasks):
    register_tasks()
    first = submit(cli, "t.add", "--arg", "a=1", "--arg", "b=two", "--unique", "same")
    again = submit(cli, "t.add", "--arg", "a=1", "--arg", "b=two", "--unique", "same")
    assert first == again
    assert cli_json(cli, "jobs", "get", first)["spec"]["args"] == {"a": 1, "b": "two"}


def test_list_filters_and_paging(cli, register_tasks):
    register_tasks()
    a = submit(cli, "t.add", "--args", "[1, 1]", "--tag", "red")
    b = submit(cli, "t.boom", "--queue", "other")
    c = submit(cli, "t.add", "--args", "[2, 2]", "--in", "1h")

    def ids(*args: str) -> list[str]:
        return [j["id"] for j in listed(cli, *args)["items"]]

    assert ids() == [c, b, a]  # newest first
    assert ids("--task", "t.add") == [c, a]
    assert ids("--tag", "red") == [a]
    assert ids("--queue", "other") == [b]
    assert ids("--state", "scheduled") == [c]
    page = listed(cli, "--limit", "2", "--offset", "1")
    assert [j["id"] for j in page["items"]] == [b, a]
    assert (page["count"], page["next"]) == (2, None)
    first = listed(cli, "--limit", "2")
    assert [j["id"] for j in first["items"]] == [c, b] and first["next"] is not None
    assert [j["id"] for j in listed(cli, "--limit", "2", "--cursor", first["next"])["items"]] == [a]
    human = wait_until(lambda: "of 3" in (r := cli("jobs", "list", "--limit", "1")).stdout and r, timeout=5)
    assert "1-1 of 3; next: --cursor " in human.stdout
    assert cli("jobs", "list", "--state", "completed").stdout.strip() == "no jobs"


def test_global_json_flag(cli, register_tasks):
    register_tasks()
    job_id = submit(cli, "t.add", "--args", "[1, 2]")
    r = wait_until(lambda: job_id in (r := cli("--json", "jobs", "list")).stdout and r, timeout=5)
    assert json.loads(r.stdout)["items"][0]["id"] == job_id


def test_scheduled_job_then_run_now(cli, register_tasks):
    register_tasks()
    at = (datetime.now() + timedelta(hours=2)).replace(microsecond=0)
    r = cli("submit", "t.add", "--args", "[1, 2]", "--at", at.isoformat())  # no offset: local time
    assert r.exit_code == 0, r.output
    assert "scheduled" in r.stdout and "in 2h" in r.stdout or "in 1h59m" in r.stdout
    job_id = r.stdout.split()[1]
    rec = cli_json(cli, "jobs", "get", job_id)
    assert rec["state"] == "scheduled"
    assert abs(rec["spec"]["run_at"] - at.timestamp()) < 1e-6

    r = cli("jobs", "run-now", job_id)
    assert r.exit_code == 0, r.output
    assert f"job {job_id}: queued to run now (state available)" in r.stdout


def test_submit_in_a_duration(cli, register_tasks):
    register_tasks()
    before = time.time()
    rec = json.loads(cli("submit", "t.add", "--args", "[1, 2]", "--in", "1h30m", "--json").stdout)
    assert rec["state"] == "scheduled"
    assert before + 5400 - 1 < rec["spec"]["run_at"] < time.time() + 5400 + 1


def test_cancel_and_retry_at_both_levels(cli, register_tasks):
    register_tasks()
    job_id = submit(cli, "t.add", "--args", "[1, 2]", "--in", "1h")
    r = cli("cancel", job_id, "--reason", "not today")
    assert r.exit_code == 0, r.output
    assert "cancelled (state cancelled)" in r.stdout
    assert cli_json(cli, "jobs", "get", job_id)["error"] == "not today"

    r = cli("cancel", job_id)
    assert r.exit_code == 5  # a conflict: the job's state forbids it
    assert "already cancelled" in one_error_line(r)

    r = cli("retry", job_id)
    assert r.exit_code == 0, r.output
    assert "queued again (state available)" in r.stdout

    r = cli("jobs", "retry", job_id)
    assert r.exit_code == 5
    assert "only retryable, cancelled or discarded jobs can be retried" in one_error_line(r)

    r = cli("jobs", "cancel", job_id, "--json")
    assert json.loads(r.stdout)["state"] == "cancelled"
    r = cli("jobs", "retry", job_id, "--json")
    assert json.loads(r.stdout)["state"] == "available"


def test_submit_wait_success_and_failure(cli, worker):
    worker()
    r = cli("submit", "t.add", "--args", "[20, 22]", "--wait")
    assert r.exit_code == 0, r.output
    assert "completed on attempt 1 of 5; result: 42" in r.stdout

    r = cli("submit", "t.retry_once", "--wait", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert (rec["state"], rec["result"], rec["attempt"]) == ("completed", 2, 2)

    r = cli("submit", "t.boom", "--arg", "message=kaput", "--max-attempts", "1", "--wait")
    assert r.exit_code == 1
    assert "discarded on attempt 1 of 1" in r.stdout and "kaput" in r.stdout


def test_submit_wait_timeout(cli, worker):
    worker()
    r = cli("submit", "t.slow", "--arg", "seconds=30", "--wait", "--wait-timeout", "300ms")
    assert r.exit_code == 1
    assert "--wait-timeout: job" in one_error_line(r)
    job_id = re.match(r"submitted (\w+);", r.stdout).group(1)
    wait_state(cli, job_id, "running")
    r = cli("jobs", "cancel", job_id)
    assert r.exit_code == 0, r.output
    assert "cancel requested" in r.stdout
    wait_state(cli, job_id, "cancelled")
    assert job_state(cli, job_id) == "cancelled"


def test_submit_to_a_queue_no_worker_serves_says_so(cli, register_tasks, worker):
    """Issue 13: `--queue` that no worker serves used to wait forever, silently."""
    register_tasks()
    r = cli("submit", "t.add", "--args", "[1, 2]")
    assert r.exit_code == 0 and "no worker is running" in r.stderr
    worker()
    r = cli("submit", "t.add", "--args", "[1, 2]", "--queue", "nowhere")
    assert r.exit_code == 0, r.output
    assert "warning: no live worker serves queue 'nowhere'" in r.stderr and "default" in r.stderr
    r = cli("submit", "t.add", "--args", "[1, 2]")  # the fixture's worker serves `default`
    assert r.exit_code == 0 and "warning" not in r.stderr
