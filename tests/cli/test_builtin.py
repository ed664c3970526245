"""The built-in `shell` and `http` tasks, called directly (the outcomes the executor then applies)."""

from __future__ import annotations

import http.server
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


def test_allow_list_matches_the_first_word_exactly():
    assert shell_argv("echo 'a b'", ["echo"]) == ["echo", "a b"]
    with pytest.raises(Cancel, match="'/tmp/echo' is not in"):
        shell_argv(["/tmp/echo"], ["echo"])
    with pytest.raises(Cancel, match="cannot parse"):
        shell_argv("echo 'unterminated", ["echo"])
    with pytest.raises(Cancel, match="must be a string or a list"):
        shell_argv(["echo", 3], ["echo"])  # type: ignore[list-item]
    with pytest.raises(Cancel, match="empty"):
        shell_argv("  ", ["echo"])


async def test_shell_result_and_tails(tmp_path: Path):
    res = await run_shell(["sh", "-c", "pwd; seq 1 5000; echo oops >&2"], allow=["sh"], cwd=str(tmp_path), tail=100)
    assert res["exit_code"] == 0
    assert res["stdout"].endswith("4999\n5000\n") and len(res["stdout"]) == 100
    assert res["stderr"] == "oops\n"


async def test_shell_failure_timeout_and_bad_setup(tmp_path: Path):
    with pytest.raises(ShellError, match="exited with 2: bad thing"):
        await run_shell("sh -c 'echo bad thing >&2; exit 2'", allow=["sh"])
    with pytest.raises(ShellError, match="timed out after 0.2s"):
        await run_shell(["sleep", "5"], allow=["sleep"], timeout=0.2)
    with pytest.raises(Cancel, match="not found"):
        await run_shell(["no-such-program-xyz"], allow=["no-such-program-xyz"])
    with pytest.raises(Cancel, match="is not a directory"):
        await run_shell(["true"], allow=["true"], cwd=str(tmp_path / "missing"))
    with pytest.raises(Cancel, match="NAME=string"):
        await run_shell(["true"], allow=["true"], env={"BAD NAME": "x"})


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


async def test_http_success(web):
    res = await call_http(f"{web}/200", json={"a": 1})
    assert res["status"] == 200
    assert res["body"] in ('ok{"a":1}', 'ok{"a": 1}') and res["body_truncated"] is False
    res = await call_http(f"{web}/201", method="put", expect=[201, 202])
    assert res["status"] == 201


async def test_http_4xx_cancels_5xx_and_timeouts_retry(web):
    with pytest.raises(Cancel, match="answered 404"):
        await call_http(f"{web}/404")
    with pytest.raises(Cancel, match=r"answered 200, expected \[204\]"):
        await call_http(f"{web}/200", expect=204)
    with pytest.raises(HTTPStatusError, match="answered 503"):
        await call_http(f"{web}/503")
    with pytest.raises(Retry) as info:
        await call_http(f"{web}/429/later")
    assert info.value.delay == 7.0
    with pytest.raises(Cancel, match="must start with http"):
        await call_http("ftp://example.com")

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(TimeoutError, match="timed out"):
        await call_http("http://example.invalid/", transport=httpx.MockTransport(hang))

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ConnectionError, match="refused"):
        await call_http("http://example.invalid/", transport=httpx.MockTransport(refuse))
