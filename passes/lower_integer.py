"""`lower-integer`: turn a quantized graph (QuantParams from `quantize`) into integer ops.

The result maps float to float like the input graph: each graph input feeds a `quantize` node,
each graph output is produced by a `dequantize` node, and in between every op is an integer op
(docs/integer-semantics.md, "Integer ops"), so `qcompile.run(g, x, mode="int")` runs it. Weights
become integer constants, biases i32 constants in units of s_x * s_w, and every rescaling is a
`requantize` (or a rescaling inside qadd/qmul/qprelu) whose Q31 multipliers are attributes.

The pass walks the nodes in order and dispatches on the op through a rule registry, so other
modules add ops without editing this one:

    from qcompile.passes.lower_integer import lowering_rule, LoweringState

    @lowering_rule("softmax")
    def lower_softmax(graph, node, state: LoweringState) -> bool:
        x = state.int_value(node.inputs[0])          # the integer version of a float input
        y = state.emit("my_int_softmax", [x], {...}, name=node.name, quant=node.output.quant)
        state.set_int(node.output, y)                # what consumers of node.output now read
        return True                                  # False (or raise CannotLower): not possible

A rule inserts its integer nodes before `node` (`state.emit` does) and declares the integer
version of each float output it produces with `state.set_int`; the pass removes the float
nodes afterwards. An op without a rule, or whose rule declines, is an error naming the node and
the option `float_islands=true`, which keeps it float between `dequantize` and `quantize`.
Bad quantization parameters (non-positive scales, zero points outside their type, multipliers
that do not fit the Q31 encoding) are errors naming the node, with or without float islands.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional, Sequence

import numpy as np

from qcompile.errors import PassError, PipelineError
from qcompile.ir.graph import Graph, Node, Value
from qcompile.ir.ops import registry
from qcompile.ir.ops.defs import pool as pool_defs
from qcompile.ir.types import QuantParams, is_float, is_int
from qcompile.passmanager import Pass, PassContext, register_pass
from qcompile.quant import luts
from qcompile.quant.intmath import INT32_MAX, INT32_MIN, QuantError, quantize_float, \
    quantize_multipliers
from qcompile.quant.scheme import FUSABLE_ACTIVATIONS, PASS_THROUGH_OPS

Rule = Callable[[Graph, Node, "LoweringState"], bool]
_RULES: dict[str, Rule] = {}


def lowering_rule(*ops: str) -> Callable[[Rule], Rule]:
    """Register `fn(graph, node, state) -> bool` as the lowering of each op in `ops`.

    A later registration for the same op replaces the earlier one (a target can override a
    built-in recipe by importing its module after this one)."""
    if not ops:
        raise ValueError("lowering_rule needs at least one op name")

    def deco(fn: Rule) -> Rule:
        for op in ops:
            _RULES[op] = fn
        return fn
    return deco


def lowering_rules() -> dict[str, Rule]:
    """The registered rules by op name (a copy)."""
    return dict(sorted(_RULES.items()))


class CannotLower(Exception):
    """Raised by a rule (or the state's helpers) when `node` has no integer form; the message
    says why. The pass reports it as an error, or keeps the node float with `float_islands`."""


class _UpstreamFailed(Exception):
    """An input comes from a node that could not be lowered (already reported)."""


def _f32(scale: Iterable[float]) -> np.ndarray:
    """Scales as the float32 numbers every runtime stores, widened to float64 for arithmetic
    (TFLite computes its multipliers as double(s_x) * double(s_w) / double(s_y) on float32 s)."""
    return np.asarray(tuple(scale), dtype=np.float64).astype(np.float32).astype(np.float64)


def same_params(a: Optional[QuantParams], b: Optional[QuantParams]) -> bool:
    """Whether two QuantParams describe the same integer grid (scale in float32, zero point,
    width, signedness, axis)."""
    if a is None or b is None:
        return a is b
    return (a.zero_point == b.zero_point and a.bits == b.bits and a.signed == b.signed
            and a.axis == b.axis and np.array_equal(_f32(a.scale), _f32(b.scale)))


class LoweringState:
    """What a lowering rule works with: the pass options, the float -> integer value map, and
    helpers that insert integer nodes before the node being lowered."""

    def __init__(self, graph: Graph, ctx: PassContext, rounding: str, acc_bits: int,
                 float_islands: bool, input_rounding: str):
        self.graph, self.ctx = graph, ctx
        self.rounding, self.acc_bits, self.float_islands = rounding, acc_bits, float_islands
        self.input_rounding = input_rounding
        self.node: Optional[Node] = None        # the node being lowered; emit() inserts before it
        self._int: dict[int, Value] = {}        # id(float value) -> its integer version
        self._float_of: dict[int, Value] = {}   # id(integer value) -> the float value it stands for
        self._failed: set[int] = set()          # ids of nodes that could not be lowered
        self._created: list[Node] = []          # every node this pass inserted
        self._consts: dict[int, tuple[Value, str]] = {}  # added constant -> (it, source name)
        self._deq: dict[int, Value] = {}        # id(float value) -> its dequantize, for floats
        self._inputs_quantized = 0              # quantize nodes placed at the top of the graph
        self._grids: dict[tuple, Value] = {}    # (id(value), scale, bits) -> on that grid

    # ---- the float -> integer map -----------------------------------------------------------
    def has_int(self, v: Value) -> bool:
        return id(v) in self._int

    def set_int(self, v_float: Value, v_int: Value) -> None:
        """Declare `v_int` the integer version of float value `v_float`."""
        if not is_int(v_int.dtype) or v_int.quant is None:
            raise PassError(f"lowering of %{v_float.name}: %{v_int.name} is {v_int.dtype} "
                            f"{'without' if v_int.quant is None else 'with'} QuantParams; an "
                            f"integer version must be an integer value with QuantParams")
        self._int[id(v_float)] = v_int
        self._float_of[id(v_int)] = v_float

    def int_value(self, v: Value) -> Value:
        """The integer version of `v`: already lowered, an integer constant made from a float
        constant's data, or a new `quantize` node where a float value (a graph input or a float
        island's output) enters the integer graph."""
        found = self._int.get(id(v))
        if found is not None:
            return found
        if is_int(v.dtype) and v.quant is not None:
            return v  # already integer (a quantize node's output, an integer constant)
        if v.producer is not None and id(v.producer) in self._failed:
            raise _UpstreamFailed()
        q = self.params(v)
        if v.is_constant:
            out = self._int_constant(v, q)
        elif (v.producer is not None and v.producer.op == "dequantize"
              and same_params(v.producer.inputs[0].quant, q)):
            out = v.producer.inputs[0]  # dequantize -> quantize with the same params: a no-op
        else:
            out = self._quantize_node(v, q)
        self.set_int(v, out)
        return out

    def params(self, v: Value, node: Optional[Node] = None) -> QuantParams:
        """`v.quant`, checked: a value without params cannot be integer; bad params are errors."""
        q = v.quant
        if q is None:
            producer = v.producer
            if producer is not None and producer.name in self.graph.meta.get("float_ops", {}):
                raise CannotLower(f"quantize left {producer.op} %{producer.name} float (its op is "
                                  f"not in the scheme's quantize_ops)")
            raise CannotLower(f"%{v.name} has no quantization parameters (run calibrate and "
                              f"quantize first, or the op was left float)")
        problems = q.problems()
        if problems:
            where = node or self.node
            raise PassError(f"node %{where.name if where else v.name}: value %{v.name} has "
                            f"invalid quantization parameters: {'; '.join(problems)}")
        return q

    def _int_constant(self, v: Value, q: QuantParams) -> Value:
        if v.data is None:
            raise CannotLower(f"constant %{v.name} has no data (parsed from a summary dump)")
        rank = v.data.ndim
        codes = quantize_float(v.data, _f32(q.scale).reshape(q.scale_array(rank).shape),
                               q.zero_point_array(rank), q.qmin, q.qmax, "half_even")
        const = self.graph.add_constant(f"{v.name}.q", codes, dtype=q.storage_dtype, quant=q)
        self._consts[id(const)] = (const, v.name)
        return const

    def _quantize_node(self, v: Value, q: QuantParams) -> Value:
        g = self.graph
        node = g.make_node("quantize", [v], {"dtype": q.storage_dtype,
                                              "rounding": self.input_rounding},
                           name=f"{v.name}.q", loc=v.producer.loc if v.producer else "")
        node.output.quant = q
        if v.producer is None:  # a graph input: quantize it at the top, in input order
            g.insert(self._inputs_quantized, node)
            self._inputs_quantized += 1
        else:
            g.insert_after(v.producer, node)
        self._created.append(node)
        return node.output

    def bias_value(self, b: Value, acc_scale: np.ndarray) -> Value:
        """`b` as an i32 constant in units of the accumulator scale (zero point 0). The
        `quantize` pass's params are used when they are that scale (so the codes equal what the
        fake-quant simulation adds); otherwise the bias is quantized to the accumulator's."""
        if b.data is None:
            raise CannotLower(f"bias %{b.name} is not a constant")
        n = acc_scale.size
        q = b.quant
        fits = (q is not None and q.bits == 32 and q.signed and set(q.zero_point) == {0}
                and len(q.scale) in (1, n)
                and np.allclose(_f32(q.scale), acc_scale, rtol=1e-6, atol=0))
        if is_int(b.dtype):
            if not fits:
                raise CannotLower(f"integer bias %{b.name} is not in units of s_x * s_w")
            return b
        if not fits:
            q = QuantParams(acc_scale, np.zeros(n, np.int64), bits=32, signed=True,
                            axis=0 if n > 1 else None)
        codes = quantize_float(b.data, _f32(q.scale).reshape(-1) if n > 1 else _f32(q.scale)[0],
                               0, INT32_MIN, INT32_MAX, "half_even")
        const = self.graph.add_constant(f"{b.name}.q", codes, dtype="i32", quant=q)
        self._consts[id(const)] = (const, b.name)
        return const

    # ---- building integer nodes --------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[Optional[Value]], attrs: Optional[dict] = None, *,
             name: str, quant: QuantParams) -> Value:
        """Insert `op(inputs){attrs}` before the node being lowered; its output gets `quant`."""
        if self.node is None:
            raise PassError("LoweringState.emit called outside a lowering rule")
        node = self.graph.make_node(op, inputs, attrs, name=name, loc=self.node.loc)
        node.output.quant = quant
        self.graph.insert_before(self.node, node)
        self._created.append(node)
        return node.output

    def multipliers(self, real: Sequence[float] | float) -> tuple[list[int], list[int]]:
        """Real multipliers as (m0, shift) attribute lists for the pass's rounding mode."""
        arr = np.atleast_1d(np.asarray(real, dtype=np.float64))
        where = f"node %{self.node.name} ({self.node.op})" if self.node else "lower-integer"
        if self.rounding == "shift_only":
            e = np.round(np.log2(arr)) if np.all(arr > 0) else None
            if e is None or not np.array_equal(np.exp2(e), arr) or np.abs(e).max() > 31:
                bad = float(arr[0] if e is None else arr[np.argmax(np.exp2(e) != arr)])
                raise PassError(f"{where}: rounding=shift_only needs power-of-two multipliers in "
                                f"2**-31..2**31, got {bad!r}; quantize with pow2=true")
            return [0] * arr.size, [int(s) for s in e]
        try:
            m0, shift = quantize_multipliers(arr)
        except QuantError as exc:
            raise PassError(f"{where}: {exc}") from None
        if self.rounding != "gemmlowp_double" and shift.max() > 30:
            bad = float(arr[np.argmax(shift)])
            raise PassError(f"{where}: multiplier {bad!r} >= 2**30 is outside {self.rounding} "
                            f"requantization (shift <= 30)")
        if np.any(m0 == 0):
            tiny = float(arr[np.argmax(m0 == 0)])
            self.ctx.warn(f"requantization multiplier {tiny!r} is below 2**-32 and flushes to 0: "
                          f"that output is constant", self.node)
        return [int(m) for m in m0], [int(s) for s in shift]

    def requantize(self, x: Value, out_quant: QuantParams, real: Sequence[float] | float, *,
                   name: str, clamp: Optional[tuple[int, int]] = None, axis: int = 1) -> Value:
        """A `requantize` of integer `x` by `real` (one or per channel along `axis`) onto the
        grid `out_quant`, clamped to `clamp` (default: the whole storage range)."""
        m0, shift = self.multipliers(real)
        lo, hi = clamp if clamp is not None else (out_quant.qmin, out_quant.qmax)
        return self.emit("requantize", [x], {"multiplier": m0, "shift": shift, "axis": axis,
                                             "rounding": self.rounding, "clamp_min": lo,
                                             "clamp_max": hi, "dtype": out_quant.storage_dtype},
                         name=name, quant=out_quant)

    def rescale_to(self, x: Value, out_quant: QuantParams, *, name: str,
                   clamp: Optional[tuple[int, int]] = None) -> Value:
        """`x` on the grid `out_quant` (per tensor): itself if already there and unclamped."""
        qx = x.quant
        if qx.per_channel or out_quant.per_channel:
            raise CannotLower(f"per-channel activation params on %{x.name} cannot be rescaled")
        if same_params(qx, out_quant) and clamp is None:
            return x
        real = _f32(qx.scale)[0] / _f32(out_quant.scale)[0]
        return self.requantize(x, out_quant, real, name=name, clamp=clamp)

    # ---- activations -------------------------------------------------------------------------
    def fused_activation(self, node: Node) -> Optional[Node]:
        """The relu/clip that `quantize` fused into `node` (its output carries no params and its
        only user is that activation, whose output does), or None."""
        out = node.outputs[0]
        if out.quant is not None or len(out.users) != 1 or out in self.graph.outputs:
            return None
        user = out.users[0]
        if user.op in FUSABLE_ACTIVATIONS and user.inputs[0] is out and \
                user.outputs[0].quant is not None:
            return user
        return None

    def result(self, node: Node, per_channel_axis: Optional[int] = None
               ) -> tuple[Value, QuantParams, Optional[Node]]:
        """(the float value the lowered result stands for, its params, the fused activation):
        the activation's output when one is fused, else the node's own output. Per-channel
        params are accepted only along `per_channel_axis` (a rule that requantizes per channel
        there) and without a fused activation (the clamp bounds are per tensor)."""
        act = self.fused_activation(node)
        target = act.outputs[0] if act is not None else node.outputs[0]
        q = self.params(target, node)
        if q.per_channel:
            rank = target.type.rank
            if per_channel_axis is None or q.axis % rank != per_channel_axis % rank:
                raise CannotLower(f"per-channel params on activation %{target.name} (axis "
                                  f"{q.axis}) are not supported by this op's integer form")
            if act is not None:
                raise CannotLower(f"per-channel params on %{target.name} with a fused "
                                  f"{act.op}: the clamp bounds would differ per channel")
        return target, q, act

    # ---- per-channel activations: one common grid ----------------------------------------
    def common_grid(self, x: Value, scale: float, bits: int, *, name: str) -> Value:
        """Integer `x` (per-channel or per-tensor params) rescaled onto the per-tensor grid
        `scale` with zero point 0, stored in `bits` (16 or 32): q' = requantize(q - z[c],
        s[c] / scale). This is how per-channel activations (BERT's outlier hidden channels)
        meet ops that need one scale: the grid is chosen fine enough that the extra rounding
        is a small fraction of the finest channel's step. One node per (value, grid)."""
        key = (id(x), float(scale), bits)
        cached = self._grids.get(key)
        if cached is not None:
            return cached
        qx = x.quant
        q = QuantParams(scale, 0, bits=bits, signed=True)
        axis = qx.axis % x.type.rank if qx.per_channel else 1
        out = self.requantize(x, q, _f32(qx.scale) / scale, name=name, axis=axis)
        self._grids[key] = out
        return out

    def widest_channel(self, x: Value) -> np.ndarray:
        """Per channel (or one), the largest |q - z| times the scale: the real magnitude bound
        of integer value `x`."""
        qx = x.quant
        z = np.asarray(qx.zero_point, np.float64)
        reach = np.maximum(qx.qmax - z, z - qx.qmin)
        return reach * _f32(qx.scale)

    def grid_for(self, x: Value, fits: Callable[[float, np.ndarray], bool], what: str,
                 max_bits: int = 16) -> tuple[float, int]:
        """(scale, bits) of the finest common grid for per-channel `x` on which the largest
        code stays below 2**(b-1) for some b <= max_bits and `fits(scale, code_bound)` holds,
        where code_bound[c] bounds |q'| of channel c. Tries 16-bit (or `max_bits`) grids
        first, coarser ones down to 8 bits; none fits: CannotLower naming `what`."""
        reach = self.widest_channel(x)
        for b in range(max_bits - 1, 6, -1):
            # one code of headroom: the Q31 multiplier may round the largest code up by one
            scale = float(reach.max()) / ((1 << b) - 2)
            bound = np.floor(reach / scale) + 1
            if fits(scale, bound):
                return scale, (16 if max_bits <= 16 else 32)
        raise CannotLower(f"per-channel %{x.name}: no common grid of 8 to {max_bits} bits "
                          f"keeps {what}")

    def clamp_range(self, q: QuantParams, act: Optional[Node]) -> tuple[int, int]:
        """The output codes an activation allows: relu [code(0), qmax], clip [code(min),
        code(max)], each bound quantized as TFLite's CalculateActivationRangeQuantized does:
        z_y + round_half_away(float32(bound) / float32(s_y)), saturated to [qmin, qmax]. (The
        fake-quant simulation rounds half to even; the two differ only when bound / s_y is an
        exact tie.)"""
        if act is None:
            return q.qmin, q.qmax
        bounds = [0.0] if act.op == "relu" else [act.attrs["min"], act.attrs["max"]]
        codes = quantize_float(np.array(bounds), _f32(q.scale)[0], q.zero_point[0], q.qmin,
                               q.qmax, "half_away")
        return int(codes[0]), int(codes[1]) if len(codes) > 1 else q.qmax


# ---- the pass -----------------------------------------------------------------------------------

@register_pass("lower-integer")
@dataclass(frozen=True)
class LowerInteger(Pass):
    """Replace quantized float ops by integer ops: quantize at inputs, dequantize at outputs."""

    rounding: Literal["gemmlowp_double", "single_half_up", "single_half_away",
                      "shift_only"] = "gemmlowp_double"
    acc_bits: int = 32                  # accumulator width of qconv2d/qlinear/qmatmul
    float_islands: bool = False         # keep ops without an integer form float
    input_rounding: Literal["half_even", "half_away"] = "half_even"  # of the input quantize nodes

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.acc_bits <= 32:
            raise PipelineError(f"pass 'lower-integer', option 'acc_bits': {self.acc_bits} is "
                                f"not in 2..32")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        state = LoweringState(graph, ctx, self.rounding, self.acc_bits, self.float_islands,
                              self.input_rounding)
        errors_before = len(ctx.errors)
        lowered, islands = self._walk(graph, ctx, state)
        if len(ctx.errors) > errors_before:
            return True  # the pass manager fails the pass, listing every error
        _connect_islands(graph, state, islands, lowered)
        _remove_float_nodes(graph, state, lowered)
        _rename(graph, state)
        for v in list(graph.inputs) + [o for n in graph.nodes for o in n.outputs]:
            if is_float(v.dtype):
                v.quant = None  # float values are plain floats now; params live on int values
        graph.meta["integer"] = {"rounding": self.rounding, "acc_bits": self.acc_bits,
                                 "float_islands": [n.name for n in islands]}
        return bool(lowered) or bool(state._created)

    def _walk(self, graph: Graph, ctx: PassContext, state: LoweringState):
        lowered: list[Node] = []
        islands: list[Node] = []
        for node in list(graph.nodes):
            if node.graph is not graph:
                continue  # a rule removed it
            float_outs = [o for o in node.outputs if is_float(o.dtype)]
            if not float_outs or "quant_aware" in registry.get(node.op).traits:
                continue  # already integer, or a quantize/dequantize boundary
            if all(state.has_int(o) for o in float_outs):
                lowered.append(node)  # a fused activation, lowered with its producer
                continue
            reason = self._lower_one(graph, node, state)
            if reason is None:
                missing = [o.name for o in float_outs
                           if not state.has_int(o) and (o.users or o in graph.outputs)
                           and not self._fused_into_user(state, node, o)]
                if missing:
                    raise PassError(f"the lowering rule for {node.op} returned True but gave no "
                                    f"integer version of %{', %'.join(missing)}")
                lowered.append(node)
                continue
            if self.float_islands:
                islands.append(node)
                if reason:
                    ctx.note(f"{node.op} stays float ({reason})", node)
                continue
            state._failed.add(id(node))
            if reason:  # an empty reason: an input's producer failed, already reported
                ctx.error(f"cannot lower {node.op} %{node.name} to integer ops: {reason}; "
                          f"lower-integer{{float_islands=true}} keeps it float between "
                          f"dequantize and quantize", node)
        return lowered, islands

    @staticmethod
    def _fused_into_user(state: LoweringState, node: Node, out: Value) -> bool:
        act = state.fused_activation(node)
        return act is not None and state.has_int(act.outputs[0])

    @staticmethod
    def _lower_one(graph: Graph, node: Node, state: LoweringState) -> Optional[str]:
        """None if lowered, else why not ("" when an input already failed)."""
        rule = _RULES.get(node.op)
        if rule is None:
            return f"no integer lowering rule for op {node.op}"
        state.node = node
        try:
            ok = rule(graph, node, state)
        except CannotLower as exc:
            return str(exc)
        except _UpstreamFailed:
            return ""
        finally:
            state.node = None
        return None if ok else f"the {node.op} rule declined this node"


def _connect_islands(graph: Graph, state: LoweringState, islands: list[Node],
                     lowered: list[Node]) -> None:
    """Float readers of lowered values (float islands, graph outputs) read a `dequantize`."""
    deq = state._deq
    gone = {id(n) for n in lowered}

    def lowered_value(v: Optional[Value]) -> bool:
        return v is not None and v.producer is not None and id(v.producer) in gone \
            and state.has_int(v)

    def float_version(v: Value) -> Value:
        if id(v) not in deq:
            vi = state._int[id(v)]
            node = graph.make_node("dequantize", [vi], name=f"{v.name}.dq",
                                   loc=vi.producer.loc if vi.producer else "")
            if vi.producer is not None:
                graph.insert_after(vi.producer, node)
            else:
                graph.insert(state._inputs_quantized, node)
            state._created.append(node)
            deq[id(v)] = node.output
        return deq[id(v)]

    for node in islands:
        for i, v in enumerate(node.inputs):
            if lowered_value(v):
                graph.set_input(node, i, float_version(v))
    graph.outputs = [float_version(v) if lowered_value(v) else v for v in graph.outputs]


def _remove_float_nodes(graph: Graph, state: LoweringState, lowered: list[Node]) -> None:
    """Erase the lowered float nodes, the float constants only they read, and any node this
    pass created that ended up unused (a rule that declined after emitting)."""
    consts = {id(v): v for n in lowered for v in n.inputs if v is not None and v.is_constant}
    for node in reversed(lowered):
        if node.graph is graph:
            graph.erase(node)
    outputs = {id(v) for v in graph.outputs}
    for node in reversed(state._created):
        if node.graph is graph and all(not o.users and id(o) not in outputs for o in node.outputs):
            graph.erase(node)
    for v in consts.values():
        if not v.users and id(v) not in outputs and v.name in graph.constants:
            graph.remove_constant(v)
    for v, _ in state._consts.values():  # integer constants a declining rule left behind
        if not v.users and id(v) not in outputs and v.name in graph.constants:
            graph.remove_constant(v)


def _rename(graph: Graph, state: LoweringState) -> None:
    """Give values back the names of the float values they replace: a graph output's
    dequantize takes the output's name, an integer value its float value's name when free."""
    def take(value: Value, name: str) -> None:
        if value.name != name and name not in graph.values and \
                graph.values.get(value.name) is value:
            graph.rename(value, name)

    for d in state._deq.values():
        vi = d.producer.inputs[0]
        take(d, state._float_of[id(vi)].name)
    inputs = {id(v) for v in graph.inputs}
    for vi in list(state._int.values()):
        fv = state._float_of.get(id(vi))
        # A graph input keeps its name (its quantize output stays "<name>.q"), and so does a
        # float island's output that is quantized.
        if fv is not None and id(fv) not in inputs and fv.name not in graph.values:
            take(vi, fv.name)
    for const, source in state._consts.values():
        if const.name in graph.constants:
            take(const, source)


# ---- rules: multiply-accumulate -----------------------------------------------------------------

def _acc_params(scale: np.ndarray, axis: int) -> QuantParams:
    return QuantParams(scale, np.zeros(scale.size, np.int64), bits=32, signed=True,
                       axis=axis if scale.size > 1 else None)


def _mac(graph: Graph, node: Node, state: LoweringState, op: str, attrs: dict) -> bool:
    out_rank = node.outputs[0].type.rank
    axis = 1 if op == "qconv2d" else out_rank - 1
    # per-channel outputs along the output-channel axis are one more per-channel multiplier
    target, q_out, act = state.result(node, per_channel_axis=axis)
    x, w, b = node.inputs[0], node.inputs[1], node.input(2)
    if not w.is_constant:
        raise CannotLower(f"weight %{w.name} is not a constant")
    xi, wi = state.int_value(x), state.int_value(w)
    qw = wi.quant
    if qw.axis not in (None, 0):
        raise CannotLower(f"weight %{w.name} is quantized along axis {qw.axis}; expected axis 0 "
                          f"(output channels) or per tensor")
    if xi.quant.per_channel:
        xi = _linear_input_on_common_grid(node, xi, wi, b, state) if op == "qlinear" else None
        if xi is None:
            raise CannotLower(f"input %{x.name} has per-channel params; only a linear's input "
                              f"(per channel along the features it reduces) may")
    qx = xi.quant
    acc_scale = _f32(qx.scale)[0] * _f32(qw.scale)
    bi = state.bias_value(b, acc_scale) if b is not None else None
    acc = state.emit(op, [xi, wi, bi], {**attrs, "acc_bits": state.acc_bits},
                     name=f"{node.name}.acc", quant=_acc_params(acc_scale, axis))
    y = state.requantize(acc, q_out, acc_scale / _f32(q_out.scale), name=f"{target.name}.q",
                         clamp=state.clamp_range(q_out, act), axis=axis)
    state.set_int(target, y)
    return True


def _linear_input_on_common_grid(node: Node, xi: Value, wi: Value, b: Optional[Value],
                                 state: LoweringState) -> Optional[Value]:
    """A linear's per-channel input (one scale per input feature, BERT's LayerNorm outputs)
    on one fine per-tensor grid, i16: the weight columns then multiply integers of one scale.
    The grid is the finest whose worst-case accumulator, sum_k |w[n,k] - zw[n]| |q'[k]| +
    |bias[n]|, stays inside acc_bits for every output feature n, so the wider input costs no
    overflow. None when x is not per-channel along its last (feature) axis."""
    qx = xi.quant
    if qx.axis % xi.type.rank != xi.type.rank - 1:
        return None
    qw = wi.quant
    w_abs = np.abs(wi.data.astype(np.int64) - qw.zero_point_array(2))
    s_w = _f32(qw.scale)
    b_abs = np.abs(np.asarray(b.data, np.float64)) if b is not None and b.data is not None \
        else np.zeros(1)
    limit = 2.0 ** (state.acc_bits - 1) - 1

    def fits(scale: float, bound: np.ndarray) -> bool:
        worst = w_abs.astype(np.float64) @ bound + b_abs / (scale * s_w) + 1
        return bool(worst.max() < limit)

    scale, bits = state.grid_for(xi, fits, f"the {node.op}'s accumulator within "
                                           f"{state.acc_bits} bits")
    return state.common_grid(xi, scale, bits, name=f"{node.inputs[0].name}.g{bits}")


@lowering_rule("conv2d")
def lower_conv2d(graph: Graph, node: Node, state: LoweringState) -> bool:
    """qconv2d (grouped and depthwise alike) + requantize with per-channel multipliers
    M[c] = s_x * s_w[c] / s_y; a fused relu/clip becomes the clamp."""
    return _mac(graph, node, state, "qconv2d", dict(node.attrs))


@lowering_rule("linear")
def lower_linear(graph: Graph, node: Node, state: LoweringState) -> bool:
    """qlinear + requantize, per output feature (the last axis)."""
    return _mac(graph, node, state, "qlinear", {})


@lowering_rule("matmul")
def lower_matmul(graph: Graph, node: Node, state: LoweringState) -> bool:
    """qmatmul of two integer operands + requantize (per channel when b is a constant
    quantized along its last axis)."""
    target, q_out, act = state.result(node)
    a, b = node.inputs
    ai, bi = state.int_value(a), state.int_value(b)
    qa, qb = ai.quant, bi.quant
    if qa.per_channel:
        raise CannotLower(f"operand %{a.name} has per-channel params")
    out_rank = node.outputs[0].type.rank
    if qb.per_channel and not (b.type.rank >= 2 and qb.axis % b.type.rank == b.type.rank - 1):
        raise CannotLower(f"operand %{b.name} is per-channel along axis {qb.axis}; only its last "
                          f"axis (the output columns) is supported")
    acc_scale = _f32(qa.scale)[0] * _f32(qb.scale)
    axis = out_rank - 1
    acc = state.emit("qmatmul", [ai, bi], {"acc_bits": state.acc_bits}, name=f"{node.name}.acc",
                     quant=_acc_params(acc_scale, axis))
    y = state.requantize(acc, q_out, acc_scale / _f32(q_out.scale)[0], name=f"{target.name}.q",
                         clamp=state.clamp_range(q_out, act), axis=axis)
    state.set_int(target, y)
    return True


# ---- rules: element-wise arithmetic -------------------------------------------------------------

def _per_tensor(*values: Value) -> None:
    for v in values:
        if v.quant.per_channel:
            raise CannotLower(f"%{v.name} has per-channel params; element-wise integer ops take "
                              f"per-tensor operands")


@lowering_rule("add", "sub")
def lower_add_sub(graph: Graph, node: Node, state: LoweringState) -> bool:
    """qadd/qsub (TFLite's recipe): each input rescaled to 2 max(s_a, s_b) / 2**left_shift,
    summed, rescaled to the output; a fused relu/clip becomes the clamp."""
    rank = node.outputs[0].type.rank
    target, q_out, act = state.result(node, per_channel_axis=rank - 1)
    ai, bi = state.int_value(node.inputs[0]), state.int_value(node.inputs[1])
    if any(q.per_channel for q in (ai.quant, bi.quant, q_out)):
        return _add_per_channel(node, target, q_out, act, ai, bi, state)
    sa, sb, sy = _f32(ai.quant.scale)[0], _f32(bi.quant.scale)[0], _f32(q_out.scale)[0]
    bits = max(ai.quant.bits, bi.quant.bits)
    # (q - z) << left_shift must stay in int32 with a bit to spare for the sum: TFLite's 20 for
    # 8-bit operands, fewer for wider ones.
    left_shift = min(20, 30 - bits)
    twice_max = 2 * max(sa, sb)
    (ma,), (sha,) = state.multipliers(sa / twice_max)
    (mb,), (shb,) = state.multipliers(sb / twice_max)
    (mo,), (sho,) = state.multipliers(twice_max / (2.0 ** left_shift * sy))
    lo, hi = state.clamp_range(q_out, act)
    attrs = {"a_multiplier": ma, "a_shift": sha, "b_multiplier": mb, "b_shift": shb,
             "out_multiplier": mo, "out_shift": sho, "left_shift": left_shift,
             "rounding": state.rounding, "clamp_min": lo, "clamp_max": hi,
             "dtype": q_out.storage_dtype}
    y = state.emit("qadd" if node.op == "add" else "qsub", [ai, bi], attrs,
                   name=f"{target.name}.q", quant=q_out)
    state.set_int(target, y)
    return True


#: Bits of the common grid per-channel operands of an add are summed on: each magnitude stays
#: below 2**29, so their i32 sum cannot overflow, and the widening requantize's left shift
#: ((q - z) * 2**shift, gemmlowp_double) stays below 2**30.
ADD_GRID_BITS = 29


def _add_per_channel(node: Node, target: Value, q_out: QuantParams, act: Optional[Node],
                     ai: Value, bi: Value, state: LoweringState) -> bool:
    """An add with per-channel operands or output (a post-norm residual sum over BERT's
    hidden axis): both operands onto one i32 grid 2**-29 of the larger magnitude bound
    (their rounding there is ~2**-20 of any channel's step), an exact i32 `add`, and one
    requantize per output channel, as TFLite's ADD rescales both inputs to a common scale
    before one output rounding."""
    if node.op != "add":
        raise CannotLower(f"per-channel operands of {node.op}: only add has a per-channel form")
    for v in (ai, bi):
        if v.quant.per_channel and v.quant.axis % v.type.rank != v.type.rank - 1:
            raise CannotLower(f"%{v.name} is per-channel along axis {v.quant.axis}, not the "
                              f"last axis of the sum")
    reach = max(float(state.widest_channel(v).max()) for v in (ai, bi))
    scale = reach / (2.0 ** ADD_GRID_BITS - 2)
    wide = [state.common_grid(v, scale, 32, name=f"{v.name}.g32") for v in (ai, bi)]
    q_sum = QuantParams(scale, 0, bits=32, signed=True)
    total = state.emit("add", wide, {}, name=f"{target.name}.sum", quant=q_sum)
    axis = target.type.rank - 1 if q_out.per_channel else 1
    y = state.requantize(total, q_out, scale / _f32(q_out.scale), name=f"{target.name}.q",
                         clamp=state.clamp_range(q_out, act), axis=axis)
    state.set_int(target, y)
    return True


@lowering_rule("mul")
def lower_mul(graph: Graph, node: Node, state: LoweringState) -> bool:
    """qmul: (a - za)(b - zb) requantized by s_a s_b / s_y (fused relu/clip as the clamp)."""
    target, q_out, act = state.result(node)
    ai, bi = state.int_value(node.inputs[0]), state.int_value(node.inputs[1])
    _per_tensor(ai, bi)
    # TFLite's MUL forms s_a * s_b / s_y in float32 arithmetic (only the quotient is widened
    # for the Q31 encoding); the double quotient encodes to another m0 for some scales.
    sa, sb, sy = (np.float32(q.scale[0]) for q in (ai.quant, bi.quant, q_out))
    real = float(np.float32(np.float32(sa * sb) / sy))
    (m0,), (shift,) = state.multipliers(real)
    lo, hi = state.clamp_range(q_out, act)
    y = state.emit("qmul", [ai, bi], {"multiplier": m0, "shift": shift, "rounding": state.rounding,
                                      "clamp_min": lo, "clamp_max": hi,
                                      "dtype": q_out.storage_dtype},
                   name=f"{target.name}.q", quant=q_out)
    state.set_int(target, y)
    return True


# ---- rules: activations -------------------------------------------------------------------------

@lowering_rule("relu", "clip")
def lower_relu_clip(graph: Graph, node: Node, state: LoweringState) -> bool:
    """An activation `quantize` did not fuse: requantize onto the output grid, clamped. After
    an average pool on the same grid that only this activation reads, the clamp of that
    qavg_pool2d instead (TFLite's AVERAGE_POOL_2D with a fused activation): no requantize."""
    target, q_out, _ = state.result(node)
    x = node.inputs[0]
    xi = state.int_value(x)
    lo, hi = state.clamp_range(q_out, node)
    pool = xi.producer
    if (pool is not None and pool.op == "qavg_pool2d" and any(n is pool for n in state._created)
            and not xi.users and all(u is node for u in x.users)
            and not any(o is x for o in graph.outputs) and same_params(xi.quant, q_out)):
        pool.attrs["clamp_min"] = max(pool.attrs["clamp_min"], lo)
        pool.attrs["clamp_max"] = min(pool.attrs["clamp_max"], hi)
        state.set_int(target, xi)
        return True
    y = state.rescale_to(xi, q_out, name=f"{target.name}.q", clamp=(lo, hi))
    state.set_int(target, y)
    return True


#: Element-wise functions lowered to a 256-entry lookup table (8-bit inputs and smaller).
LUT_OPS = ("sigmoid", "tanh", "hardswish", "hardsigmoid", "gelu", "leaky_relu", "exp", "erf",
           "abs", "neg")


#: Functions whose TFLite kernel evaluates a float32 formula other than the correctly rounded
#: value the float kernel returns; the table uses TFLite's, so it is TFLite's table.
_TFLITE_F32 = {"sigmoid": luts.sigmoid_f32, "tanh": luts.tanh_f32}


@lowering_rule(*LUT_OPS)
def lower_lut(graph: Graph, node: Node, state: LoweringState) -> bool:
    """A `lut` with TFLite's table for every input code (qcompile.quant.luts): hardswish by
    TFLite's int16 fixed-point HARD_SWISH recipe, everything else by LUTPopulate (dequantize,
    f, multiply by 1/s_y and round half away, all in float32). The fake-quant simulation
    rounds f(x)/s_y half to even in float64, so the two can differ by one step on a code."""
    target = node.outputs[0]
    q_out = state.params(target)
    xi = state.int_value(node.inputs[0])
    qx = xi.quant
    if qx.bits > 8 or qx.per_channel or q_out.per_channel:
        raise CannotLower(f"a lookup table needs a per-tensor input of at most 8 bits, "
                          f"%{node.inputs[0].name} has {qx.bits}"
                          f"{' per-channel' if qx.per_channel else ''}")
    kernel = registry.get(node.op).kernels["float"]
    fn = _TFLITE_F32.get(node.op) or (lambda v: kernel(v, **node.attrs))
    args = (float(_f32(qx.scale)[0]), int(qx.zero_point[0]), float(_f32(q_out.scale)[0]),
            int(q_out.zero_point[0]))
    ranges = {"in_range": (qx.qmin, qx.qmax), "out_range": (q_out.qmin, q_out.qmax)}
    table = None
    if node.op == "hardswish":
        try:
            table = luts.hard_swish_table(*args, **ranges)
        except QuantError as exc:  # outside TFLite's own domain: the float32 table instead
            state.ctx.note(f"hardswish uses a float32 table, not TFLite's fixed-point recipe "
                           f"({exc})", node)
    if table is None:
        try:
            table = luts.float32_lut(fn, *args, **ranges)
        except QuantError as exc:
            raise CannotLower(f"{node.op} has no table: {exc}") from None
    y = state.emit("lut", [xi], {"table": table, "dtype": q_out.storage_dtype},
                   name=f"{target.name}.q", quant=q_out)
    state.set_int(target, y)
    return True


@lowering_rule("prelu")
def lower_prelu(graph: Graph, node: Node, state: LoweringState) -> bool:
    """qprelu: the identity branch rescaled by s_x / s_y, the negative branch multiplied by
    the integer slope and rescaled by s_x * s_slope[c] / s_y, one multiplier per channel."""
    target = node.outputs[0]
    q_out = state.params(target)
    x, slope = node.inputs
    if not slope.is_constant:
        raise CannotLower(f"slope %{slope.name} is not a constant")
    xi, si = state.int_value(x), state.int_value(slope)
    _per_tensor(xi)
    if q_out.per_channel:
        raise CannotLower(f"per-channel params on %{target.name}")
    sx, sy = _f32(xi.quant.scale)[0], _f32(q_out.scale)[0]
    (mp,), (sp,) = state.multipliers(sx / sy)
    mn, sn = state.multipliers(sx * _f32(si.quant.scale) / sy)
    y = state.emit("qprelu", [xi, si],
                   {"pos_multiplier": mp, "pos_shift": sp, "neg_multiplier": mn,
                    "neg_shift": sn, "axis": node.attrs["axis"], "rounding": state.rounding,
                    "clamp_min": q_out.qmin, "clamp_max": q_out.qmax,
                    "dtype": q_out.storage_dtype},
                   name=f"{target.name}.q", quant=q_out)
    state.set_int(target, y)
    return True


@lowering_rule("batch_norm")
def lower_batch_norm(graph: Graph, node: Node, state: LoweringState) -> bool:
    """Refused: a stand-alone batch norm is a float per-channel affine (its gamma, beta and
    statistics stay float under `quantize`), which has no exact integer form here."""
    raise CannotLower("a batch_norm left in the graph has no exact integer form; run fold-bn "
                      "before quantize to fold it into the preceding conv/linear")


# ---- rules: data movement and pooling -----------------------------------------------------------

@lowering_rule(*sorted(PASS_THROUGH_OPS))
def lower_pass_through(graph: Graph, node: Node, state: LoweringState) -> bool:
    """Max pooling and the shape ops run unchanged on integers (their output reuses the input's
    params); a requantize follows if `quantize` gave the output other params."""
    target = node.outputs[0]
    q_out = state.params(target)
    xi = state.int_value(node.inputs[0])
    if xi.quant.per_channel and node.op != "identity":
        raise CannotLower(f"per-channel params on %{node.inputs[0].name} would not follow "
                          f"the data through {node.op}")
    y = state.emit(node.op, [xi], dict(node.attrs), name=f"{target.name}.q", quant=xi.quant)
    if not same_params(xi.quant, q_out):
        y = state.rescale_to(y, q_out, name=f"{target.name}.rq")
    state.set_int(target, y)
    return True


@lowering_rule("concat")
def lower_concat(graph: Graph, node: Node, state: LoweringState) -> bool:
    """concat of inputs on the output's grid: inputs with other params are requantized first."""
    target = node.outputs[0]
    q_out = state.params(target)
    parts = []
    for i, v in enumerate(node.inputs):
        vi = state.int_value(v)
        _per_tensor(vi)
        parts.append(state.rescale_to(vi, q_out, name=f"{target.name}.in{i}"))
    if q_out.per_channel:
        raise CannotLower(f"per-channel params on %{target.name}")
    y = state.emit("concat", parts, dict(node.attrs), name=f"{target.name}.q", quant=q_out)
    state.set_int(target, y)
    return True


@lowering_rule("pad")
def lower_pad(graph: Graph, node: Node, state: LoweringState) -> bool:
    """pad on integers with the fill's code on the input grid (0.0 pads with the zero point)."""
    target = node.outputs[0]
    q_out = state.params(target)
    xi = state.int_value(node.inputs[0])
    qx = xi.quant
    _per_tensor(xi)
    code = int(quantize_float(np.float32(node.attrs["value"]), _f32(qx.scale)[0], qx.zero_point[0],
                              qx.qmin, qx.qmax, "half_even"))
    y = state.emit("pad", [xi], {**node.attrs, "value": float(code)}, name=f"{target.name}.p",
                   quant=qx)
    state.set_int(target, state.rescale_to(y, q_out, name=f"{target.name}.q"))
    return True


def _constant_divisor(x: Value, attrs: dict) -> Optional[int]:
    """kh * kw when every window of the pooling divides by it (no excluded padding, no ceil_mode
    overrun), else None. Needs static H and W."""
    h, w = x.type.shape[2:]
    if h is None or w is None:
        return None
    kernel, pad = attrs["kernel"], attrs["padding"]
    stride = tuple(attrs["stride"]) or tuple(kernel)
    oh, ow = pool_defs._out_hw(x.type.shape, kernel, stride, pad, (1, 1), attrs["ceil_mode"])
    dh = pool_defs._divisor_1d(h, oh, kernel[0], stride[0], pad[0], pad[2],
                               attrs["count_include_pad"])
    dw = pool_defs._divisor_1d(w, ow, kernel[1], stride[1], pad[1], pad[3],
                               attrs["count_include_pad"])
    if (dh == kernel[0]).all() and (dw == kernel[1]).all():
        return kernel[0] * kernel[1]
    return None


def _avg_pool(state: LoweringState, node: Node, attrs: dict, keepdims: bool = True) -> bool:
    """Average pooling onto the output grid. Same params in and out: qavg_pool2d (TFLite's
    AVERAGE_POOL). Different params (a mean usually has a narrower range than its input, so a
    finer grid): rounding the mean on the input grid first would cost up to half an input step,
    several output steps; so when every window has the same divisor k, the window sum of
    q - zx is taken by a depthwise qconv2d with weights 1 and requantized once by
    s_x / (k s_y). Only pooling with a varying divisor and different params rounds twice."""
    target = node.outputs[0]
    x = node.inputs[0]
    q_out = state.params(target)
    xi = state.int_value(x)
    _per_tensor(xi)
    if q_out.per_channel:
        raise CannotLower(f"per-channel params on %{target.name}")
    name = f"{target.name}.q"
    k = _constant_divisor(x, attrs)
    if same_params(xi.quant, q_out) or k is None:
        y = state.emit("qavg_pool2d", [xi], attrs, name=name + ("" if keepdims else ".pool"),
                       quant=xi.quant)
        y = state.rescale_to(y, q_out, name=name + ".rq")
    else:
        c = x.type.shape[1]
        ones = state.graph.add_constant(f"{target.name}.ones",
                                        np.ones((c, 1) + tuple(attrs["kernel"]), np.int8),
                                        dtype="i8", quant=QuantParams(1.0, 0, bits=8))
        state._consts[id(ones)] = (ones, ones.name)
        s_x = _f32(xi.quant.scale)[0]
        stride = tuple(attrs["stride"]) or tuple(attrs["kernel"])
        acc = state.emit("qconv2d", [xi, ones, None],
                         {"stride": stride, "padding": tuple(attrs["padding"]), "groups": c,
                          "acc_bits": state.acc_bits},
                         name=f"{target.name}.sum", quant=_acc_params(np.array([s_x]), 1))
        y = state.requantize(acc, q_out, s_x / (k * _f32(q_out.scale)[0]),
                             name=name + ("" if keepdims else ".pool"))
    if not keepdims:
        y = state.emit("reshape", [y], {"shape": tuple(d if d is not None else -1
                                                       for d in target.type.shape)},
                       name=name, quant=y.quant)
    state.set_int(target, y)
    return True


@lowering_rule("avg_pool2d")
def lower_avg_pool2d(graph: Graph, node: Node, state: LoweringState) -> bool:
    """qavg_pool2d on the input grid, then a requantize if the output has other params."""
    return _avg_pool(state, node, dict(node.attrs))


def _global_attrs(node: Node) -> dict:
    h, w = node.inputs[0].type.shape[2:]
    if h is None or w is None:
        raise CannotLower(f"global average pooling over a dynamic H x W "
                          f"({node.inputs[0].type.shape}) needs static sizes")
    return {"kernel": (h, w), "stride": (1, 1), "padding": (0, 0, 0, 0), "ceil_mode": False,
            "count_include_pad": True}


@lowering_rule("global_avg_pool")
def lower_global_avg_pool(graph: Graph, node: Node, state: LoweringState) -> bool:
    """qavg_pool2d with the kernel equal to H x W, then a requantize if params differ."""
    return _avg_pool(state, node, _global_attrs(node))


@lowering_rule("mean")
def lower_mean(graph: Graph, node: Node, state: LoweringState) -> bool:
    """A mean over the two spatial axes of an NCHW tensor is a global average pool."""
    x = node.inputs[0]
    axes = tuple(sorted(a % max(x.type.rank, 1) for a in node.attrs["axes"]))
    if x.type.rank != 4 or axes != (2, 3):
        raise CannotLower(f"only a mean over the spatial axes (2, 3) of an NCHW tensor has an "
                          f"integer form, got axes {tuple(node.attrs['axes'])} of rank "
                          f"{x.type.rank}")
    return _avg_pool(state, node, _global_attrs(node), keepdims=node.attrs["keepdims"])
