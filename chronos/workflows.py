"""Workflows: typed composition of task handles (chain, group, chord, DAG) and its checks. No I/O.

A canvas is compiled into a flat plan of nodes, each one job with a deterministic id
(``<workflow id>.<node index>``), so every writer that decides to start a node writes the
same record (create-if-absent) and the same work message (``Nats-Msg-Id j:<id>:<gen>``).

Results travel by rule, never in the parent's record:

* ``chain(a.s(1), b.s(2))``: ``b`` is called ``b(2, <a's result>)``; the result fills the next
  positional parameter after the partial arguments (keywords given to ``.s()`` bind by name).
* ``chain(group(...), cb.s())`` = ``chord(group(...), cb.s())``: ``cb`` is called once with the list
  of its parents' results, in group order, when every child has ended (completed or not). A child
  that did not complete appears in the list as ``{"chronos_failed": {"job": id, "state": s, "error": e}}``
  (``Failure.of(item)`` turns it into a ``Failure``, else None).
* ``Workflow.add(sig, depends_on=[...])``: order only; ``pass_results=True`` passes the parent's
  result (one parent) or the list of results (several); ``run_on_failure=True`` runs the node
  even when a parent failed (it sees ``Failure`` items), else it is skipped.

The worker fills the result in just before the call, reading the parents' records
(worker/advance.py), so a node's spec is fixed (and signed) at submit.
"""

from __future__ import annotations

import hashlib
import inspect
import typing
from collections.abc import Iterable, Sequence
from collections.abc import Sequence as ABCSequence
from typing import Any, Literal

import msgspec

from .errors import ValidationError
from .models import JobAuth, JobSpec
from .states import WorkflowState

# Annotations on a workflow node's job spec: which workflow, which node, where the parent's
# result goes (an index into the positional args), and how results are passed.
WF_KEY = "chronos.wf"
NODE_KEY = "chronos.node"
SLOT_KEY = "chronos.slot"
MODE_KEY = "chronos.pass"
# What must have ended before the node may run (its parents and run_on_failure), as a digest in
# its signed spec: the definition (``d.<id>``) is writable by workers, so the worker's start
# check (worker/advance.py) trusts the definition only where it matches this.
AFTER_KEY = "chronos.after"
SLOT_MARK = {"chronos_slot": "result"}
FAILED_KEY = "chronos_failed"
# Cancel reasons written by the workflow machinery start with this: such a node is collateral
# (skipped, or stopped by fail_fast or a cancel), not a failure of its own.
WORKFLOW_REASON = "workflow:"
MAX_NODES = 20_000

Policy = Literal["fail_fast", "continue"]
PassMode = Literal["", "one", "list"]


class Failure(msgspec.Struct, frozen=True):
    """How a callback sees a parent that did not complete."""

    job: str
    state: str
    error: str | None = None

    @staticmethod
    def of(value: Any) -> "Failure | None":
        if isinstance(value, dict) and isinstance(value.get(FAILED_KEY), dict):
            d = value[FAILED_KEY]
            return Failure(job=str(d.get("job", "")), state=str(d.get("state", "")), error=d.get("error"))
        return None

    def encode(self) -> dict[str, Any]:
        return {FAILED_KEY: {"job": self.job, "state": self.state, "error": self.error}}


# --- stored types ------------------------------------------------------------------------------------
class NodeDef(msgspec.Struct, frozen=True, omit_defaults=True):
    """One node of a workflow's fixed definition."""

    task: str
    parents: list[int] = msgspec.field(default_factory=list)
    mode: str = ""  # "" (order only), "one" (the parent's result), "list" (the parents' results)
    run_on_failure: bool = False
    label: str = ""


class WorkflowDef(msgspec.Struct, frozen=True, omit_defaults=True):
    """What never changes after submit (key ``d.<id>``): the nodes and their edges."""

    id: str
    nodes: list[NodeDef]
    v: int = 1


class NodeSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    """A node's job spec as submitted and signed (key ``n.<id>.<index>``); its job is made from it."""

    spec: JobSpec
    auth: JobAuth | None = None
    v: int = 1


class WorkflowRecord(msgspec.Struct, omit_defaults=True):
    """The mutable part of a workflow (key ``w.<id>``), changed only by compare-and-set."""

    id: str
    state: WorkflowState
    created_at: float
    updated_at: float
    nodes: int
    name: str = ""
    policy: str = "continue"
    failed: list[int] = msgspec.field(default_factory=list)  # nodes that failed on their own
    reason: str | None = None  # why it was cancelled or failed fast
    finished_at: float | None = None
    resumed: int = 0  # retries by hand: from then on the end is confirmed from the nodes' jobs
    resumed_at: float | None = None  # the last move back to running (nodes stopped before it may rerun)
    settled: bool = False  # terminal and no node job left running (checked by the leader)
    v: int = 1
    revision: int = 0


class Bits(msgspec.Struct, omit_defaults=True):
    """One fan-in shard: which of ``size`` members have finished, and whether one failed."""

    size: int
    bits: bytes = b""
    failed: bool = False
    v: int = 1

    def has(self, i: int) -> bool:
        return i // 8 < len(self.bits) and bool(self.bits[i // 8] & (1 << (i % 8)))

    def with_bit(self, i: int, failed: bool) -> "Bits":
        b = bytearray(self.bits.ljust((self.size + 7) // 8, b"\0"))
        b[i // 8] |= 1 << (i % 8)
        return Bits(self.size, bytes(b), self.failed or failed)

    def without_bit(self, i: int) -> "Bits":
        b = bytearray(self.bits.ljust((self.size + 7) // 8, b"\0"))
        b[i // 8] &= ~(1 << (i % 8)) & 0xFF
        return Bits(self.size, bytes(b), self.failed)

    def count(self) -> int:
        return int.from_bytes(self.bits, "little").bit_count()

    def full(self) -> bool:
        return self.count() >= self.size


FANOUT = 16  # members per fan-in record: at most this many writers ever contend on one key


def fanin_step(pos: int, total: int, level: int) -> tuple[int, int, int]:
    """Member ``pos`` of ``total`` at ``level`` of a fan-in's combining tree: (record, bit, size).

    Records take members in blocks of FANOUT (a worker finishing children 0-255 of a group fills
    16 records with 16 bits each, one write apiece); the members of level n+1 are the records
    of level n, and the level with one record is the root."""
    node, bit = divmod(pos, FANOUT)
    return node, bit, min(FANOUT, total - node * FANOUT)


def node_job_id(workflow_id: str, index: int) -> str:
    return f"{workflow_id}.{index}"


def after_digest(parents: Sequence[int], run_on_failure: bool) -> str:
    """The value of ``AFTER_KEY`` for a node: BLAKE2b-128 of its parents and its failure rule."""
    data = ("r" if run_on_failure else "c") + ",".join(map(str, parents))
    return hashlib.blake2b(data.encode(), digest_size=16).hexdigest()


def split_job_id(job_id: str) -> tuple[str, int] | None:
    wf, sep, idx = job_id.rpartition(".")
    if not sep or not wf.startswith("w") or not idx.isdigit():
        return None
    return wf, int(idx)


def children_of(defn: WorkflowDef) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in defn.nodes]
    for i, n in enumerate(defn.nodes):
        for p in n.parents:
            out[p].append(i)
    return out


def sinks_of(defn: WorkflowDef) -> list[int]:
    kids = children_of(defn)
    return [i for i, k in enumerate(kids) if not k]


# --- the canvas -----------------------------------------------------------------------------------------
class Signature:
    """A task with partial arguments: ``add.s(1)``. Options as for ``with_options``: ``.set(queue=...)``."""

    __slots__ = ("task", "args", "kwargs", "options")

    def __init__(self, task: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                 options: dict[str, Any] | None = None) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})

    def set(self, **options: Any) -> "Signature":
        return Signature(self.task, self.args, self.kwargs, {**self.options, **options})

    @property
    def name(self) -> str:
        return str(self.task.name if hasattr(self.task, "name") else self.task)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}.s({', '.join(parts)})"

    def __or__(self, other: "Canvas") -> "Chain":
        return chain(self, other)


class Chain:
    __slots__ = ("steps",)

    def __init__(self, steps: list["Canvas"]) -> None:
        self.steps = steps

    def __or__(self, other: "Canvas") -> "Chain":
        return chain(*self.steps, other)


class Group:
    __slots__ = ("items",)

    def __init__(self, items: list["Canvas"]) -> None:
        self.items = items

    def __or__(self, other: "Canvas") -> "Chain":
        return chain(self, other)


Canvas = Signature | Chain | Group


def chain(*steps: "Canvas | Workflow") -> Chain:
    if not steps:
        raise ValidationError("chain: needs at least one step")
    flat: list[Canvas] = []
    for s in steps:
        _check_canvas(s, "chain")
        flat.extend(s.steps if isinstance(s, Chain) else [s])  # type: ignore[list-item]
    return Chain(flat)


def group(*items: "Canvas | Iterable[Canvas]") -> Group:
    if len(items) == 1 and not isinstance(items[0], (Signature, Chain, Group)) and hasattr(items[0], "__iter__"):
        items = tuple(items[0])  # group(a.s(i) for i in ...)
    if not items:
        raise ValidationError("group: needs at least one member")
    for it in items:
        _check_canvas(it, "group")
    return Group(list(items))  # type: ignore[arg-type]


def chord(header: "Group | Sequence[Canvas]", body: Signature) -> Chain:
    """``body`` once with the list of ``header``'s results (failures included, as ``Failure`` items)."""
    if not isinstance(header, Group):
        header = group(*header)
    if not isinstance(body, Signature):
        raise ValidationError("chord: the callback must be a signature (task.s(...))")
    return chain(header, body)


def _check_canvas(x: Any, where: str) -> None:
    if not isinstance(x, (Signature, Chain, Group)):
        raise ValidationError(f"{where}: expected a signature (task.s(...)), chain or group, not {x!r}")


class Node:
    """A node of a ``Workflow``; pass it in another node's ``depends_on``."""

    __slots__ = ("index", "sig", "depends_on", "pass_results", "run_on_failure", "label")

    def __init__(self, index: int, sig: Signature, depends_on: list["Node"], pass_results: bool,
                 run_on_failure: bool, label: str) -> None:
        self.index = index
        self.sig = sig
        self.depends_on = depends_on
        self.pass_results = pass_results
        self.run_on_failure = run_on_failure
        self.label = label

    def __repr__(self) -> str:
        return f"Node({self.index}, {self.label or self.sig.name})"


class Workflow:
    """A workflow: a DAG built with ``add``, or one canvas (``Workflow(chain(...))``).

    ``policy``: ``continue`` (the default: dependents of a failed node are skipped, the rest go
    on) or ``fail_fast`` (the first failure cancels pending nodes and signals running ones).
    """

    def __init__(self, canvas: "Canvas | None" = None, *, name: str = "", policy: Policy = "continue") -> None:
        if policy not in ("continue", "fail_fast"):
            raise ValidationError(f"policy: {policy!r} is not one of continue, fail_fast")
        self.name = name
        self.policy: Policy = policy
        self.canvas = canvas
        self.nodes: list[Node] = []
        if canvas is not None:
            _check_canvas(canvas, "Workflow")

    def add(self, sig: Signature, *, depends_on: Sequence[Node] = (), pass_results: bool = False,
            run_on_failure: bool = False, label: str = "") -> Node:
        if self.canvas is not None:
            raise ValidationError("Workflow: built from a canvas; add nodes to a Workflow() made without one")
        if not isinstance(sig, Signature):
            raise ValidationError(f"Workflow.add: expected a signature (task.s(...)), not {sig!r}")
        for d in depends_on:
            if not isinstance(d, Node):
                raise ValidationError(f"Workflow.add: depends_on holds {d!r}, not a node of this workflow")
        node = Node(len(self.nodes), sig, list(depends_on), pass_results, run_on_failure, label)
        self.nodes.append(node)
        return node

    async def submit(self, client: Any = None) -> Any:
        """Submit through ``client`` (else the handles' client); returns a ``WorkflowRef``."""
        if client is None:
            if _default_client is None:
                raise ValidationError("Workflow.submit: no client (pass one, or import chronos first)")
            client = await _default_client()
        return await client.submit_workflow(self)


# Set by chronos.tasks (the handles' client), which sits above this module: core imports nothing above it.
_default_client: Any = None


# --- compiling and checking -----------------------------------------------------------------------------------
class PlannedNode(msgspec.Struct):
    sig: Any
    parents: list[int]
    mode: str
    run_on_failure: bool
    label: str = ""


class Plan(msgspec.Struct):
    nodes: list[PlannedNode]


def compile_workflow(wf: Workflow) -> Plan:
    """The flat node list, in an order where parents come first; raises ValidationError on a cycle."""
    if wf.canvas is not None:
        nodes: list[PlannedNode] = []
        _compile(wf.canvas, [], "", nodes)  # the exits are the workflow's sinks
        plan = Plan(nodes)
    else:
        if not wf.nodes:
            raise ValidationError("workflow: has no nodes")
        index = {id(n): n.index for n in wf.nodes}
        for n in wf.nodes:
            for d in n.depends_on:
                if id(d) not in index or wf.nodes[index[id(d)]] is not d:
                    raise ValidationError(f"node {n.index} ({n.sig.name}): depends on a node of another workflow")
        _check_cycle(wf.nodes)
        order = _topo_order(wf.nodes)
        new_index = {old: new for new, old in enumerate(order)}
        out = []
        for old in order:
            n = wf.nodes[old]
            parents = [new_index[d.index] for d in n.depends_on]
            mode = "" if not n.pass_results else ("one" if len(parents) == 1 else "list")
            out.append(PlannedNode(n.sig, parents, mode, n.run_on_failure, n.label))
        plan = Plan(out)
    if len(plan.nodes) > MAX_NODES:
        raise ValidationError(f"workflow: {len(plan.nodes)} nodes is over the limit of {MAX_NODES}")
    _check_types(plan)
    for i, p in enumerate(plan.nodes):
        node_args(p, i)  # arity and arguments, as submit will bind them
    return plan


def _compile(c: Canvas, parents: list[int], mode: str, out: list[PlannedNode]) -> tuple[list[int], bool]:
    """Append ``c``'s nodes with ``parents`` on its entry nodes; return its exit nodes, and whether
    they are a group's (then the next step gets the list of their results, even for one member)."""
    if isinstance(c, Signature):
        out.append(PlannedNode(c, list(parents), mode if parents else "", mode == "list"))
        return [len(out) - 1], False
    if isinstance(c, Group):
        exits: list[int] = []
        for item in c.items:
            exits.extend(_compile(item, parents, mode, out)[0])
        return exits, True
    exits, grouped = parents, False
    for i, step in enumerate(c.steps):
        step_mode = mode if i == 0 else ("list" if grouped or len(exits) > 1 else "one")
        exits, grouped = _compile(step, exits, step_mode, out)
    return exits, grouped


def _check_cycle(nodes: list[Node]) -> None:
    WHITE, GREY, BLACK = 0, 1, 2
    color = [WHITE] * len(nodes)
    stack_path: list[int] = []

    def visit(i: int) -> None:
        color[i] = GREY
        stack_path.append(i)
        for d in nodes[i].depends_on:
            j = d.index
            if color[j] == GREY:
                cyc = stack_path[stack_path.index(j):] + [j]
                names = " -> ".join(f"{k} ({nodes[k].label or nodes[k].sig.name})" for k in reversed(cyc))
                raise ValidationError(f"workflow: dependency cycle: {names}")
            if color[j] == WHITE:
                visit(j)
        stack_path.pop()
        color[i] = BLACK

    for i in range(len(nodes)):
        if color[i] == WHITE:
            visit(i)


def _topo_order(nodes: list[Node]) -> list[int]:
    done: set[int] = set()
    order: list[int] = []

    def visit(i: int) -> None:
        if i in done:
            return
        done.add(i)
        for d in nodes[i].depends_on:
            visit(d.index)
        order.append(i)

    for i in range(len(nodes)):
        visit(i)
    return order


class _Slot:
    def __repr__(self) -> str:
        return "<result>"


_SLOT = _Slot()


def node_args(p: PlannedNode, index: int) -> tuple[list[Any] | dict[str, Any], int | str | None]:
    """The job args of a node, with a slot marker where the parent's result goes, and the slot:
    an index into a list of args, or a parameter name in an object of args (as ``Task.bind``
    decides between the two)."""
    sig = p.sig
    task = sig.task
    where = f"node {index} ({sig.name})"
    if isinstance(task, str):  # a task known by name only: no signature to check against
        if sig.args and sig.kwargs:
            raise ValidationError(f"{where}: a task given by name takes positional or keyword arguments, not both")
        if not p.mode:
            return (dict(sig.kwargs) if sig.kwargs else list(sig.args)), None
        if sig.kwargs:
            raise ValidationError(f"{where}: a step that receives a result takes positional arguments only")
        return [*sig.args, SLOT_MARK], len(sig.args)
    if not p.mode:
        return task.bind(*sig.args, **sig.kwargs), None
    try:
        bound = task._sig.bind(*sig.args, _SLOT, **sig.kwargs)
    except TypeError as exc:
        raise ValidationError(
            f"{where}: takes its parent's result as the next positional argument after "
            f"{len(sig.args)} given, but {exc} (signature: {sig.name}{task._sig})") from None
    params = task._sig.parameters
    positional_only = any(params[n].kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)
                          for n in bound.arguments)
    if not positional_only:
        out: dict[str, Any] = {}
        slot_name = ""
        for name, value in bound.arguments.items():
            if params[name].kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            elif value is _SLOT:
                slot_name, out[name] = name, SLOT_MARK
            else:
                out[name] = value
        return out, slot_name
    if bound.kwargs:
        raise ValidationError(f"{where}: cannot send positional-only or *args together with keyword arguments "
                              "(a job carries a list or an object)")
    args = list(bound.args)
    slot = next(i for i, a in enumerate(args) if a is _SLOT)
    args[slot] = SLOT_MARK
    return args, slot


def _param_after(task: Any, sig: Signature) -> Any:
    """The annotation of the parameter the parent's result fills (Any if unknown)."""
    try:
        bound = task._sig.bind(*sig.args, _SLOT, **sig.kwargs)
    except TypeError:
        return Any
    for name, value in bound.arguments.items():
        if value is _SLOT:
            return task._hints.get(name, Any)
    return Any


def _fits(produced: Any, wanted: Any) -> bool:
    """Can a value of type ``produced`` be passed where ``wanted`` is annotated? Unknown: yes."""
    if produced is Any or wanted is Any or produced is None or wanted is None:
        return True
    if wanted is float and produced in (int, float):
        return True
    w_origin, p_origin = typing.get_origin(wanted), typing.get_origin(produced)
    if w_origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_fits(produced, a) for a in typing.get_args(wanted))
    if p_origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return all(_fits(a, wanted) for a in typing.get_args(produced))
    w_cls = w_origin or wanted
    p_cls = p_origin or produced
    if not (inspect.isclass(w_cls) and inspect.isclass(p_cls)):
        return True
    if w_cls is object:
        return True
    if w_cls in (list, ABCSequence) or w_cls is typing.Sequence:
        w_cls = list if w_cls is list else ABCSequence
    try:
        ok = issubclass(p_cls, w_cls)
    except TypeError:
        return True
    if not ok:
        return False
    w_args, p_args = typing.get_args(wanted), typing.get_args(produced)
    if w_args and p_args and len(w_args) == len(p_args) and w_cls in (list, ABCSequence):
        return _fits(p_args[0], w_args[0])
    return True


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) if not typing.get_args(t) else str(t).replace("typing.", "")  # type: ignore[return-value]


def _check_types(plan: Plan) -> None:
    """Where both sides are annotated, a parent's result type must fit the parameter it fills."""
    for i, p in enumerate(plan.nodes):
        if not p.mode or not hasattr(p.sig.task, "_sig"):
            continue
        wanted = _param_after(p.sig.task, p.sig)
        if p.mode == "one":
            parent = plan.nodes[p.parents[0]]
            produced = getattr(parent.sig.task, "_result_type", Any)
            if not _fits(produced, wanted):
                raise ValidationError(
                    f"node {i} ({p.sig.name}): its parent {p.parents[0]} ({parent.sig.name}) returns "
                    f"{_type_name(produced)}, but the parameter it fills expects {_type_name(wanted)}")
        else:
            origin = typing.get_origin(wanted) or wanted
            if wanted is not Any and inspect.isclass(origin) and not issubclass(list, origin):
                raise ValidationError(
                    f"node {i} ({p.sig.name}): receives the list of its parents' results, but the parameter "
                    f"it fills expects {_type_name(wanted)}")
            (elem,) = typing.get_args(wanted) or (Any,)
            for q in p.parents:
                # a failed parent is a Failure dict: only a completed one's type is checked
                produced = getattr(plan.nodes[q].sig.task, "_result_type", Any)
                if not _fits(produced, elem):
                    raise ValidationError(
                        f"node {i} ({p.sig.name}): parent {q} ({plan.nodes[q].sig.name}) returns "
                        f"{_type_name(produced)}, but the list it fills holds {_type_name(elem)}")


def encode_ranges(items: list[int]) -> str:
    return ",".join(str(i) for i in items)
