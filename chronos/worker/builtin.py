"""Built-in task types, so chronos is useful without writing Python: ``shell`` and ``http``.

``shell`` runs one program, never through a shell, and only if the program is
in ``settings.worker.shell_allow`` (empty by default: shell jobs are off). An
entry matches the command's first word exactly: ``"backup.sh"`` allows
``backup.sh`` found on PATH, ``"/usr/local/bin/backup"`` allows that path only.
A refused, unrunnable or misconfigured command raises Cancel (no retry). The
result records the exit code and the tails of stdout and stderr; a non-zero
exit fails the attempt (retried with backoff) unless ``check`` is false.

``http`` calls a webhook with httpx. 5xx, 408, 429, timeouts and connection
errors raise, so the job is retried (a ``Retry-After`` header sets the delay);
any other unexpected status (4xx, or a mismatch with ``expect``) raises Cancel.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from ..config import Settings
from ..errors import Cancel, Retry
from .registry import Registry

TAIL_BYTES = 4096
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ShellError(Exception):
    """The command exited non-zero; the attempt fails and is retried with backoff."""


class HTTPStatusError(Exception):
    """A retryable HTTP answer (5xx, 408, 429)."""


# --- shell --------------------------------------------------------------------------------------------
def shell_argv(command: list[str] | str, allow: list[str]) -> list[str]:
    """Split and check a command against the allow-list; raises Cancel with the reason."""
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise Cancel(f"shell: cannot parse command: {exc}") from None
    elif isinstance(command, list) and all(isinstance(a, str) for a in command):
        argv = list(command)
    else:
        raise Cancel("shell: command must be a string or a list of strings")
    if not argv:
        raise Cancel("shell: command is empty")
    if not allow:
        raise Cancel("shell: shell tasks are off on this worker (worker.shell_allow is empty)")
    if argv[0] not in allow:
        raise Cancel(f"shell: {argv[0]!r} is not in this worker's worker.shell_allow")
    return argv


async def _tail(stream: asyncio.StreamReader | None, limit: int) -> bytes:
    """Read a stream to its end, keeping only the last ``limit`` bytes (bounded memory)."""
    if stream is None:
        return b""
    buf = bytearray()
    while chunk := await stream.read(65536):
        buf += chunk
        if len(buf) > 2 * limit:
            del buf[:-limit]
    return bytes(buf[-limit:])


async def run_shell(
    command: list[str] | str,
    *,
    allow: list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    check: bool = True,
    tail: int = TAIL_BYTES,
) -> dict[str, Any]:
    argv = shell_argv(command, allow)
    program = argv[0]
    if shutil.which(program) is None:
        raise Cancel(f"shell: program {program!r} not found or not executable")
    if cwd is not None and not Path(cwd).is_dir():
        raise Cancel(f"shell: cwd {cwd!r} is not a directory")
    if env:
        # Extra variables go through env(1), so the child inherits the worker's environment
        # without this module reading os.environ (config.py is the only reader).
        for k, v in env.items():
            if not isinstance(k, str) or not _ENV_NAME.match(k) or not isinstance(v, str):
                raise Cancel(f"shell: env entry {k!r} must be a NAME=string pair")
        env_prog = shutil.which("env") or "/usr/bin/env"
        argv = [env_prog, *(f"{k}={v}" for k, v in env.items()), *argv]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        out, err, code = await asyncio.wait_for(
            asyncio.gather(_tail(proc.stdout, tail), _tail(proc.stderr, tail), proc.wait()), timeout
        )
    except asyncio.TimeoutError:
        raise ShellError(f"shell: {program} timed out after {timeout:g}s") from None
    finally:
        if proc.returncode is None:  # timed out, or the job was cancelled: do not leave it running
            proc.kill()
            await proc.wait()
    result = {
        "exit_code": code,
        "stdout": out.decode(errors="replace"),
        "stderr": err.decode(errors="replace"),
        "duration": round(time.monotonic() - started, 3),
    }
    if check and code != 0:
        last = result["stderr"].strip().splitlines()[-1:] or result["stdout"].strip().splitlines()[-1:]
        raise ShellError(f"shell: {program} exited with {code}" + (f": {last[0][:500]}" if last else ""))
    return result


# --- http -----------------------------------------------------------------------------------------------
RETRYABLE_STATUS = frozenset({408, 429})


async def call_http(
    url: str,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    json: Any = None,
    expect: int | list[int] | None = None,
    timeout: float = 30.0,
    tail: int = TAIL_BYTES,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise Cancel(f"http: url must start with http:// or https:// (got {url!r})")
    method = (method or ("POST" if json is not None else "GET")).upper()
    expected = {expect} if isinstance(expect, int) else set(expect or [])
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
            resp = await client.request(method, url, headers=headers, json=json)
    except httpx.TimeoutException:
        raise TimeoutError(f"http: {method} {url} timed out after {timeout:g}s") from None
    except httpx.TransportError as exc:
        raise ConnectionError(f"http: {method} {url} failed: {exc or type(exc).__name__}") from None
    except httpx.InvalidURL as exc:
        raise Cancel(f"http: invalid url {url!r}: {exc}") from None
    status = resp.status_code
    ok = status in expected if expected else 200 <= status < 300
    if not ok:
        what = f"http: {method} {url} answered {status}" + (f", expected {sorted(expected)}" if expected else "")
        if status >= 500 or status in RETRYABLE_STATUS:
            delay = _retry_after(resp.headers.get("retry-after"))
            if delay is not None:
                raise Retry(delay, what)
            raise HTTPStatusError(what)
        raise Cancel(what)
    body = resp.text
    return {
        "status": status,
        "body": body[-tail:],
        "body_truncated": len(body) > tail,
        "duration": round(time.monotonic() - started, 3),
    }


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, min(float(value), 3600.0))
    except ValueError:
        return None  # an HTTP date; the job's own backoff decides instead


# --- registry ----------------------------------------------------------------------------------------------
def builtin_registry(settings: Settings) -> Registry:
    """A Registry with ``shell`` (allow-listed by ``settings.worker.shell_allow``) and ``http``."""
    allow = list(settings.worker.shell_allow)
    reg = Registry()

    async def shell(
        command: list[str] | str,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> dict[str, Any]:
        return await run_shell(command, allow=allow, env=env, cwd=cwd, timeout=timeout, check=check)

    async def http(
        url: str,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        expect: int | list[int] | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        return await call_http(url, method=method, headers=headers, json=json, expect=expect, timeout=timeout)

    reg.register(shell, name="shell")
    reg.register(http, name="http")
    return reg
