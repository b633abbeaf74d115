"""The interpreter loop (a JAX-style walk over nodes with an environment of arrays)."""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import InterpError
from ..ir.graph import Graph, Node, Value
from ..ir.ops import registry
from ..ir.types import QuantParams, numpy_dtype

MODES = ("float", "fakequant", "int")
FALLBACK = {"fakequant": "float"}

Inputs = Union[Mapping[str, np.ndarray], Sequence[np.ndarray], np.ndarray]


def fake_quantize(x: np.ndarray, q: QuantParams) -> np.ndarray:
    """Quantize (ties to even, as the `quantize` op) then dequantize: the simulation of a value
    carrying QuantParams. Uses the same definitions as the quantize/dequantize kernels."""
    from ..ir.ops.defs.quant import dequantize_array
    from ..quant.intmath import quantize_float
    qx = quantize_float(x, q.scale_array(x.ndim).astype(np.float32), q.zero_point_array(x.ndim),
                        q.qmin, q.qmax, "half_even")
    return dequantize_array(qx, q).astype(x.dtype)


class Interpreter:
    """Runs `graph` in `mode`. `observer(node, outputs)` is called after each node (calibration
    and per-layer error analysis hook in here); `keep_all=True` keeps every intermediate."""

    def __init__(self, graph: Graph, mode: str = "float",
                 observer: Optional[Callable[[Node, list], None]] = None, keep_all: bool = False):
        if mode not in MODES:
            raise InterpError(f"unknown interpreter mode {mode!r}; expected one of {', '.join(MODES)}")
        self.graph, self.mode, self.observer, self.keep_all = graph, mode, observer, keep_all
        self._float_islands = set(graph.meta.get("integer", {}).get("float_islands", ()))
        self._plan = [(n, self._kernel_for(n), self._extra_kwargs(n)) for n in graph.nodes]
        self._last_use = self._last_uses()
        self._steps = self._compile_steps()

    def _kernel_for(self, node: Node) -> Callable:
        opdef = registry.get(node.op)
        mode = self.mode
        if mode == "int" and node.name in self._float_islands:
            mode = "float"  # kept float on purpose by lower-integer{float_islands=true}
        while mode is not None:
            if mode in opdef.kernels:
                return opdef.kernels[mode]
            mode = FALLBACK.get(mode)
        raise InterpError(f"node {node.name} ({node.op}) has no {self.mode!r} kernel"
                          + (" (a float op left in an integer graph)" if self.mode == "int" else ""))

    @staticmethod
    def _extra_kwargs(node: Node) -> dict:
        """Ops with the "quant_aware" trait (quantize, dequantize, integer ops) also receive the
        QuantParams of their inputs and outputs, so the IR holds each fact once: on the value."""
        if "quant_aware" not in registry.get(node.op).traits:
            return node.attrs
        return {**node.attrs,
                "in_quant": [None if v is None else v.quant for v in node.inputs],
                "out_quant": [v.quant for v in node.outputs]}

    def _last_uses(self) -> dict[int, int]:
        last: dict[int, int] = {}
        for i, n in enumerate(self.graph.nodes):
            for v in n.inputs:
                if v is not None:
                    last[id(v)] = i
        return last

    def _compile_steps(self) -> list[tuple]:
        """The plan with value ids resolved once, so a run does no per-node bookkeeping beyond
        looking arrays up: (node, kernel, kwargs, input ids, output ids, ids freed after)."""
        keep = {id(v) for v in self.graph.outputs}
        steps = []
        for i, (node, kernel, kwargs) in enumerate(self._plan):
            in_ids = tuple(None if v is None else id(v) for v in node.inputs)
            out_ids = tuple(id(v) for v in node.outputs)
            free = () if self.keep_all else tuple(dict.fromkeys(
                id(v) for v in node.inputs
                if v is not None and self._last_use.get(id(v)) == i and id(v) not in keep
                and v.producer is not None))
            steps.append((node, kernel, kwargs, in_ids, out_ids, free))
        return steps

    def _bind_inputs(self, inputs: Inputs) -> dict[int, np.ndarray]:
        g = self.graph
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if isinstance(inputs, Mapping):
            missing = [v.name for v in g.inputs if v.name not in inputs]
            extra = [k for k in inputs if k not in {v.name for v in g.inputs}]
            if missing or extra:
                raise InterpError(f"graph @{g.name} takes inputs {[v.name for v in g.inputs]}; "
                                  f"missing {missing}, unexpected {extra}")
            arrays = [inputs[v.name] for v in g.inputs]
        else:
            arrays = list(inputs)
            if len(arrays) != len(g.inputs):
                raise InterpError(f"graph @{g.name} takes {len(g.inputs)} inputs "
                                  f"({', '.join('%' + v.name for v in g.inputs)}), got {len(arrays)}")
        env = {}
        for v, a in zip(g.inputs, arrays):
            a = np.asarray(a)
            shape = v.type.shape
            if len(a.shape) != len(shape) or any(d is not None and d != s for d, s in zip(shape, a.shape)):
                raise InterpError(f"input %{v.name}: expected shape {_fmt_shape(shape)}, got {a.shape}")
            want = numpy_dtype(v.type.dtype)
            if a.dtype != want:
                if np.issubdtype(want, np.floating) and np.issubdtype(a.dtype, np.number):
                    a = a.astype(want)
                else:
                    raise InterpError(f"input %{v.name}: expected dtype {v.type.dtype}, got {a.dtype}")
            if self.mode == "fakequant" and v.quant is not None:
                a = fake_quantize(a, v.quant)
            env[id(v)] = a
        return env

    def _constant(self, v: Value) -> np.ndarray:
        if v.data is None:
            raise InterpError(f"constant %{v.name} has no data (parsed from a summary dump; "
                              f"dump with full=True to keep weights)")
        if self.mode == "fakequant" and v.quant is not None and np.issubdtype(v.data.dtype, np.floating):
            return fake_quantize(v.data, v.quant)
        return v.data

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        env = self._bind_inputs(inputs)
        for v in self.graph.constants.values():
            env[id(v)] = self._constant(v)
        self.values: dict[str, np.ndarray] = {}
        fakequant, keep_all, observer = self.mode == "fakequant", self.keep_all, self.observer
        for node, kernel, kwargs, in_ids, out_ids, free in self._steps:
            args = [None if k is None else env[k] for k in in_ids]
            try:
                result = kernel(*args, **kwargs)
            except InterpError:
                raise
            except Exception as exc:  # name the node; the numpy traceback alone says nothing
                raise InterpError(f"node {node.name} ({node.op}) at {node.loc or '?'} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
            outs = list(result) if isinstance(result, (tuple, list)) else [result]
            if fakequant:
                outs = [o if v.quant is None or not np.issubdtype(np.asarray(o).dtype, np.floating)
                        else fake_quantize(np.asarray(o), v.quant) for o, v in zip(outs, node.outputs)]
            for k, o in zip(out_ids, outs):
                env[k] = o
            if keep_all:
                for v, o in zip(node.outputs, outs):
                    self.values[v.name] = o
            if observer is not None:
                observer(node, outs)
            for k in free:
                env.pop(k, None)
        return [env[id(v)] for v in self.graph.outputs]


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def run(graph: Graph, inputs: Inputs, mode: str = "float") -> list[np.ndarray]:
    """Run `graph` once; returns the outputs as a list of arrays."""
    return Interpreter(graph, mode).run(inputs)
