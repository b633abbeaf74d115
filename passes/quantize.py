"""`quantize`: give every value that an integer graph would store its `QuantParams`, from the
ranges `calibrate` recorded and from the weights themselves. No weight changes: the fake-quant
interpreter simulates the result, and `lower-integer` turns it into integer ops later.

Where parameters go (values only, never node attributes):
  * activations that are *materialised*: graph inputs read by a quantized op, and every float
    output of a quantized op, except the output of a conv/linear/matmul/add/sub/mul/batch_norm
    whose only user is a relu or clip (the activation is applied as a clamp while requantizing,
    so only the activation's output exists in memory);
  * boundaries: the output of a float op that a quantized op reads;
  * pass-through ops (max pooling and the "shape" ops) reuse their input's parameters, and the
    inputs of a concat share the concat's, so these ops need no requantization. The sharing is
    transitive: each group of tied values gets one QuantParams covering all their ranges;
  * weights of MAC ops: per output channel (axis 0 of conv2d/linear weights, the last axis of a
    constant matmul operand) and symmetric by default;
  * biases of conv2d/linear: `bias_bits` (32) wide, zero point 0, scale `s_x * s_w` (per
    channel when the weights are);
  * other constant operands of quantized ops (an add's constant, a prelu slope): per tensor
    (slopes per channel), from their data.
With `transformer=true` the scheme also quantizes softmax, masked_softmax, layer_norm, gelu,
gather, reduce_sum and div (`TRANSFORMER_QUANTIZE_OPS`), so a BERT-like encoder lowers to an
integer-only graph (passes/lower_integer_transformer.py). A quantized softmax's output gets the
fixed grid 2**-bits (`FIXED_GRID_OPS`), and a gather's output shares its table's params.
`act_per_channel=[names]` gives the outputs of those nodes/ops per-channel params along the
last axis when every user reads that axis channel by channel (a layer_norm, a linear's input,
a residual add into one): BERT's outlier hidden channels. lower-integer moves them onto a common
per-tensor grid for each reader (docs/integer-semantics.md, "Per-channel activations").
Values that are non-negative by construction (after relu, relu6, sigmoid...) are stored unsigned
with zero point 0 when the scheme allows it. Ops outside the scheme's `quantize_ops` (softmax,
layer_norm, ...) stay float: they are listed in `graph.meta["float_ops"]` and noted.

`batch_norm` nodes left in the graph (no `fold-bn` before) are quantized like any per-channel
affine op: their output is materialised (or fused into a following relu) while gamma, beta and
the statistics stay float.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from qcompile.errors import PassError, PipelineError
from qcompile.ir.graph import Graph, Node, Value
from qcompile.ir.ops import registry
from qcompile.ir.types import QuantParams, is_float
from qcompile.passmanager import Pass, PassContext, register_pass
from qcompile.quant.calibration import nonnegative_values
from qcompile.quant.intmath import QuantError
from qcompile.quant.observers import choose_qparams
from qcompile.quant.scheme import (FIXED_GRID_OPS, FUSABLE_ACTIVATIONS, FUSING_PRODUCERS,
                                   PASS_THROUGH_OPS, TRANSFORMER_QUANTIZE_OPS, QuantScheme,
                                   check_bits)

#: Inputs that are parameters of a float computation inside a quantized op, not data to quantize.
_FLOAT_PARAM_SLOTS = {"batch_norm": (1, 2, 3, 4)}
#: Ops whose constant operands are quantized like activations (per tensor, from their data).
_ELEMENTWISE_CONST_OPS = frozenset({"add", "sub", "mul", "maximum", "minimum"})


@register_pass("quantize")
@dataclass(frozen=True)
class Quantize(Pass):
    """Assign QuantParams to activations, weights and biases from the calibrated ranges."""

    w: Optional[int] = None             # weight bits (none: the target's scheme, else 8)
    a: Optional[int] = None             # activation bits (none: the target's scheme, else 8)
    per_channel: Optional[bool] = None  # per-output-channel weights (default true)
    symmetric: Optional[bool] = None    # symmetric activations, zero point 0 (default false)
    pow2: Optional[bool] = None         # power-of-two scales (default false)
    unsigned: Optional[bool] = None     # unsigned storage for non-negative values (default true)
    keep_float: tuple[str, ...] = ()    # node names or op names to leave float
    transformer: bool = False           # also softmax, layer_norm, gelu, gather, reduce_sum, div
    act_per_channel: tuple[str, ...] = ()  # node/op names: per-channel (last axis) LN inputs

    def __post_init__(self) -> None:
        super().__post_init__()
        for option in ("w", "a"):
            value = getattr(self, option)
            if value is not None:
                try:
                    check_bits(value, option)
                except QuantError as exc:
                    raise PipelineError(f"pass 'quantize', {exc}") from None

    def scheme(self, ctx: PassContext) -> QuantScheme:
        """The scheme this run uses: the target's `quant_scheme` (or the defaults) with this
        pass's explicit options on top."""
        base = getattr(ctx.target, "quant_scheme", None) if ctx.target is not None else None
        if base is None:
            base = QuantScheme()
        elif not isinstance(base, QuantScheme):
            raise PassError(f"target's quant_scheme is a {type(base).__name__}, not a QuantScheme")
        extra = base.quantize_ops | TRANSFORMER_QUANTIZE_OPS if self.transformer else None
        return base.replace(weight_bits=self.w, act_bits=self.a, per_channel=self.per_channel,
                            act_symmetric=self.symmetric, pow2=self.pow2,
                            unsigned_activations=self.unsigned, quantize_ops=extra)

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        scheme = self.scheme(ctx)
        plan = _Planner(graph, ctx, scheme, set(self.keep_float), set(self.act_per_channel))
        changed = plan.run()
        graph.meta["quant_scheme"] = {k: (sorted(v) if isinstance(v, frozenset) else v)
                                      for k, v in dataclasses.asdict(scheme).items()}
        return changed


class _Planner:
    """One run of the pass: decides which values are tied, then gives each group its params."""

    def __init__(self, graph: Graph, ctx: PassContext, scheme: QuantScheme, keep_float: set,
                 act_per_channel: set = frozenset()):
        self.graph, self.ctx, self.scheme = graph, ctx, scheme
        self.keep_float = keep_float
        self.act_per_channel = act_per_channel
        self.nonneg = nonnegative_values(graph)
        self.outputs = {id(v) for v in graph.outputs}
        self.parent: dict[int, int] = {}       # union-find over id(Value)
        self.by_id: dict[int, Value] = {}
        self.assigned: dict[int, QuantParams] = {}

    # ---- which nodes and values -----------------------------------------------------------
    def quantized(self, node: Node) -> bool:
        if node.op not in self.scheme.quantize_ops or "quant_aware" in registry.get(node.op).traits:
            return False
        if node.name in self.keep_float or node.op in self.keep_float:
            return False
        return any(is_float(o.dtype) for o in node.outputs)

    def fused(self, v: Value) -> bool:
        """A MAC/add/bn output consumed only by a quantized relu/clip: never materialised."""
        node = v.producer
        if node is None or node.op not in FUSING_PRODUCERS or not self.quantized(node):
            return False
        if id(v) in self.outputs or len(v.users) != 1:
            return False
        user = v.users[0]
        return user.op in FUSABLE_ACTIVATIONS and self.quantized(user) and user.inputs[0] is v

    def data_inputs(self, node: Node) -> list[tuple[int, Value]]:
        skip = _FLOAT_PARAM_SLOTS.get(node.op, ())
        return [(i, v) for i, v in enumerate(node.inputs)
                if v is not None and i not in skip and is_float(v.dtype)]

    # ---- union-find ------------------------------------------------------------------------
    def _add(self, v: Value) -> None:
        if id(v) not in self.parent:
            self.parent[id(v)] = id(v)
            self.by_id[id(v)] = v

    def _find(self, k: int) -> int:
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def _union(self, a: Value, b: Value) -> None:
        self._add(a)
        self._add(b)
        ra, rb = self._find(id(a)), self._find(id(b))
        if ra != rb:
            self.parent[rb] = ra

    # ---- the pass --------------------------------------------------------------------------
    def run(self) -> bool:
        graph = self.graph
        for v in list(graph.values.values()):
            if is_float(v.dtype) and v.quant is not None:
                v.quant = None  # a re-run starts from scratch
        self._collect_activations()
        self._assign_activation_groups()
        for node in graph.nodes:
            if self.quantized(node):
                self._assign_constants(node)
        self._record_float_islands()
        for k, q in self.assigned.items():
            self.by_id[k].quant = q
        return bool(self.assigned)

    def _collect_activations(self) -> None:
        """Every activation that needs params joins the union-find, tied where ops share."""
        for node in self.graph.nodes:
            if not self.quantized(node):
                continue
            for _, v in self.data_inputs(node):
                if v.data is None and not self.fused(v):
                    self._add(v)  # a graph input, a boundary from a float op, or our own output
            for o in node.outputs:
                if is_float(o.dtype) and not self.fused(o):
                    self._add(o)
            x = node.inputs[0] if node.inputs else None
            if node.op in PASS_THROUGH_OPS and x is not None and is_float(x.dtype):
                self._union(node.outputs[0], x)
            elif node.op == "gather" and x is not None and is_float(x.dtype):
                self._union(node.outputs[0], x)  # rows of the table, unchanged
            elif node.op == "concat":
                for v in node.inputs:
                    if v is not None and is_float(v.dtype):
                        self._union(node.outputs[0], v)

    def _assign_activation_groups(self) -> None:
        groups: dict[int, list[Value]] = {}
        for k in self.parent:
            groups.setdefault(self._find(k), []).append(self.by_id[k])
        ranges = self.graph.meta.get("ranges")
        if groups and ranges is None:
            raise PassError("no activation ranges: run 'calibrate' before 'quantize' "
                            "(graph.meta['ranges'] is missing)")
        for members in groups.values():
            lo, hi = self._group_range(members, ranges)
            if lo is None:
                names = ", ".join("%" + v.name for v in members[:5])
                self.ctx.error(f"no calibrated range for {names}; was the graph changed after "
                               f"'calibrate'? Run it again", members[0].producer)
                continue
            nonneg = all(self._nonneg(v) for v in members)
            q = self._fixed_grid(members) or self._per_channel_params(members, ranges, nonneg) \
                or self._activation_params(lo, hi, nonneg)
            for v in members:
                self.assigned[id(v)] = q

    def _group_range(self, members: list[Value], ranges: dict):
        los, his = [], []
        for v in members:
            if v.data is not None:
                data = np.asarray(v.data, np.float64)
                if data.size:
                    los.append(data.min())
                    his.append(data.max())
            elif v.name in ranges:
                lo, hi = ranges[v.name]
                los.append(np.min(lo))
                his.append(np.max(hi))
        if not los:
            return None, None
        return float(min(los)), float(max(his))

    def _fixed_grid(self, members: list[Value]) -> Optional[QuantParams]:
        """Softmax outputs (FIXED_GRID_OPS) get scale 2**-bits over [0, 1), as TFLite."""
        if not any(v.producer is not None and v.producer.op in FIXED_GRID_OPS
                   and self.quantized(v.producer) for v in members):
            return None
        s = self.scheme
        signed = not s.unsigned_activations
        zp = -(1 << (s.act_bits - 1)) if signed else 0
        return QuantParams(2.0 ** -s.act_bits, zp, bits=s.act_bits, signed=signed, pow2=s.pow2)

    # ---- per-channel activations (LayerNorm inputs) ----------------------------------------
    def _per_channel_params(self, members: list[Value], ranges: dict,
                            nonneg: bool) -> Optional[QuantParams]:
        """Per-channel params along the last axis for an output of an op named in
        `act_per_channel` whose users all take the last axis channel by channel: LayerNorms
        (directly or through residual adds), which read each token's channels together and can
        rescale them on the way in, and linears, whose weight columns can absorb one scale per
        input channel. BERT's outlier channels live in these values. None: per tensor."""
        v = members[0]
        node = v.producer
        if node is None or not (node.name in self.act_per_channel
                                or node.op in self.act_per_channel):
            return None
        if len(members) > 1:
            self.ctx.note(f"%{v.name} shares its params with {len(members) - 1} other value(s); "
                          f"kept per tensor", node)
            return None
        if not self._feeds_layer_norm(v):
            self.ctx.note(f"%{v.name} reaches something other than a layer_norm over its last "
                          f"axis; kept per tensor", node)
            return None
        last = v.type.rank - 1
        axes = self.graph.meta.get("range_axes", {})
        if v.type.rank < 2 or axes.get(v.name) != last:
            raise PassError(f"act_per_channel: %{v.name} (output of node {node.name}) has no "
                            f"per-channel range along its last axis; calibrate with "
                            f"calibrate{{per_channel=true, per_channel_axis=-1}}")
        lo, hi = _typical_channel_floor(*(np.asarray(r, np.float64) for r in ranges[v.name]))
        s = self.scheme
        signed = not (nonneg and s.unsigned_activations)
        scale, zp = choose_qparams(0.0 if not signed else lo, hi, s.act_bits, signed=signed,
                                   symmetric=s.act_symmetric and signed, pow2=s.pow2)
        scale, zp = np.broadcast_arrays(scale, zp)
        return QuantParams(scale, zp, bits=s.act_bits, signed=signed, axis=last, pow2=s.pow2)

    def _feeds_layer_norm(self, v: Value, depth: int = 0) -> bool:
        """Every user of `v` reads its last axis channel by channel: a layer_norm over the
        last axis, a linear (as its input), or an add/sub whose outputs do the same (a post-norm
        residual chain); and `v` is no graph output."""
        if id(v) in self.outputs or not v.users or depth > 8:
            return False
        for user in v.users:
            if user.op == "layer_norm":
                if user.inputs[0] is not v or user.attrs.get("axis", -1) % v.type.rank \
                        != v.type.rank - 1:
                    return False
            elif user.op in ("add", "sub"):
                if not all(self._feeds_layer_norm(o, depth + 1) for o in user.outputs):
                    return False
            elif user.op == "linear":
                # x's last axis is the weight's input axis: a scale per input channel folds
                # into the weight columns before they are quantized per output channel
                if user.inputs[0] is not v:
                    return False
            else:
                return False
        return True

    def _nonneg(self, v: Value) -> bool:
        if v.data is not None:
            return bool(np.all(np.asarray(v.data) >= 0))
        return v.name in self.nonneg

    def _activation_params(self, lo: float, hi: float, nonneg: bool) -> QuantParams:
        s = self.scheme
        bits = s.act_bits
        if nonneg and s.unsigned_activations:
            # zero point 0 on an unsigned grid: all codes cover [0, hi]
            scale, zp = choose_qparams(0.0, hi, bits, signed=False, symmetric=False, pow2=s.pow2)
            signed = False
        else:
            scale, zp = choose_qparams(lo, hi, bits, signed=True, symmetric=s.act_symmetric,
                                       pow2=s.pow2)
            signed = True
        return QuantParams(scale, zp, bits=bits, signed=signed, pow2=s.pow2)

    # ---- constants -------------------------------------------------------------------------
    def _give(self, v: Value, q: QuantParams, node: Node) -> None:
        old = self.assigned.get(id(v))
        if old is not None and old != q:
            self.ctx.warn(f"constant %{v.name} is used with different quantization parameters; "
                          f"keeping the first", node)
            return
        self.by_id[id(v)] = v
        self.assigned[id(v)] = q

    def _assign_constants(self, node: Node) -> None:
        s = self.scheme
        inputs = node.inputs
        if node.op in ("conv2d", "linear"):
            w = inputs[1]
            if w is not None and w.data is not None and is_float(w.dtype):
                self._give(w, self._weight_params(w.data, 0 if s.per_channel else None), node)
            b = inputs[2] if len(inputs) > 2 else None
            if b is not None and b.data is not None and is_float(b.dtype):
                self._bias(node, b)
        elif node.op == "matmul":
            for i, v in enumerate(inputs[:2]):
                if v is not None and v.data is not None and is_float(v.dtype):
                    axis = v.type.rank - 1 if (i == 1 and s.per_channel and v.type.rank >= 2) \
                        else None
                    self._give(v, self._weight_params(v.data, axis), node)
        elif node.op == "prelu":
            slope = inputs[1]
            if slope.data is not None and is_float(slope.dtype):
                axis = 0 if s.per_channel and slope.type.rank == 1 and slope.data.size > 1 else None
                self._give(slope, self._weight_params(slope.data, axis), node)
        elif node.op in _ELEMENTWISE_CONST_OPS:
            for v in inputs:
                if v is not None and v.data is not None and is_float(v.dtype) \
                        and id(v) not in self.assigned:
                    data = np.asarray(v.data, np.float64)
                    self._give(v, self._activation_params(float(data.min()), float(data.max()),
                                                          self._nonneg(v)), node)

    def _weight_params(self, data: np.ndarray, axis: Optional[int]) -> QuantParams:
        s = self.scheme
        a = np.asarray(data, np.float64)
        if axis is None:
            lo, hi = a.min(), a.max()
        else:
            rows = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
            lo, hi = rows.min(axis=1), rows.max(axis=1)
        scale, zp = choose_qparams(lo, hi, s.weight_bits, signed=True,
                                   symmetric=s.weight_symmetric, pow2=s.pow2)
        return QuantParams(scale, zp, bits=s.weight_bits, signed=True, axis=axis, pow2=s.pow2)

    def _bias(self, node: Node, b: Value) -> None:
        x, w = node.inputs[0], node.inputs[1]
        qx, qw = self.assigned.get(id(x)), self.assigned.get(id(w))
        if qx is None or qw is None:
            self.ctx.warn("bias left float: the input or the weight has no quantization "
                          "parameters", node)
            return
        scale = qx.scale[0] * np.asarray(qw.scale, np.float64)
        axis = 0 if qw.axis is not None else None
        bits = self.scheme.bias_bits
        q = QuantParams(scale, np.zeros(scale.size, np.int64), bits=bits, signed=True, axis=axis,
                        pow2=self.scheme.pow2)
        codes = np.abs(np.asarray(b.data, np.float64)) / q.scale_array(1)
        if codes.size and codes.max() > q.qmax:
            self.ctx.warn(f"bias %{b.name} needs {float(codes.max()):.3g} x its scale, beyond "
                          f"the {bits}-bit range; it saturates", node)
        self._give(b, q, node)

    # ---- float islands ---------------------------------------------------------------------
    def _record_float_islands(self) -> None:
        islands = {}
        for node in self.graph.nodes:
            if any(is_float(o.dtype) for o in node.outputs) and not self.quantized(node) \
                    and "quant_aware" not in registry.get(node.op).traits:
                islands[node.name] = node.op
                self.ctx.note(f"{node.op} stays float (not a quantized op in this scheme)", node)
        self.graph.meta["float_ops"] = islands


#: A channel whose peak |value| exceeds this many times the median channel peak is an outlier.
OUTLIER_FACTOR = 4.0


def _typical_channel_floor(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ranges widened to at least the range of all the ordinary channels together.
    Per-channel minmax on a few hundred calibration tokens is tight: an ordinary channel that
    happened to stay small would clip on new data. Only the outlier channels (the reason for
    per-channel scales) keep a range of their own beyond the shared one."""
    peak = np.maximum(-lo, hi)
    typical = peak <= OUTLIER_FACTOR * np.median(peak)
    if not typical.any():
        return lo, hi
    return np.minimum(lo, lo[typical].min()), np.maximum(hi, hi[typical].max())
