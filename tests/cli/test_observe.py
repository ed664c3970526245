"""`chronos logs`, `chronos workers`, `chronos admin init|status|leader`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from pathlib import Path

from .conftest import cli_json, items, one_error_line, submit, wait_state, wait_until


def test_workers_empty_then_live(cli, worker):
    assert cli("workers").stdout.strip() == "no workers"
    assert items(cli, "workers") == []
    w = worker(concurrency=3)
    beats = wait_until(lambda: items(cli, "workers"), what="a heartbeat")
    assert beats[0]["id"] == w.id
    assert beats[0]["slots_total"] == 3
    assert "t.add" in beats[0]["tasks"]
    for key in ("host", "pid", "queues", "slots_used", "heartbeat_at", "running", "processed", "failed", "state"):
        assert key in beats[0]
    human = cli("workers")
    assert w.id in human.stdout and "0/3" in human.stdout and "running" in human.stdout


def test_admin_status_and_leader_never_create_streams(settings, tmp_path):
    import msgspec
    from typer.testing import CliRunner

    from chronos.cli.main import app

    from .conftest import write_config

    typo = f"{settings.namespace}typo"
    cfg = write_config(tmp_path / "typo.toml", msgspec.structs.replace(settings, namespace=typo))
    for args in (["admin", "status"], ["admin", "leader"]):
        r = CliRunner().invoke(app, ["--config", str(cfg), *args])
        assert r.exit_code == 4, r.output
        assert "has no chronos streams" in one_error_line(r)


def test_admin_init_and_status(cli, worker):
    r = cli("admin", "init")
    assert r.exit_code == 0, r.output
    assert "is ready on nats://" in r.stdout

    r = cli("admin", "status")
    assert r.exit_code == 1
    assert "UNHEALTHY: no live worker; no scheduler leader" in r.stdout
    assert one_error_line(r) == "error: unhealthy: no live worker; no scheduler leader"
    r = cli("admin", "status", "--json")
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert report["healthy"] is False and report["problems"] == ["no live worker", "no scheduler leader"]
    assert report["leader"] is None

    worker()
    # A worker-only deployment checks itself with --no-require-leader.
    wait_until(lambda: cli("admin", "status", "--no-require-leader").exit_code == 0, what="a healthy status")
    report = cli_json(cli, "admin", "status", "--no-require-leader")
    assert report["healthy"] is True and report["workers_live"] == 1 and report["dlq"] == 0
    assert set(report) >= {"namespace", "server", "healthy", "problems", "workers_live", "workers_total", "queues",
                           "dlq", "leader"}
    assert cli("admin", "status").exit_code == 1  # still no leader


def test_admin_leader_follows_the_lease(cli, config_file):
    r = cli("admin", "leader")
    assert r.exit_code == 1
    assert one_error_line(r) == "error: no scheduler leader (is `chronos serve scheduler` running?)"
    assert cli("admin", "leader", "--json").stdout.strip() == "null"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronos.cli.main", "--config", str(config_file), "serve", "scheduler", "--id", "lead-1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
        env={k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")},
    )
    try:
        info = wait_until(lambda: cli("admin", "leader", "--json").exit_code == 0
                          and cli_json(cli, "admin", "leader"), what="the leader")
        assert info["node"] == "lead-1" and info["pid"] == proc.pid and info["term"] >= 1
        human = cli("admin", "leader")
        assert human.exit_code == 0 and "lead-1" in human.stdout
        report = json.loads(cli("admin", "status", "--no-require-worker", "--json").stdout)
        assert report["leader"] == "lead-1" and report["healthy"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # It resigned on the way out: no leader at once, not after the TTL.
    assert cli("admin", "leader").exit_code == 1


def test_logs_history_and_filters(cli, worker):
    worker()
    ok = submit(cli, "t.add", "--args", "[1, 2]")
    bad = submit(cli, "t.boom", "--max-attempts", "1")
    wait_state(cli, ok, "completed")
    wait_state(cli, bad, "discarded")

    def logged(*args: str) -> str:
        r = cli("logs", *args)
        assert r.exit_code == 0, r.output
        return r.stdout

    # Events are flushed in small batches after the record write: wait for both outcomes.
    wait_until(lambda: " completed " in (out := logged()) and " discarded " in out, what="both outcome events")
    out = logged()
    assert ok in out and bad in out and "available" in out
    assert bad not in logged("--job", ok)
    failed = logged("--state", "failed")
    assert bad in failed and ok not in failed
    assert ok not in logged("--task", "t.boom")
    page = json.loads(logged("--job", ok, "--json"))
    events = page["items"]
    assert page["count"] == len(events) and page["next"] is None
    assert {e["kind"] for e in events} >= {"available", "completed"}
    assert all(e["job_id"] == ok for e in events)
    assert logged("--job", ok[:20]).count(ok) >= 2  # a unique prefix works too
    r = cli("logs", "--job", "nope")
    assert r.exit_code == 4 and "no job id starts with 'nope'" in one_error_line(r)


def test_logs_follow_until_ctrl_c(cli, config_file, register_tasks):
    register_tasks()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronos.cli.main", "--config", str(config_file),
         "logs", "--follow", "--since", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
        env={k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")},
        # A test run started in the background (`make test &`) ignores SIGINT, and children
        # inherit that: the follower then never saw the Ctrl-C this test sends.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        # Submit until the follower, which may still be subscribing, has printed one of them.
        ids: list[str] = []

        def seen() -> bool:
            ids.append(submit(cli, "t.add", "--args", "[1, 1]"))
            return any(i in line for line in list(lines) for i in ids)

        wait_until(seen, timeout=60, what="a live event")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:  # say what it was doing, then end it
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"logs --follow did not stop on Ctrl-C; stderr: {err[-2000:]}") from None
    assert proc.returncode == 130
    assert "Traceback" not in err
