"""`chronos bench throughput|crash` are thin wrappers: a small run completes every job."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from chronos.cli.main import app


def test_bench_throughput_json():
    r = CliRunner().invoke(app, ["bench", "throughput", "--n", "300", "--concurrency", "32", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["n"] == 300 and result["completed"] == 300 and result["lost"] == 0
    assert result["enqueue_jobs_per_s"] > 0
    assert set(result["cpu_us_per_job"]) == {"server", "worker", "client"}


def test_bench_crash_json():
    r = CliRunner().invoke(app, ["bench", "crash", "--n", "300", "--job-seconds", "0.02", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["n"] == 300 and result["completed"] == 300
    assert result["lost"] == 0  # the 6 s target is for the bench, not CI
    # At least once: only a job the killed worker held (running, or done with its ack unsent) may
    # run twice, so at most its slots' worth.
    assert result["duplicated"] <= result["concurrency"]
