"""The built-in `shell` and `http` tasks, called directly (the outcomes the executor then applies)."""

from __future__ import annotations

import http.server
import shlex
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from chronos.config import load_settings
from chronos.errors import Cancel, Retry
from chronos.worker.builtin import HTTPStatusError, ShellError, builtin_registry, call_http, run_shell, shell_argv


def test_registry_names():
    reg = builtin_registry(load_settings(read_env=False))
    assert reg.names() == ["http", "shell"]


# --- shell --------------------------------------------------------------------------------------------
def test_shell_is_off_without_an_allow_list():
    with pytest.raises(Cancel, match="shell tasks are off"):
        shell_argv(["echo", "hi"], [])


def test_allow_list_matches_the_program_by_path_and_each_argument():
    allow = ["/bin/echo {word}", "/bin/echo -n {int}"]
    assert shell_argv("/bin/echo hello", allow) == ["/bin/echo", "hello"]
    assert shell_argv(["/bin/echo", "-n", "42"], allow) == ["/bin/echo", "-n", "42"]
    with pytest.raises(Cancel, match="'echo' is not in"):
        shell_argv(["echo", "hi"], allow)  # a bare name is never enough
    with pytest.raises(Cancel, match="match no worker.shell_allow entry"):
        shell_argv("/bin/echo 'a b'", allow)  # a space is not a {word}
    with pytest.raises(Cancel, match="cannot parse"):
        shell_argv("/bin/echo 'unterminated", allow)
    with pytest.raises(Cancel, match="must be a string or a list"):
        shell_argv(["/bin/echo", 3], allow)  # type: ignore[list-item]
    with pytest.raises(Cancel, match="empty"):
        shell_argv("  ", allow)


async def test_shell_result_and_tails(tmp_path: Path):
    script = "pwd; seq 1 5000; echo oops >&2"
    res = await run_shell(["/bin/sh", "-c", script], allow=[shlex.join(["/bin/sh", "-c", script])],
                          cwd=str(tmp_path), cwd_allow=[f"{tmp_path}"], tail=100)
    assert res["exit_code"] == 0
    assert res["stdout"].endswith("4999\n5000\n") and len(res["stdout"]) == 100
    assert res["stderr"] == "oops\n"


async def test_shell_failure_timeout_and_bad_setup(tmp_path: Path):
    bad = "/bin/sh -c 'echo bad thing >&2; exit 2'"
    with pytest.raises(ShellError, match="exited with 2: bad thing"):
        await run_shell(bad, allow=[bad])
    with pytest.raises(ShellError, match="timed out after 0.2s"):
        await run_shell(["/bin/sleep", "5"], allow=["/bin/sleep {int}"], timeout=0.2)
    with pytest.raises(Cancel, match="not found"):
        await run_shell(["/no/such-program-xyz"], allow=["/no/such-program-xyz"])
    with pytest.raises(Cancel, match="is not a directory"):
        await run_shell(["/bin/true"], allow=["/bin/true"], cwd=str(tmp_path / "missing"), cwd_allow=[f"{tmp_path}/*"])
    with pytest.raises(Cancel, match="NAME=string"):
        await run_shell(["/bin/true"], allow=["/bin/true"], env={"BAD NAME": "x"})


# --- http -----------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        status = int(self.path.strip("/").split("/")[0] or 200)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.send_response(status)
        if self.path.endswith("/later"):
            self.send_header("Retry-After", "7")
        self.send_header("content-length", str(len(body) + 2))
        self.end_headers()
        self.wfile.write(b"ok" + body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


LOCAL = ["127.0.0.0/8"]  # the test server is on loopback, which must be listed as a network


async def test_http_success(web):
    res = await call_http(f"{web}/200", json={"a": 1}, allow=LOCAL)
    assert res["status"] == 200
    assert res["body"] in ('ok{"a":1}', 'ok{"a": 1}') and res["body_truncated"] is False
    res = await call_http(f"{web}/201", method="put", expect=[201, 202], allow=LOCAL)
    assert res["status"] == 201


async def test_http_4xx_cancels_5xx_and_timeouts_retry(web):
    with pytest.raises(Cancel, match="answered 404"):
        await call_http(f"{web}/404", allow=LOCAL)
    with pytest.raises(Cancel, match=r"answered 200, expected \[204\]"):
        await call_http(f"{web}/200", expect=204, allow=LOCAL)
    with pytest.raises(HTTPStatusError, match="answered 503"):
        await call_http(f"{web}/503", allow=LOCAL)
    with pytest.raises(Retry) as info:
        await call_http(f"{web}/429/later", allow=LOCAL)
    assert info.value.delay == 7.0
    with pytest.raises(Cancel, match="must start with http"):
        await call_http("ftp://example.com", allow=LOCAL)
    with pytest.raises(Cancel, match="http tasks are off"):
        await call_http(f"{web}/200")

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(TimeoutError, match="timed out"):
        await call_http("http://127.0.0.1:9/", transport=httpx.MockTransport(hang), allow=LOCAL)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ConnectionError, match="refused"):
        await call_http("http://127.0.0.1:9/", transport=httpx.MockTransport(refuse), allow=LOCAL)
