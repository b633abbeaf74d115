"""Structural comparison of two graphs: same ops in the same order, same attributes, types,
quantization, wiring, locations and constant data. Used to check that text round-trips and
that a pass left a graph alone.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .graph import Graph, Value


def attr_equal(a: Any, b: Any) -> bool:
    """Attribute equality where nan equals nan and lists equal tuples (a parsed `[1, 2]`)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(attr_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def data_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if np.issubdtype(a.dtype, np.floating):
        # nan payloads do not survive text; signed zeros do, and must match.
        return bool(np.array_equal(a, b, equal_nan=True)
                    and np.array_equal(np.signbit(a) | np.isnan(a), np.signbit(b) | np.isnan(b)))
    return bool(np.array_equal(a, b))


def _constant_diff(a: Value, b: Value) -> Optional[str]:
    from .printer import summary_of
    if a.data is not None and b.data is not None:
        return None if data_equal(a.data, b.data) else "data differs"
    # At least one side is a parsed summary: compare fingerprints.
    fa, fb = summary_of(a), summary_of(b)
    return None if fa == fb else f"fingerprint {fa} vs {fb}"


def structural_diff(a: Graph, b: Graph, names: bool = True) -> Optional[str]:
    """The first difference between `a` and `b` as a sentence, or None if they are equal.
    With `names=False` value names are ignored and values are matched by position."""
    if names and a.name != b.name:
        return f"graph names @{a.name} vs @{b.name}"
    pairs: dict[int, int] = {}   # id(value in a) -> id(value in b)

    def same_value(va: Value, vb: Value, what: str) -> Optional[str]:
        if names and va.name != vb.name:
            return f"{what}: names %{va.name} vs %{vb.name}"
        if va.type != vb.type:
            return f"{what} %{va.name}: type {va.type} vs {vb.type}"
        if va.quant != vb.quant:
            return f"{what} %{va.name}: quant {va.quant} vs {vb.quant}"
        pairs[id(va)] = id(vb)
        return None

    if len(a.inputs) != len(b.inputs):
        return f"{len(a.inputs)} vs {len(b.inputs)} graph inputs"
    for va, vb in zip(a.inputs, b.inputs):
        if (d := same_value(va, vb, "input")):
            return d
    ca, cb = list(a.constants.values()), list(b.constants.values())
    if len(ca) != len(cb):
        return f"{len(ca)} vs {len(cb)} constants"
    for va, vb in zip(ca, cb):
        if (d := same_value(va, vb, "constant")) or (d := _constant_diff(va, vb)):
            return f"constant %{va.name}: {d}" if not d.startswith("constant") else d
    if len(a.nodes) != len(b.nodes):
        return f"{len(a.nodes)} vs {len(b.nodes)} nodes"
    for i, (na, nb) in enumerate(zip(a.nodes, b.nodes)):
        where = f"node {i} (%{na.name})"
        if na.op != nb.op:
            return f"{where}: op {na.op} vs {nb.op}"
        if set(na.attrs) != set(nb.attrs) or not all(attr_equal(na.attrs[k], nb.attrs[k])
                                                     for k in na.attrs):
            return f"{where}: attrs {na.attrs} vs {nb.attrs}"
        if na.loc != nb.loc:
            return f"{where}: loc {na.loc!r} vs {nb.loc!r}"
        if len(na.inputs) != len(nb.inputs):
            return f"{where}: {len(na.inputs)} vs {len(nb.inputs)} inputs"
        for j, (ia, ib) in enumerate(zip(na.inputs, nb.inputs)):
            if (ia is None) != (ib is None) or (ia is not None and pairs.get(id(ia)) != id(ib)):
                return f"{where}: input {j} is wired differently"
        if len(na.outputs) != len(nb.outputs):
            return f"{where}: {len(na.outputs)} vs {len(nb.outputs)} outputs"
        for oa, ob in zip(na.outputs, nb.outputs):
            if (d := same_value(oa, ob, f"{where} output")):
                return d
    if len(a.outputs) != len(b.outputs) or any(
            pairs.get(id(x)) != id(y) for x, y in zip(a.outputs, b.outputs)):
        return "graph outputs differ"
    return None


def structurally_equal(a: Graph, b: Graph, names: bool = True) -> bool:
    return structural_diff(a, b, names=names) is None


__all__ = ["structural_diff", "structurally_equal", "attr_equal", "data_equal"]
