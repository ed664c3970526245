import pytest

from chronos.errors import IllegalTransitionError
from chronos.models import JobRecord, JobSpec
from chronos.states import TERMINAL, TRANSITIONS, JobState, can_transition, transition

S = JobState


def rec(state: JobState) -> JobRecord:
    return JobRecord(id="j1", spec=JobSpec(task="t"), state=state, created_at=1.0, updated_at=1.0)


def test_every_state_has_a_row():
    assert set(TRANSITIONS) == set(JobState)


def test_completed_is_final():
    assert TRANSITIONS[S.COMPLETED] == frozenset()


@pytest.mark.parametrize("src", list(JobState))
@pytest.mark.parametrize("dst", list(JobState))
def test_transition_follows_the_table(src, dst):
    if can_transition(src, dst):
        new = transition(rec(src), dst, 5.0)
        assert new.state is dst
        assert new.updated_at == 5.0
        assert (new.finished_at == 5.0) == (dst in TERMINAL)
    else:
        with pytest.raises(IllegalTransitionError, match=f"from {src} to {dst}"):
            transition(rec(src), dst, 5.0)


def test_expected_paths():
    assert can_transition(S.SCHEDULED, S.AVAILABLE)
    assert can_transition(S.AVAILABLE, S.RUNNING)
    assert can_transition(S.RUNNING, S.RETRYABLE)
    assert can_transition(S.RETRYABLE, S.RUNNING)
    assert can_transition(S.DISCARDED, S.AVAILABLE)  # replay from the DLQ
    assert not can_transition(S.COMPLETED, S.AVAILABLE)
    assert not can_transition(S.SCHEDULED, S.RUNNING)


def test_transition_applies_changes_and_keeps_the_original():
    old = rec(S.AVAILABLE)
    new = transition(old, S.RUNNING, 2.0, attempt=1, worker="w1")
    assert (new.attempt, new.worker) == (1, "w1")
    assert old.state is S.AVAILABLE and old.attempt == 0
