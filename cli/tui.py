"""`chronos tui [--readonly] [--serve --port P]`: the operations console, in a terminal or a browser.

``--readonly`` connects as the viewer role when ``[tui] viewer_user`` (or ``viewer_creds_file``) is
set, so the server itself refuses every write; otherwise only this console refuses them (said at
start). ``--serve`` puts the console behind an HTTP server (textual-serve); bound beyond loopback it
asks every request for a token or basic auth (docs/security.md), and its page points the browser
back at the address the browser used, not at the bind address.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import secrets
import shlex
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Optional
from urllib.parse import urlsplit

import msgspec
import typer

from chronos.config import Settings
from chronos.errors import ChronosError, ConnectionFailedError

from ._shared import AppState, run_client, state


def tui(
    ctx: typer.Context,
    readonly: Annotated[bool, typer.Option("--readonly", help="Look, don't touch: connect as the viewer role "
                                                             "([tui] viewer_user) and hide every action.")] = False,
    serve: Annotated[bool, typer.Option("--serve", help="Serve the console to browsers (textual-serve).")] = False,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="Port for --serve.")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address for --serve to listen on (beyond loopback, "
                                                     "browsers must authenticate).")] = "localhost",
    public_url: Annotated[Optional[str], typer.Option(
        "--public-url", help="For --serve behind a reverse proxy: the URL browsers use (https://ops.example.com).")] = None,
) -> None:
    """Open the operations console (keys: ? for help, : for views, ctrl+p for every command)."""
    st = state(ctx)
    if serve:
        _serve(st, readonly=readonly, host=host, port=port, public_url=public_url)
        return
    from chronos.tui.app import make_app

    settings = st.settings
    if readonly:
        settings = readonly_settings(settings)
    _check_namespace(st)
    make_app(settings, None, readonly=readonly).run()


def _check_namespace(st: AppState) -> None:
    """A mistyped --namespace is one line (exit 4), not a console over new empty streams.

    An unreachable server is not an error here: the console opens and shows that it retries."""
    async def nothing(client: object) -> None:
        return None

    try:
        run_client(st, nothing, ensure=False)  # type: ignore[arg-type]
    except ConnectionFailedError:
        pass


def readonly_settings(settings: Settings) -> Settings:
    """The settings with the viewer credentials of ``[tui]`` when set (the server then refuses writes)."""
    t = settings.tui
    if t.viewer_user:
        nats = msgspec.structs.replace(settings.nats, user=t.viewer_user, password=t.viewer_password, token=None,
                                       creds_file=None, nkey_seed_file=None, manage_topology=False)
    elif t.viewer_creds_file:
        nats = msgspec.structs.replace(settings.nats, creds_file=t.viewer_creds_file, user=None, password=None,
                                       token=None, nkey_seed_file=None, manage_topology=False)
    else:
        if settings.nats.user or settings.nats.creds_file or settings.nats.nkey_seed_file:
            typer.echo("--readonly: no [tui] viewer_user or viewer_creds_file set, so only this console refuses "
                       "actions; the server would accept them from these credentials", err=True)
        return settings
    return msgspec.structs.replace(settings, nats=nats)


def child_command(st: AppState, *, readonly: bool) -> str:
    """The command textual-serve starts for each browser session: this console, with the same settings."""
    args = [sys.executable, "-m", "chronos.cli.main"]
    if st.config_path:
        args += ["--config", st.config_path]
    args += ["--server", st.settings.nats.url, "--namespace", st.settings.namespace, "tui"]
    if readonly:
        args.append("--readonly")
    return shlex.join(args)


# --- --serve: authentication -------------------------------------------------------------------------------
COOKIE = "chronos_console"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeAuth:
    """Who may open the served console: a token (``?token=``, ``Authorization: Bearer``) or basic auth;
    a browser that passed once gets a session cookie (HttpOnly, SameSite=Strict) for the page's
    other requests and its websocket."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    generated: bool = False
    session: str = ""

    def __post_init__(self) -> None:
        self.session = secrets.token_urlsafe(32)

    @property
    def required(self) -> bool:
        return bool(self.token or self.user)

    @classmethod
    def for_host(cls, settings: Settings, host: str) -> "ServeAuth":
        t = settings.tui
        if t.serve_user and not t.serve_password:
            raise ChronosError("tui.serve_user needs tui.serve_password")
        auth = cls(token=t.serve_token, user=t.serve_user, password=t.serve_password)
        if not auth.required and not is_loopback(host):
            auth.token, auth.generated = secrets.token_urlsafe(24), True
        return auth

    def _basic_ok(self, header: str) -> bool:
        if not (self.user and header.lower().startswith("basic ")):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return _eq(user, self.user) & _eq(password, self.password or "")

    def allows(self, request: Any) -> tuple[bool, bool]:
        """(allowed, set the session cookie)."""
        if not self.required:
            return True, False
        cookie = request.cookies.get(COOKIE, "")
        if cookie and _eq(cookie, self.session):
            return True, False
        header = request.headers.get("Authorization", "")
        if self.token and header.lower().startswith("bearer ") and _eq(header[7:].strip(), self.token):
            return True, True
        if self.token and _eq(request.query.get("token", ""), self.token):
            return True, True
        return self._basic_ok(header), True

    def middleware(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def check(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path == "/ws" and not _same_origin(request):
                # A page on another site must not drive this console with the browser's cookie.
                return web.Response(status=403, text="cross-origin websocket refused\n")
            ok, set_cookie = self.allows(request)
            if not ok:
                headers = {"WWW-Authenticate": 'Basic realm="chronos console"'} if self.user else {}
                return web.Response(status=401, headers=headers,
                                    text="chronos console: authentication required (the token URL printed at "
                                         "start, or basic auth)\n")
            response = await handler(request)
            if set_cookie and not response.prepared:
                response.set_cookie(COOKIE, self.session, httponly=True, samesite="Strict", path="/",
                                    secure=request.scheme == "https")
            return response

        return check


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _same_origin(request: Any) -> bool:
    origin = request.headers.get("Origin")
    if not origin:
        return True  # not a browser page (browsers always send Origin on websockets)
    return urlsplit(origin).netloc.lower() == (request.host or "").lower()


def _server_class() -> Any:
    import aiohttp_jinja2
    from textual_serve.server import Server, to_int

    class ChronosServer(Server):  # type: ignore[misc]
        """textual-serve's Server, with authentication, and a page that points the browser back at
        the address it used: the stock page embeds ``http://<bind host>:<port>``, which for
        ``--host 0.0.0.0`` no remote browser can reach."""

        def __init__(self, *args: Any, auth: ServeAuth, fixed_url: str | None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.auth = auth
            self.fixed_url = fixed_url.rstrip("/") if fixed_url else None

        async def _make_app(self) -> Any:
            app = await super()._make_app()
            app.middlewares.append(self.auth.middleware())
            return app

        @aiohttp_jinja2.template("app_index.html")
        async def handle_index(self, request: Any) -> dict[str, Any]:
            base = self.fixed_url or f"{request.scheme}://{request.host}"
            router = request.app.router
            ws = ("wss:" if base.startswith("https") else "ws:") + base.split(":", 1)[1]
            return {
                "font_size": to_int(request.query.get("fontsize", "16"), 16),
                "app_websocket_url": f"{ws}{router['websocket'].url_for()}",
                "config": {"static": {"url": f"{base}{router['static'].url_for(filename='/')}".rstrip("/") + "/"}},
                "application": {"name": self.title},
            }

    return ChronosServer


def _serve(st: AppState, *, readonly: bool, host: str, port: int, public_url: str | None) -> None:
    try:
        server_class = _server_class()
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ChronosError(f"--serve needs textual-serve: {exc}") from None
    if public_url is not None and not public_url.startswith(("http://", "https://")):
        raise ChronosError(f"--public-url must start with http:// or https:// (got {public_url!r})")
    auth = ServeAuth.for_host(st.settings, host)
    title = f"chronos {st.settings.namespace}" + (" (read-only)" if readonly else "")
    shown = public_url or f"http://{'localhost' if is_loopback(host) else host}:{port}"
    typer.echo(f"serving the chronos console on {shown} (ctrl+c to stop)", err=True)
    if auth.generated:
        typer.echo(f"bound beyond loopback: open {shown}/?token={auth.token} "
                   "(or set [tui] serve_token / serve_user and serve_password)", err=True)
    server_class(child_command(st, readonly=readonly), host=host, port=port, title=title, auth=auth,
                 fixed_url=public_url).serve()
