"""`chronos dev` in a child process: it comes up, seeds jobs that end as promised, and stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from typer.testing import CliRunner

from chronos.demo import demo_jobs
from chronos.cli.dev import READY_LINE
from chronos.cli.main import app

from .conftest import wait_until

ROOT = Path(__file__).parents[2]


def test_dev_runs_the_demo_and_stops_on_ctrl_c(tmp_path: Path):
    data = tmp_path / "dev-data"
    proc, out, err, threads = _start_dev(data, "--port", "0", namespace="devtest", seed=True)
    runner = CliRunner()
    try:
        banner = "".join(out)
        url = re.search(r"server\s+(nats://\S+)", banner).group(1)
        assert f"chronos --server {url} --namespace devtest tui" in banner
        assert (data / "jetstream").is_dir()

        def run(*args: str) -> str:
            r = runner.invoke(app, ["--server", url, "--namespace", "devtest", *args])
            assert r.exit_code == 0, r.output
            return r.stdout

        wait_until(lambda: len(run("jobs", "list", "--json").split('"id"')) - 1 == len(demo_jobs()), timeout=5,
                   what="the seeded jobs")  # see conftest.listed for why a listing is waited for
        # The delayed demo job waits for the scheduler (30 s): scheduled, not run yet.
        assert run("jobs", "list", "--state", "scheduled", "--json").count('"state": "scheduled"') == 1
        assert "schedules  3 demo schedules" in banner and "scheduler  running" in banner
        # The always-failing demo job lands in the DLQ; the flaky ones complete after retries.
        wait_until(lambda: "demo.always_fails" in run("dlq", "list"), timeout=30, what="the DLQ entry")
        wait_until(lambda: run("jobs", "list", "--task", "demo.flaky", "--state", "completed", "--json")
                   .count('"state": "completed"') == 2, timeout=30, what="the flaky jobs to complete")
    finally:
        _stop_dev(proc, threads)
    assert proc.returncode == 0, "".join(err)
    assert "chronos dev stopped (stopped)" in "".join(out)
    assert "Traceback" not in "".join(err)


def _start_dev(data: Path, *args: str, namespace: str = "devtest2",
               seed: bool = False) -> tuple[subprocess.Popen[str], list[str], list[str], list[threading.Thread]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronos.cli.main", "--namespace", namespace, "dev", "--data-dir", str(data),
         "--seed" if seed else "--no-seed", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")},
    )
    out: list[str] = []
    err: list[str] = []
    threads = [threading.Thread(target=lambda s=s, b=b: b.extend(iter(s.readline, "")), daemon=True)
               for s, b in ((proc.stdout, out), (proc.stderr, err))]
    for t in threads:
        t.start()
    wait_until(lambda: any(READY_LINE in line for line in out) or proc.poll() is not None, timeout=30,
               what="the dev banner")
    assert READY_LINE in "".join(out), "".join(err)
    return proc, out, err, threads


def _stop_dev(proc: subprocess.Popen[str], threads: list[threading.Thread]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    for t in threads:
        t.join(5)


def test_dev_is_one_per_data_dir_comes_back_on_its_port_and_keeps_the_banner(tmp_path: Path):
    data = tmp_path / "dev-data"
    proc, out, err, threads = _start_dev(data, "--port", "0")
    try:
        url = re.search(r"server\s+(nats://\S+)", "".join(out)).group(1)
        # A second instance on the same directory: one line naming the first, non-zero exit.
        second = subprocess.run(
            [sys.executable, "-m", "chronos.cli.main", "dev", "--data-dir", str(data)],
            capture_output=True, text=True, cwd=ROOT, timeout=30,
            env={k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")})
        assert second.returncode == 1
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and f"pid {proc.pid}" in lines[0] and url in lines[0], second.stderr
        # The banner is the last thing on the terminal: service logs go to dev.log, warnings only here.
        assert (data / "dev.log").exists()
        banner_at = len(err)
        runner = CliRunner()
        r = runner.invoke(app, ["--server", url, "--namespace", "devtest2", "submit", "demo.add", "--args", "[2, 3]",
                                "--wait"])
        assert r.exit_code == 0, r.output
        assert "demo" in runner.invoke(app, ["--server", url, "--namespace", "devtest2", "jobs", "list"]).stdout
        assert "chronos dev ready on" in (data / "dev.log").read_text()
        assert [ln for ln in err[banner_at:] if " INFO " in ln] == []
        assert not any("chronos dev ready on" in ln for ln in err)
    finally:
        _stop_dev(proc, threads)
    assert proc.returncode == 0, "".join(err)
    # A restart without --port comes back on the same URL.
    proc, out, err, threads = _start_dev(data)
    try:
        assert re.search(r"server\s+(nats://\S+)", "".join(out)).group(1) == url
    finally:
        _stop_dev(proc, threads)


def test_demo_jobs_go_to_the_demo_queue_and_user_queues_are_left_alone(tmp_path: Path):
    data = tmp_path / "dev-data"
    proc, out, err, threads = _start_dev(data, "--port", "0")
    try:
        url = re.search(r"server\s+(nats://\S+)", "".join(out)).group(1)
        assert "on queue 'demo'" in "".join(out)
        runner = CliRunner()
        base = ["--server", url, "--namespace", "devtest2"]
        # A submit by name goes to the task's declared queue (from the catalog)...
        r = runner.invoke(app, [*base, "submit", "demo.add", "--args", "[1, 1]", "--wait", "--json"])
        assert r.exit_code == 0 and '"queue": "demo"' in r.stdout, r.output
        # ...and a user's job on `default` for a task the demo worker has is not taken by it.
        r = runner.invoke(app, [*base, "submit", "demo.add", "--args", "[1, 2]", "--queue", "default"])
        assert r.exit_code == 0, r.output
        job_id = re.search(r"submitted (\S+)", r.stdout).group(1)
        got = runner.invoke(app, [*base, "jobs", "get", job_id, "--json"])
        assert got.exit_code == 0 and "\"state\": \"available\"" in got.stdout, (r.stdout, got.output)
    finally:
        _stop_dev(proc, threads)
