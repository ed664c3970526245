import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chronos import codec
from chronos.errors import MalformedMessageError, UnsupportedVersionError, ValidationError
from chronos.models import Backoff, EventBatch, Event, JobMessage, JobRecord, JobSpec
from chronos.states import JobState

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@given(args=st.lists(json_values, max_size=5))
def test_job_message_round_trips(args):
    rec = JobRecord(id="x", spec=JobSpec(task="t", args=args), state=JobState.AVAILABLE, created_at=1, updated_at=1)
    back = codec.decode(codec.encode(JobMessage(record=rec, rev=7)), JobMessage)
    assert back.rev == 7 and back.record.spec.args == args


def test_not_msgpack_is_malformed():
    with pytest.raises(MalformedMessageError, match="not a msgpack JobMessage"):
        codec.decode(b"\xc1\xc1 hello", JobMessage)


def test_missing_fields_are_named():
    with pytest.raises(MalformedMessageError, match="record"):
        codec.decode(msgspec.msgpack.encode({"rev": 1}), JobMessage)


def test_newer_version_is_refused():
    data = codec.encode(EventBatch(events=[Event(kind="completed", at=1.0)], v=99))
    with pytest.raises(UnsupportedVersionError, match="version 99"):
        codec.decode(data, EventBatch)


@pytest.mark.parametrize(
    "bad, where",
    [({"a": object()}, "args.a"), ([1, {2: 3}], "args[1]"), ([float("nan")], "args[0]"), ({"s": {1, 2}}, "args.s")],
)
def test_json_compatibility_names_the_path(bad, where):
    with pytest.raises(ValidationError, match=rf"{where.replace('[', '.').replace(']', '.')}"):
        codec.check_json_compatible(bad)


def test_result_capping():
    assert codec.cap_result({"ok": 1}, 100) == ({"ok": 1}, False)
    value, truncated = codec.cap_result("x" * 1000, 100)
    assert truncated and "over the 100 byte limit" in value
    value, truncated = codec.cap_result(object(), 100)
    assert truncated


def test_backoff_full_jitter_is_bounded():
    b = Backoff(base=1.0, cap=10.0)
    for attempt in range(1, 10):
        assert 0.0 <= b.delay(attempt) <= min(10.0, 2 ** (attempt - 1))
    assert Backoff(kind="fixed", base=3.0, jitter=False).delay(5) == 3.0


def test_args_that_refer_to_themselves_are_a_clear_error():
    looped: list = []
    looped.append(looped)
    with pytest.raises(ValidationError, match="refers to itself"):
        codec.check_json_compatible(looped, "args")
    value, truncated = codec.cap_result(looped, 1000)
    assert truncated and value.startswith("[[")
