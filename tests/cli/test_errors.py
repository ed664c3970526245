"""Bad input and failures: one line on stderr and the exit code of its kind (the README's table):
2 bad usage or input, 3 server unreachable, 4 not found, 5 conflict, 6 permission denied, 7 configuration."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from chronos.embedded import free_port
from chronos.cli.main import app

from ..conftest import drop_namespace
from .conftest import make_topology, one_error_line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["submit", "t.add", "--args", "[1, 2"], "--args: invalid JSON"),
        (["submit", "t.add", "--args", '"just a string"'], "--args: must be a JSON list"),
        (["submit", "t.add", "--args", "[1]", "--arg", "a=1"], "--arg: give either --args"),
        (["submit", "t.add", "--arg", "novalue"], "--arg: 'novalue' is not key=value"),
        (["submit", "t.add", "--in", "5 minutes"], "--in: '5 minutes' is not a duration"),
        (["submit", "t.add", "--in", "5m", "--at", "2030-01-01T00:00"], "--in: give either --at or --in"),
        (["submit", "t.add", "--at", "next tuesday"], "--at: 'next tuesday' is not an ISO 8601 time"),
        (["submit", "t.add", "--timeout", "soon"], "--timeout: 'soon' is not a duration"),
        (["submit", "t.add", "--timeout", "0"], "--timeout: must be more than zero"),
        # A number in exponent form is a number, checked by range like 9999999999d (was "not a duration").
        (["submit", "t.add", "--timeout", "1e20"], "timeout: must be at most"),
        (["submit", "t.add", "--timeout", "1e999"], "timeout: must be"),
        # msgspec said "Input data was truncated" for a lone surrogate escape.
        (["submit", "t.add", "--args", '["\\ud800"]'], "--args: invalid JSON: a \\ud800-\\udfff escape"),
        (["submit", "t.add", "--priority", "urgent"], "--priority: 'urgent' is not one of"),
        (["jobs", "list", "--state", "exploded"], "--state: 'exploded' is not one of"),
        (["logs", "--state", "exploded"], "--state: 'exploded' is not one of"),
        (["logs", "--since", "yesterday"], "--since: 'yesterday' is not a duration"),
        (["dlq", "replay"], "give exactly one of"),
        (["dlq", "replay", "5", "--all"], "give exactly one of"),
        (["serve", "worker", "--queues", "a,b c", "--burst"], "--queues: 'b c' is not a valid queue name"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(cli, args, needle):
    r = cli(*args)
    assert r.exit_code == 2, r.output
    assert needle in one_error_line(r)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["submit"], "Missing argument"),
        (["jobs", "get"], "Missing argument"),
        (["submit", "t.add", "--bogus"], "No such option"),
        (["nosuchcommand"], "No such command"),
        (["jobs", "list", "--limit", "zero"], "--limit"),
        (["jobs", "get", "bad;id"], "'bad;id' is not a job id"),
        (["cancel", "a.b"], "'a.b' is not a job id"),
    ],
)
def test_click_usage_errors_are_one_line_with_exit_2(cli, args, needle):
    r = cli(*args)
    assert r.exit_code == 2
    line = one_error_line(r)
    assert needle in line
    assert "--help" in line


def test_no_arguments_prints_help():
    r = CliRunner().invoke(app, [])
    assert r.exit_code == 2
    assert "submit" in r.output and "dlq" in r.output


def test_unknown_task_is_bad_input(cli):
    r = cli("submit", "no.such.task", "--args", "[]")
    assert r.exit_code == 2
    assert "unknown task 'no.such.task'" in one_error_line(r)


def test_unknown_task_suggests_a_close_name(cli, register_tasks):
    register_tasks("t.add")
    r = cli("submit", "t.ad")
    assert r.exit_code == 2
    assert "did you mean 't.add'" in one_error_line(r)


@pytest.mark.parametrize("command", [["jobs", "get"], ["jobs", "cancel"], ["jobs", "retry"], ["jobs", "run-now"],
                                     ["retry"], ["cancel"]])
def test_unknown_job_id(cli, command):
    r = cli(*command, "0000000000000000000000000000")
    assert r.exit_code == 4
    assert one_error_line(r) == "error: no job with id 0000000000000000000000000000"


def test_unknown_dlq_entry(cli):
    for ref in ("42", "0000000000000000000000000000"):
        r = cli("dlq", "show", ref)
        assert r.exit_code == 4
        assert "no DLQ entry" in one_error_line(r)


def test_server_down_exits_3_with_one_line(tmp_path: Path):
    # A short connect timeout keeps this fast; the port has nothing listening.
    cfg = tmp_path / "c.toml"
    cfg.write_text("[nats]\nconnect_timeout = 0.5\n")
    url = f"nats://127.0.0.1:{free_port()}"
    r = CliRunner().invoke(app, ["--config", str(cfg), "--server", url, "jobs", "list"])
    assert r.exit_code == 3
    line = one_error_line(r)
    assert url in line and "cannot reach NATS" in line


def test_unknown_config_key_is_rejected_by_name(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[worker]\nconcurency = 4\n")
    r = CliRunner().invoke(app, ["--config", str(cfg), "jobs", "list"])
    assert r.exit_code == 7
    assert "concurency" in one_error_line(r)


def test_missing_config_file(tmp_path: Path):
    r = CliRunner().invoke(app, ["--config", str(tmp_path / "nope.toml"), "workers"])
    assert r.exit_code == 7
    assert "does not exist" in one_error_line(r)


def test_config_from_environment_variable(config_file: Path, settings):
    make_topology(settings)
    r = CliRunner().invoke(app, ["workers"], env={"CHRONOS_CONFIG": str(config_file)})
    assert r.exit_code == 0, r.output
    assert "no workers" in r.stdout


def test_bad_namespace_flag():
    r = CliRunner().invoke(app, ["--namespace", "has space", "workers"])
    assert r.exit_code == 7
    assert "namespace" in one_error_line(r)


def test_debug_shows_the_traceback(cli):
    r = cli("--debug", "jobs", "get", "0000000000000000000000000000")
    assert r.exit_code == 4
    assert "Traceback" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == "error: no job with id 0000000000000000000000000000"


def test_history_is_a_clean_error_until_the_scheduler(cli):
    r = cli("history")
    assert r.exit_code == 1
    assert "needs the scheduler archive" in one_error_line(r)


def test_serve_scheduler_against_a_dead_server_is_exit_3(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[nats]\nconnect_timeout = 0.5\n[scheduler]\narchive_path = {str(tmp_path / 'a.db')!r}\n")
    url = f"nats://127.0.0.1:{free_port()}"
    r = CliRunner().invoke(app, ["--config", str(cfg), "--server", url, "serve", "scheduler"])
    assert r.exit_code == 3, r.output
    assert url in one_error_line(r)


def test_flags_override_the_config_file(cli, settings, register_tasks):
    register_tasks()
    submit_result = cli("submit", "t.add", "--args", "[1, 2]")
    assert submit_result.exit_code == 0
    assert "1-1 of 1" in cli("jobs", "list").stdout
    other = f"{settings.namespace}o"
    try:
        r = cli("--namespace", other, "jobs", "list")
        assert r.exit_code == 4
        assert one_error_line(r) == f"error: namespace {other} has no chronos streams (run chronos admin init)"
    finally:
        asyncio.run(drop_namespace(msgspec.structs.replace(settings, namespace=other)))
    down = f"nats://127.0.0.1:{free_port()}"
    r = cli("--server", down, "jobs", "list")
    assert r.exit_code == 3 and down in one_error_line(r)
