"""`chronos bench precision|delayed-memory` are thin wrappers: small runs finish and report sanely.

(`bench failover` is exercised by tests/integration/test_failover.py through run_failover.)
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from chronos.cli.main import app


def test_bench_precision_json():
    r = CliRunner().invoke(app, ["bench", "precision", "--n", "100", "--spread", "1", "--lead", "1.5", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["n"] == 100 and result["observed"] == 100 and result["missing"] == 0
    assert result["early"] == 0  # order is asserted with well-spaced jobs in test_failover.py
    assert 0 <= result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]


def test_bench_delayed_memory_json():
    r = CliRunner().invoke(app, ["bench", "delayed-memory", "--n", "2000", "--settle", "1", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["n"] == 2000 and result["passed"] is True
    assert 0 < result["peak_rss_mb_while_filling"] < 250 and 0 < result["peak_rss_mb_restarted"] < 250
