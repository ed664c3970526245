"""load_settings: defaults < TOML < CHRONOS_* environment < overrides; unknown keys are rejected by name."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from chronos.config import Settings, config_path_from_env, load_settings
from chronos.errors import ConfigError


@pytest.fixture
def toml(tmp_path: Path):
    def write(text: str) -> Path:
        p = tmp_path / "chronos.toml"
        p.write_text(text)
        return p

    return write


def test_defaults_without_file_or_environment():
    s = load_settings(environ={})
    assert s == Settings()
    assert s.namespace == "chronos" and s.nats.url == "nats://127.0.0.1:4222" and s.worker.queues == ["default"]


def test_settings_are_frozen():
    s = load_settings(environ={})
    with pytest.raises(AttributeError):
        s.namespace = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.worker.concurrency = 2  # type: ignore[misc]


def test_precedence_toml_then_env_then_overrides(toml):
    path = toml(
        'namespace = "from-toml"\nlog_level = "DEBUG"\n'
        "[nats]\nurl = \"nats://toml:4222\"\n"
        "[worker]\nconcurrency = 4\nqueues = [\"a\", \"b\"]\nshell_allow = [\"echo\"]\n"
    )
    env = {"CHRONOS_NAMESPACE": "from-env", "CHRONOS_WORKER__CONCURRENCY": "8", "CHRONOS_JOBS__DEFAULT_MAX_ATTEMPTS": "9"}
    s = load_settings(path, environ=env, overrides={"namespace": "from-flag"})
    assert s.namespace == "from-flag"  # override beats env beats TOML
    assert s.worker.concurrency == 8  # env beats TOML
    assert s.jobs.default_max_attempts == 9  # env over the default, converted from a string
    assert s.worker.queues == ["a", "b"] and s.worker.shell_allow == ["echo"]  # TOML, untouched by env
    assert s.log_level == "DEBUG"
    assert s.nats.url == "nats://toml:4222"


def test_overrides_merge_into_sections_without_dropping_toml_keys(toml):
    path = toml("[nats]\nurl = \"nats://toml:4222\"\nconnect_timeout = 0.5\n")
    s = load_settings(path, environ={}, overrides={"nats": {"url": "nats://flag:4222"}})
    assert s.nats.url == "nats://flag:4222"
    assert s.nats.connect_timeout == 0.5


def test_environment_lists_and_server_alias():
    s = load_settings(environ={"CHRONOS_WORKER__QUEUES": "a, b,c", "CHRONOS_SERVER": "nats://env:1"})
    assert s.worker.queues == ["a", "b", "c"]
    assert s.nats.url == "nats://env:1"


def test_read_env_false_ignores_the_environment():
    s = load_settings(environ={"CHRONOS_NAMESPACE": "nope"}, read_env=False)
    assert s.namespace == "chronos"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("namespce = \"x\"\n", "namespce"),
        ("[worker]\nconcurency = 4\n", "concurency"),
        ("[nats]\nurl = \"nats://x:1\"\nuser_name = \"me\"\n", "user_name"),
        ("[wokrer]\nconcurrency = 4\n", "wokrer"),
    ],
)
def test_unknown_keys_in_toml_are_rejected_by_name(toml, text, name):
    with pytest.raises(ConfigError, match=name):
        load_settings(toml(text), environ={})


def test_unknown_environment_keys_are_rejected_by_name():
    with pytest.raises(ConfigError, match="CHRONOS_WOKRER__CONCURRENCY.*'wokrer'"):
        load_settings(environ={"CHRONOS_WOKRER__CONCURRENCY": "2"})
    with pytest.raises(ConfigError, match="concurency"):
        load_settings(environ={"CHRONOS_WORKER__CONCURENCY": "2"})


def test_unknown_override_keys_are_rejected_by_name():
    with pytest.raises(ConfigError, match="bogus"):
        load_settings(environ={}, overrides={"worker": {"bogus": 1}})


def test_wrong_types_name_the_field(toml):
    with pytest.raises(ConfigError, match=r"worker\.concurrency|concurrency"):
        load_settings(toml("[worker]\nconcurrency = \"many\"\n"), environ={})
    with pytest.raises(ConfigError, match="concurrency"):
        load_settings(environ={"CHRONOS_WORKER__CONCURRENCY": "many"})


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"namespace": "has space"}, "namespace"),
        ({"worker": {"concurrency": 0}}, "worker.concurrency"),
        ({"worker": {"queues": ["ok", "not ok"]}}, "worker.queues"),
        ({"jobs": {"default_priority": "urgent"}}, "jobs.default_priority"),
        ({"nats": {"replicas": 2}}, "nats.replicas"),
    ],
)
def test_values_are_validated_once(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings(environ={}, overrides=overrides)


def test_missing_and_malformed_files(tmp_path: Path, toml):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="chronos.toml"):
        load_settings(toml("[worker\n"), environ={})


def test_config_path_from_environment():
    assert config_path_from_env({"CHRONOS_CONFIG": "/etc/chronos.toml"}) == "/etc/chronos.toml"
    assert config_path_from_env({}) is None


def test_chronos_config_variable_is_not_a_setting(toml):
    path = toml('namespace = "x"\n')
    env = {"CHRONOS_CONFIG": str(path)}
    assert load_settings(config_path_from_env(env), environ=env).namespace == "x"


def test_settings_round_trip_through_builtins():
    s = load_settings(environ={}, overrides={"worker": {"concurrency": 3}})
    assert msgspec.convert(msgspec.to_builtins(s), Settings) == s


# --- ranges: every numeric setting, one line naming it -------------------------------------------

from chronos.config import RANGES, parse_duration  # noqa: E402


def _numeric_fields() -> list[tuple[str, str, type]]:
    out = []
    for section in msgspec.structs.fields(Settings):
        sub = getattr(Settings(), section.name)
        if not isinstance(sub, msgspec.Struct):
            continue
        for f in msgspec.structs.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append((section.name, f.name, type(value)))
    return out


def test_every_numeric_setting_has_a_range():
    missing = [f"{s}.{k}" for s, k, _ in _numeric_fields() if f"{s}.{k}" not in RANGES]
    assert not missing, f"give these settings a range in chronos.config.RANGES: {missing}"
    for name, (lo, hi, _unit) in RANGES.items():
        section, key = name.split(".")
        default = getattr(getattr(Settings(), section), key)
        assert default == -1 or lo <= default <= hi, f"{name}: the default {default} is outside its range"


@pytest.mark.parametrize(("section", "key", "typ"), _numeric_fields())
def test_a_value_below_or_above_the_range_is_refused_by_name(section, key, typ):
    lo, hi, _unit = RANGES[f"{section}.{key}"]
    for bad in (lo - 2, hi * 2 + 2):
        value = typ(bad)
        with pytest.raises(ConfigError, match=rf"^{section}\.{key}: must be between") as info:
            load_settings(environ={}, overrides={section: {key: value}})
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(("section", "key"), [(s, k) for s, k, t in _numeric_fields() if t is float])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_floats_must_be_finite(section, key, value):
    with pytest.raises(ConfigError, match=rf"^{section}\.{key}: must be a finite number"):
        load_settings(environ={}, overrides={section: {key: value}})


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"scheduler": {"rescue_after": 0}}, "scheduler.rescue_after"),
        ({"worker": {"max_deliver": 1}}, "worker.max_deliver"),
        ({"worker": {"heartbeat_interval": 0}}, "worker.heartbeat_interval"),
        ({"worker": {"thread_pool_size": 0}}, "worker.thread_pool_size"),
        ({"scheduler": {"retention": 0}}, "scheduler.retention"),
        ({"worker": {"shutdown_grace": -1.0}}, "worker.shutdown_grace"),
        ({"worker": {"ack_wait": float("nan")}}, "worker.ack_wait"),
        ({"worker": {"queues": []}}, "worker.queues"),
        ({"jobs": {"default_queue": "a b"}}, "jobs.default_queue"),
        ({"log_level": "LOUD"}, "log_level"),
        # each in range, wrong together
        ({"scheduler": {"rescue_after": 5.0}}, "scheduler.rescue_after: must be above worker.ack_wait"),
        ({"worker": {"heartbeat_interval": 40.0}}, "worker.heartbeat_interval: must be below scheduler.rescue_after"),
        ({"worker": {"heartbeat_interval": 20.0}, "streams": {"heartbeat_ttl": 10.0}},
         "worker.heartbeat_interval: must be below streams.heartbeat_ttl"),
        ({"jobs": {"default_max_attempts": 50}}, "jobs.default_max_attempts: must be below worker.max_deliver"),
        ({"jobs": {"duplicate_window": 10.0}}, "jobs.duplicate_window: must be above a leader failover"),
    ],
)
def test_settings_that_break_a_guarantee_are_refused(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, overrides=overrides)
    assert str(info.value).startswith(needle) and "\n" not in str(info.value)


def test_unlimited_byte_limits_take_minus_one():
    s = load_settings(environ={}, overrides={"streams": {"dlq_max_bytes": -1, "events_max_bytes": -1}})
    assert s.streams.dlq_max_bytes == -1


# --- the environment, parsed by each field's type ------------------------------------------------


def test_environment_values_take_their_fields_type():
    s = load_settings(environ={
        "CHRONOS_WORKER__QUEUES": "mail",  # one value is a list of one
        "CHRONOS_WORKER__TASKS": "",  # empty: the empty list
        "CHRONOS_JOBS__CHECK_TASK_NAMES": "no",
        "CHRONOS_NATS__MANAGE_TOPOLOGY": "False",
        "CHRONOS_WORKER__ACK_WAIT": "10s",
        "CHRONOS_SCHEDULER__RESCUE_AFTER": "1m30s",
        "CHRONOS_SCHEDULER__RETENTION": "2d",
        "CHRONOS_WORKER__RUNNING_WRITE_AFTER": "250ms",
        "CHRONOS_WORKER__CONCURRENCY": "1_000",
        "CHRONOS_JOBS__DEFAULT_TIMEOUT": "90",
        "CHRONOS_NATS__USER": "me",
        "CHRONOS_ADMIN_PASSWORD": "a nats-server variable, not a setting",
    })
    assert s.worker.queues == ["mail"] and s.worker.tasks == []
    assert s.jobs.check_task_names is False and s.nats.manage_topology is False
    assert (s.worker.ack_wait, s.scheduler.rescue_after, s.scheduler.retention) == (10.0, 90.0, 172800.0)
    assert s.worker.running_write_after == 0.25 and s.worker.concurrency == 1000
    assert s.jobs.default_timeout == 90.0 and s.nats.user == "me"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CHRONOS_WORKER__ACK_WAIT": "soon"}, "CHRONOS_WORKER__ACK_WAIT: worker.ack_wait must be a number of seconds"),
        ({"CHRONOS_WORKER__ACK_WAIT": "5x"}, "CHRONOS_WORKER__ACK_WAIT"),
        ({"CHRONOS_JOBS__CHECK_TASK_NAMES": "maybe"}, "CHRONOS_JOBS__CHECK_TASK_NAMES: jobs.check_task_names must be true or false"),
        ({"CHRONOS_WORKER__CONCURRENCY": "1.5"}, "CHRONOS_WORKER__CONCURRENCY: worker.concurrency must be a whole number"),
        ({"CHRONOS_FOO": "1"}, "environment variable CHRONOS_FOO: unknown setting 'foo'"),
        ({"CHRONOS_WORKER": "1"}, "environment variable CHRONOS_WORKER: worker is a section"),
        ({"CHRONOS_WORKER__BOGUS": "1"}, "environment variable CHRONOS_WORKER__BOGUS: worker has no setting 'bogus'"),
        ({"CHRONOS_WORKER__ACK_WAIT": "nan"}, "worker.ack_wait: must be a finite number"),
        ({"CHRONOS_SCHEDULER__RESCUE_AFTER": "0"}, "scheduler.rescue_after"),
        # Bytes that are not UTF-8 (os.environ keeps them as surrogates): msgspec raised a traceback.
        ({"CHRONOS_WORKER__SYNC_EXECUTOR": "\udcff"}, "CHRONOS_WORKER__SYNC_EXECUTOR: its value is not valid UTF-8"),
        ({"CHRONOS_NATS__INBOX_PREFIX": "a\udcff"}, "CHRONOS_NATS__INBOX_PREFIX: its value is not valid UTF-8"),
    ],
)
def test_environment_mistakes_are_one_line_naming_the_variable(env, needle):
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("1.5", 1.5), ("30s", 30.0), ("5m", 300.0),
                                               ("1h30m", 5400.0), ("250ms", 0.25), ("2d", 172800.0), (" 10 s ", 10.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5x", "1h 30", "h1", "-"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CHRONOS_SCHEDULER__RESCUE_AFTER": "0"}, "scheduler.rescue_after"),
        ({"CHRONOS_WORKER__MAX_DELIVER": "1"}, "worker.max_deliver"),
        ({"CHRONOS_WORKER__ACK_WAIT": "inf"}, "worker.ack_wait"),
        ({"CHRONOS_WOKRER__CONCURRENCY": "2"}, "CHRONOS_WOKRER__CONCURRENCY"),
    ],
)
def test_the_cli_says_one_line_without_a_traceback(env, needle):
    from typer.testing import CliRunner

    from chronos.cli._shared import exit_code_for
    from chronos.cli.main import app

    r = CliRunner().invoke(app, ["workers"], env=env)
    out = (r.stderr if r.stderr_bytes is not None else r.output).strip()
    assert r.exit_code == exit_code_for(ConfigError("x")) != 0
    assert "Traceback" not in r.output and len(out.splitlines()) == 1 and needle in out
