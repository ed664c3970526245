"""Workflow canvas, compile rules and checks, fan-in tree shape: no server."""

from __future__ import annotations

from collections import Counter

import pytest

import chronos
from chronos.errors import ValidationError
from chronos.worker.registry import Registry
from chronos.workflows import (
    FANOUT, SLOT_MARK, Bits, Failure, Workflow, chain, chord, compile_workflow, fanin_step, group, node_args,
    split_job_id,
)

reg = Registry()


@chronos.task(name="u.add", registry=reg)
def add(x: int, y: int) -> int:
    return x + y


@chronos.task(name="u.fmt", registry=reg)
def fmt(prefix: str, value: str, *, upper: bool = False) -> str:
    return prefix + value


@chronos.task(name="u.sum", registry=reg)
def total(values: list[int]) -> int:
    return sum(values)


@chronos.task(name="u.anything", registry=reg)
def anything(x):  # type: ignore[no-untyped-def]
    return x


def test_chain_appends_the_result_as_the_next_positional_argument() -> None:
    plan = compile_workflow(Workflow(chain(add.s(1, 2), add.s(10), anything.s())))
    assert [p.parents for p in plan.nodes] == [[], [0], [1]]
    assert [p.mode for p in plan.nodes] == ["", "one", "one"]
    # an object of args, as a plain submit binds it; the slot is the parameter's name
    assert node_args(plan.nodes[1], 1) == ({"x": 10, "y": SLOT_MARK}, "y")


def test_keywords_bind_by_name_around_the_slot() -> None:
    plan = compile_workflow(Workflow(chain(anything.s("x"), fmt.s(">", upper=True))))
    with pytest.raises(ValidationError, match="expects str"):
        compile_workflow(Workflow(chain(add.s(1, 2), fmt.s(">"))))
    assert node_args(plan.nodes[1], 1) == ({"prefix": ">", "value": SLOT_MARK, "upper": True}, "value")


def test_chord_gives_the_callback_the_list_and_runs_it_on_failure() -> None:
    plan = compile_workflow(Workflow(chord(group(add.s(i, i) for i in range(3)), total.s())))
    cb = plan.nodes[3]
    assert cb.parents == [0, 1, 2] and cb.mode == "list" and cb.run_on_failure
    assert node_args(cb, 3) == ({"values": SLOT_MARK}, "values")


def test_nested_groups_and_chains() -> None:
    wf = Workflow(chain(add.s(1, 1), group(chain(add.s(1), add.s(2)), add.s(3)), total.s()))
    plan = compile_workflow(wf)
    assert [p.parents for p in plan.nodes] == [[], [0], [1], [0], [2, 3]]
    assert [p.mode for p in plan.nodes] == ["", "one", "one", "one", "list"]


def test_dag_is_ordered_parents_first_and_cycles_are_named() -> None:
    wf = Workflow()
    late = wf.add(anything.s(1), label="late")
    early = wf.add(anything.s(2), label="early")
    late.depends_on.append(early)
    plan = compile_workflow(wf)
    assert [p.label for p in plan.nodes] == ["early", "late"] and plan.nodes[1].parents == [0]
    early.depends_on.append(late)
    with pytest.raises(ValidationError, match=r"dependency cycle: .*late.* -> .*early.* -> .*late"):
        compile_workflow(wf)


def test_bad_steps_are_refused_at_compile() -> None:
    with pytest.raises(ValidationError, match="positional argument"):
        compile_workflow(Workflow(chain(add.s(1, 2), add.s(1, 2))))
    with pytest.raises(ValidationError, match="list it fills holds int"):
        compile_workflow(Workflow(chord(group(fmt.s("a", "b")), total.s())))
    with pytest.raises(ValidationError, match="expected a signature"):
        chain(add.s(1, 2), "u.add")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="policy"):
        Workflow(policy="sometimes")  # type: ignore[arg-type]


def test_failure_items() -> None:
    f = Failure(job="w1.2", state="discarded", error="boom")
    assert Failure.of(f.encode()) == f and Failure.of(3) is None and Failure.of({"x": 1}) is None


@pytest.mark.parametrize("total", [2, 16, 17, 255, 256, 257, 4097, 10_000])
def test_fanin_tree_covers_every_member_once_with_at_most_fanout_per_record(total: int) -> None:
    level, members = 0, total
    while True:
        cells = [fanin_step(p, members, level) for p in range(members)]
        per_record = Counter(node for node, _, _ in cells)
        assert len({(n, b) for n, b, _ in cells}) == members
        assert all(size == per_record[node] <= FANOUT for node, _, size in cells)
        members = len(per_record)
        if members == 1:
            break
        level += 1


def test_bits() -> None:
    b = Bits(3).with_bit(0, False).with_bit(2, True)
    assert b.has(0) and not b.has(1) and b.failed and not b.full()
    assert b.with_bit(1, False).full() and b.count() == 2


def test_node_ids() -> None:
    assert split_job_id("w0123.17") == ("w0123", 17)
    assert split_job_id("0123abc") is None and split_job_id("x.1") is None


def test_direct_get_header_reading() -> None:
    """The batched parent read takes headers without nats-py's parser: a status line, and single values."""
    from chronos.workflowstore import _header, _status

    end = b"NATS/1.0 204 EOB\r\nNats-Num-Pending: 0\r\nNats-Last-Sequence: 9\r\n\r\n"
    assert _status(end) == ("204", "EOB")
    msg = (b"NATS/1.0\r\nNats-Stream: KV_x_jobs\r\nNats-Subject: $KV.x_jobs.w01.17\r\n"
           b"Nats-Sequence: 42\r\nNats-Time-Stamp: 2026-12-06T23:00:00Z\r\n\r\n")
    assert _status(msg) == ("", "")
    assert _header(msg, b"Nats-Subject") == "$KV.x_jobs.w01.17" and _header(msg, b"Nats-Sequence") == "42"
    assert _header(msg, b"KV-Operation") is None
    deleted = b"NATS/1.0\r\nKV-Operation: DEL\r\nNats-Sequence: 7"
    assert _header(deleted, b"KV-Operation") == "DEL" and _header(deleted, b"Nats-Sequence") == "7"
