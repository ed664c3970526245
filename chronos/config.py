"""Settings: one typed config, merged once from TOML, the environment and overrides.

``load_settings()`` is the only reader of config files and of ``os.environ``.
Precedence: defaults < TOML file < CHRONOS_* environment < explicit overrides.
Environment names: ``CHRONOS_<FIELD>`` for top-level fields and
``CHRONOS_<SECTION>__<FIELD>`` for sections (``CHRONOS_WORKER__CONCURRENCY=8``).
An unknown key anywhere is rejected by name.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import msgspec

from .errors import ConfigError

_STRUCT = dict(frozen=True, forbid_unknown_fields=True, kw_only=True)


class NatsSettings(msgspec.Struct, **_STRUCT):
    """How to reach the server and authenticate."""

    url: str = "nats://127.0.0.1:4222"
    connect_timeout: float = 2.0
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    replicas: int = 1
    # False for least-privilege users (worker, console, scheduler): only check that the streams,
    # buckets and consumers exist; an admin creates them with `chronos admin init`.
    manage_topology: bool = True
    # Reply inboxes: empty means "_INBOX_<user>" (each user may read its own replies only, see
    # chronos/permissions.py); set it for nkey/creds users, whose name chronos does not know.
    inbox_prefix: str = ""
    # How chronos drives nats-py (chronos/transport): "fast" reaches into nats-py internals for the
    # hot path, "stock" uses its public API only, "auto" probes at connect and falls back to stock.
    transport: str = "auto"  # one of TRANSPORTS
    # Writes in atomic batches (one fsync per batch under `sync_interval: always`): "auto", true or
    # false. "auto" batches unless the server is known to fsync lazily (publisher.atomic_batches_for).
    atomic_batches: bool | str = "auto"


class JobSettings(msgspec.Struct, **_STRUCT):
    """Defaults and limits applied at submit."""

    default_queue: str = "default"
    default_priority: str = "default"
    default_max_attempts: int = 5
    default_timeout: float = 1800.0
    max_payload_bytes: int = 1024 * 1024
    max_result_bytes: int = 64 * 1024
    duplicate_window: float = 600.0
    check_task_names: bool = True


class WorkerSettings(msgspec.Struct, **_STRUCT):
    concurrency: int = 16
    queues: list[str] = msgspec.field(default_factory=lambda: ["default"])
    ack_wait: float = 5.0
    max_deliver: int = 50
    shutdown_grace: float = 10.0
    # Seconds a running job has, after `chronos cancel`, to stop by itself (current_job().cancelled)
    # before the worker interrupts its task.
    cancel_grace: float = 5.0
    heartbeat_interval: float = 2.0
    low_priority_every: int = 8
    poll_expires: float = 2.0
    running_write_after: float = 0.05
    tasks: list[str] = msgspec.field(default_factory=list)
    # The `shell` task's allow-list: one entry per command line allowed, "/abs/path arg-pattern...",
    # e.g. "/usr/bin/pg_dump --format=custom {word} -f {path:/backups/*}" (worker/builtin.py).
    shell_allow: list[str] = msgspec.field(default_factory=list)
    # Environment variables a shell job may set (never PATH, LD_*, BASH_ENV and the like).
    shell_env: list[str] = msgspec.field(default_factory=list)
    # Globs a shell job's cwd must match; empty: jobs cannot choose a cwd (they run in /).
    shell_cwd_allow: list[str] = msgspec.field(default_factory=list)
    # The `http` task: hosts ("api.example.com", "*.example.com"), URL prefixes or networks
    # ("10.0.0.0/8"; private, loopback and link-local addresses need one). Empty: http is off.
    http_allow: list[str] = msgspec.field(default_factory=list)
    http_max_body_bytes: int = 1024 * 1024
    thread_pool_size: int = 8
    # Where sync (def) tasks run. "thread": cheap, but a timed-out or cancelled thread cannot be
    # stopped. "process": a forked process per job, killed on timeout, cancel and shutdown.
    sync_executor: Literal["thread", "process"] = "thread"
    # Seconds a job whose task no live worker on its queue registers waits before it is discarded.
    unknown_task_after: float = 300.0
    # A thread keeps held jobs alive while a task blocks the event loop (docs/runbook.md).
    loop_watchdog: bool = True
    # Seconds a concurrency-limit slot outlives its worker (renewed every third of it while the job
    # runs; whole seconds, at least 2): a killed worker's slots come back within this.
    limit_lease: float = 15.0


class StreamSettings(msgspec.Struct, **_STRUCT):
    dlq_max_age: float = 30 * 86400.0
    dlq_max_bytes: int = 1024**3
    events_max_age: float = 86400.0
    events_max_bytes: int = 512 * 1024**2
    jobs_max_bytes: int = -1
    heartbeat_ttl: float = 60.0
    audit_max_age: float = 365 * 86400.0


class SchedulerSettings(msgspec.Struct, **_STRUCT):
    lease_ttl: float = 5.0
    rescue_after: float = 30.0
    retention: float = 7 * 86400.0
    archive_path: str = "chronos-archive.sqlite3"
    archive_retention: float = 0.0  # seconds finished jobs stay in the archive; 0: forever
    horizon: float = 120.0
    max_backfill: int = 1000


class SecuritySettings(msgspec.Struct, **_STRUCT):
    """Job signatures (see chronos/signing.py and docs/security.md, "Job authenticity")."""

    # The private key submitters and the scheduler sign jobs with; never give it to workers.
    signing_key_file: str | None = None
    # Public keys a job must be signed with to run; empty: the signing key's own (if set), else off.
    trusted_keys: list[str] = msgspec.field(default_factory=list)


class TuiSettings(msgspec.Struct, **_STRUCT):
    """`chronos tui`: the viewer credentials of --readonly, and who may open --serve."""

    # --readonly connects as the viewer role (read-only on the server); unset: as nats.*.
    viewer_user: str | None = None
    viewer_password: str | None = None
    viewer_creds_file: str | None = None
    # --serve beyond loopback requires one of these (a random token is made when neither is set).
    serve_token: str | None = None
    serve_user: str | None = None
    serve_password: str | None = None


class MetricsSettings(msgspec.Struct, **_STRUCT):
    """The Prometheus endpoint of `chronos serve worker|scheduler` (``--metrics-port`` overrides)."""

    port: int = 0  # 0: no endpoint
    host: str = "127.0.0.1"


class Settings(msgspec.Struct, **_STRUCT):
    namespace: str = "chronos"
    nats: NatsSettings = NatsSettings()
    jobs: JobSettings = JobSettings()
    worker: WorkerSettings = WorkerSettings()
    streams: StreamSettings = StreamSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    metrics: MetricsSettings = MetricsSettings()
    tui: TuiSettings = TuiSettings()
    security: SecuritySettings = SecuritySettings()
    log_level: str = "INFO"


_SECTIONS = {name for name, typ in Settings.__annotations__.items() if typ.endswith("Settings")}
_SECTION_TYPES: dict[str, type] = {name: type(getattr(Settings(), name)) for name in _SECTIONS}
# Shortcuts that operators expect to set without a section.
_ENV_ALIASES = {"CHRONOS_SERVER": ("nats", "url"), "CHRONOS_URL": ("nats", "url")}
# Not settings: where the settings come from, or read by other layers (the nats-server passwords of
# deploy/nats/nats.env.example, which an operator may have in the same environment; the test
# suite's transport switch, read by tests/conftest.py).
_ENV_IGNORED = {"CHRONOS_CONFIG", "CHRONOS_ADMIN_PASSWORD", "CHRONOS_SCHEDULER_PASSWORD",
                "CHRONOS_WORKER_PASSWORD", "CHRONOS_CONSOLE_PASSWORD", "CHRONOS_TEST_TRANSPORT"}


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """CHRONOS_* variables as a settings layer, each value parsed by its field's type; an unknown
    variable is an error naming it."""
    layer: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith("CHRONOS_") or name in _ENV_IGNORED:
            continue
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 (os.environ keeps them as surrogates)
            raise ConfigError(f"environment variable {name}: its value is not valid UTF-8 text") from None
        if name in _ENV_ALIASES:
            section, key = _ENV_ALIASES[name]
            layer.setdefault(section, {})[key] = raw
            continue
        rest = name[len("CHRONOS_") :].lower()
        if "__" in rest:
            section, key = rest.split("__", 1)
            if section not in _SECTIONS:
                raise ConfigError(f"environment variable {name}: unknown section {section!r} "
                                  f"(sections: {', '.join(sorted(_SECTIONS))})")
            fields = _fields(_SECTION_TYPES[section])
            if key not in fields:
                raise ConfigError(f"environment variable {name}: {section} has no setting {key!r}")
            layer.setdefault(section, {})[key] = _parse_env_value(name, f"{section}.{key}", raw, fields[key])
        else:
            top = _fields(Settings)
            if rest in _SECTIONS:
                raise ConfigError(f"environment variable {name}: {rest} is a section; "
                                  f"set one of its keys, e.g. CHRONOS_{rest.upper()}__<KEY>")
            if rest not in top:
                raise ConfigError(f"environment variable {name}: unknown setting {rest!r}")
            layer[rest] = _parse_env_value(name, rest, raw, top[rest])
    return layer


def _fields(struct: type) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.inspect.type_info(struct).fields}  # type: ignore[attr-defined]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"1.5"``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``, ``"2d"``.
    Raises ValueError otherwise."""
    t = text.strip().lower().replace(" ", "")
    try:
        return float(t)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(t) or not t:
        raise ValueError(text)
    return total


def _parse_env_value(var: str, setting: str, raw: str, typ: Any) -> Any:
    """An environment string as the field's type: lists are comma-separated (one value is a list
    of one, an empty string the empty list), booleans true/false/yes/no/on/off/1/0, durations
    (float fields) a number of seconds or ``30s``/``5m``/``1h30m``; strings stay as given."""
    if isinstance(typ, msgspec.inspect.UnionType):
        kinds = [t for t in typ.types if not isinstance(t, msgspec.inspect.NoneType)]
        if not raw.strip() and len(kinds) < len(typ.types):
            return None  # an empty variable unsets an optional setting
        typ = kinds[0] if len(kinds) == 1 else typ
    if isinstance(typ, msgspec.inspect.ListType):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if isinstance(typ, msgspec.inspect.BoolType):
        v = raw.strip().lower()
        if v in _TRUE or v in _FALSE:
            return v in _TRUE
        raise ConfigError(f"environment variable {var}: {setting} must be true or false, got {raw!r}")
    if isinstance(typ, msgspec.inspect.FloatType):
        try:
            return parse_duration(raw)
        except ValueError:
            raise ConfigError(f"environment variable {var}: {setting} must be a number of seconds "
                              f"or a duration such as 30s, 5m, 1h30m; got {raw!r}") from None
    if isinstance(typ, msgspec.inspect.IntType):
        try:
            return int(raw.strip().replace("_", ""))
        except ValueError:
            raise ConfigError(f"environment variable {var}: {setting} must be a whole number, got {raw!r}") from None
    return raw


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    try:
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
    except UnicodeEncodeError:  # a TOML file or override holding a lone surrogate
        raise ConfigError("invalid setting: a value is not valid UTF-8 text") from None


def load_settings(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    read_env: bool = True,
) -> Settings:
    """Merge defaults, the TOML file at ``path``, CHRONOS_* variables and ``overrides`` into Settings."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p}: {exc}") from None
    if read_env:
        env = os.environ if environ is None else environ
        data = _deep_merge(data, _env_layer(env))
    if overrides:
        data = _deep_merge(data, overrides)
    settings = settings_from_mapping(data)
    _validate(settings)
    return settings


def config_path_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get("CHRONOS_CONFIG")


_DAY = 86400.0
_MIB = 1024**2
# Every numeric setting and its inclusive range: (low, high, unit). A value outside is refused with
# one line naming the setting. -1 ("no limit") is also allowed for the settings in _UNLIMITED.
# tests/unit/test_config.py checks that every int and float field is listed here.
RANGES: dict[str, tuple[float, float, str]] = {
    "nats.connect_timeout": (0.1, 300, "seconds"),
    "nats.replicas": (1, 5, ""),
    "jobs.default_max_attempts": (1, 1000, ""),
    "jobs.default_timeout": (0.1, 365 * _DAY, "seconds"),
    "jobs.max_payload_bytes": (64, 64 * _MIB, "bytes"),
    "jobs.max_result_bytes": (0, 64 * _MIB, "bytes"),
    "jobs.duplicate_window": (1, 7 * _DAY, "seconds"),
    "worker.concurrency": (1, 100_000, ""),
    "worker.ack_wait": (1, 3600, "seconds"),
    "worker.max_deliver": (2, 100_000, ""),
    "worker.shutdown_grace": (0, 3600, "seconds"),
    "worker.cancel_grace": (0, 3600, "seconds"),
    "worker.heartbeat_interval": (0.1, 600, "seconds"),
    "worker.low_priority_every": (1, 10_000, ""),
    "worker.poll_expires": (0.1, 300, "seconds"),
    "worker.running_write_after": (0, 3600, "seconds"),
    "worker.thread_pool_size": (1, 4096, ""),
    "worker.http_max_body_bytes": (1, 1024 * _MIB, "bytes"),
    "worker.unknown_task_after": (1, 30 * _DAY, "seconds"),
    "worker.limit_lease": (2, _DAY, "seconds"),
    "streams.dlq_max_age": (1, 3650 * _DAY, "seconds"),
    "streams.dlq_max_bytes": (1024, 2**53, "bytes"),
    "streams.events_max_age": (1, 3650 * _DAY, "seconds"),
    "streams.events_max_bytes": (1024, 2**53, "bytes"),
    "streams.jobs_max_bytes": (1024, 2**53, "bytes"),
    "streams.heartbeat_ttl": (1, _DAY, "seconds"),
    "streams.audit_max_age": (1, 3650 * _DAY, "seconds"),
    "scheduler.lease_ttl": (2, 300, "seconds"),
    "scheduler.rescue_after": (1, 7 * _DAY, "seconds"),
    "scheduler.retention": (60, 3650 * _DAY, "seconds"),
    "scheduler.archive_retention": (0, 36500 * _DAY, "seconds"),
    "scheduler.horizon": (1, _DAY, "seconds"),
    "scheduler.max_backfill": (1, 1_000_000, ""),
    "metrics.port": (0, 65535, ""),
}
_UNLIMITED = {"streams.dlq_max_bytes", "streams.events_max_bytes", "streams.jobs_max_bytes"}
_WHY = {
    "scheduler.lease_ttl": " (NATS TTLs are whole seconds)",
    "worker.max_deliver": " (it is the backstop behind max_attempts; 1 would never redeliver a lost job)",
    "scheduler.retention": " (a finished job must stay readable for a while)",
}


def _numbers(s: Settings) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name in msgspec.structs.fields(Settings):
        value = getattr(s, name.name)
        if isinstance(value, msgspec.Struct):
            for f in msgspec.structs.fields(value):
                out.append((f"{name.name}.{f.name}", getattr(value, f.name)))
        else:
            out.append((name.name, value))
    return [(k, v) for k, v in out if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _fmt(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}" if isinstance(x, float) else str(x)


def _check_ranges(s: Settings) -> None:
    for name, value in _numbers(s):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: must be a finite number, got {value}")
        if name not in RANGES:
            if value < 0:
                raise ConfigError(f"{name}: must not be negative, got {_fmt(value)}")
            continue
        lo, hi, unit = RANGES[name]
        if name in _UNLIMITED and value == -1:
            continue
        if not lo <= value <= hi:
            unit_text = f" {unit}" if unit else ""
            extra = " (or -1: no limit)" if name in _UNLIMITED else ""
            raise ConfigError(f"{name}: must be between {_fmt(lo)} and {_fmt(hi)}{unit_text}{extra}, "
                              f"got {_fmt(value)}{_WHY.get(name, '')}")


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TRANSPORTS = ("auto", "fast", "stock")  # nats.transport; chronos/transport


def atomic_batches_mode(value: bool | str) -> bool | str | None:
    """``nats.atomic_batches`` as True, False or "auto" (also from an environment string); None if invalid."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    return "auto" if v == "auto" else True if v in _TRUE else False if v in _FALSE else None


def _validate(s: Settings) -> None:
    from .subjects import PRIORITIES, is_valid_token

    if not is_valid_token(s.namespace):
        raise ConfigError(f"namespace: {s.namespace!r} must be letters, digits, '_' or '-'")
    if s.log_level.upper() not in _LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {', '.join(_LOG_LEVELS)}, got {s.log_level!r}")
    _check_ranges(s)
    if s.nats.transport not in TRANSPORTS:
        raise ConfigError(f"nats.transport: must be one of {', '.join(TRANSPORTS)}, got {s.nats.transport!r}")
    if atomic_batches_mode(s.nats.atomic_batches) is None:
        raise ConfigError(f"nats.atomic_batches: must be auto, true or false, got {s.nats.atomic_batches!r}")
    for q in s.worker.queues:
        if not is_valid_token(q):
            raise ConfigError(f"worker.queues: {q!r} is not a valid queue name")
    if not s.worker.queues:
        raise ConfigError("worker.queues: name at least one queue")
    if s.jobs.default_priority not in PRIORITIES:
        raise ConfigError(f"jobs.default_priority: must be one of {', '.join(PRIORITIES)}")
    if not is_valid_token(s.jobs.default_queue):
        raise ConfigError(f"jobs.default_queue: {s.jobs.default_queue!r} is not a valid queue name")
    if s.nats.replicas not in (1, 3, 5):
        raise ConfigError("nats.replicas: must be 1, 3 or 5")
    n = s.nats
    if n.password and not n.user:
        raise ConfigError("nats.password: set nats.user too")
    if n.tls_key and not n.tls_cert:
        raise ConfigError("nats.tls_key: set nats.tls_cert too (a client certificate and its key)")
    if sum(bool(x) for x in (n.user, n.token, n.nkey_seed_file, n.creds_file)) > 1:
        raise ConfigError("nats: use one of user/password, token, nkey_seed_file or creds_file")
    _check_relations(s)


def _check_relations(s: Settings) -> None:
    """Settings that are each in range but break a guarantee together; one line per rule."""
    w, sc, j, st = s.worker, s.scheduler, s.jobs, s.streams
    if sc.rescue_after <= w.ack_wait:
        raise ConfigError(f"scheduler.rescue_after: must be above worker.ack_wait ({_fmt(w.ack_wait)} s), "
                          f"got {_fmt(sc.rescue_after)}: the rescuer would take jobs from live workers")
    if w.heartbeat_interval >= sc.rescue_after:
        raise ConfigError(f"worker.heartbeat_interval: must be below scheduler.rescue_after "
                          f"({_fmt(sc.rescue_after)} s), got {_fmt(w.heartbeat_interval)}")
    if w.heartbeat_interval >= st.heartbeat_ttl:
        raise ConfigError(f"worker.heartbeat_interval: must be below streams.heartbeat_ttl "
                          f"({_fmt(st.heartbeat_ttl)} s), got {_fmt(w.heartbeat_interval)}: a live worker would vanish")
    if j.default_max_attempts >= w.max_deliver:
        raise ConfigError(f"jobs.default_max_attempts: must be below worker.max_deliver ({w.max_deliver}), "
                          f"got {j.default_max_attempts}")
    if j.duplicate_window <= 2 * sc.lease_ttl + 1:
        raise ConfigError(f"jobs.duplicate_window: must be above a leader failover (2 * scheduler.lease_ttl + 1 "
                          f"= {_fmt(2 * sc.lease_ttl + 1)} s), got {_fmt(j.duplicate_window)}: cron fires would not dedupe")


class SystemdEnv(msgspec.Struct, frozen=True, kw_only=True):
    """What systemd tells a service through its environment (sd_notify(3), sd_watchdog_enabled(3))."""

    notify_socket: str | None = None
    watchdog_usec: int | None = None


def systemd_env(environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> SystemdEnv:
    """NOTIFY_SOCKET and WATCHDOG_USEC; the watchdog counts only if WATCHDOG_PID is unset or ours."""
    env = os.environ if environ is None else environ
    socket_path = env.get("NOTIFY_SOCKET") or None
    usec: int | None = None
    raw = env.get("WATCHDOG_USEC")
    if raw:
        try:
            usec = int(raw)
        except ValueError:
            usec = None
        watchdog_pid = env.get("WATCHDOG_PID")
        if watchdog_pid and watchdog_pid != str(os.getpid() if pid is None else pid):
            usec = None
    return SystemdEnv(notify_socket=socket_path, watchdog_usec=usec if usec and usec > 0 else None)
