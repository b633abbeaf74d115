"""From an integer graph to a C program: the schedule of kernel calls, their constant
parameters, the weights and the memory plan.

`CProgram.build(graph)` does the work in five steps:
  1. the boundary: the C graph starts at the integer output of each input's `quantize` and
     ends at the integer input of each output's `dequantize` (or at integer inputs/outputs);
  2. the check: anything left that is not an integer op this backend has a kernel for (a float
     op, a quantize/dequantize inside the graph) is an error naming every such node;
  3. fusion: a qconv2d/qlinear/qmatmul whose only user is a requantize along its channel axis
     becomes one call, so the int32 accumulator tensor never exists;
  4. one `Call` per remaining node, from the per-op functions registered with `@c_op`;
  5. the memory plan (`qcompile.memplan`): views share their source's buffer, element-wise
     kernels write in place over an input that dies, the im2col columns are scratch.

Rendering (`render.py`) turns the program into files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph, Node, Value
from qcompile.ir.ops import registry
from qcompile.ir.types import TensorType, int_bits, is_float, is_int, is_signed
from qcompile.memplan import MemoryPlan, Step, plan_memory


class CBackendError(QCompileError):
    """The graph cannot become C: a float op left in it, an op without a C kernel, a shape the
    kernels do not take, or a model that does not fit the target's memory."""


# ---------------------------------------------------------------------------------- C types

@dataclass(frozen=True)
class CType:
    name: str      # int8_t ...
    enum: str      # QC_I8 ...
    size: int


_CTYPES = {
    ("i", 8): CType("int8_t", "QC_I8", 1), ("u", 8): CType("uint8_t", "QC_U8", 1),
    ("i", 16): CType("int16_t", "QC_I16", 2), ("u", 16): CType("uint16_t", "QC_U16", 2),
    ("i", 32): CType("int32_t", "QC_I32", 4),
}


def ctype_of(dtype: str, where: str) -> CType:
    """The storage type of an IR integer dtype (i2..i8 live in int8_t, like numpy)."""
    if not is_int(dtype) or dtype == "i64":
        raise CBackendError(f"{where}: dtype {dtype} has no C storage type in this backend "
                            f"(expected i2..i16, u2..u16 or i32)")
    bits = int_bits(dtype)
    width = 8 if bits <= 8 else 16 if bits <= 16 else 32
    key = ("i" if is_signed(dtype) else "u", width)
    if key not in _CTYPES:
        raise CBackendError(f"{where}: dtype {dtype} has no C storage type in this backend")
    return _CTYPES[key]


def c_ident(name: str) -> str:
    """A C identifier from a value name (`conv1.weight` -> `conv1_weight`)."""
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not ident or ident[0].isdigit():
        ident = "v_" + ident
    return ident


# ---------------------------------------------------------------------------------- program

@dataclass
class Call:
    """One kernel call. `code` holds C statements in which `@{value}` stands for the pointer
    to a tensor (resolved once the memory plan is known)."""

    node: str                       # the node (or fused nodes) it implements, for comments
    op: str
    code: list[str]
    defines: dict[str, int] = field(default_factory=dict)
    uses: list[str] = field(default_factory=list)
    scratch: int = 0
    aliases: dict[str, str] = field(default_factory=dict)
    inplace: dict[str, str] = field(default_factory=dict)
    macs: int = 0

    def step(self) -> Step:
        return Step(self.node, dict(self.defines), list(self.uses), self.scratch,
                    dict(self.aliases), dict(self.inplace))


@dataclass
class ConstArray:
    cname: str
    ctype: str
    values: np.ndarray      # flat int64
    section: str            # "weights" (model_weights.c) or "params" (model.c)


@dataclass
class Port:
    """A graph input or output as C sees it: the integer value and what the caller converts."""

    value: Value
    ctype: CType
    shape: tuple
    boundary: Optional[Node]  # the quantize / dequantize node outside the C graph, if any


OpEmitter = Callable[["CProgram", Node, Optional[Node]], Call]
_C_OPS: dict[str, OpEmitter] = {}


def c_op(*names: str):
    """Register the C emitter of one or more ops: fn(program, node, fused_requantize) -> Call."""
    def deco(fn: OpEmitter) -> OpEmitter:
        for n in names:
            _C_OPS[n] = fn
        return fn
    return deco


def supported_ops() -> list[str]:
    from . import ops  # noqa: F401  (registers the emitters)
    return sorted(_C_OPS)


MAC_OPS = ("qconv2d", "qlinear", "qmatmul")
#: Ops whose output is the input seen with another shape: no code, one buffer.
VIEW_OPS = ("reshape", "flatten", "squeeze", "unsqueeze", "identity")


class CProgram:
    """The C form of one integer graph (see the module docstring)."""

    def __init__(self, graph: Graph, alignment: int = 4, batch: int = 1):
        from . import ops  # noqa: F401  (registers the emitters)
        self.graph = graph
        self.alignment = alignment
        self.shapes = static_shapes(graph, batch)
        self.consts: dict[str, ConstArray] = {}
        self._const_names: set[str] = set()
        self._raw_consts: dict[str, str] = {}
        self.defs: list[str] = []          # static const parameter structs, in call order
        self.inputs, self.outputs, skipped = self._boundary()
        self.external = {p.value.name for p in self.inputs} | {p.value.name for p in self.outputs}
        nodes = [n for n in graph.nodes if n not in skipped]
        self._check_nodes(nodes)
        self.calls: list[Call] = []
        fused = self._fusions(nodes)
        for node in nodes:
            if node in fused.values():
                continue
            self.calls.append(_C_OPS[node.op](self, node, fused.get(node)))
        self.plan: MemoryPlan = plan_memory([c.step() for c in self.calls], self.external,
                                            alignment)

    # ---- boundary and checks ------------------------------------------------------------------
    def _boundary(self) -> tuple[list[Port], list[Port], set]:
        g = self.graph
        skipped: set = set()
        inputs = []
        for v in g.inputs:
            if is_int(v.dtype):
                inputs.append(Port(v, ctype_of(v.dtype, f"input %{v.name}"), self.shape(v), None))
                continue
            users = v.users
            if len(users) != 1 or users[0].op != "quantize":
                readers = ", ".join(f"%{u.name} ({u.op})" for u in users) or "nothing"
                raise CBackendError(
                    f"graph input %{v.name} is {v.dtype} and read by {readers}; the C backend "
                    f"takes integer tensors at its boundary, so a float input must be read by "
                    f"exactly one quantize node (run the pipeline through lower-integer)")
            q = users[0]
            skipped.add(q)
            out = q.output
            inputs.append(Port(out, ctype_of(out.dtype, f"%{out.name}"), self.shape(out), q))
        outputs = []
        for v in g.outputs:
            if is_int(v.dtype):
                outputs.append(Port(v, ctype_of(v.dtype, f"output %{v.name}"), self.shape(v),
                                    None))
                continue
            p = v.producer
            if p is None or p.op != "dequantize" or len(v.users) != 0:
                raise CBackendError(
                    f"graph output %{v.name} is {v.dtype}, produced by "
                    f"{'%' + p.name + ' (' + p.op + ')' if p else 'no node'}; the C backend "
                    f"needs integer outputs or outputs of a dequantize node")
            skipped.add(p)
            src = p.inputs[0]
            outputs.append(Port(src, ctype_of(src.dtype, f"%{src.name}"), self.shape(src), p))
        names = [p.value.name for p in inputs]
        for p in outputs:
            if p.value.name in names:
                raise CBackendError(f"output %{p.value.name} is a graph input; nothing to compute")
        return inputs, outputs, skipped

    def _check_nodes(self, nodes: list[Node]) -> None:
        float_nodes, unsupported = [], []
        for n in nodes:
            if n.op in ("quantize", "dequantize") or any(
                    is_float(v.dtype) for v in list(n.outputs) + [i for i in n.inputs if i]):
                float_nodes.append(n)
            elif n.op not in _C_OPS:
                unsupported.append(n)
        if float_nodes:
            listed = ", ".join(f"%{n.name} ({n.op})" for n in float_nodes[:12])
            more = f" and {len(float_nodes) - 12} more" if len(float_nodes) > 12 else ""
            raise CBackendError(
                f"graph @{self.graph.name} still has float ops, which the C backend (integer "
                f"only) cannot emit: {listed}{more}. Lower them with lower-integer (a target "
                f"with float_islands keeps them float, and is not for this backend)")
        if unsupported:
            listed = ", ".join(f"%{n.name} ({n.op})" for n in unsupported)
            raise CBackendError(f"the C backend has no kernel for {listed}; it supports "
                                f"{', '.join(sorted(_C_OPS))}")

    def _fusions(self, nodes: list[Node]) -> dict[Node, Node]:
        """MAC node -> the requantize folded into it."""
        out_names = {p.value.name for p in self.outputs}
        fused: dict[Node, Node] = {}
        present = set(map(id, nodes))
        for n in nodes:
            if n.op not in MAC_OPS:
                continue
            acc = n.output
            if len(acc.users) != 1 or acc.name in out_names:
                continue
            rq = acc.users[0]
            if rq.op != "requantize" or id(rq) not in present:
                continue
            rank = len(self.shape(acc))
            channel_axis = 1 if n.op == "qconv2d" else rank - 1
            if len(rq.attrs["multiplier"]) > 1 and rq.attrs["axis"] % rank != channel_axis:
                continue
            fused[n] = rq
        return fused

    # ---- helpers for the op emitters ----------------------------------------------------------
    def shape(self, v: Value) -> tuple:
        return self.shapes[v.name]

    def numel(self, v: Value) -> int:
        return int(np.prod(self.shape(v), dtype=np.int64))

    def ctype(self, v: Value) -> CType:
        return ctype_of(v.dtype, f"%{v.name}")

    def nbytes(self, v: Value) -> int:
        return self.numel(v) * self.ctype(v).size

    def zero_point(self, v: Value, node: Node) -> int:
        """The single zero point of an activation (per-channel zero points are refused)."""
        q = v.quant
        if q is None:
            if v.producer is not None and "quant_aware" in registry.get(node.op).traits:
                raise CBackendError(f"node %{node.name} ({node.op}): value %{v.name} has no "
                                    f"QuantParams")
            return 0
        if len(set(q.zero_point)) != 1:
            raise CBackendError(f"node %{node.name} ({node.op}): value %{v.name} has per-channel "
                                f"zero points {q.zero_point}; the C kernels take one per tensor")
        return int(q.zero_point[0])

    def reserve(self, hint: str) -> str:
        """A C identifier derived from `hint` that nothing else in the program uses."""
        base = c_ident(hint)
        name, i = base, 1
        while name in self._const_names:
            name, i = f"{base}_{i}", i + 1
        self._const_names.add(name)
        return name

    def const(self, hint: str, ctype: str, values, section: str = "params") -> str:
        """Register a constant array; returns its C name (unique, deterministic)."""
        name = self.reserve(hint)
        arr = np.asarray(values, dtype=np.int64).reshape(-1)
        self.consts[name] = ConstArray(name, ctype, arr, section)
        return name

    def tensor(self, v: Value) -> str:
        """The C expression of a tensor: a constant becomes a weights array (emitted once, in
        its storage type); anything else a placeholder resolved after memory planning."""
        if not v.is_constant:
            return "@{" + v.name + "}"
        if v.name not in self._raw_consts:
            if v.data is None:
                raise CBackendError(f"constant %{v.name} has no data (parsed from a summary "
                                    f"dump); dump the graph with full=True")
            self._raw_consts[v.name] = self.const(f"qcw_{v.name}", self.ctype(v).name,
                                                  np.asarray(v.data), "weights")
        return self._raw_consts[v.name]

    # ---- figures --------------------------------------------------------------------------------
    def weight_bytes(self) -> int:
        """Bytes of constant data the program puts in flash (weights and kernel parameters)."""
        sizes = {"int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2, "int32_t": 4}
        return sum(c.values.size * sizes[c.ctype] for c in self.consts.values())

    def raw_weight_bytes(self) -> int:
        """Bytes of the graph's constants as stored in the IR (storage type of each dtype)."""
        total = 0
        for v in self.graph.constants.values():
            if v.users and is_int(v.dtype):
                total += int(np.prod(v.shape, dtype=np.int64)) * ctype_of(v.dtype, v.name).size
        return total

    def macs(self) -> int:
        return sum(c.macs for c in self.calls)


def static_shapes(graph: Graph, batch: int = 1) -> dict[str, tuple]:
    """Every value's shape with dynamic dimensions of the inputs set to `batch` (by default the
    C program runs one batch item per call), re-inferred through the op registry."""
    shapes: dict[str, tuple] = {}
    types: dict[str, TensorType] = {}
    for v in graph.inputs:
        t = TensorType(tuple(batch if d is None else d for d in v.shape), v.dtype)
        types[v.name] = t
    for v in graph.constants.values():
        types[v.name] = v.type
    for n in graph.nodes:
        if all(d is not None for v in n.outputs for d in v.shape) and all(
                i is None or types.get(i.name, i.type) == i.type for i in n.inputs):
            outs = [v.type for v in n.outputs]
        else:
            outs = registry.get(n.op).infer([None if i is None else types[i.name]
                                             for i in n.inputs], n.attrs)
        for v, t in zip(n.outputs, outs):
            types[v.name] = t
    for name, t in types.items():
        if not t.is_static:
            raise CBackendError(f"value %{name} has a dynamic shape {t.shape}; the C backend "
                                f"needs static shapes")
        shapes[name] = tuple(t.shape)
    return shapes
