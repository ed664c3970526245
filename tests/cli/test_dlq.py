"""`chronos dlq list|show|replay|purge`."""

from __future__ import annotations

import json

import pytest

from .conftest import cli_json, items, one_error_line, submit, wait_state, wait_until


@pytest.fixture
def dead(cli, worker):
    """Three jobs in the DLQ: two of t.boom, one of t.add with bad arguments."""
    worker()
    ids = [submit(cli, "t.boom", "--max-attempts", "1", "--arg", f"message=m{i}") for i in range(2)]
    ids.append(submit(cli, "t.add", "--args", '["x"]', "--max-attempts", "1"))
    for job_id in ids:
        wait_state(cli, job_id, "discarded")
    wait_until(lambda: len(items(cli, "dlq", "list")) == 3, what="3 DLQ entries")
    return ids


def test_list_and_show(cli, dead):
    entries = items(cli, "dlq", "list")
    assert [e["job_id"] for e in entries] == dead  # oldest first
    for key in ("seq", "job_id", "reason", "at", "attempts", "spec", "traceback", "subject"):
        assert key in entries[0]
    assert [e["job_id"] for e in items(cli, "dlq", "list", "--task", "t.add")] == [dead[2]]
    assert items(cli, "dlq", "list", "--queue", "nope") == []

    human = cli("dlq", "list")
    assert human.exit_code == 0
    assert all(job_id in human.stdout for job_id in dead)
    assert "3 entries" in human.stdout

    seq = str(entries[0]["seq"])
    for ref in (seq, dead[0]):
        shown = cli("dlq", "show", ref)
        assert shown.exit_code == 0, shown.output
        assert "RuntimeError: m0" in shown.stdout and "Traceback" in shown.stdout
    assert cli_json(cli, "dlq", "show", dead[2])["spec"]["task"] == "t.add"


def test_replay_one(cli, dead):
    r = cli("dlq", "replay", dead[0])
    assert r.exit_code == 0, r.output
    assert f"replayed job {dead[0]} (t.boom)" in r.stdout
    # It fails again (max_attempts 1), so it comes back to the DLQ.
    wait_until(lambda: dead[0] in [e["job_id"] for e in items(cli, "dlq", "list")], what="back in the DLQ")


def test_replay_by_task_then_all_with_json(cli, dead):
    r = cli("dlq", "replay", "--task", "t.add", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"replayed": [dead[2]], "failed": []}
    # Its bad arguments fail it again. The new DLQ entry is written before the record reads
    # discarded, so wait for the record: replaying an entry whose job still runs is refused.
    wait_state(cli, dead[2], "discarded")

    r = cli("dlq", "replay", "--all")
    assert r.exit_code == 0, r.output
    assert "replayed 3 of 3 DLQ entries" in r.stdout


def test_replay_all_of_an_empty_dlq(cli):
    r = cli("dlq", "replay", "--all")
    assert r.exit_code == 0
    assert "nothing to replay" in r.stdout


def test_purge_asks_first(cli, dead):
    r = cli("dlq", "purge", input="n\n")
    assert r.exit_code == 1
    assert "Delete 3 DLQ entries?" in r.output
    assert r.stderr.strip().endswith("error: aborted")
    assert len(items(cli, "dlq", "list")) == 3

    r = cli("dlq", "purge", "--task", "t.add", input="y\n")
    assert r.exit_code == 0, r.output
    assert "purged 1 DLQ entry" in r.stdout
    assert len(items(cli, "dlq", "list")) == 2

    r = cli("dlq", "purge", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"purged": 2}
    assert cli("dlq", "list").stdout.strip() == "the DLQ is empty"
    assert cli("dlq", "purge").stdout.strip() == "nothing to purge"


def test_purge_without_a_terminal_and_without_yes_aborts(cli, dead):
    r = cli("dlq", "purge")  # no input: the prompt reads end of file
    assert r.exit_code == 1
    assert len(items(cli, "dlq", "list")) == 3
