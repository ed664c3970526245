"""Issue 12's attacks through the built-in `shell` and `http` tasks, called as the worker calls them."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from chronos.config import load_settings
from chronos.errors import Cancel, ConfigError
from chronos.worker.builtin import builtin_registry, call_http, parse_allow, run_shell, shell_argv


# --- shell: the allow-list ------------------------------------------------------------------------------
ALLOW = [
    "/usr/bin/find {path:/srv/data/*} -name {word}",
    "/bin/tar -czf {path:/backups/*.tgz} {path:/srv/data/*}",
    "/usr/bin/git -C {path:/srv/repos/*} pull --ff-only",
    "/bin/sleep {int}",
]


@pytest.mark.parametrize("argv", [
    ["/usr/bin/find", "/srv/data/x", "-name", "a", "-exec", "/bin/sh", "-c", "id", ";"],  # extra arguments
    ["/usr/bin/find", "/srv/data/x", "-exec", "id"],  # -exec instead of -name
    ["/usr/bin/find", "/srv/data/x", "-name", "-delete"],  # a flag where a {word} goes
    ["/bin/tar", "-czf", "/backups/a.tgz", "/srv/data/x", "--checkpoint=1", "--checkpoint-action=exec=id"],
    ["/bin/tar", "-czf", "/backups/../etc/cron.d/x.tgz", "/srv/data/x"],  # a path that only looks inside
    ["/usr/bin/git", "-c", "alias.x=!id", "-C", "/srv/repos/a", "x"],
    ["/usr/bin/git", "-C", "/srv/repos/a", "pull", "--upload-pack=id"],
    ["find", "/srv/data/x", "-name", "a"],  # a bare name, found on PATH
    ["/tmp/find", "/srv/data/x", "-name", "a"],
    ["/bin/sleep", "1; id"],
])
def test_arguments_outside_the_patterns_are_refused(argv):
    with pytest.raises(Cancel, match="shell_allow"):
        shell_argv(argv, ALLOW)


def test_what_the_patterns_allow_passes():
    assert shell_argv("/usr/bin/find /srv/data/logs -name app.log", ALLOW)[0] == "/usr/bin/find"
    assert shell_argv(["/bin/tar", "-czf", "/backups/d.tgz", "/srv/data/d"], ALLOW)[0] == "/bin/tar"


@pytest.mark.parametrize("entry", ["echo", "bin/echo {word}", "/bin/echo {nope}", "/bin/echo {path:relative}"])
def test_a_bad_allow_list_entry_stops_the_worker_with_one_line(entry):
    settings = load_settings(overrides={"worker": {"shell_allow": [entry]}}, read_env=False)
    with pytest.raises(ConfigError, match="worker.shell_allow"):
        builtin_registry(settings)


@pytest.mark.parametrize("name", ["PATH", "LD_PRELOAD", "BASH_ENV", "ENV", "PYTHONPATH", "CHRONOS_NATS__PASSWORD"])
def test_dangerous_variables_cannot_be_allow_listed(name):
    settings = load_settings(overrides={"worker": {"shell_env": [name]}}, read_env=False)
    with pytest.raises(ConfigError, match="shell_env"):
        builtin_registry(settings)


# --- shell: the environment ------------------------------------------------------------------------------
async def test_the_child_sees_neither_the_job_s_loader_variables_nor_the_worker_s_secrets(monkeypatch):
    monkeypatch.setenv("CHRONOS_NATS__PASSWORD", "worker-secret")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    for name in ("PATH", "LD_PRELOAD", "BASH_ENV"):
        with pytest.raises(Cancel, match="not in this worker's worker.shell_env"):
            await run_shell(["/usr/bin/env"], allow=["/usr/bin/env"], env={name: "/tmp/x"}, env_allow=["GREETING"])
    res = await run_shell(["/usr/bin/env"], allow=["/usr/bin/env"], env={"GREETING": "hi"}, env_allow=["GREETING"])
    env = dict(line.split("=", 1) for line in res["stdout"].splitlines())
    assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "GREETING": "hi"}
    assert "worker-secret" not in res["stdout"]


async def test_a_job_chooses_its_cwd_only_inside_the_allowed_globs(tmp_path: Path):
    with pytest.raises(Cancel, match="shell_cwd_allow"):
        await run_shell(["/bin/pwd"], allow=["/bin/pwd"], cwd=str(tmp_path))
    res = await run_shell(["/bin/pwd"], allow=["/bin/pwd"])
    assert res["stdout"].strip() == "/"


# --- shell: timeouts, cancels and grandchildren ---------------------------------------------------------
def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie whose parent has not reaped it yet is as good as gone
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except (FileNotFoundError, IndexError):
            return True
        time.sleep(0.02)
    return False


def _script(tmp_path: Path, body: str) -> tuple[list[str], list[str]]:
    script = tmp_path / "job.sh"
    script.write_text(body)
    return ["/bin/sh", str(script)], [f"/bin/sh {script}"]


async def test_a_background_grandchild_neither_holds_the_job_nor_outlives_it(tmp_path: Path):
    argv, allow = _script(tmp_path, "/bin/sleep 30 &\necho $!\n")
    started = time.monotonic()
    res = await run_shell(argv, allow=allow, timeout=20)
    assert time.monotonic() - started < 3  # not held for 30 s by the pipe the sleep keeps open
    assert _gone(int(res["stdout"].strip()))


async def test_a_timeout_kills_the_whole_process_group(tmp_path: Path):
    pidfile = tmp_path / "pid"
    argv, allow = _script(tmp_path, f"/bin/sleep 30 &\necho $! > {pidfile}\n/bin/sleep 30\n")
    started = time.monotonic()
    with pytest.raises(Exception, match="timed out"):
        await run_shell(argv, allow=allow, timeout=0.5)
    assert time.monotonic() - started < 3
    assert _gone(int(pidfile.read_text()))


async def test_a_cancel_kills_the_whole_process_group(tmp_path: Path):
    pidfile = tmp_path / "pid"
    argv, allow = _script(tmp_path, f"/bin/sleep 30 &\necho $! > {pidfile}\n/bin/sleep 30\n")
    task = asyncio.ensure_future(run_shell(argv, allow=allow))
    deadline = time.monotonic() + 5
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _gone(int(pidfile.read_text()))


# --- http ----------------------------------------------------------------------------------------------------
BIG = 8 * 1024 * 1024
BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/secret":
            body = b"AWS_SECRET_ACCESS_KEY=metadata-secret"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("content-length", str(BIG))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(BIG // len(chunk)):
                    self.wfile.write(chunk)
            except OSError:
                pass  # the client stopped reading: the point
        elif self.path == "/bomb":
            self.send_response(200)
            self.send_header("content-encoding", "gzip")
            self.send_header("content-length", str(len(BOMB)))
            self.end_headers()
            try:
                self.wfile.write(BOMB)
            except OSError:
                pass
        elif self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("location", self.path.split("to=", 1)[1])
            self.send_header("content-length", "0")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def local() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def test_http_is_off_without_an_allow_list(local):
    with pytest.raises(Cancel, match="http tasks are off"):
        await call_http(f"http://127.0.0.1:{local}/secret")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0",
                                  "169.254.169.254"])
async def test_loopback_and_link_local_are_refused_even_when_their_name_is_listed(local, host):
    allow = ["localhost", "*.example.com", "http://localhost/", "http://[::ffff:127.0.0.1]/"]
    with pytest.raises(Cancel, match="not a public address|not in this worker"):
        await call_http(f"http://{host}:{local}/secret", allow=allow)


def _dns(monkeypatch: pytest.MonkeyPatch, *answers: str) -> None:
    """The resolver's answers, in order (the last one repeats): DNS is not what is under test."""
    queue = list(answers)
    loop = asyncio.get_running_loop()

    async def fake_getaddrinfo(host, port, **kwargs):
        ip = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)


@pytest.mark.parametrize("address", ["169.254.169.254", "10.1.2.3", "192.168.0.1", "100.64.0.1", "127.0.0.1"])
async def test_a_listed_name_that_resolves_to_a_private_address_is_refused(monkeypatch, address):
    _dns(monkeypatch, address)
    with pytest.raises(Cancel, match="not a public address"):
        await call_http("http://metadata.example.com/latest/meta-data/", allow=["metadata.example.com"])


async def test_a_listed_network_admits_its_addresses(local):
    res = await call_http(f"http://127.0.0.1:{local}/", allow=["127.0.0.0/8"])
    assert res["body"] == "ok"


async def test_a_redirect_is_checked_like_the_first_url(local):
    for target in ("http://169.254.169.254/latest/meta-data/", f"http://[::1]:{local}/secret"):
        with pytest.raises(Cancel, match="not in this worker"):
            await call_http(f"http://127.0.0.1:{local}/redirect?to={target}", allow=["127.0.0.1/32"])


async def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch):
    """DNS rebinding: the first answer is public, any later one loopback; only the first is used."""
    _dns(monkeypatch, "93.184.216.34", "127.0.0.1")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers["host"], request.extensions.get("sni_hostname")))
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))

    res = await call_http("https://hooks.example.com/x", allow=["hooks.example.com"],
                          transport=httpx.MockTransport(handler))
    assert res["status"] == 200
    assert seen == [("93.184.216.34", "hooks.example.com", "hooks.example.com")]


async def test_a_url_prefix_does_not_admit_its_look_alikes():
    for url in ("https://hooks.example.com.evil.net/chronos/x", "https://hooks.example.com/chronos-evil",
                "http://hooks.example.com/chronos/x"):
        with pytest.raises(Cancel, match="not in this worker"):
            await call_http(url, allow=["https://hooks.example.com/chronos/"])


async def test_a_large_body_is_cut_at_the_cap(local):
    with pytest.raises(Cancel, match="larger than 1048576 bytes"):
        await call_http(f"http://127.0.0.1:{local}/big", allow=["127.0.0.0/8"], max_body=1024 * 1024)


async def test_a_gzip_bomb_is_cut_at_the_cap_after_decompression(local):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(Cancel, match="larger than 1048576 bytes"):
        await call_http(f"http://127.0.0.1:{local}/bomb", allow=["127.0.0.0/8"], max_body=1024 * 1024)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 32, f"peak memory grew by {grown_mb:.0f} MB for a {len(BOMB)} byte bomb of 64 MB"
