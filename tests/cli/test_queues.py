"""`chronos queues list|pause|resume|limit|limits` (issue 16, deliverable 5)."""

from __future__ import annotations

import json

import pytest

from .conftest import cli_json, items, one_error_line, submit, wait_state, wait_until


def queue_row(cli, name: str) -> dict:
    return next(q for q in items(cli, "queues", "list") if q["name"] == name)


def test_pause_list_resume_with_a_worker(cli, worker, register_tasks):
    w = worker()
    r = cli("queues", "pause", "default", "--reason", "deploy in progress")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("queue default paused (deploy in progress): workers stop pulling from it")
    assert "no live worker" not in r.stdout
    # ... and its pull requests opened before the pause have run out (one of them would hand the
    # job over and back: it would count as running, not waiting, for a second; docs/queues.md).
    svc = w.main.service
    wait_until(lambda: "default" in svc.pauses.paused and not any(p.outstanding for p in svc.pullers if p.queue == "default"),
               10, "the worker to see the pause")

    job = submit(cli, "t.add", "--args", "[1, 2]")
    wait_until(lambda: queue_row(cli, "default")["waiting"] == 1, 10, "the job to wait in the paused queue")
    row = queue_row(cli, "default")
    assert row["paused"] is True and row["reason"] == "deploy in progress" and row["paused_by"]
    assert row["backlog"] == {"critical": 0, "high": 0, "default": 1, "low": 0}
    assert row["workers"] == 1 and row["running"] == 0
    assert set(row) == {"name", "paused", "paused_by", "paused_at", "reason", "backlog", "waiting", "running",
                        "workers", "rate", "burst", "concurrency"}
    assert cli_json(cli, "jobs", "get", job)["state"] == "available"

    table = cli("queues", "list")
    assert table.exit_code == 0, table.output
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith("default"))
    assert "PAUSED by" in line and "deploy in progress" in line
    assert table.stdout.rstrip().endswith("1 paused")

    r = cli("queues", "resume", "default")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("queue default resumed")
    wait_state(cli, job, "completed")
    assert queue_row(cli, "default")["paused"] is False

    again = cli("queues", "resume", "default")
    assert again.exit_code == 0 and again.stdout == "queue default is not paused; nothing changed\n"


def test_pausing_a_queue_no_worker_serves_says_so(cli):
    r = cli("queues", "pause", "nobody-here")
    assert r.exit_code == 0, r.output
    assert "no live worker serves queue nobody-here" in r.stdout
    data = cli_json(cli, "queues", "pause", "nobody-here")
    assert data["paused"] is True and data["workers"] == 0 and data["queue"] == "nobody-here"
    assert queue_row(cli, "nobody-here")["paused"] is True
    resumed = cli_json(cli, "queues", "resume", "nobody-here")
    assert resumed["paused"] is False and resumed["was_paused"] is True


def test_limit_set_show_and_clear(cli):
    r = cli("queues", "limit", "default", "--concurrency", "3", "--rate", "10/s")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "queue default: rate 10/s, concurrency 3"
    row = queue_row(cli, "default")
    assert (row["rate"], row["concurrency"]) == ("10/s", 3)
    snap = cli("queues", "limits")
    assert snap.exit_code == 0 and "default rate 10/s, concurrency 3" in snap.stdout
    page = json.loads(cli("queues", "limits", "--json").stdout)
    assert set(page) == {"items", "count", "next"}
    r = cli("queues", "limit", "default", "--concurrency", "none")
    assert r.stdout.strip() == "queue default: rate 10/s"
    r = cli("queues", "limit", "default", "--rate", "none")
    assert r.stdout.strip() == "queue default: no limits"
    assert queue_row(cli, "default")["concurrency"] is None


@pytest.mark.parametrize("args, option", [
    (("pause", "bad.name"), "QUEUE"),
    (("pause", "a b"), "QUEUE"),
    (("resume", "*"), "QUEUE"),
    (("limit", "x" * 65, "--concurrency", "1"), "QUEUE"),
    (("limit", "default", "--concurrency", "0"), "--concurrency"),
    (("limit", "default", "--concurrency", "-2"), "--concurrency"),
    (("limit", "default", "--concurrency", "many"), "--concurrency"),
    (("limit", "default", "--rate", "10/x"), "--rate"),
    (("limit", "default", "--rate", "0/s"), "--rate"),
    (("limit", "default", "--rate", "fast"), "--rate"),
    (("limit", "default"), "--concurrency"),
    (("limit", "default", "--rate", "5/s", "--burst", "0"), "--burst"),
    (("pause", "default", "--reason", "x" * 501), "--reason"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(cli, args, option):
    r = cli("queues", *args)
    assert r.exit_code == 2, r.output
    assert one_error_line(r).startswith(f"error: {option}:")
    rows = items(cli, "queues", "list")
    assert not any(q["paused"] or q["rate"] or q["concurrency"] for q in rows)
    assert not [e for e in items(cli, "logs", "--audit") if e["action"].startswith("queue_")]


def test_pause_and_resume_are_audited(cli):
    assert cli("queues", "pause", "default", "--reason", "why not").exit_code == 0
    assert cli("queues", "resume", "default").exit_code == 0
    entries = items(cli, "logs", "--audit")
    got = [(e["action"], e["target"]) for e in entries if e["action"].startswith("queue_")]
    assert got == [("queue_pause", "default"), ("queue_resume", "default")]


def audit_actions(cli) -> list[tuple[str, str]]:
    return [(e["action"], e["target"]) for e in items(cli, "logs", "--audit") if e["action"].startswith("queue_")]


def test_resuming_a_queue_that_is_not_paused_writes_nothing_and_leaves_no_trace(cli):
    r = cli("queues", "resume", "nosuch")
    assert r.exit_code == 0, r.output
    assert r.stdout == "queue nosuch is not paused; nothing changed\n"
    data = cli_json(cli, "queues", "resume", "nosuch")
    assert data["paused"] is False and data["was_paused"] is False and data["at"] == 0
    assert "nosuch" not in [q["name"] for q in items(cli, "queues", "list")]
    assert audit_actions(cli) == []  # no audit entry either: nothing was done
    # paused then resumed (written and audited), then resumed again (nothing more), then it is gone from the list
    assert cli("queues", "pause", "nosuch").exit_code == 0
    assert cli("queues", "resume", "nosuch").stdout.startswith("queue nosuch resumed")
    assert cli("queues", "resume", "nosuch").stdout == "queue nosuch is not paused; nothing changed\n"
    assert audit_actions(cli) == [("queue_pause", "nosuch"), ("queue_resume", "nosuch")]
    assert "nosuch" not in [q["name"] for q in items(cli, "queues", "list")]


def test_a_limit_on_a_queue_nothing_serves_warns_and_the_list_forgets_it_once_cleared(cli):
    r = cli("queues", "limit", "nosuchqueue", "--concurrency", "2")
    assert r.exit_code == 0, r.output  # allowed: limits may be set before the workers are deployed
    lines = r.stdout.splitlines()
    assert lines[0] == "queue nosuchqueue: concurrency 2"
    assert lines[1].startswith("note: no live worker serves queue nosuchqueue and none ever has")
    assert queue_row(cli, "nosuchqueue")["concurrency"] == 2  # a limit in force is listed
    data = cli("queues", "limit", "nosuchqueue", "--concurrency", "3", "--json")
    assert json.loads(data.stdout)["concurrency"] == 3 and "note: no live worker" in data.stderr
    r = cli("queues", "limit", "nosuchqueue", "--concurrency", "none")
    assert r.stdout == "queue nosuchqueue: no limits\n"  # clearing it is no cause for a note
    assert "nosuchqueue" not in [q["name"] for q in items(cli, "queues", "list")]


def test_a_limit_on_a_served_queue_has_no_note(cli, worker):
    worker()
    r = cli("queues", "limit", "default", "--rate", "5/s")
    assert r.exit_code == 0 and r.stdout == "queue default: rate 5/s\n", r.output
