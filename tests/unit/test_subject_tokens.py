"""Queue and namespace tokens: exactly one NATS subject token, nothing after it (not even a newline)."""

from __future__ import annotations

import pytest

from chronos.subjects import Names, is_valid_token
from chronos.worker.builtin import check_env_names, child_env
from chronos.errors import Cancel, ConfigError


@pytest.mark.parametrize("value", ["q\n", "q\r", "q\r\n", "\nq", "a.b", "a b", "", "x" * 65, "a*", "a>"])
def test_bad_tokens(value):
    assert not is_valid_token(value)


@pytest.mark.parametrize("value", ["q", "mail-2", "A_b", "x" * 64])
def test_good_tokens(value):
    assert is_valid_token(value)


def test_a_work_subject_is_never_built_from_a_bad_queue_or_priority():
    n = Names("ns")
    assert n.job_subject("default", "mail") == "ns.jobs.default.mail"
    with pytest.raises(ValueError, match="queue"):
        n.job_subject("default", "mail\n")
    with pytest.raises(ValueError, match="priority"):
        n.job_subject("urgent", "mail")


def test_env_names_with_a_trailing_newline_are_refused():
    with pytest.raises(ConfigError):
        check_env_names(["FOO\n"])
    with pytest.raises(Cancel):
        child_env({"FOO\n": "1"}, ["FOO\n"])
    with pytest.raises(ConfigError):
        check_env_names(["LD_PRELOAD"])
