"""Canonical forms both front ends agree on, so a model imported from PyTorch and from its ONNX
export gives the same graph. Exporters spell a fully-connected layer several ways (`Gemm`,
`MatMul` + `Add`, `addmm`, `linear`); all of them end up as one `linear` node with its bias.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..ir.graph import Graph, Node, Value


def canonicalize_graph(graph: Graph) -> bool:
    """Rewrite to canonical forms in place; True if anything changed."""
    changed = False
    for node in list(graph.nodes):
        if node.graph is not graph:
            continue  # erased by an earlier rewrite in this sweep
        if node.op == "matmul":
            changed |= _matmul_to_linear(graph, node)
        elif node.op == "add":
            changed |= _fuse_linear_bias(graph, node)
    return changed


def _matmul_to_linear(graph: Graph, node: Node) -> bool:
    """matmul(x, W) with a constant 2-D W (in, out) is linear(x, W.T)."""
    a, b = node.inputs
    if b is None or b.data is None or b.type.rank != 2 or a.is_constant or b.quant is not None:
        return False
    weight = graph.add_constant(b.name + ".T", np.ascontiguousarray(b.data.T))
    _replace(graph, node, "linear", [a, weight])
    return True


def _bias_of(value: Value, out_features: int) -> Optional[np.ndarray]:
    if value.data is None or value.data.size != out_features:
        return None
    if value.type.rank >= 1 and all(d == 1 for d in value.shape[:-1]):
        return value.data.reshape(out_features)
    return None


def _fuse_linear_bias(graph: Graph, node: Node) -> bool:
    """add(linear(x, W), b) with a constant b along the output features is linear(x, W, b)."""
    for mm_side in (0, 1):
        y, b = node.inputs[mm_side], node.inputs[1 - mm_side]
        lin = y.producer if y is not None else None
        if lin is None or lin.op != "linear" or lin.input(2) is not None:
            continue
        if len(y.users) != 1 or y in graph.outputs or y.quant is not None:
            continue
        out_features = lin.inputs[1].shape[0]
        bias = _bias_of(b, out_features) if b is not None else None
        if bias is None or b.quant is not None:
            continue
        if node.output.type != y.type:  # the add must not broadcast the result any wider
            continue
        bias_value = b if b.type.shape == (out_features,) else \
            graph.add_constant(b.name, bias.astype(b.data.dtype))
        _replace(graph, node, "linear", [lin.inputs[0], lin.inputs[1], bias_value], loc=lin.loc)
        graph.erase(lin)
        return True
    return False


def _replace(graph: Graph, old: Node, op: str, inputs: list, loc: str = "") -> Node:
    """Replace `old` by a new `op` node whose output keeps `old`'s output name and quant."""
    name = old.output.name
    new = graph.make_node(op, inputs, name=name, loc=loc or old.loc)
    new.output.quant = old.output.quant
    graph.replace_node(old, new)
    graph.rename(new.output, name)
    return new
