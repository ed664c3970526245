"""`chronos tui --serve` beyond loopback: nothing without authentication, and a page remote browsers can use."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from chronos.embedded import free_port

ROOT = Path(__file__).parents[2]


@contextmanager
def serving(tmp_path: Path, **env_extra: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")} | env_extra
    proc = subprocess.Popen([sys.executable, "-m", "chronos.cli.main", "--server", "nats://127.0.0.1:1", "tui",
                             "--serve", "--host", "0.0.0.0", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            except urllib.error.HTTPError:
                break  # answering (401)
            except OSError:
                time.sleep(0.1)
        yield port, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_beyond_loopback_a_token_is_required_and_the_page_follows_the_browser(tmp_path):
    with serving(tmp_path) as (port, proc):
        base = f"http://127.0.0.1:{port}"
        assert fetch(f"{base}/")[0] == 401
        assert fetch(f"{base}/?token=guess")[0] == 401
        assert fetch(f"{base}/static/js/textual.js")[0] == 401
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        token = re.search(r"\?token=(\S+)", proc.stderr.read()).group(1)
    # A fresh server makes a fresh token; check the page with one set in the environment instead.
    with serving(tmp_path, CHRONOS_TUI__SERVE_TOKEN="s3cret-token") as (port, _):
        base = f"http://127.0.0.1:{port}"
        status, page, headers = fetch(f"{base}/?token=s3cret-token")
        assert status == 200 and "chronos_console=" in headers.get("Set-Cookie", "")
        # Not the bind address: the address this browser used.
        assert f"ws://127.0.0.1:{port}/ws" in page and "0.0.0.0" not in page
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        assert fetch(f"{base}/static/js/textual.js", {"Cookie": cookie})[0] == 200
        assert fetch(f"{base}/static/js/textual.js", {"Authorization": "Bearer s3cret-token"})[0] == 200
        # A page on another site cannot open the console's websocket with the browser's cookie.
        ws = {"Cookie": cookie, "Origin": "http://evil.example", "Connection": "Upgrade", "Upgrade": "websocket",
              "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}
        assert fetch(f"{base}/ws", ws)[0] == 403
    assert token


def test_basic_auth(tmp_path):
    with serving(tmp_path, CHRONOS_TUI__SERVE_USER="ops", CHRONOS_TUI__SERVE_PASSWORD="pw") as (port, _):
        base = f"http://127.0.0.1:{port}"
        status, _, headers = fetch(f"{base}/")
        assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
        bad = base64.b64encode(b"ops:wrong").decode()
        assert fetch(f"{base}/", {"Authorization": f"Basic {bad}"})[0] == 401
        good = base64.b64encode(b"ops:pw").decode()
        assert fetch(f"{base}/", {"Authorization": f"Basic {good}"})[0] == 200


def test_readonly_connects_as_the_viewer():
    from chronos.cli.tui import readonly_settings
    from chronos.config import load_settings

    s = load_settings(overrides={"nats": {"user": "chronos-console", "password": "c"},
                                 "tui": {"viewer_user": "chronos-viewer", "viewer_password": "v"}}, read_env=False)
    r = readonly_settings(s)
    assert (r.nats.user, r.nats.password, r.nats.manage_topology) == ("chronos-viewer", "v", False)
    creds = load_settings(overrides={"tui": {"viewer_creds_file": "/etc/chronos/viewer.creds"}}, read_env=False)
    assert readonly_settings(creds).nats.creds_file == "/etc/chronos/viewer.creds"
