"""A debounce rewrites a scheduled job's spec (the last submit's args): under job signing the new
spec is signed again by the submitter, so the leader promotes it and the worker runs it; the args
the job runs with are the ones the signature covers (issue 16)."""

from __future__ import annotations

from chronos.states import JobState

from .test_authenticity import deployment  # noqa: F401  (the signed deployment fixture)


async def test_debounced_job_is_re_signed_and_runs_with_the_last_args(deployment):  # noqa: F811
    server, console, attacker, ran, _ = deployment
    first = await console.submit_job("sec.pwn", ["first"], queue="other", debounce=1.0, unique_key="sig")
    second = await console.submit_job("sec.pwn", ["second"], queue="other", debounce=1.0, unique_key="sig")
    assert second == (first.id, "debounced")
    rec = await console.wait(first.id, timeout=30)
    assert rec.state == JobState.COMPLETED, (rec.state, rec.error)
    assert rec.result == "ran second" and ran == [first.id]
    assert rec.auth is not None and rec.gen == 2
