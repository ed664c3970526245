"""`chronos serve worker`: burst runs in-process; the signal path runs in a child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import msgspec

from .conftest import cli_json, one_error_line, submit, wait_until, write_config

ROOT = Path(__file__).parents[2]


def test_burst_worker_runs_what_is_queued(cli, register_tasks):
    register_tasks()
    ok = submit(cli, "t.add", "--args", "[2, 2]")
    again = submit(cli, "t.retry_once")
    r = cli("serve", "worker", "--burst", "--tasks", "tests.cli.tasks:registry", "--concurrency", "2",
            "--queues", "default")
    assert r.exit_code == 0, r.output
    assert cli_json(cli, "jobs", "get", ok)["result"] == 4
    rec = cli_json(cli, "jobs", "get", again)
    # The retry is naked with a delay; burst mode may end before it comes back.
    assert rec["state"] in ("completed", "retryable", "available")


def test_burst_worker_on_another_queue_leaves_default_alone(cli, register_tasks):
    register_tasks()
    job_id = submit(cli, "t.add", "--args", "[1, 1]")
    r = cli("serve", "worker", "--burst", "--tasks", "tests.cli.tasks:registry", "--queues", "other")
    assert r.exit_code == 0, r.output
    assert cli_json(cli, "jobs", "get", job_id)["state"] == "available"


def test_bad_task_module(cli):
    # A configuration mistake: exit 7 (see the README's exit code table).
    r = cli("serve", "worker", "--burst", "--tasks", "no_such_module_xyz:tasks")
    assert r.exit_code == 7
    assert "cannot import task module 'no_such_module_xyz'" in one_error_line(r)
    r = cli("serve", "worker", "--burst", "--tasks", "tests.cli.tasks:nope")
    assert r.exit_code == 7
    assert "has no attribute 'nope'" in one_error_line(r)


def test_no_tasks_at_all(cli):
    r = cli("serve", "worker", "--burst", "--no-builtins")
    assert r.exit_code == 1
    assert "no tasks to run" in one_error_line(r)


def test_sigterm_stops_the_worker_gracefully(cli, config_file):
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronos.cli.main", "--config", str(config_file),
         "serve", "worker", "--tasks", "tests.cli.tasks:registry", "--id", "sig-worker"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")},
    )
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: [w for w in cli_json(cli, "workers")["items"] if w["id"] == "sig-worker"], what="the worker")
        job_id = submit(cli, "t.add", "--args", "[3, 4]")
        wait_until(lambda: cli_json(cli, "jobs", "get", job_id)["state"] == "completed", what="the job to run")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(5)
    err = "".join(err_lines)
    assert proc.returncode == 0, err
    assert "shutting down gracefully" in err and "worker.stopped" in err
    assert "Traceback" not in err
    # It removed its heartbeat on the way out.
    assert cli_json(cli, "workers")["items"] == []


def test_builtin_shell_task_end_to_end(cli, settings, tmp_path: Path):
    script = "/bin/sh -c 'echo $GREETING >&2; exit 3'"
    allowing = msgspec.structs.replace(settings, worker=msgspec.structs.replace(
        settings.worker, shell_allow=["/bin/echo {word}", script], shell_env=["GREETING"]))
    cfg = write_config(tmp_path / "shell.toml", allowing)
    r = cli("--config", str(cfg), "serve", "worker", "--burst")  # registers shell and http
    assert r.exit_code == 0, r.output
    echo = submit(cli, "shell", "--args", json.dumps({"command": ["/bin/echo", "hello"]}))
    env = submit(cli, "shell", "--args", json.dumps({"command": script,
                                                     "env": {"GREETING": "hi there"}, "check": False}))
    refused = submit(cli, "shell", "--args", json.dumps({"command": "rm -rf /nonexistent"}))
    r = cli("--config", str(cfg), "serve", "worker", "--burst")
    assert r.exit_code == 0, r.output

    rec = cli_json(cli, "jobs", "get", echo)
    assert rec["state"] == "completed"
    assert rec["result"]["exit_code"] == 0 and rec["result"]["stdout"] == "hello\n"
    rec = cli_json(cli, "jobs", "get", env)
    assert rec["result"]["exit_code"] == 3 and rec["result"]["stderr"] == "hi there\n"
    rec = cli_json(cli, "jobs", "get", refused)
    assert rec["state"] == "cancelled" and rec["attempt"] == 1
    assert "'rm' is not in this worker's worker.shell_allow" in rec["error"]


def test_serve_scheduler_promotes_delayed_jobs_and_resigns_on_sigterm(cli, config_file, register_tasks):
    register_tasks()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronos.cli.main", "--config", str(config_file), "serve", "scheduler", "--id", "sched-a"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")},
    )
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: "gained by sched-a" in "".join(err_lines) or proc.poll() is not None,
                   what="the lease")
        assert proc.poll() is None, "".join(err_lines)
        job_id = submit(cli, "t.add", "--args", "[1, 2]", "--in", "2s")  # room for a slow host before the get
        assert cli_json(cli, "jobs", "get", job_id)["state"] == "scheduled"
        # No worker runs here: the scheduler alone moves it to available when due.
        wait_until(lambda: cli_json(cli, "jobs", "get", job_id)["state"] == "available", what="the promotion")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(5)
    err = "".join(err_lines)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_services_warn_when_signatures_are_off_outside_a_dev_box(caplog):
    import logging

    from chronos.cli.serve import _warn_unsigned
    from chronos.config import load_settings

    with caplog.at_level(logging.WARNING, logger="chronos.serve"):
        _warn_unsigned(load_settings(overrides={"nats": {"url": "nats://127.0.0.1:4222"}}, read_env=False))
        assert caplog.records == []  # a dev box
        _warn_unsigned(load_settings(overrides={"nats": {"url": "nats://nats.internal:4222"}}, read_env=False))
        _warn_unsigned(load_settings(overrides={"nats": {"url": "nats://127.0.0.1:4222", "user": "chronos-worker",
                                                         "password": "x"}}, read_env=False))
    assert len(caplog.records) == 2
    assert all("job signatures are not checked" in r.getMessage() for r in caplog.records)
