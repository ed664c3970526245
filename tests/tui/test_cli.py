"""`chronos tui`: the options, the browser command, and --serve answering over HTTP."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request

from typer.testing import CliRunner

from chronos.embedded import free_port
from chronos.cli._shared import AppState
from chronos.cli.main import app
from chronos.cli.tui import child_command

from ..conftest import make_settings


def test_help_lists_the_options():
    result = CliRunner().invoke(app, ["tui", "--help"])
    assert result.exit_code == 0
    for option in ("--readonly", "--serve", "--port"):
        assert option in result.output


def test_browser_sessions_run_the_same_console_with_the_same_settings():
    st = AppState(settings=make_settings("nats://10.0.0.5:4222", "prod"), config_path="chronos.toml")
    args = shlex.split(child_command(st, readonly=True))
    assert args[:3] == [sys.executable, "-m", "chronos.cli.main"]
    assert args[3:] == ["--config", "chronos.toml", "--server", "nats://10.0.0.5:4222", "--namespace", "prod",
                        "tui", "--readonly"]


def test_serve_answers_http(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")}
    proc = subprocess.Popen([sys.executable, "-m", "chronos.cli.main", "--server", "nats://127.0.0.1:1", "tui", "--serve",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://localhost:{port}/", timeout=1) as resp:
                    body = resp.read().decode()
                    break
            except OSError:
                time.sleep(0.1)
        assert "textual" in body.lower(), proc.stderr.read().decode() if proc.poll() is not None else "no page"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
