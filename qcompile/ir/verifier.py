"""The IR verifier: checks every invariant the rest of the compiler relies on and reports all
broken ones at once, each with the node's name and its printed line.

Checked: each name defined once and registered in the graph; inputs defined before use
(topological order); producer and use lists consistent; op known, arity, attributes exactly
the completed schema; output types equal the registry's inference; quantization parameters
valid and consistent with the value's type; constants carry data that fits their type; graph
outputs defined.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np

from ..errors import OpError, VerifyError
from .compare import attr_equal
from .graph import Graph, Node, Value
from .ops import registry
from .printer import print_node, print_quant, print_type
from .types import QuantParams, int_bits, int_range, is_int, is_signed, numpy_dtype


class _Report:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def node(self, node: Node, message: str) -> None:
        self.problems.append(f"node %{node.name} ({node.op}): {message}\n      {print_node(node)}")

    def value(self, what: str, v: Value, message: str) -> None:
        self.problems.append(f"{what} %{v.name}: {message}")

    def graph(self, message: str) -> None:
        self.problems.append(message)


def verify(graph: Graph) -> None:
    """Raise `VerifyError` listing every problem in `graph`; return None if it is well formed."""
    problems = collect_problems(graph)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise VerifyError(f"graph @{graph.name} failed verification "
                          f"({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n{listing}")


def collect_problems(graph: Graph) -> list[str]:
    """Every problem `verify` would report, as a list of messages (empty when well formed)."""
    rep = _Report()
    defined = _check_definitions(graph, rep)
    _check_uses(graph, rep, defined)
    for node in graph.nodes:
        _check_node(node, rep)
    for v in graph.inputs:
        _check_quant_of("input", v, rep.value)
    for v in graph.constants.values():
        _check_quant_of("constant", v, rep.value)
        _check_constant(v, rep)
    for v in graph.outputs:
        if id(v) not in defined:
            rep.graph(f"graph output %{v.name} is not defined in graph @{graph.name}")
    return rep.problems


# ---- definitions and uses -------------------------------------------------------------------
def _check_definitions(graph: Graph, rep: _Report) -> set[int]:
    """Each value defined once, under a unique name, registered in `graph.values`."""
    defined: set[int] = set()
    names: dict[str, str] = {}   # name -> where it was first defined

    def define(v: Value, where: str, report) -> None:
        if id(v) in defined:
            report(f"value %{v.name} is defined more than once")
            return
        defined.add(id(v))
        if v.name in names:
            report(f"name %{v.name} is already used by {names[v.name]}")
        else:
            names[v.name] = where
        if graph.values.get(v.name) is not v:
            report(f"value %{v.name} is not the one graph.values holds under that name")

    for v in graph.inputs:
        define(v, "a graph input", lambda m, v=v: rep.value("input", v, m))
        if v.producer is not None:
            rep.value("input", v, f"has producer node %{v.producer.name}")
    for name, v in graph.constants.items():
        define(v, "a constant", lambda m, v=v: rep.value("constant", v, m))
        if name != v.name:
            rep.value("constant", v, f"is listed in graph.constants under {name!r}")
        if v.producer is not None:
            rep.value("constant", v, f"has producer node %{v.producer.name}")
    for node in graph.nodes:
        if node.graph is not graph:
            rep.node(node, "node.graph does not point at this graph")
        for out in node.outputs:
            define(out, f"node %{node.name}", lambda m, n=node: rep.node(n, m))
            if out.producer is not node:
                rep.node(node, f"output %{out.name} names a different producer")
    return defined


def _check_uses(graph: Graph, rep: _Report, defined: set[int]) -> None:
    """Inputs defined before use, and every value's `users` matches the nodes reading it."""
    available = {id(v) for v in graph.inputs} | {id(v) for v in graph.constants.values()}
    uses: dict[int, Counter] = {}
    values: dict[int, Value] = {}
    for node in graph.nodes:
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            values[id(v)] = v
            uses.setdefault(id(v), Counter())[id(node)] += 1
            if id(v) not in defined:
                rep.node(node, f"input {i} %{v.name} is not defined in the graph")
            elif id(v) not in available:
                rep.node(node, f"input {i} %{v.name} is used before it is defined "
                               f"(nodes out of topological order)")
        for out in node.outputs:
            available.add(id(out))
    all_values = list(graph.inputs) + list(graph.constants.values()) + \
        [o for n in graph.nodes for o in n.outputs]
    for v in all_values:
        want = uses.get(id(v), Counter())
        if Counter(id(u) for u in v.users) != want:
            users = ", ".join(f"%{u.name}" for u in v.users) or "none"
            readers = sorted({n.name for n in graph.nodes if id(n) in want})
            rep.graph(f"value %{v.name}: users list [{users}] does not match the nodes that read it "
                      f"[{', '.join('%' + r for r in readers) or 'none'}]")


# ---- nodes ----------------------------------------------------------------------------------
def _check_node(node: Node, rep: _Report) -> None:
    if not registry.exists(node.op):
        try:
            registry.get(node.op)
        except OpError as exc:
            rep.node(node, str(exc))
        return
    opdef = registry.get(node.op)
    if not opdef.arity_ok(len(node.inputs)):
        rep.node(node, f"{len(node.inputs)} inputs, but {opdef.name} takes "
                       f"({', '.join(opdef.inputs)})")
        return
    attrs_ok = True
    try:
        completed = opdef.complete_attrs(node.attrs, where=f"%{node.name}")
        missing = [k for k in completed if k not in node.attrs]
        wrong = [k for k in node.attrs if not attr_equal(completed[k], node.attrs[k])]
        if missing:
            attrs_ok = False
            rep.node(node, f"attributes {', '.join(missing)} not filled in (build nodes with "
                           f"Graph.make_node or complete them with OpDef.complete_attrs)")
        if wrong:
            attrs_ok = False
            rep.node(node, f"attributes {', '.join(wrong)} are not in normal form "
                           f"(expected {', '.join(f'{k}={completed[k]!r}' for k in wrong)})")
    except OpError as exc:
        attrs_ok = False
        rep.node(node, str(exc).removeprefix(f"%{node.name}: "))
    for out in node.outputs:
        _check_quant_of("output", out, lambda what, v, m: rep.node(node, f"output %{v.name}: {m}"))
    if node.op == "quantize":
        _check_quantize(node, rep)
    if not attrs_ok:
        return  # inference needs valid attributes
    in_types = [None if v is None else v.type for v in node.inputs]
    try:
        expected = opdef.infer(in_types, dict(node.attrs))
    except OpError as exc:
        rep.node(node, f"type inference rejects the inputs: {exc}")
        return
    except Exception as exc:  # an inference function tripping over bad input types
        rep.node(node, f"type inference failed: {type(exc).__name__}: {exc}")
        return
    if len(expected) != len(node.outputs):
        rep.node(node, f"{len(node.outputs)} outputs, but {opdef.name} produces {len(expected)}")
        return
    for out, want in zip(node.outputs, expected):
        if out.type != want:
            rep.node(node, f"output %{out.name} has type {print_type(out.type)}, but inference "
                           f"gives {print_type(want)}")


def _check_quantize(node: Node, rep: _Report) -> None:
    """quantize's result is an integer of exactly its QuantParams' storage type."""
    for out in node.outputs:
        if out.quant is None:
            rep.node(node, f"output %{out.name} has no quantization parameters")
        dtype_attr = node.attrs.get("dtype")
        if isinstance(dtype_attr, str) and dtype_attr != out.dtype:
            rep.node(node, f"attribute dtype={dtype_attr!r} but output %{out.name} is {out.dtype}")


# ---- quantization and constants -------------------------------------------------------------
def _check_quant_of(what: str, v: Value, report) -> None:
    q: Optional[QuantParams] = v.quant
    if q is None:
        return
    if not isinstance(q, QuantParams):
        report(what, v, f"quant is {type(q).__name__}, not QuantParams")
        return
    msgs = list(q.problems())
    rank = v.type.rank
    if q.axis is not None:
        if not -rank <= q.axis < rank:
            msgs.append(f"per-channel axis {q.axis} out of range for rank {rank}")
        else:
            channels = v.type.shape[q.axis]
            if channels is not None and len(q.scale) != channels:
                msgs.append(f"{len(q.scale)} scales for {channels} channels along axis {q.axis}")
    if is_int(v.dtype) and v.dtype != "i64":
        if int_bits(v.dtype) != q.bits or is_signed(v.dtype) != q.signed:
            msgs.append(f"{print_quant(q)} does not match the value's dtype {v.dtype}")
    elif v.dtype in ("bool", "i64"):
        msgs.append(f"{v.dtype} values cannot carry quantization parameters")
    for m in msgs:
        report(what, v, m)


def _check_constant(v: Value, rep: _Report) -> None:
    if not v.type.is_static:
        rep.value("constant", v, f"has dynamic type {print_type(v.type)}")
    if v.data is None:
        if v.data_hash is None:
            rep.value("constant", v, "has neither data nor a data hash")
        return
    if not isinstance(v.data, np.ndarray):
        rep.value("constant", v, f"data is a {type(v.data).__name__}, not a numpy array")
        return
    if v.type.is_static and tuple(v.data.shape) != v.type.shape:
        rep.value("constant", v, f"data shape {v.data.shape} does not match {print_type(v.type)}")
    if v.data.dtype != numpy_dtype(v.dtype):
        rep.value("constant", v, f"data dtype {v.data.dtype} does not hold {v.dtype} "
                                 f"(expected {numpy_dtype(v.dtype)})")
    elif is_int(v.dtype) and v.data.size and v.dtype != "i64":
        # Narrow integers (i4, u6...) live in a wider numpy type; their values must still fit.
        lo, hi = int_range(int_bits(v.dtype), is_signed(v.dtype))
        if v.data.min() < lo or v.data.max() > hi:
            rep.value("constant", v, f"data range [{v.data.min()}, {v.data.max()}] does not fit "
                                     f"{v.dtype} [{lo}, {hi}]")


__all__ = ["verify", "collect_problems"]
