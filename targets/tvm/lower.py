"""From an integer graph to a Relax IRModule: one TIR kernel per op (or fused MAC + requantize).

`lower_graph(graph, batch, cpu_schedules)` walks the graph in order and, for each node, builds a
TE computation that does exactly what the node's "int" kernel does (the integer formulas live
in `arith.py`), turns it into a TIR PrimFunc, optionally schedules it for the CPU
(`schedules.py`), and calls it from the Relax function `main` with `relax.call_tir`.

Weights and per-channel constants are not baked into the code: they become trailing parameters
of `main` (in `params` order), so the compiled library is small and the weights travel in a
separate file. Constants are rewritten at build time where that makes the kernel cheaper and
stays exact, e.g. a convolution computes `sum x*(w - zw) + (bias - zx * sum(w - zw))`: in
two's complement int32 arithmetic this equals the centred sum modulo 2**32, and the code only
takes the int32 path when the compile-time bound proves no intermediate leaves int32.

Float ops are allowed between a dequantize and a quantize (a "float island" of a target with
`float_islands = true`); they use Relax's own operators and are not bit-exact with numpy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

import tvm
from tvm import relax, te
from tvm import tirx as tir

from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph, Node, Value
from qcompile.ir.ops import registry
from qcompile.ir.types import TensorType, is_float, is_int, numpy_dtype

from . import arith
from .arith import I64


class TVMBackendError(QCompileError):
    """The graph cannot become a TVM module (an op without a lowering, a shape or parameter
    the kernels do not take), or TVM refused a target or failed to build."""


def tvm_dtype(dtype: str) -> str:
    """The TVM storage dtype of an IR dtype (narrow integers live in the next wider type)."""
    return numpy_dtype(dtype).name


# ---------------------------------------------------------------------------------- shapes

def static_shapes(graph: Graph, batch: int) -> dict[str, tuple]:
    """Every value's shape with dynamic input dimensions set to `batch`, re-inferred through
    the op registry (the compiled module has static shapes)."""
    types: dict[str, TensorType] = {}
    for v in graph.inputs:
        types[v.name] = TensorType(tuple(batch if d is None else d for d in v.shape), v.dtype)
    for v in graph.constants.values():
        types[v.name] = v.type
    for n in graph.nodes:
        ins = [None if i is None else types[i.name] for i in n.inputs]
        outs = registry.get(n.op).infer(ins, n.attrs)
        for v, t in zip(n.outputs, outs):
            types[v.name] = t
    bad = [k for k, t in types.items() if not t.is_static]
    if bad:
        raise TVMBackendError(f"value %{bad[0]} has a dynamic shape {types[bad[0]].shape}; "
                              f"the TVM backend needs static shapes apart from the batch")
    return {k: tuple(t.shape) for k, t in types.items()}


# ---------------------------------------------------------------------------------- kernels

@dataclass
class Kernel:
    """One TIR kernel being built: its TE inputs and the Relax arguments they bind to."""

    lowering: "Lowering"
    name: str
    args: list = field(default_factory=list)         # relax expressions, call order
    placeholders: list = field(default_factory=list)  # matching te placeholders
    # (te placeholder, tir buffer) pairs while a hand-written (te.extern) body is being built:
    # inside such a body a table is read from its buffer, not through the placeholder
    bound: list = field(default_factory=list)

    def input(self, expr, shape, dtype: str, name: str = "x") -> te.Tensor:
        ph = te.placeholder(tuple(int(d) for d in shape), dtype, name=name)
        self.args.append(expr)
        self.placeholders.append(ph)
        return ph

    def value(self, v: Value, name: str = "x") -> te.Tensor:
        return self.input(self.lowering.expr(v), self.lowering.shape(v), tvm_dtype(v.dtype), name)

    def table(self, what: str, values, dtype: str = "int64"):
        """Per-channel constants: a Python int when they are all equal (folded into the code),
        else a 1-D parameter tensor the kernel indexes by channel."""
        arr = np.asarray(values, dtype=np.int64).reshape(-1)
        if arr.size and (arr == arr[0]).all():
            return int(arr[0])
        var = self.lowering.param(f"{self.name}.{what}", arr.astype(dtype))
        return self.input(var, arr.shape, dtype, name=what.replace(".", "_"))

    def read(self, table, idx, dtype: str = I64):
        """A table entry (or the folded constant) as `dtype`: through the table's placeholder
        in a TE compute, through its bound buffer inside an extern body (see `bound`)."""
        if isinstance(table, int):
            return tir.const(table, dtype) if dtype != I64 else table
        for ph, buf in self.bound:
            if ph.same_as(table):
                return arith.as_type(tir.BufferLoad(buf, [idx]), dtype)
        return table(idx).astype(dtype)

    def finish(self, out: te.Tensor, kind: str = "elementwise", info: Optional[dict] = None,
               scheduled: bool = False):
        """Make the PrimFunc, schedule it, and call it from main; returns the Relax value.
        `scheduled`: the kernel already binds its own loops (the CUDA dp4a kernels), so no
        scheduler touches it, and it says so to dlight (TVM 0.27 reads "tirx.is_scheduled")."""
        low = self.lowering
        func = te.create_prim_func([*self.placeholders, out])
        if scheduled:
            func = func.with_attr("tirx.is_scheduled", True)
        elif low.schedule is not None:
            func = low.schedule(func, kind, info or {})
        fname = low.func_name(self.name)
        gv = low.bb.add_func(func.with_attr("global_symbol", fname), fname)
        ty = relax.TensorType(tuple(int(d) for d in out.shape), out.dtype)
        return low.bb.emit(relax.call_tir(gv, list(self.args), ty), name_hint=_ident(self.name))


def at(table, idx):
    """A table entry (or the folded constant) as int64."""
    return table if isinstance(table, int) else table(idx).astype(I64)


def _ident(name: str) -> str:
    import re
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else "v_" + s


# ---------------------------------------------------------------------------------- lowering

OpLowering = Callable[["Lowering", Node, Optional[Node]], object]
_LOWERINGS: dict[str, OpLowering] = {}
#: Ops whose result may fuse the single requantize that reads it.
MAC_OPS = ("qconv2d", "qlinear", "qmatmul")


def tvm_op(*names: str):
    """Register the lowering of ops `names`: fn(lowering, node, fused_requantize) -> relax expr."""
    def deco(fn: OpLowering) -> OpLowering:
        for n in names:
            _LOWERINGS[n] = fn
        return fn
    return deco


def supported_ops() -> list[str]:
    from . import ops  # noqa: F401  (registers the lowerings)
    from . import ops_transformer  # noqa: F401
    return sorted(_LOWERINGS)


Scheduler = Callable[[tir.PrimFunc, str, dict], tir.PrimFunc]


class Lowering:
    """The Relax module of one graph (see the module docstring)."""

    def __init__(self, graph: Graph, batch: int = 1, schedule: Optional[Scheduler] = None):
        from . import ops  # noqa: F401
        from . import ops_transformer  # noqa: F401
        self.graph = graph
        self.batch = batch
        self.schedule = schedule
        self.shapes = static_shapes(graph, batch)
        self.bb = relax.BlockBuilder()
        self.params: dict[str, np.ndarray] = {}
        self._param_vars: dict[str, relax.Var] = {}
        self._func_names: set[str] = set()
        self.env: dict[str, object] = {}
        self._check()

    # ---- checks --------------------------------------------------------------------------------
    def _check(self) -> None:
        missing = [n for n in self.graph.nodes if n.op not in _LOWERINGS]
        if missing:
            listed = ", ".join(f"%{n.name} ({n.op})" for n in missing[:12])
            raise TVMBackendError(
                f"the TVM backend cannot lower {listed}; it supports "
                f"{', '.join(sorted(_LOWERINGS))}")
        for v in self.graph.inputs + self.graph.outputs:
            if not (is_int(v.dtype) or is_float(v.dtype)) or v.dtype == "f16":
                raise TVMBackendError(f"graph input/output %{v.name} has dtype {v.dtype}; the TVM "
                                      f"backend takes f32 or integer tensors at its boundary")

    # ---- helpers for op lowerings --------------------------------------------------------------
    def shape(self, v: Value) -> tuple:
        return self.shapes[v.name]

    def expr(self, v: Value):
        if v.name in self.env:
            return self.env[v.name]
        if v.is_constant:
            if v.data is None:
                raise TVMBackendError(f"constant %{v.name} has no data (parsed from a summary "
                                      f"dump); dump the graph with full=True")
            var = self.param(v.name, np.asarray(v.data))
            self.env[v.name] = var
            return var
        raise TVMBackendError(f"value %{v.name} is used before it is defined")

    def param(self, name: str, data: np.ndarray) -> relax.Var:
        """A parameter of main holding `data` (a weight or constant table)."""
        base, i = name, 1
        while name in self.params:
            name, i = f"{base}_{i}", i + 1
        arr = np.ascontiguousarray(data).reshape(np.shape(data))  # keeps a 0-d scalar 0-d
        self.params[name] = arr
        var = relax.Var(_ident(name), relax.TensorType(arr.shape, arr.dtype.name))
        self._param_vars[name] = var
        return var

    def func_name(self, hint: str) -> str:
        base = _ident(hint)
        name, i = base, 1
        while name in self._func_names:
            name, i = f"{base}_{i}", i + 1
        self._func_names.add(name)
        return name

    def kernel(self, node: Node, suffix: str = "") -> Kernel:
        return Kernel(self, node.name + suffix)

    def zero_point(self, v: Value, node: Node) -> int:
        """The one zero point of an activation (per-channel activation zero points are refused)."""
        q = v.quant
        if q is None:
            raise TVMBackendError(f"node %{node.name} ({node.op}): value %{v.name} has no "
                                  f"QuantParams")
        if len(set(q.zero_point)) != 1:
            raise TVMBackendError(f"node %{node.name} ({node.op}): value %{v.name} has "
                                  f"per-channel zero points; the TVM kernels take one per tensor")
        return int(q.zero_point[0])

    # ---- the walk ------------------------------------------------------------------------------
    def _fusions(self) -> dict[int, Node]:
        out_names = {v.name for v in self.graph.outputs}
        fused: dict[int, Node] = {}
        for n in self.graph.nodes:
            if n.op not in MAC_OPS:
                continue
            acc = n.output
            if len(acc.users) != 1 or acc.name in out_names or acc.users[0].op != "requantize":
                continue
            rq = acc.users[0]
            rank = len(self.shape(acc))
            channel = 1 if n.op == "qconv2d" else rank - 1
            if len(rq.attrs["multiplier"]) > 1 and rq.attrs["axis"] % rank != channel:
                continue
            fused[id(n)] = rq
        return fused

    def build(self) -> tvm.IRModule:
        """The Relax module: main(inputs..., params...) -> output or tuple of outputs."""
        g = self.graph
        inputs = []
        for v in g.inputs:
            var = relax.Var(_ident(v.name), relax.TensorType(self.shape(v), tvm_dtype(v.dtype)))
            self.env[v.name] = var
            inputs.append(var)
        fused = self._fusions()
        skip = {id(rq) for rq in fused.values()}
        # The weight parameters are known only after the walk, so they are given to
        # emit_func_output rather than to function().
        with self.bb.function("main"):
            with self.bb.dataflow():
                for node in g.nodes:
                    if id(node) in skip:
                        continue
                    rq = fused.get(id(node))
                    try:
                        result = _LOWERINGS[node.op](self, node, rq)
                    except TVMBackendError:
                        raise
                    except (ValueError, TypeError, tvm.error.InternalError) as exc:
                        raise TVMBackendError(f"node %{node.name} ({node.op}) could not be "
                                              f"lowered to TVM: {exc}") from exc
                    out = rq.output if rq is not None else node.output
                    self.env[out.name] = result
                outs = [self.expr(v) for v in g.outputs]
                result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
                gout = self.bb.emit_output(result)
            self.bb.emit_func_output(gout, params=inputs + list(self._param_vars.values()))
        return self.bb.get()


def lower_graph(graph: Graph, batch: int = 1,
                schedule: Optional[Scheduler] = None) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """(Relax module, params in main's parameter order after the inputs)."""
    low = Lowering(graph, batch, schedule)
    mod = low.build()
    return mod, dict(low.params)
