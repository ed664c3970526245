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
