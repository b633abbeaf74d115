"""What both importers share: a graph builder that folds constants as it goes, and the error
bookkeeping that turns every unsupported operator of a model into one `FrontendError`.

Importers see three kinds of operand while they walk a model:

* an IR `Value` (something computed at run time),
* a `Const` (a tensor known at import time: weights, and everything computed from them and
  from static shapes, e.g. ONNX `Shape -> Gather -> Concat` chains or `permute(weight)`),
* `MISSING`, the output of a node that could not be imported; nodes fed by it are skipped so
  that one pass over the model finds every unsupported operator.

A `Const` only becomes a graph constant when a run-time node consumes it, so the shape chains
and weight re-layouts a model carries around leave no trace in the imported graph.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..errors import FrontendError, QCompileError
from ..ir.graph import Graph, Value
from ..ir.ops import registry
from ..ir.types import QuantParams, dtype_from_numpy

# Ops that only move data: folding them keeps the constant's name (`fc.weight` stays `fc.weight`
# after the exporter transposed it) and, where the channel axis can be followed, its QuantParams.
_LAYOUT_OPS = {"reshape", "flatten", "transpose", "squeeze", "unsqueeze", "expand", "slice",
               "identity", "cast"}


class Const:
    """A tensor known at import time. `quant` carries QuantParams a pre-quantized model gave it."""

    __slots__ = ("name", "array", "quant", "value")

    def __init__(self, name: str, array: Any, quant: Optional[QuantParams] = None):
        self.name = name
        self.array = np.asarray(array)
        self.quant = quant
        self.value: Optional[Value] = None  # the graph constant, once something needs it

    def __repr__(self) -> str:
        return f"Const({self.name}, {self.array.shape}, {self.array.dtype})"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()

Operand = Union[Value, Const, _Missing, None]


class Unsupported(Exception):
    """Raised by an op handler: this node cannot be imported (collected, reported together)."""

    def __init__(self, reason: str = ""):
        super().__init__(reason)
        self.reason = reason


class GraphBuilder:
    """Builds a `Graph`, folding nodes whose inputs are all constants with the registry kernels."""

    def __init__(self, graph: Graph, source: str):
        self.graph = graph
        self.source = source  # "ONNX model foo.onnx" / "PyTorch program": used in messages
        self.unsupported: dict[str, list[str]] = {}  # op type -> ["node (loc): reason", ...]
        self.loc = ""  # location of the source node being imported (set by the importer)
        self.node_name = ""

    # ---- operands ------------------------------------------------------------------------
    def value(self, x: Operand) -> Optional[Value]:
        """The IR value for an operand, materialising a `Const` as a graph constant once."""
        if x is None or isinstance(x, Value):
            return x
        if isinstance(x, Const):
            if x.value is None:
                arr = x.array
                if arr.dtype == np.float64:
                    arr = arr.astype(np.float32)
                if arr.dtype == np.int32 and x.quant is None:
                    arr = arr.astype(np.int64)
                x.value = self.graph.add_constant(_clean_name(x.name), arr, quant=x.quant)
            return x.value
        raise AssertionError(f"cannot use {x!r} as a graph value")

    # ---- nodes ---------------------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[Operand], attrs: Optional[dict] = None,
             name: str = "", fold: bool = True) -> Union[Value, Const, list]:
        """Add `op` to the graph, or fold it when every (present) input is a `Const`.

        Returns the single output (or the list of outputs) as IR values or constants."""
        name = name or self.node_name or op
        present = [i for i in inputs if i is not None]
        if fold and present and all(isinstance(i, Const) for i in present):
            folded = self._fold(op, inputs, attrs or {}, name)
            if folded is not None:
                return folded
        try:
            node = self.graph.add_node(op, [self.value(i) for i in inputs], attrs or {},
                                       name=_clean_name(name), loc=self.loc)
        except QCompileError as exc:
            raise FrontendError(f"{self.source}: node {self.node_name or name} "
                                f"({self.loc or 'no location'}) cannot become '{op}': {exc}") from exc
        return node.outputs[0] if len(node.outputs) == 1 else list(node.outputs)

    def _fold(self, op: str, inputs: Sequence[Operand], attrs: dict, name: str):
        opdef = registry.get(op)
        kernel = opdef.kernels.get("float")
        if kernel is None or "quant_aware" in opdef.traits:
            return None
        attrs = opdef.complete_attrs(attrs, where=name)
        arrays = [None if i is None else i.array for i in inputs]
        try:
            result = kernel(*arrays, **attrs)
        except Exception:  # let the node be built instead; inference will report real faults
            return None
        first = next(i for i in inputs if i is not None)
        if op in _LAYOUT_OPS:
            quant = _follow_quant(first.quant, op, first.array.shape, attrs, name)
            return Const(first.name, result, quant)
        if any(isinstance(i, Const) and i.quant is not None for i in inputs):
            raise FrontendError(f"{self.source}: node {name} computes on quantized constant "
                                f"%{first.name} at import time; its quantization cannot be kept")
        if isinstance(result, (tuple, list)):
            return [Const(f"{name}.{k}" if k else name, r) for k, r in enumerate(result)]
        return Const(name, result)

    # ---- error bookkeeping ------------------------------------------------------------------
    def mark_unsupported(self, op_type: str, node_name: str, loc: str, reason: str = "") -> None:
        entry = f"{node_name}" + (f" at {loc}" if loc and loc != node_name else "")
        if reason:
            entry += f" ({reason})"
        self.unsupported.setdefault(op_type, []).append(entry)

    def raise_if_unsupported(self) -> None:
        if not self.unsupported:
            return
        lines = [f"{self.source}: {sum(map(len, self.unsupported.values()))} node(s) use "
                 f"operators qcompile cannot import ({', '.join(sorted(self.unsupported))}):"]
        for op_type in sorted(self.unsupported):
            for entry in self.unsupported[op_type]:
                lines.append(f"  {op_type}: {entry}")
        raise FrontendError("\n".join(lines))


def _follow_quant(quant: Optional[QuantParams], op: str, in_shape: tuple, attrs: dict,
                  name: str) -> Optional[QuantParams]:
    """QuantParams of a constant after a layout op: per-tensor params pass; a per-channel axis
    follows a transpose, and survives other layout ops that leave that dimension in place."""
    if quant is None or quant.axis is None:
        return quant
    axis = quant.axis % len(in_shape)
    if op == "transpose":
        perm = list(attrs["perm"])
        return _with_axis(quant, perm.index(axis))
    if op in ("identity", "cast"):
        return quant
    if op == "unsqueeze" and all(a % (len(in_shape) + len(attrs["axes"])) > axis
                                 for a in attrs["axes"]):
        return quant
    raise FrontendError(f"node {name}: '{op}' on a per-channel quantized constant cannot keep "
                        f"its channel axis {axis}")


def _with_axis(q: QuantParams, axis: int) -> QuantParams:
    return QuantParams(q.scale, q.zero_point, q.bits, q.signed, axis, q.pow2)


def _clean_name(name: str) -> str:
    """IR value names from model names: keep them recognisable, drop characters that need quoting."""
    out = "".join(c if c.isalnum() or c in "_.$:/-" else "_" for c in name)
    return out or "v"


def float_type_of(x: Operand) -> str:
    """The dtype a scalar operand should take to combine with `x`."""
    if isinstance(x, Value):
        return x.dtype
    if isinstance(x, Const):
        try:
            return dtype_from_numpy(x.array.dtype)
        except ValueError:
            return "f32"
    return "f32"


def transposed(c: Const) -> Const:
    """A 2-D constant transposed (an exporter's (in, out) weight back to (out, in)), keeping its
    name and, with the channel axis swapped, its QuantParams."""
    quant = c.quant
    if quant is not None and quant.axis is not None:
        quant = _with_axis(quant, 1 - quant.axis % 2)
    return Const(c.name, np.ascontiguousarray(c.array.T), quant)


def handler_table() -> tuple[dict, Callable]:
    """A front end's op-handler table and the decorator that fills it:
    `@register("Relu", "LeakyRelu") def _(importer, node, *inputs): ...`."""
    table: dict[str, Callable] = {}

    def register(*names: str):
        def deco(fn):
            for n in names:
                table[n] = fn
            return fn
        return deco

    return table, register
