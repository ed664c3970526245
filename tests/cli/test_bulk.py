"""`jobs list --where`, `jobs cancel|retry --all` and `dlq replay --where`: count, confirm, act, report."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from chronos import audit
from chronos.client import Client
from chronos.config import Settings

from .conftest import cli_json, items, one_error_line
from .test_dlq import dead  # noqa: F401  (fixture)

TASK = "b.work"


def run(settings: Settings, fn: Any) -> Any:
    async def go() -> Any:
        client = await Client.connect(settings)
        try:
            return await fn(client)
        finally:
            await client.close()

    return asyncio.run(go())


def seed(settings: Settings, n: int = 12) -> list[str]:
    """n jobs (one bulk submit): customer 42 on every third, team billing on the even ones."""

    async def go(client: Client) -> list[str]:
        await client.register_tasks([TASK])
        specs = [client.build_spec(TASK, {"customer_id": 42 if i % 3 == 0 else i, "n": i},
                                   annotations={"team": "billing" if i % 2 == 0 else "search"}, delay=3600)
                 for i in range(n)]
        return await client.submit_specs(specs)

    return run(settings, go)


def states(settings: Settings, ids: list[str]) -> dict[str, str]:
    async def go(client: Client) -> dict[str, str]:
        return {i: (await client.get(i)).state.value for i in ids}

    return run(settings, go)


def audit_entries(settings: Settings) -> list[Any]:
    return run(settings, lambda c: audit.read(c.conn, limit=1000))


def test_list_where_filters_args_and_annotations_with_the_other_filters(cli, settings):
    ids = seed(settings)
    got = [j["id"] for j in items(cli, "jobs", "list", "--where", "args.customer_id=42")]
    assert got == sorted((ids[i] for i in (9, 6, 3, 0)), reverse=True)  # one created time: by id, newest first
    got = [j["id"] for j in items(cli, "jobs", "list", "--where", "args.customer_id=42", "--where",
                                  "annotations.team=billing", "--state", "scheduled")]
    assert got == sorted([ids[6], ids[0]], reverse=True)
    assert items(cli, "jobs", "list", "--where", "args.customer_id=42", "--state", "available") == []
    page = cli_json(cli, "jobs", "list", "--where", "!args.missing", "--limit", "5")
    assert page["count"] == 5 and page["next"]
    human = cli("jobs", "list", "--where", "annotations.team!=billing")
    assert human.exit_code == 0 and "1-6 of 6" in human.stdout


def test_cancel_all_dry_run_then_yes_with_progress_summary_and_one_audit_entry(cli, settings):
    ids = seed(settings)
    chosen = [ids[i] for i in (0, 3, 6, 9)]
    r = cli("jobs", "cancel", "--all", "--where", "args.customer_id=42", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "4 jobs match" in r.stdout and "nothing changed" in r.stdout
    assert set(states(settings, ids).values()) == {"scheduled"}
    before = len(audit_entries(settings))

    r = cli("jobs", "cancel", "--all", "--where", "args.customer_id=42", "--yes", "--reason", "customer left")
    assert r.exit_code == 0, r.output
    assert "cancel: 4 matched, 4 done, 0 skipped, 0 failed" in r.stdout
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("cancel: ")]
    assert progress and progress[-1].startswith("cancel: 4/4 (done 4, skipped 0, failed 0)")
    now = states(settings, ids)
    assert {i for i, s in now.items() if s == "cancelled"} == set(chosen)
    new = audit_entries(settings)[before:]
    assert [(e.action, e.target) for e in new] == [("bulk_cancel", "state=scheduled,available,running,retryable "
                                                                   "AND args.customer_id=42")]
    assert new[0].detail == {"matched": 4, "reason": "customer left"}

    # Run again: nothing matches any more (resumable: what was done is no longer selected).
    r = cli("jobs", "cancel", "--all", "--where", "args.customer_id=42", "--yes")
    assert r.exit_code == 0 and "nothing matches" in r.stdout

    # Retry them in bulk, as JSON.
    r = cli("jobs", "retry", "--all", "--where", "args.customer_id=42", "--state", "cancelled", "--yes", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert {k: report[k] for k in ("action", "matched", "done", "skipped", "failed", "interrupted")} == \
        {"action": "retry", "matched": 4, "done": 4, "skipped": 0, "failed": 0, "interrupted": False}
    assert {states(settings, chosen)[i] for i in chosen} == {"available"}
    assert [e.action for e in audit_entries(settings)[before:]] == ["bulk_cancel", "bulk_retry"]


def test_without_a_terminal_and_without_yes_it_refuses_and_changes_nothing(cli, settings):
    ids = seed(settings, 6)
    before = len(audit_entries(settings))
    r = cli("jobs", "cancel", "--all", "--where", "annotations.team=billing")
    assert r.exit_code == 2
    assert "--yes" in one_error_line(r)
    assert set(states(settings, ids).values()) == {"scheduled"}
    assert len(audit_entries(settings)) == before


@pytest.mark.parametrize("args, says", [
    (["--all", "--where", "args.=1"], "a key name is expected"),
    (["--all", "--where", "foo.x=1"], "unknown root 'foo'"),
    (["--all", "--where", "args.x=[1,"], "is not a JSON value"),
    (["--all", "--where", "args.x=[1]"], "only scalar values"),
    (["--all"], "needs a filter"),
    (["--where", "args.x=1"], "filters select jobs for --all"),
    ([], "filters select jobs for --all"),
    (["--all", "--state", "completed"], "completed jobs cannot be cancelled"),
    (["--all", "--state", "nope"], "'nope' is not one of"),
    (["--all", "--since", "1h", "--until", "2h"], "must be earlier"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_changes(cli, settings, args, says):
    ids = seed(settings, 3)
    before = len(audit_entries(settings))
    r = cli("jobs", "cancel", *args, "--yes")
    assert r.exit_code == 2, r.output
    assert says in one_error_line(r)
    assert set(states(settings, ids).values()) == {"scheduled"}
    assert len(audit_entries(settings)) == before


def test_bad_where_on_list_and_a_job_id_with_all(cli, settings):
    ids = seed(settings, 2)
    r = cli("jobs", "list", "--where", "annotations.team>1")
    assert r.exit_code == 2 and "annotations are text" in one_error_line(r)
    r = cli("jobs", "cancel", ids[0], "--all", "--where", "args.n=0", "--yes")
    assert r.exit_code == 2 and "not both" in one_error_line(r)
    r = cli("jobs", "retry", "--all", "--state", "available", "--yes")
    assert r.exit_code == 2 and "cannot be retried" in one_error_line(r)


def test_all_everything_acts_on_every_unfinished_job(cli, settings):
    ids = seed(settings, 5)
    r = cli("jobs", "cancel", "--all", "--everything", "--yes")
    assert r.exit_code == 0, r.output
    assert "cancel: 5 matched, 5 done" in r.stdout
    assert set(states(settings, ids).values()) == {"cancelled"}


def test_dlq_replay_where_refuses_bad_input(cli, settings):
    r = cli("dlq", "replay", "5", "--where", "args.x=1")
    assert r.exit_code == 2 and "not both" in one_error_line(r)
    r = cli("dlq", "replay", "--where", "args.=1", "--yes")
    assert r.exit_code == 2 and "a key name is expected" in one_error_line(r)
    r = cli("dlq", "replay", "--where", "args.x=1", "--dry-run")
    assert r.exit_code == 0 and "no DLQ entries match" in r.stdout


def test_dlq_replay_where_replays_the_matching_entries_once_with_one_audit_entry(cli, settings, dead):
    entries = items(cli, "dlq", "list")
    old = {e["job_id"]: e["seq"] for e in entries}
    r = cli("dlq", "replay", "--where", "args.message=m1", "--dry-run")
    assert r.exit_code == 0 and "1 DLQ entry match" in r.stdout
    before = len(audit_entries(settings))
    r = cli("dlq", "replay", "--where", "args.message=m1", "--task", "t.boom", "--yes")
    assert r.exit_code == 0, r.output
    assert "dlq_replay: 1 matched, 1 done, 0 skipped, 0 failed" in r.stdout
    new = audit_entries(settings)[before:]
    assert [(e.action, e.target, (e.detail or {}).get("matched")) for e in new] == \
        [("bulk_dlq_replay", "task=t.boom AND args.message=m1", 1)]
    left = {e["seq"] for e in items(cli, "dlq", "list")}
    assert old[dead[1]] not in left and old[dead[0]] in left  # m1's entry went (it may fail again: a new one)


def test_ctrl_c_stops_after_the_actions_in_flight_with_the_summary(cli, settings, config_file):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    ids = seed(settings, 4000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronos.cli.main", "--config", str(config_file),
         "jobs", "cancel", "--all", "--everything", "--yes"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background run ignores it
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the first progress line: the action is under way
            if line.startswith("cancel: "):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:  # it finished before the signal landed (a fast, idle host)
        pytest.skip("the bulk action ended before Ctrl-C arrived")
    assert proc.returncode == 130, err
    summary = [ln for ln in out.splitlines() if ln.startswith("cancel: ")]
    assert len(summary) == 1 and "interrupted (run the same command again to resume)" in summary[0], out
    done = int(summary[0].split(" matched, ")[1].split(" done")[0])
    assert 0 < done < len(ids)
    cancelled = sum(1 for s in states(settings, ids).values() if s == "cancelled")
    assert cancelled == done  # what it says it did is what the KV holds: nothing half-way
    r = cli("jobs", "cancel", "--all", "--everything", "--yes")  # the same command resumes
    assert r.exit_code == 0 and f"cancel: {len(ids) - done} matched, {len(ids) - done} done" in r.stdout
