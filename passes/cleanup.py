"""Clean-up passes every pipeline leans on: dead-code elimination, constant folding and removal
of no-op nodes. Each keeps the graph's float semantics exactly (the interpreter gives the same
outputs, bit for bit, before and after) and the names of the graph's inputs and outputs.

They feed each other (folding leaves dead constants, removing a no-op can make a reshape chain
foldable), so pipelines usually run them as `fixpoint(fold-constants,remove-identity,dce)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from qcompile.ir.graph import Graph, Node, Value
from qcompile.ir.ops import registry
from qcompile.passmanager import Pass, PassContext, register_pass


# ---- dce --------------------------------------------------------------------------------------
def _dead(node: Node, outputs: set) -> bool:
    return all(not v.users and id(v) not in outputs for v in node.outputs)


@register_pass("dce")
def dce(graph: Graph, ctx: PassContext) -> bool:
    """Remove nodes whose results are never used, then constants nothing reads."""
    outputs = {id(v) for v in graph.outputs}
    changed = False
    # Walking backwards erases a whole dead chain in one sweep: users die before producers.
    for node in reversed(list(graph.nodes)):
        if _dead(node, outputs):
            graph.erase(node)
            changed = True
    for value in list(graph.constants.values()):
        if not value.users and id(value) not in outputs:
            graph.remove_constant(value)
            changed = True
    return changed


# ---- fold-constants ---------------------------------------------------------------------------
@register_pass("fold-constants")
@dataclass(frozen=True)
class FoldConstants(Pass):
    """Replace nodes whose inputs are all constants by constants holding their float result."""

    max_elements: int = 1 << 20

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        changed = False
        for node in list(graph.nodes):
            kernel = self._foldable(node)
            if kernel is None:
                continue
            arrays = [None if v is None else v.data for v in node.inputs]
            try:
                result = kernel(*arrays, **node.attrs)
            except Exception as exc:  # leave it for the interpreter to report at run time
                ctx.warn(f"not folded: {node.op} failed on its constant inputs "
                         f"({type(exc).__name__}: {exc})", node)
                continue
            results = list(result) if isinstance(result, (tuple, list)) else [result]
            if not self._fits(node, results, ctx):
                continue
            consts = []
            for out, data in zip(node.outputs, results):
                const = graph.add_constant(out.name + ".folded", np.asarray(data),
                                           dtype=out.type.dtype)
                graph.replace_all_uses(out, const)
                consts.append((out.name, const))
            graph.erase(node)
            for name, const in consts:  # the constant takes over the name erase() freed
                graph.rename(const, name)
            changed = True
        return changed

    def _foldable(self, node: Node) -> Optional[Callable]:
        opdef = registry.get(node.op)
        inputs = [v for v in node.inputs if v is not None]
        if not inputs or "quant_aware" in opdef.traits or "float" not in opdef.kernels:
            return None
        # Values with QuantParams are simulated differently in fake-quant mode; folding would
        # bake in the float result and change that simulation.
        if any(v.data is None or v.quant is not None for v in inputs):
            return None
        if any(v.quant is not None for v in node.outputs):
            return None
        for out in node.outputs:
            if not out.type.is_static or out.type.numel > self.max_elements:
                return None
        return opdef.kernels["float"]

    @staticmethod
    def _fits(node: Node, results: list, ctx: PassContext) -> bool:
        if len(results) != len(node.outputs):
            ctx.warn(f"not folded: kernel returned {len(results)} results for "
                     f"{len(node.outputs)} outputs", node)
            return False
        for out, data in zip(node.outputs, results):
            if tuple(np.shape(data)) != out.type.shape:
                ctx.warn(f"not folded: kernel result shape {np.shape(data)} differs from the "
                         f"inferred type {out.type.shape} of %{out.name}", node)
                return False
        return True


# ---- remove-identity --------------------------------------------------------------------------
def _same_type(node: Node) -> bool:
    x, y = node.inputs[0], node.outputs[0]
    return x.type.is_static and x.type == y.type


def _all_equal(value: Optional[Value], scalar: float, negative_zero: Optional[bool] = None) -> bool:
    """`value` is a plain constant equal to `scalar` everywhere. For float zeros the sign
    matters: IEEE gives -0.0 + 0.0 = +0.0, so x + (+0.0) is not x, while x + (-0.0) and
    x - (+0.0) are; `negative_zero` says which sign the zeros must have."""
    if value is None or value.data is None or value.quant is not None:
        return False
    data = value.data
    if not bool(np.all(data == scalar)):
        return False
    if negative_zero is None or not np.issubdtype(data.dtype, np.floating):
        return True
    return bool(np.all(np.signbit(data) == negative_zero))


def _binary_noop(neutral: float, commutative: bool,
                 negative_zero: Optional[bool] = None) -> Callable[[Node], Optional[int]]:
    """x + 0, x - 0, x * 1, x / 1: which input passes through, if the other is all `neutral`
    and broadcasting it leaves the passing input's type unchanged."""
    def rule(node: Node) -> Optional[int]:
        a, b = node.inputs[0], node.inputs[1]
        y = node.outputs[0]
        if _all_equal(b, neutral, negative_zero) and a.type == y.type and a.type.is_static:
            return 0
        if commutative and _all_equal(a, neutral, negative_zero) and b.type == y.type \
                and b.type.is_static:
            return 1
        return None
    return rule


def _unary(pred: Callable[[Node], bool]) -> Callable[[Node], Optional[int]]:
    return lambda node: 0 if pred(node) else None


# op -> rule(node) -> index of the input the node's single output equals, or None.
NOOP_RULES: dict[str, Callable[[Node], Optional[int]]] = {
    "identity": _unary(lambda n: True),
    "dropout": _unary(lambda n: True),
    # order-preserving reshapes whose result type equals the input type
    "reshape": _unary(_same_type),
    "flatten": _unary(_same_type),
    "squeeze": _unary(_same_type),
    "unsqueeze": _unary(_same_type),
    "expand": _unary(_same_type),
    "cast": _unary(_same_type),
    "transpose": _unary(lambda n: tuple(n.attrs["perm"]) == tuple(range(n.inputs[0].type.rank))),
    "slice": _unary(lambda n: _same_type(n) and all(s == 1 for s in n.attrs.get("steps", ()))),
    "pad": _unary(lambda n: _same_type(n) and not any(n.attrs.get("pads", ()))),
    "add": _binary_noop(0.0, commutative=True, negative_zero=True),
    "sub": _binary_noop(0.0, commutative=False, negative_zero=False),
    "mul": _binary_noop(1.0, commutative=True),
    "div": _binary_noop(1.0, commutative=False),
}


@register_pass("remove-identity")
def remove_identity(graph: Graph, ctx: PassContext) -> bool:
    """Remove no-op nodes: identity/dropout, same-shape reshapes, identity transposes, x*1, x+(-0)."""
    changed = False
    for node in list(graph.nodes):
        rule = NOOP_RULES.get(node.op)
        if rule is None or len(node.outputs) != 1 or not node.inputs or node.inputs[0] is None:
            continue
        index = rule(node)
        if index is None:
            continue
        source, out = node.inputs[index], node.outputs[0]
        if source.quant != out.quant or source.type != out.type:
            continue  # dropping the node would drop a type change or a quantization point
        if _bypass(graph, node, source, out):
            changed = True
    return changed


def _bypass(graph: Graph, node: Node, source: Value, out: Value) -> bool:
    """Route `out`'s users to `source` and erase `node`. A graph output keeps its name: `source`
    takes it over, which is only possible for an intermediate value that is not itself an output
    (renaming a graph input or reusing an output twice would change the graph's interface)."""
    is_output = any(v is out for v in graph.outputs)
    if is_output and (source.producer is None or any(v is source for v in graph.outputs)):
        return False
    name = out.name
    graph.replace_all_uses(out, source)
    graph.erase(node)
    if is_output:
        graph.rename(source, name)
    return True
