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
    proc = subprocess.Popen(
        [sys.executable, "-m", "chronos.cli.main", "--namespace", "devtest", "dev", "--data-dir", str(data), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")},
    )
    out: list[str] = []
    err: list[str] = []
    threads = [threading.Thread(target=lambda s=s, b=b: b.extend(iter(s.readline, "")), daemon=True)
               for s, b in ((proc.stdout, out), (proc.stderr, err))]
    for t in threads:
        t.start()
    runner = CliRunner()
    try:
        wait_until(lambda: any(READY_LINE in line for line in out) or proc.poll() is not None, timeout=30,
                   what="the dev banner")
        banner = "".join(out)
        assert READY_LINE in banner, "".join(err)
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
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        for t in threads:
            t.join(5)
    assert proc.returncode == 0, "".join(err)
    assert "chronos dev stopped (stopped)" in "".join(out)
    assert "Traceback" not in "".join(err)
