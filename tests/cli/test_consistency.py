"""Issue 11, deliverable 7: the CLI behaves the same way everywhere.

Global options after the command, one JSON envelope for listings, one exit code per
kind of mistake, job-id prefixes, reads that never create streams, `attempt N of M`,
one live DLQ entry per job, `--state failed`, `schedules next --after`, cells cut to
the width, `--at` in the past, `logs --follow` starting live, job lines at DEBUG.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from typer.testing import CliRunner

from chronos.client import Client
from chronos.embedded import free_port
from chronos.events import log_event
from chronos.models import DLQEntry, Event, JobSpec
from chronos.cli.main import app

from ..conftest import drop_namespace
from .conftest import cli_json, items, job_state, one_error_line, submit, wait_state, wait_until, write_config

GLOBALS = ("--config", "--server", "--namespace", "--json", "--debug")


def _leaf_commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    subs = getattr(cmd, "commands", None)
    if not subs:
        return [(path, cmd)]
    return [leaf for name, sub in subs.items() for leaf in _leaf_commands(sub, (*path, name))]


# --- global options after the command ----------------------------------------------------------
def test_every_command_accepts_the_global_options():
    import typer

    leaves = _leaf_commands(typer.main.get_command(app))
    assert len(leaves) > 30
    for path, cmd in leaves:
        opts = {o for p in cmd.params for o in p.opts}
        assert set(GLOBALS) <= opts, (path, set(GLOBALS) - opts)


def test_global_options_after_the_command(cli, config_file, settings, register_tasks):
    register_tasks()
    job_id = submit(cli, "t.add", "--args", "[1, 2]")
    runner = CliRunner()
    # Everything after the command, including --config.
    r = runner.invoke(app, ["jobs", "get", job_id, "--config", str(config_file), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["id"] == job_id
    r = runner.invoke(app, ["workers", "--json", "--config", str(config_file)])
    assert json.loads(r.stdout) == {"items": [], "count": 0, "next": None}
    # A value after the command wins over one before it.
    down = f"nats://127.0.0.1:{free_port()}"
    r = runner.invoke(app, ["--config", str(config_file), "dlq", "list", "--server", down])
    assert r.exit_code == 3 and down in one_error_line(r)
    r = runner.invoke(app, ["--config", str(config_file), "--namespace", "elsewhere", "jobs", "list",
                            "--namespace", settings.namespace])
    assert r.exit_code == 0, r.output
    # -c stays --concurrency where a command has that; --config still works there.
    r = runner.invoke(app, ["tui", "--server", down, "--help"])
    assert r.exit_code == 0 and "--readonly" in r.output
    r = runner.invoke(app, ["jobs", "get", "0000000000000000000000000000", "--config", str(config_file), "--debug"])
    assert r.exit_code == 4 and "Traceback" in r.stderr


# --- one JSON envelope for every listing -----------------------------------------------------------
def test_every_listing_prints_the_envelope(cli, worker):
    worker()
    ok = submit(cli, "t.add", "--args", "[1, 2]")
    bad = submit(cli, "t.boom", "--max-attempts", "1")
    wait_state(cli, ok, "completed")
    wait_state(cli, bad, "discarded")
    assert cli("schedules", "add", "tick", "t.add", "--every", "1h", "--args", "[1, 1]").exit_code == 0
    listings = {
        ("jobs", "list"): lambda rows: {r["id"] for r in rows} >= {ok, bad},
        ("dlq", "list"): lambda rows: [r["job_id"] for r in rows] == [bad],
        ("logs",): lambda rows: any(r["job_id"] == ok and r["kind"] == "completed" for r in rows),
        ("workers",): lambda rows: len(rows) == 1,
        ("schedules", "list"): lambda rows: [r["name"] for r in rows] == ["tick"],
    }
    for args, check in listings.items():
        wait_until(lambda: check(items(cli, *args)), what=f"{args} listing")  # items() checks the envelope
        r = cli("--json", *args)  # the global flag gives the same shape
        assert set(json.loads(r.stdout)) == {"items", "count", "next"}


def test_cursor_pages_through_the_dlq(cli, worker):
    worker()
    dead = [submit(cli, "t.boom", "--max-attempts", "1", "--arg", f"message=m{i}") for i in range(3)]
    for job_id in dead:
        wait_state(cli, job_id, "discarded")
    wait_until(lambda: len(items(cli, "dlq", "list")) == 3, what="3 DLQ entries")
    first = cli_json(cli, "dlq", "list", "--limit", "2")
    assert [e["job_id"] for e in first["items"]] == dead[:2] and first["next"] is not None
    second = cli_json(cli, "dlq", "list", "--limit", "2", "--cursor", first["next"])
    assert [e["job_id"] for e in second["items"]] == dead[2:] and second["next"] is None
    r = cli("dlq", "list", "--cursor", "soon")
    assert r.exit_code == 2 and "--cursor" in one_error_line(r)


# --- exit codes ---------------------------------------------------------------------------------
def test_one_exit_code_per_kind_of_mistake(cli, tmp_path, register_tasks):
    register_tasks()
    job_id = submit(cli, "t.add", "--args", "[1, 2]", "--in", "1h")
    assert cli("cancel", job_id).exit_code == 0
    cases = [
        (["jobs", "list", "--limit", "x"], 2),  # bad usage
        (["submit", "no.such.task"], 2),  # a value refused
        (["jobs", "get", "0000000000000000000000000000"], 4),  # not found
        (["schedules", "get", "ghost"], 4),
        (["dlq", "show", "99"], 4),
        (["cancel", job_id], 5),  # conflict: already cancelled
        (["jobs", "run-now", "0000000000000000000000000000"], 4),
    ]
    for args, code in cases:
        r = cli(*args)
        assert r.exit_code == code, (args, r.output)
        one_error_line(r)
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[worker]\nconcurency = 4\n")
    r = CliRunner().invoke(app, ["--config", str(bad_config), "workers"])
    assert r.exit_code == 7 and "concurency" in one_error_line(r)
    r = CliRunner().invoke(app, ["workers", "--server", f"nats://127.0.0.1:{free_port()}"])
    assert r.exit_code == 3


def test_permission_denied_is_exit_6(tmp_path, namespace):
    from ..deploy.authserver import auth_server, role_settings

    server = auth_server(tmp_path, namespace)
    server.start()
    try:
        admin = role_settings(server, namespace, "admin")
        worker_cfg = write_config(tmp_path / "worker.toml", role_settings(server, namespace, "worker"))
        lines = worker_cfg.read_text().replace("[nats]\n", "[nats]\nuser = \"chronos-worker\"\n"
                                                            "password = \"worker-secret\"\nmanage_topology = false\n", 1)
        worker_cfg.write_text(lines)
        asyncio.run(_init(admin))
        r = CliRunner().invoke(app, ["--config", str(worker_cfg), "schedules", "list"])  # workers may not read them
        assert r.exit_code == 6, r.output
        assert "permission denied" in one_error_line(r).lower()
        wrong = tmp_path / "wrong.toml"
        wrong.write_text(lines.replace("worker-secret", "guess"))
        r = CliRunner().invoke(app, ["--config", str(wrong), "workers"])
        assert r.exit_code == 6
        assert "refused these credentials" in one_error_line(r)
    finally:
        server.cleanup()


async def _init(settings: Any) -> None:
    async with await Client.connect(settings):
        pass


# --- job id prefixes -------------------------------------------------------------------------------
def test_unique_prefix_works_wherever_an_id_does(cli, worker, register_tasks):
    register_tasks()
    a = submit(cli, "t.add", "--args", "[1, 2]", "--in", "1h")
    prefix = a[:20]
    assert cli_json(cli, "jobs", "get", prefix)["id"] == a
    r = cli("jobs", "run-now", prefix, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["id"] == a
    b = submit(cli, "t.add", "--args", "[1, 2]", "--in", "1h")
    r = cli("cancel", b[:20])
    assert r.exit_code == 0 and f"job {b}: cancelled" in r.stdout
    assert cli("retry", b[:20]).exit_code == 0
    worker()
    dead = submit(cli, "t.boom", "--max-attempts", "1")
    wait_state(cli, dead, "discarded")
    wait_until(lambda: items(cli, "dlq", "list"), what="a DLQ entry")
    assert cli_json(cli, "dlq", "show", dead[:20])["job_id"] == dead
    r = cli("jobs", "get", "zzzz")
    assert r.exit_code == 4 and one_error_line(r) == "error: no job id starts with 'zzzz'"


def test_ambiguous_prefix_is_one_line_with_candidates(cli, register_tasks):
    register_tasks()
    ids = [submit(cli, "t.add", "--args", "[1, 2]", "--in", "1h") for _ in range(6)]
    common = os.path.commonprefix(ids)
    assert len(common) >= 4  # ids start with their creation time in milliseconds
    r = cli("jobs", "get", common)
    assert r.exit_code == 2
    line = one_error_line(r)
    assert f"job id prefix {common!r} is ambiguous: 6 jobs match" in line
    assert "and 2 more" in line and sum(i in line for i in ids) == 4


# --- reads never create streams -------------------------------------------------------------------
@pytest.mark.parametrize("args", [["jobs", "list"], ["jobs", "get", "0123"], ["dlq", "list"], ["workers"], ["logs"],
                                  ["history"], ["schedules", "list"], ["cancel", "0123"], ["dlq", "purge", "--yes"]])
def test_a_mistyped_namespace_creates_nothing(settings, tmp_path, args):
    typo = f"{settings.namespace}typo"
    cfg = write_config(tmp_path / "typo.toml", msgspec.structs.replace(settings, namespace=typo))
    try:
        r = CliRunner().invoke(app, ["--config", str(cfg), *args])
        assert r.exit_code == 4, r.output
        assert one_error_line(r) == f"error: namespace {typo} has no chronos streams (run chronos admin init)"
        assert asyncio.run(_streams_of(settings.nats.url, typo)) == []
    finally:
        asyncio.run(drop_namespace(msgspec.structs.replace(settings, namespace=typo)))


async def _streams_of(url: str, namespace: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        names = [s.config.name for s in await nc.jetstream().streams_info()]
    finally:
        await nc.close()
    prefixes = (namespace.upper().replace("-", "_") + "_", f"KV_{namespace}_")
    return [n for n in names if n.startswith(prefixes)]


# --- jobs get: every attempt's traceback; attempt N of M ---------------------------------------------
def test_jobs_get_prints_each_attempts_traceback(cli, worker):
    worker()
    job_id = submit(cli, "t.boom", "--arg", "message=kaput", "--max-attempts", "2")
    wait_state(cli, job_id, "discarded")
    r = cli("jobs", "get", job_id)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("Traceback (most recent call last)") == 2
    assert "attempt 1 (error):" in r.stdout and "attempt 2 (error):" in r.stdout
    assert r.stdout.count("RuntimeError: kaput") >= 2
    assert "attempt 2 of 2" in r.stdout
    listing = cli("jobs", "list")
    assert "ATTEMPT" in listing.stdout and "2 of 2" in listing.stdout


# --- one live DLQ entry per job ----------------------------------------------------------------------
def test_retried_or_replayed_job_keeps_one_dlq_entry(cli, worker, settings):
    worker()
    job_id = submit(cli, "t.boom", "--max-attempts", "1")
    wait_state(cli, job_id, "discarded")
    wait_until(lambda: items(cli, "dlq", "list"), what="the first DLQ entry")
    for how in (("retry", job_id), ("dlq", "replay", job_id), ("jobs", "run-now", job_id)):
        wait_state(cli, job_id, "discarded")
        before = items(cli, "dlq", "list")[0]["seq"]
        r = cli(*how)
        assert r.exit_code == 0, r.output
        # It fails again: a newer entry replaces the older one.
        wait_until(lambda: [e["seq"] for e in items(cli, "dlq", "list")] not in ([], [before]), what="a newer entry")
        entries = items(cli, "dlq", "list")
        assert [e["job_id"] for e in entries] == [job_id], how
    # A retry through the Python API leaves the old message in the stream; the DLQ still counts one.
    wait_state(cli, job_id, "discarded")
    asyncio.run(_retry(settings, job_id))
    wait_until(lambda: asyncio.run(_messages(settings)) == 2, what="a second DLQ message")
    assert [e["job_id"] for e in items(cli, "dlq", "list")] == [job_id]
    assert asyncio.run(_count(settings)) == 1
    assert "1 entry" in cli("dlq", "list").stdout
    r = cli("dlq", "purge", "--yes", "--json")
    assert json.loads(r.stdout) == {"purged": 1}


async def _retry(settings: Any, job_id: str) -> None:
    async with await Client.connect(settings) as c:
        await c.retry(job_id)


async def _messages(settings: Any) -> int:
    async with await Client.connect(settings) as c:
        return (await c.conn.js.stream_info(c.names.dlq_stream)).state.messages


async def _count(settings: Any) -> int:
    async with await Client.connect(settings) as c:
        return await c.dlq_count()


# --- --state failed ----------------------------------------------------------------------------------
def test_jobs_list_state_failed_is_retryable_and_discarded(cli, worker):
    worker()
    ok = submit(cli, "t.add", "--args", "[1, 2]")
    dead = submit(cli, "t.boom", "--max-attempts", "1")
    retrying = submit(cli, "t.boom", "--max-attempts", "3", "--arg", "message=again")
    wait_state(cli, ok, "completed")
    wait_state(cli, dead, "discarded")
    wait_until(lambda: job_state(cli, retrying) in ("retryable", "discarded"), what="a failed attempt")
    failed = {j["id"] for j in items(cli, "jobs", "list", "--state", "failed")}
    assert dead in failed and retrying in failed and ok not in failed
    human = cli("jobs", "list", "--state", "failed")
    assert dead in human.stdout and ok not in human.stdout


# --- schedules next --after ----------------------------------------------------------------------------
def test_schedules_next_after_a_past_time_across_dst(cli, tasks):
    assert cli("schedules", "add", "early", "t.add", "--cron", "30 1 * * *", "--tz", "Europe/Berlin").exit_code == 0
    report = cli_json(cli, "schedules", "next", "early", "--after", "2024-03-29T12:00:00+01:00", "--count", "3")
    walls = [f["wall"] for f in report["fire_times"]]
    assert walls == ["2024-03-30T01:30:00+01:00", "2024-03-31T01:30:00+01:00", "2024-04-01T01:30:00+02:00"]
    dry = cli_json(cli, "schedules", "next", "--cron", "0 12 * * *", "--after", "2001-01-01T00:00:00+00:00",
                   "--count", "1")
    assert dry["fire_times"][0]["wall"] == "2001-01-01T12:00:00+00:00"
    human = cli("schedules", "next", "early", "--after", "2024-03-29T12:00:00+01:00", "--count", "1")
    assert "Sat 2024-03-30 01:30:00 CET" in human.stdout
    r = cli("schedules", "next", "early", "--after", "tomorrowish")
    assert r.exit_code == 2 and "--after" in one_error_line(r)


@pytest.fixture
def tasks(register_tasks):
    register_tasks()


# --- long cells ------------------------------------------------------------------------------------------
def test_long_cells_are_cut_to_the_width(cli, settings):
    huge = "x" * 300_000
    asyncio.run(_dead_letter(settings, huge))
    r = cli("dlq", "list")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) <= 3, len(lines)
    assert max(len(line) for line in lines) <= 200 and "…" in lines[1]
    shown = cli("dlq", "show", "1")
    assert shown.exit_code == 0 and len(shown.stdout) < 5000


async def _dead_letter(settings: Any, task: str) -> None:
    async with await Client.connect(settings) as c:
        spec = JobSpec(task=task, args=[], queue="default", priority="default")
        entry = DLQEntry(reason="no worker registers it\n" * 50, at=time.time(), job_id="0" * 28, spec=spec)
        await c.ops.publish_dlq(entry, "default")


# --- submit --at in the past --------------------------------------------------------------------------
def test_at_in_the_past_says_it_runs_now(cli, register_tasks):
    register_tasks()
    past = (datetime.now() - timedelta(hours=3)).replace(microsecond=0).isoformat()
    r = cli("submit", "t.add", "--args", "[1, 2]", "--at", past)
    assert r.exit_code == 0, r.output
    assert "has passed, so it runs now" in r.stdout and ": available" in r.stdout
    future = (datetime.now() + timedelta(hours=3)).replace(microsecond=0).isoformat()
    assert "in the past" not in cli("submit", "t.add", "--args", "[1, 2]", "--at", future).stdout


# --- logs --follow starts live -------------------------------------------------------------------------
def _follow(config_file: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronos.cli.main", "--config", str(config_file), "logs", "--follow", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
        env={k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")},
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return proc, lines


def test_logs_follow_starts_live_and_since_adds_the_backlog(cli, config_file, register_tasks):
    register_tasks()
    old = submit(cli, "t.add", "--args", "[1, 1]")
    wait_until(lambda: old in cli("logs").stdout, what="the old job's event")
    live, live_lines = _follow(config_file)
    backlog, backlog_lines = _follow(config_file, "--since", "1h")
    try:
        new: list[str] = []

        def seen() -> bool:  # the followers may still be subscribing: submit until one shows
            new.append(submit(cli, "t.add", "--args", "[2, 2]"))
            return all(any(i in line for line in list(ls) for i in new) for ls in (live_lines, backlog_lines))

        wait_until(seen, timeout=20, what="a live event in both followers")
        assert any(old in line for line in backlog_lines)
        assert not any(old in line for line in live_lines)
    finally:
        for proc in (live, backlog):
            proc.terminate()
            proc.communicate(timeout=20)


# --- services log a line per job only at DEBUG -----------------------------------------------------------
def test_job_events_log_at_debug_service_events_above(caplog):
    logger = logging.getLogger("chronos.events.test")
    caplog.set_level(logging.INFO, logger="chronos.events.test")
    for kind in ("available", "running", "completed", "retryable", "discarded"):
        log_event(Event(kind=kind, at=time.time(), job_id="j1", task="t", attempt=1), logger)
    log_event(Event(kind="worker.lost", at=time.time(), worker="w1"), logger)
    log_event(Event(kind="leader.gained", at=time.time(), message="node a"), logger)
    assert [(r.levelname, r.getMessage().split()[0]) for r in caplog.records] == [
        ("WARNING", "worker.lost"), ("INFO", "leader.gained")]
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="chronos.events.test")
    log_event(Event(kind="completed", at=time.time(), job_id="j1", task="t", attempt=4), logger)
    assert [r.getMessage() for r in caplog.records] == ["completed j1 t attempt=4"]


# --- the cancel grace is a setting ---------------------------------------------------------------------
def test_cancel_grace_is_a_setting(cli, worker, settings):
    quick = msgspec.structs.replace(settings, worker=msgspec.structs.replace(settings.worker, cancel_grace=0.5))
    worker(s=quick)
    job_id = submit(cli, "t.stubborn", "--arg", "seconds=60")
    wait_state(cli, job_id, "running")
    started = time.monotonic()
    assert cli("cancel", job_id).exit_code == 0
    wait_state(cli, job_id, "cancelled", timeout=10)
    assert time.monotonic() - started < 4.0  # the default grace alone is 5 s


# --- an unknown CHRONOS_* variable is named --------------------------------------------------------------
def test_unknown_environment_variable_is_named(config_file):
    r = CliRunner().invoke(app, ["--config", str(config_file), "workers"], env={"CHRONOS_WORKER__CONCURENCY": "4"})
    assert r.exit_code == 7
    assert "CHRONOS_WORKER__CONCURENCY" in one_error_line(r)
