"""Built-in task types, so chronos is useful without writing Python: ``shell`` and ``http``.

Both run what a job's arguments say, and a job's arguments come from whoever could submit it,
so each is off until the worker's settings allow something, and then allows only that
(docs/security.md).

``shell`` runs one program, never through a shell, and only a command line that matches an
entry of ``worker.shell_allow``. An entry is an absolute path followed by one pattern per
argument::

    /usr/bin/pg_dump --format=custom {word} -f {path:/backups/*.dump}

A pattern is a literal, or a typed placeholder, alone or inside a literal (``--jobs={int}``):
``{int}`` digits; ``{word}`` letters, digits, ``_ . @ : + -`` not starting with ``-``;
``{path:GLOB}`` a normalised absolute path (no ``..``) matching GLOB; ``{choice:a|b}`` one of
the words. The command matches an entry only with exactly as many arguments. The child gets a
fixed minimal environment (``PATH=/usr/sbin:/usr/bin:/sbin:/bin``, ``LANG=C.UTF-8``) plus the
job's variables whose names are in ``worker.shell_env``; never the worker's own environment,
settings or credentials. A job may choose its ``cwd`` only inside ``worker.shell_cwd_allow``.
The command runs in its own session (process group); a timeout, a cancel and the end of the
command kill the whole group, and output is read only until the command exits (a background
grandchild that keeps the pipes open cannot hold the job). A refused, unrunnable or
misconfigured command raises Cancel (no retry). The result records the exit code and the tails
of stdout and stderr; a non-zero exit fails the attempt (retried with backoff) unless ``check``
is false.

``http`` calls a URL with httpx, only if ``worker.http_allow`` names its host, a URL prefix it
starts with, or a network holding its address. The host is resolved once; an address that is
not global (loopback, private, link-local, CGNAT, ...) is refused unless a listed network holds
it, and the connection goes to the address that was checked (the Host header and TLS name stay
the URL's host), so a second DNS answer cannot redirect it. Redirects are followed by hand (at
most 5), each checked the same way. The body is read as a stream up to
``worker.http_max_body_bytes``, counted after decompression (gzip and deflate are decoded here
with a bounded output). 5xx, 408, 429, timeouts and connection errors raise, so the job is
retried (a ``Retry-After`` header sets the delay); any other unexpected status (4xx, or a
mismatch with ``expect``) raises Cancel.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import os
import posixpath
import re
import shlex
import signal
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from ..config import Settings
from ..errors import Cancel, ConfigError, Retry
from .registry import Registry

TAIL_BYTES = 4096
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch: "$" lets a trailing newline through
# The child's whole environment, besides the variables a job may set (worker.shell_env).
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# Never settable by a job, even if listed: they make a program load or run other code.
_FORBIDDEN_ENV = re.compile(
    r"(PATH|IFS|ENV|BASH_ENV|SHELLOPTS|BASHOPTS|PS4|PROMPT_COMMAND|HOME|LD_.*|DYLD_.*|BASH_FUNC_.*|"
    r"PYTHON.*|PERL5?LIB|PERL5OPT|RUBYOPT|RUBYLIB|NODE_OPTIONS|NODE_PATH|GIT_.*|GCONV_PATH|"
    r"LOCPATH|MALLOC_.*|GLIBC_TUNABLES|TMPDIR|CHRONOS_.*|NATS_.*)"
)
# After the command exits: how long its pipes may still deliver what it wrote.
_PIPE_GRACE = 0.5


class ShellError(Exception):
    """The command exited non-zero; the attempt fails and is retried with backoff."""


class HTTPStatusError(Exception):
    """A retryable HTTP answer (5xx, 408, 429)."""


# --- shell: the allow-list ------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\{(int|word|path|choice)(?::([^{}]*))?\}")
_WORD = r"[A-Za-z0-9_.@:+][A-Za-z0-9_.@:+-]*"


@dataclass(frozen=True)
class _ArgPattern:
    text: str
    regex: re.Pattern[str]
    paths: tuple[str, ...]  # the globs of {path:...} groups, in group order

    def match(self, arg: str) -> bool:
        m = self.regex.fullmatch(arg)
        if m is None:
            return False
        return all(_path_ok(value, glob) for value, glob in zip(m.groups(), self.paths) if glob)


def _path_ok(value: str, glob: str) -> bool:
    # Normalised absolute paths only: "/backups/../etc/shadow" matches "/backups/*" as text.
    if not value.startswith("/") or posixpath.normpath(value) != value or "\x00" in value:
        return False
    return fnmatch.fnmatchcase(value, glob)


def _compile_arg(text: str, entry: str) -> _ArgPattern:
    parts: list[str] = []
    paths: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append(re.escape(text[pos:m.start()]))
        kind, param = m.group(1), m.group(2)
        if kind == "int":
            parts.append(r"([0-9]{1,18})")
            paths.append("")
        elif kind == "word":
            parts.append(f"({_WORD})")
            paths.append("")
        elif kind == "path":
            if not param or not param.startswith("/"):
                raise ConfigError(f"worker.shell_allow: {entry!r}: {{path:GLOB}} needs an absolute glob")
            parts.append(r"(/[^\x00]*)")
            paths.append(param)
        else:
            words = [w for w in (param or "").split("|") if w]
            if not words:
                raise ConfigError(f"worker.shell_allow: {entry!r}: {{choice:a|b}} needs words")
            parts.append("(" + "|".join(re.escape(w) for w in words) + ")")
            paths.append("")
        pos = m.end()
    rest = text[pos:]
    if "{" in rest or "}" in rest:
        raise ConfigError(f"worker.shell_allow: {entry!r}: unknown placeholder in {text!r} "
                          "(use {int}, {word}, {path:/glob}, {choice:a|b})")
    parts.append(re.escape(rest))
    return _ArgPattern(text, re.compile("".join(parts), re.DOTALL), tuple(paths))


@dataclass(frozen=True)
class ShellRule:
    """One allow-list entry: a program by absolute path and a pattern per argument."""

    entry: str
    program: str
    args: tuple[_ArgPattern, ...]

    def match(self, argv: list[str]) -> bool:
        return (argv[0] == self.program and len(argv) - 1 == len(self.args)
                and all(p.match(a) for p, a in zip(self.args, argv[1:])))


def parse_allow(entries: list[str]) -> list[ShellRule]:
    """``worker.shell_allow`` as rules; ConfigError names a bad entry."""
    rules = []
    for entry in entries:
        try:
            words = shlex.split(entry)
        except ValueError as exc:
            raise ConfigError(f"worker.shell_allow: cannot parse {entry!r}: {exc}") from None
        if not words or not words[0].startswith("/") or posixpath.normpath(words[0]) != words[0]:
            raise ConfigError(f"worker.shell_allow: {entry!r} must start with the program's absolute path "
                              "(e.g. \"/usr/bin/rsync -a {path:/data/*} {path:/backups/*}\")")
        rules.append(ShellRule(entry, words[0], tuple(_compile_arg(w, entry) for w in words[1:])))
    return rules


def check_env_names(names: list[str]) -> None:
    for name in names:
        if not _ENV_NAME.fullmatch(name) or _FORBIDDEN_ENV.fullmatch(name):
            raise ConfigError(f"worker.shell_env: {name!r} cannot be set by a job")


def shell_argv(command: list[str] | str, allow: list[ShellRule] | list[str]) -> list[str]:
    """Split and check a command against the allow-list; raises Cancel with the reason."""
    rules = parse_allow(allow) if allow and isinstance(allow[0], str) else allow  # type: ignore[arg-type]
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
    if not rules:
        raise Cancel("shell: shell tasks are off on this worker (worker.shell_allow is empty)")
    if any("\x00" in a for a in argv):
        raise Cancel("shell: an argument contains a NUL byte")
    if not any(r.match(argv) for r in rules):  # type: ignore[union-attr]
        if not any(r.program == argv[0] for r in rules):  # type: ignore[union-attr]
            raise Cancel(f"shell: {argv[0]!r} is not in this worker's worker.shell_allow "
                         "(entries name programs by absolute path)")
        raise Cancel(f"shell: the arguments of {argv[0]!r} match no worker.shell_allow entry for it")
    return argv


def child_env(env: dict[str, str] | None, allowed: list[str]) -> dict[str, str]:
    """The child's whole environment: BASE_ENV plus the job's allow-listed variables."""
    out = dict(BASE_ENV)
    for k, v in (env or {}).items():
        if not isinstance(k, str) or not _ENV_NAME.fullmatch(k) or not isinstance(v, str) or "\x00" in v:
            raise Cancel(f"shell: env entry {k!r} must be a NAME=string pair")
        if k not in allowed or _FORBIDDEN_ENV.fullmatch(k):
            raise Cancel(f"shell: env {k!r} is not in this worker's worker.shell_env")
        out[k] = v
    return out


async def _tail(stream: asyncio.StreamReader | None, limit: int, buf: bytearray) -> None:
    """Read a stream to its end into ``buf``, keeping only the last ``limit`` bytes (bounded memory)."""
    if stream is None:
        return
    while chunk := await stream.read(65536):
        buf += chunk
        if len(buf) > 2 * limit:
            del buf[:-limit]


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The exit code, as soon as the process exits. (On Python 3.11 ``proc.wait()`` also waits
    for its pipes to close, which a background grandchild can hold open indefinitely.)"""
    delay = 0.005
    while proc.returncode is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return proc.returncode


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


async def run_shell(
    command: list[str] | str,
    *,
    allow: list[ShellRule] | list[str],
    env: dict[str, str] | None = None,
    env_allow: list[str] = (),  # type: ignore[assignment]
    cwd: str | None = None,
    cwd_allow: list[str] = (),  # type: ignore[assignment]
    timeout: float | None = None,
    check: bool = True,
    tail: int = TAIL_BYTES,
) -> dict[str, Any]:
    argv = shell_argv(command, allow)
    program = argv[0]
    if not os.access(program, os.X_OK) or not Path(program).is_file():
        raise Cancel(f"shell: program {program!r} not found or not executable")
    if cwd is not None:
        if not any(_path_ok(cwd, g) for g in cwd_allow):
            raise Cancel(f"shell: cwd {cwd!r} is not allowed on this worker (worker.shell_cwd_allow)")
        if not Path(cwd).is_dir():
            raise Cancel(f"shell: cwd {cwd!r} is not a directory")
    environment = child_env(env, list(env_allow))
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd or "/", env=environment, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: killed as a whole below
        close_fds=True,
    )
    out, err = bytearray(), bytearray()
    readers = [asyncio.ensure_future(_tail(proc.stdout, tail, out)),
               asyncio.ensure_future(_tail(proc.stderr, tail, err))]
    try:
        try:
            code = await asyncio.wait_for(_exited(proc), timeout)
        except asyncio.TimeoutError:
            raise ShellError(f"shell: {program} timed out after {timeout:g}s") from None
        # The command is done; what it left in the pipes arrives within the grace. A grandchild
        # holding the pipes open is not waited for.
        await asyncio.wait(readers, timeout=_PIPE_GRACE)
    finally:
        # Timed out, cancelled, or finished: nothing of the job outlives it.
        _kill_group(proc.pid)
        if proc.returncode is None:
            await _exited(proc)
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for t in (proc.stdout, proc.stderr):
            transport = getattr(t, "_transport", None)
            if transport is not None:
                transport.close()
    result = {
        "exit_code": code,
        "stdout": bytes(out[-tail:]).decode(errors="replace"),
        "stderr": bytes(err[-tail:]).decode(errors="replace"),
        "duration": round(time.monotonic() - started, 3),
    }
    if check and code != 0:
        last = result["stderr"].strip().splitlines()[-1:] or result["stdout"].strip().splitlines()[-1:]
        raise ShellError(f"shell: {program} exited with {code}" + (f": {last[0][:500]}" if last else ""))
    return result


# --- http: the allow-list and the address check --------------------------------------------------------
RETRYABLE_STATUS = frozenset({408, 429})
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class HttpAllow:
    hosts: tuple[str, ...]  # exact host names, or "*.example.com"
    prefixes: tuple[str, ...]  # URL prefixes, lower-cased scheme and host
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def __bool__(self) -> bool:
        return bool(self.hosts or self.prefixes or self.networks)


def parse_http_allow(entries: list[str]) -> HttpAllow:
    hosts, prefixes, networks = [], [], []
    for entry in entries:
        e = entry.strip()
        if "://" in e:
            parts = urlsplit(e)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"worker.http_allow: {entry!r} is not an http(s) URL prefix")
            prefixes.append(_normal_url(e))
            continue
        try:
            networks.append(ipaddress.ip_network(e, strict=False))
            continue
        except ValueError:
            pass
        if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", e):
            raise ConfigError(f"worker.http_allow: {entry!r} is not a host, *.domain, URL prefix or network")
        hosts.append(e.lower())
    return HttpAllow(tuple(hosts), tuple(prefixes), tuple(networks))


def _normal_url(url: str) -> str:
    p = urlsplit(url)
    host = (p.hostname or "").lower()
    port = p.port or (443 if p.scheme == "https" else 80)
    return f"{p.scheme.lower()}://{host}:{port}{p.path or '/'}" + (f"?{p.query}" if p.query else "")


def _host_allowed(url: str, allow: HttpAllow) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    for h in allow.hosts:
        if h == host or (h.startswith("*.") and host.endswith(h[1:])):
            return True
    normal = _normal_url(url)
    for prefix in allow.prefixes:
        # "https://a.com:443/hooks" must not admit "https://a.com:443/hooks-evil"
        if normal == prefix or normal.startswith(prefix if prefix.endswith("/") else prefix + "/") \
                or normal.startswith(prefix + "?"):
            return True
    return False


def _in_networks(ip: Address, allow: HttpAllow) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)
    return any((mapped or ip) in net for net in allow.networks)


def _public(ip: Address) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)
    ip = mapped or ip
    return ip.is_global and not ip.is_multicast


async def _resolve(url: str, allow: HttpAllow) -> tuple[str, Address]:
    """The URL's host and the one address to connect to, checked; Cancel says why not."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise Cancel(f"http: no host in {url!r}")
    listed = _host_allowed(url, allow)
    if not listed and not allow.networks:
        raise Cancel(f"http: {host} is not in this worker's worker.http_allow")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"http: cannot resolve {host}: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for ip in addresses:
        # A listed network admits its addresses; a listed host or prefix admits public ones only.
        if _in_networks(ip, allow) or (listed and _public(ip)):
            return host, ip
    if not listed:
        raise Cancel(f"http: {host} is not in this worker's worker.http_allow")
    raise Cancel(f"http: {host} resolves to {', '.join(sorted({str(a) for a in addresses}))}: not a public "
                 "address, and no network in worker.http_allow holds it")


class _BoundedDecoder:
    """gzip/deflate decoded here, so a small compressed body cannot expand past the cap."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
        self._z = zlib.decompressobj(wbits) if wbits is not None else None

    def feed(self, data: bytes, room: int) -> tuple[bytes, bool]:
        """Decoded bytes (at most ``room + 1``) and whether more is pending beyond them."""
        if self._z is None:
            return data, False
        try:
            out = self._z.decompress(self._z.unconsumed_tail + data, room + 1)
        except zlib.error as exc:
            raise Cancel(f"http: bad {self.encoding} body: {exc}") from None
        return out, bool(self._z.unconsumed_tail)


async def call_http(
    url: str,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    json: Any = None,
    expect: int | list[int] | None = None,
    timeout: float = 30.0,
    tail: int = TAIL_BYTES,
    allow: HttpAllow | list[str] | None = None,
    max_body: int = 1024 * 1024,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    rules = parse_http_allow(allow) if isinstance(allow, list) else (allow or HttpAllow((), (), ()))
    if not rules:
        raise Cancel("http: http tasks are off on this worker (worker.http_allow is empty)")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise Cancel(f"http: url must start with http:// or https:// (got {url!r})")
    method = (method or ("POST" if json is not None else "GET")).upper()
    expected = {expect} if isinstance(expect, int) else set(expect or [])
    started = time.monotonic()
    try:
        return await asyncio.wait_for(
            _exchange(url, method, headers or {}, json, expected, tail, rules, max_body, transport, started),
            timeout)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        raise TimeoutError(f"http: {method} {url} timed out after {timeout:g}s") from None
    except httpx.TransportError as exc:
        raise ConnectionError(f"http: {method} {url} failed: {exc or type(exc).__name__}") from None
    except httpx.InvalidURL as exc:
        raise Cancel(f"http: invalid url {url!r}: {exc}") from None


async def _exchange(url: str, method: str, headers: dict[str, str], json: Any, expected: set[int], tail: int,
                    rules: HttpAllow, max_body: int, transport: httpx.AsyncBaseTransport | None,
                    started: float) -> dict[str, Any]:
    own = {k: v for k, v in headers.items() if k.lower() not in ("host", "accept-encoding", "transfer-encoding")}
    # trust_env=False: no proxy or .netrc from the worker's environment.
    async with httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False,
                                 timeout=None) as client:
        for _ in range(MAX_REDIRECTS + 1):
            host, ip = await _resolve(url, rules)
            parts = urlsplit(url)
            # Connect to the checked address; the Host header and the TLS name stay the URL's.
            literal = f"[{ip}]" if ip.version == 6 else str(ip)
            target = parts._replace(netloc=f"{literal}:{parts.port}" if parts.port else literal).geturl()
            req_headers = {**own, "Host": parts.netloc.rsplit("@", 1)[-1], "Accept-Encoding": "gzip, deflate"}
            extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
            request = client.build_request(method, target, headers=req_headers, json=json, extensions=extensions)
            resp = await client.send(request, stream=True)
            try:
                if resp.status_code in _REDIRECTS and "location" in resp.headers:
                    url = urljoin(url, resp.headers["location"])
                    if not url.startswith(("http://", "https://")):
                        raise Cancel(f"http: redirect to {url!r} refused")
                    if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                        method, json = "GET", None
                    continue
                body, truncated = await _read_capped(resp, max_body, tail)
            finally:
                await resp.aclose()
            return _outcome(resp, method, url, expected, body, truncated, tail, started)
    raise Cancel(f"http: more than {MAX_REDIRECTS} redirects")


async def _read_capped(resp: httpx.Response, max_body: int, tail: int) -> tuple[bytes, bool]:
    decoder = _BoundedDecoder(resp.headers.get("content-encoding", "").strip().lower())
    kept = bytearray()
    total = 0
    async for raw in resp.aiter_raw():
        more = True
        data = raw
        while more:
            out, more = decoder.feed(data, max_body - total)
            data = b""
            total += len(out)
            if total > max_body:
                raise Cancel(f"http: response body larger than {max_body} bytes (worker.http_max_body_bytes)")
            kept += out
            if len(kept) > 2 * tail:
                del kept[:-tail]
    return bytes(kept[-tail:]), total > tail


def _outcome(resp: httpx.Response, method: str, url: str, expected: set[int], body: bytes, truncated: bool,
             tail: int, started: float) -> dict[str, Any]:
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
    return {
        "status": status,
        "body": body.decode(resp.charset_encoding or "utf-8", errors="replace")[-tail:],
        "body_truncated": truncated,
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
    """A Registry with ``shell`` and ``http``, each allowed only what the worker's settings list.

    A bad allow-list entry raises ConfigError here, when the worker starts."""
    w = settings.worker
    rules = parse_allow(list(w.shell_allow))
    check_env_names(list(w.shell_env))
    env_allow = list(w.shell_env)
    cwd_allow = list(w.shell_cwd_allow)
    for glob in cwd_allow:
        if not glob.startswith("/"):
            raise ConfigError(f"worker.shell_cwd_allow: {glob!r} must be an absolute glob")
    http_rules = parse_http_allow(list(w.http_allow))
    max_body = w.http_max_body_bytes
    reg = Registry()

    async def shell(
        command: list[str] | str,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> dict[str, Any]:
        return await run_shell(command, allow=rules, env=env, env_allow=env_allow, cwd=cwd, cwd_allow=cwd_allow,
                               timeout=timeout, check=check)

    async def http(
        url: str,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        expect: int | list[int] | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        return await call_http(url, method=method, headers=headers, json=json, expect=expect, timeout=timeout,
                               allow=http_rules, max_body=max_body)

    reg.register(shell, name="shell")
    reg.register(http, name="http")
    return reg
