"""Accumulator width: how many bits the integer sums of MAC ops need, proven and observed.

For a MAC op (qconv2d / qlinear / qmatmul in an integer graph, or conv2d / linear / matmul
carrying QuantParams in a quantized float graph) every output channel c accumulates

    acc[c] = sum_k (w[c,k] - z_w) * (x[k] - z_x) + bias[c]

With the centred input confined to its integer range [lx, hx] (lx = qmin - z_x <= 0 <= hx =
qmax - z_x) and P[c] / N[c] the sums of the positive / negative centred weights, the exact
extremes over all inputs are

    hi[c] = hx * P[c] + lx * N[c] + bias[c]        lo[c] = lx * P[c] + hx * N[c] + bias[c]

(each term is maximised independently, so both are reached: by x at qmax where w > z_w and qmin
where w < z_w, and the reverse). The A2Q guarantee `|acc| <= ||w - z_w||_1 * max|x - z_x| +
|bias|` contains that interval and is reported too. For qmatmul of two activations each term lies
between the extreme corner products of the two ranges, times the reduction length.

The bits an accumulator needs are the signed width holding [lo, hi]. Because the integer IR wraps
the *final* sum to `acc_bits` (two's complement arithmetic is modular), a channel is safe exactly
when its final sum fits; the order of the additions does not matter.

`AccumulatorObserver` runs the graph (integer interpreter, or the fake-quant one before lowering)
and recomputes every accumulator exactly in float64 (exact: all partial sums are integers below
2**53, which `exact_accumulators` checks) to give the widths reached on real data and the number
of values that would wrap at a given width. `project_layer` is the A2Q-style repair: the
Euclidean projection of each offending channel's weights onto an L1 ball (soft-thresholding)
whose radius is the largest for which the bound fits, re-quantized and bias-corrected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.ops import registry
from ..ir.types import QuantParams, int_range, is_float
from .intmath import QuantError, quantize_float

#: Integer MAC ops and the float ops they are lowered from.
INTEGER_MACS = {"qconv2d": "conv2d", "qlinear": "linear", "qmatmul": "matmul"}
FLOAT_MACS = ("conv2d", "linear", "matmul")
#: float64 sums of integers are exact below this magnitude.
_EXACT_LIMIT = 1 << 53


class AccumulatorError(QuantError):
    """An accumulator that cannot be analysed or repaired as asked (a missing quantization
    parameter, a bias that alone overflows, a reduction that cannot be split further)."""


# --------------------------------------------------------------------------- integer helpers

def signed_bits(lo: Any, hi: Any) -> np.ndarray:
    """The smallest signed widths whose range [-2**(b-1), 2**(b-1) - 1] holds [lo, hi]
    (elementwise; 1 for [0, 0] or [-1, 0]). Exact on Python ints, whatever the magnitude."""
    lo_a, hi_a = np.broadcast_arrays(np.asarray(lo, dtype=object), np.asarray(hi, dtype=object))
    out = np.empty(lo_a.shape, dtype=np.int64)
    for idx in np.ndindex(lo_a.shape):
        a, b = int(lo_a[idx]), int(hi_a[idx])
        need = max(b.bit_length() if b >= 0 else 0, (-a - 1).bit_length() if a < 0 else 0)
        out[idx] = need + 1
    return out


def acc_limits(bits: int) -> tuple[int, int]:
    """[min, max] of a `bits`-wide signed accumulator."""
    if not 2 <= bits <= 64:
        raise AccumulatorError(f"accumulator width {bits} not in 2..64")
    return int_range(bits, True)


def wrap(acc: np.ndarray, bits: int) -> np.ndarray:
    """Two's complement wrap of exact int64 sums to `bits` (what a `bits`-wide adder leaves)."""
    acc = np.asarray(acc, dtype=np.int64)
    if bits >= 64:
        return acc
    half = np.int64(1) << np.int64(bits - 1)
    return ((acc + half) & ((half << np.int64(1)) - 1)) - half


def _centred_range(q: QuantParams, what: str) -> tuple[int, int]:
    """[qmin - z, qmax - z] over all zero points (per-channel activations take the union)."""
    zps = np.asarray(q.zero_point, dtype=np.int64)
    return int(q.qmin - zps.max()), int(q.qmax - zps.min())


# --------------------------------------------------------------------------- MAC layers

@dataclass
class MacLayer:
    """One MAC node seen as `acc = W_c . (x - z_x) + bias` per output channel.

    `rows` is (C, K): the centred integer weights of each output channel over its reduction
    (conv: Cg*KH*KW of its group; linear: in_features; matmul with a constant right operand:
    the column). A qmatmul of two activations has `rows` None and `operand_range` set instead.
    """

    node: Node
    kind: str                          # "conv2d" | "linear" | "matmul"
    integer: bool                      # lowered (integer ops) or quantized float graph
    x: Value
    w: Value                           # weight, or the right operand of an activation matmul
    bias: Optional[Value]
    x_range: tuple[int, int]           # centred integer range of x
    rows: Optional[np.ndarray]         # (C, K) int64 centred weights
    bias_q: np.ndarray                 # (C,) int64 (zeros without bias)
    reduction: int                     # K
    operand_range: Optional[tuple[int, int]] = None
    # per reduction element (K,) centred ranges of x when they are known to be narrower than
    # x_range: a linear reading a per-channel activation moved onto one common grid
    feature_range: Optional[tuple[np.ndarray, np.ndarray]] = None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def channels(self) -> int:
        return int(self.bias_q.size)

    @property
    def channel_axis(self) -> int:
        return 1 if self.kind == "conv2d" else -1

    @property
    def groups(self) -> int:
        return int(self.node.attrs.get("groups", 1)) if self.kind == "conv2d" else 1

    # -- bounds -----------------------------------------------------------------------------
    def sum_interval(self, rows: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact (min, max) of the bias-free sum per channel over all inputs in range."""
        lx, hx = self.x_range
        if self.rows is None:
            la, ha = self.x_range
            lb, hb = self.operand_range
            corners = [la * lb, la * hb, ha * lb, ha * hb]
            k = self.reduction
            return (np.full(self.channels, k * min(corners), np.int64),
                    np.full(self.channels, k * max(corners), np.int64))
        rows = self.rows if rows is None else rows
        pos, neg = np.where(rows > 0, rows, 0), np.where(rows < 0, rows, 0)
        if self.feature_range is not None and rows.shape[1] == self.reduction:
            flo, fhi = self.feature_range  # each term maximised with its own element's range
            return pos @ flo + neg @ fhi, pos @ fhi + neg @ flo
        pos, neg = pos.sum(axis=1), neg.sum(axis=1)
        return lx * pos + hx * neg, hx * pos + lx * neg

    def l1_bound(self) -> np.ndarray:
        """The A2Q bound ||w - z_w||_1 * max|x - z_x| + |bias| per channel (product bound
        K * max|a| * max|b| for two activations; with per-element input ranges, the sum of
        |w - z_w| times each element's own max |x - z_x|)."""
        xmax = max(-self.x_range[0], self.x_range[1])
        if self.rows is None:
            bmax = max(-self.operand_range[0], self.operand_range[1])
            return np.full(self.channels, self.reduction * xmax * bmax, np.int64)
        if self.feature_range is not None:
            flo, fhi = self.feature_range
            return np.abs(self.rows) @ np.maximum(-flo, fhi) + np.abs(self.bias_q)
        return np.abs(self.rows).sum(axis=1) * xmax + np.abs(self.bias_q)

    def weight_l1(self) -> Optional[np.ndarray]:
        return None if self.rows is None else np.abs(self.rows).sum(axis=1)

    # -- exact evaluation -------------------------------------------------------------------
    def exact(self, x_c: np.ndarray, operand_c: Optional[np.ndarray] = None,
              rows: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
              with_bias: bool = True) -> np.ndarray:
        """The exact int64 accumulators for centred integer input(s), with these `rows` and
        `bias` (default: the layer's own)."""
        rows = self.rows if rows is None else rows
        bias = self.bias_q if bias is None else bias
        lo, hi = self.sum_interval(rows)
        worst = max(int(np.max(np.abs(lo))), int(np.max(np.abs(hi))), 0)
        if worst >= _EXACT_LIMIT:
            raise AccumulatorError(f"layer %{self.name}: accumulators up to {worst} are beyond "
                                   f"exact float64 evaluation (2**53)")
        xf = np.asarray(x_c, dtype=np.float64)
        if self.kind == "conv2d":
            w = rows.reshape(self._weight_shape()).astype(np.float64)
            attrs = {k: self.node.attrs[k] for k in ("stride", "padding", "dilation", "groups")}
            out = registry.get("conv2d").kernels["float"](xf, w, None, **attrs)
        elif self.kind == "linear":
            out = xf @ rows.T.astype(np.float64)
        elif self.rows is not None:  # matmul with a constant right operand: rows are columns
            out = xf @ rows.T.astype(np.float64)
        else:
            out = np.matmul(xf, np.asarray(operand_c, dtype=np.float64))
        acc = np.rint(out).astype(np.int64)
        if with_bias and self.rows is not None:
            shape = [1] * acc.ndim
            shape[self.channel_axis] = bias.size
            acc = acc + bias.reshape(shape)
        return acc

    def _weight_shape(self) -> tuple:
        return tuple(self.w.shape)

    def patch_matrix_means(self, x_c: np.ndarray) -> tuple[np.ndarray, int]:
        """Per channel, the sum over positions of each reduction element's input, shaped like
        `rows` (so `(dW * sums).sum(1) / count` is the mean change of the accumulator), and the
        number of positions summed."""
        xf = np.asarray(x_c, dtype=np.float64)
        if self.kind == "conv2d":
            o, cg, kh, kw = self._weight_shape()
            g, k = self.groups, cg * kh * kw
            # A one-hot kernel per reduction element and group extracts every patch element:
            # the grouped conv gives (N, G*K, OH, OW) whose channel g*K + j is element j.
            eye = np.eye(k).reshape(k, cg, kh, kw)
            attrs = {a: self.node.attrs[a] for a in ("stride", "padding", "dilation")}
            patches = registry.get("conv2d").kernels["float"](
                xf, np.tile(eye, (g, 1, 1, 1)), None, groups=g, **attrs)
            sums = patches.sum(axis=(0, 2, 3)).reshape(g, k)
            count = patches.shape[0] * patches.shape[2] * patches.shape[3]
            return np.repeat(sums, o // g, axis=0), count
        flat = xf.reshape(-1, xf.shape[-1])
        return np.broadcast_to(flat.sum(axis=0), (self.channels, flat.shape[1])), flat.shape[0]


def _int_data(v: Value, what: str, node: Node) -> np.ndarray:
    if v.data is None:
        raise AccumulatorError(f"node %{node.name}: {what} %{v.name} has no data")
    return np.asarray(v.data).astype(np.int64)


def _quantized_constant(v: Value, node: Node, what: str) -> np.ndarray:
    """The integer codes of a constant: its data in an integer graph, or the quantization of its
    float data with its QuantParams (as the fake-quant interpreter rounds: ties to even)."""
    if not is_float(v.dtype):
        return _int_data(v, what, node)
    if v.data is None:
        raise AccumulatorError(f"node %{node.name}: {what} %{v.name} has no data")
    q = v.quant
    rank = v.data.ndim
    return quantize_float(v.data, q.scale_array(rank).astype(np.float32),
                          q.zero_point_array(rank), q.qmin, q.qmax, "half_even")


def mac_layer(node: Node) -> Optional[MacLayer]:
    """The MacLayer of `node`, or None for a node that is not an (analysable) MAC op: float
    MACs need QuantParams on the input and on the weight (else they stay float islands)."""
    integer = node.op in INTEGER_MACS
    if not integer and node.op not in FLOAT_MACS:
        return None
    kind = INTEGER_MACS.get(node.op, node.op)
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if kind != "matmul" and len(node.inputs) > 2 else None
    if x is None or w is None or x.quant is None or w.quant is None:
        if integer:
            missing = "%" + (x.name if x is not None and x.quant is None else w.name)
            raise AccumulatorError(f"node %{node.name} ({node.op}): {missing} has no QuantParams")
        return None
    x_range = _centred_range(x.quant, "input")
    weight_like = kind != "matmul" or (w.is_constant and w.type.rank == 2)
    if not weight_like:
        lb, hb = _centred_range(w.quant, "operand")
        k = x.shape[-1]
        if k is None:
            raise AccumulatorError(f"node %{node.name}: reduction length of {x.type} is dynamic")
        n = w.shape[-1] if w.type.rank > 1 else 1
        return MacLayer(node, kind, integer, x, w, None, x_range, None,
                        np.zeros(n or 1, np.int64), int(k), (lb, hb))
    codes = _quantized_constant(w, node, "weight")
    centred = codes - w.quant.zero_point_array(codes.ndim)
    if kind == "conv2d":
        rows = centred.reshape(centred.shape[0], -1)
    elif kind == "linear":
        rows = centred
    else:  # matmul: (K, N) constant, channel = column
        rows = centred.T
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if bias is not None and bias.quant is not None:
        # the kernels add bias - z_b (z_b is 0 as lowered, but the IR allows one)
        bias_q = (_quantized_constant(bias, node, "bias")
                  - bias.quant.zero_point_array(bias.type.rank)).reshape(-1)
    elif bias is not None and not is_float(bias.dtype):
        bias_q = _int_data(bias, "bias", node).reshape(-1)
    elif bias is not None:
        raise AccumulatorError(f"node %{node.name}: bias %{bias.name} is float without "
                               f"QuantParams, so its integer value is unknown")
    else:
        bias_q = np.zeros(rows.shape[0], np.int64)
    feature = _feature_range(x, int(rows.shape[1])) if kind == "linear" else None
    if feature is not None:
        x_range = (int(feature[0].min()), int(feature[1].max()))
    return MacLayer(node, kind, integer, x, w, bias, x_range, rows, bias_q.astype(np.int64),
                    int(rows.shape[1]), feature_range=feature)


def _feature_range(x: Value, k: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Per input feature, the centred range of `x` when it is the output of a `requantize`
    with one multiplier per feature (a per-channel activation moved onto a common grid, see
    lower-integer): [qmin - z[c], qmax - z[c]] of the source channel times its multiplier,
    widened by one step for the rounding, within the clamp. None otherwise."""
    rq = x.producer
    if rq is None or rq.op != "requantize" or len(rq.attrs["multiplier"]) != k \
            or rq.attrs["axis"] % x.type.rank != x.type.rank - 1 or x.quant is None:
        return None
    src = rq.inputs[0].quant
    if src is None:
        return None
    from .intmath import multiplier_value
    z = np.broadcast_to(np.asarray(src.zero_point, np.int64), (k,))
    gain = np.array([multiplier_value(m, sh) if rq.attrs["rounding"] != "shift_only"
                     else 2.0 ** sh for m, sh in zip(rq.attrs["multiplier"], rq.attrs["shift"])])
    z_out = int(x.quant.zero_point[0])
    lo = np.maximum(np.floor((src.qmin - z) * gain) - 1, rq.attrs["clamp_min"] - z_out)
    hi = np.minimum(np.ceil((src.qmax - z) * gain) + 1, rq.attrs["clamp_max"] - z_out)
    return lo.astype(np.int64), hi.astype(np.int64)


def mac_layers(graph: Graph) -> list[MacLayer]:
    """Every analysable MAC op of `graph`, in graph order."""
    return [layer for layer in map(mac_layer, graph.nodes) if layer is not None]


def is_integer_graph(graph: Graph) -> bool:
    return any(n.op in INTEGER_MACS for n in graph.nodes)


# --------------------------------------------------------------------------- observation

@dataclass
class ObservedStats:
    """What the accumulators of one layer reached on data, per channel."""

    channels: int
    min: np.ndarray = None
    max: np.ndarray = None
    count: int = 0                                   # accumulator values seen (all channels)
    overflow: dict = field(default_factory=dict)     # width -> values outside it

    def add(self, acc: np.ndarray, axis: int, widths: Sequence[int]) -> None:
        moved = np.moveaxis(acc, axis, 0).reshape(self.channels, -1)
        lo, hi = moved.min(axis=1), moved.max(axis=1)
        self.min = lo if self.min is None else np.minimum(self.min, lo)
        self.max = hi if self.max is None else np.maximum(self.max, hi)
        self.count += acc.size
        for p in widths:
            a, b = acc_limits(p)
            self.overflow[p] = self.overflow.get(p, 0) + int(np.count_nonzero((acc < a) | (acc > b)))

    @property
    def bits(self) -> Optional[np.ndarray]:
        return None if self.min is None else signed_bits(self.min, self.max)


class AccumulatorObserver:
    """Runs a graph on batches and recomputes every MAC layer's accumulators exactly.

    Integer graphs run in the "int" interpreter, quantized float graphs in "fakequant" (whose MAC
    inputs are exact multiples of their scale, so they quantize back to their integer codes).
    `widths` are accumulator widths to count overflowing values for; `keep_inputs` (True, or a
    set of layer names) keeps those layers' centred inputs (repairs re-evaluate the layer on
    them); `keep_outputs` keeps the graph outputs of every batch; `on_layer(layer,
    x_c, operand_c, acc)` is called per layer and batch."""

    def __init__(self, graph: Graph, layers: Optional[list[MacLayer]] = None,
                 widths: Sequence[int] = (), keep_inputs: Any = False,
                 on_layer: Optional[Callable] = None, keep_outputs: bool = False):
        self.graph = graph
        self.layers = mac_layers(graph) if layers is None else layers
        self.widths = tuple(widths)
        self.keep_inputs = keep_inputs
        self.on_layer = on_layer
        self.keep_outputs = keep_outputs
        self.outputs: list[list[np.ndarray]] = []  # per batch, with keep_outputs
        self.integer = is_integer_graph(graph)
        self.stats = {l.name: ObservedStats(l.channels) for l in self.layers}
        self.inputs: dict[str, list] = {l.name: [] for l in self.layers}
        self._by_node = {id(l.node): l for l in self.layers}
        self._needed = {id(v): v for l in self.layers
                        for v in ([l.x] if l.rows is not None else [l.x, l.w])}
        self._stash: dict[int, np.ndarray] = {}

    def _centre(self, v: Value, arr: np.ndarray) -> np.ndarray:
        q = v.quant
        arr = np.asarray(arr)
        if np.issubdtype(arr.dtype, np.floating):
            codes = quantize_float(arr, q.scale_array(arr.ndim).astype(np.float32),
                                   q.zero_point_array(arr.ndim), q.qmin, q.qmax, "half_even")
        else:
            codes = arr.astype(np.int64)
        return codes - q.zero_point_array(arr.ndim)

    def _hook(self, node: Node, outs: list) -> None:
        for v, o in zip(node.outputs, outs):
            if id(v) in self._needed:
                self._stash[id(v)] = self._centre(v, o)
        layer = self._by_node.get(id(node))
        if layer is None:
            return
        x_c = self._value(layer.x)
        operand = None if layer.rows is not None else self._value(layer.w)
        acc = layer.exact(x_c, operand)
        self.stats[layer.name].add(acc, layer.channel_axis, self.widths)
        if self.keep_inputs is True or (self.keep_inputs and layer.name in self.keep_inputs):
            self.inputs[layer.name].append((x_c, operand))
        if self.on_layer is not None:
            self.on_layer(layer, x_c, operand, acc)

    def _value(self, v: Value) -> np.ndarray:
        if id(v) in self._stash:
            return self._stash[id(v)]
        if v.data is not None:  # a constant operand
            return self._centre(v, v.data)
        raise AccumulatorError(f"value %{v.name} was not computed before its MAC node")

    def run(self, data: Any, max_batches: int = 0) -> "AccumulatorObserver":
        """Observe every batch of `data` (anything `iter_calibration` accepts)."""
        from ..interp.interpreter import Interpreter
        from .calibration import iter_calibration
        interp = Interpreter(self.graph, "int" if self.integer else "fakequant",
                             observer=self._hook)
        for i, batch in enumerate(iter_calibration(data, self.graph)):
            if max_batches and i >= max_batches:
                break
            self._stash = {id(v): self._centre(v, batch[v.name]) for v in self.graph.inputs
                           if id(v) in self._needed}
            outs = interp.run(batch)
            if self.keep_outputs:
                self.outputs.append(outs)
        self._stash = {}
        return self


# --------------------------------------------------------------------------- the report

@dataclass
class RepairInfo:
    """What a repair did to one layer."""

    method: str                          # "project" | "split"
    channels: list                       # repaired output channels
    sqnr_db: Optional[float] = None      # repaired layer output vs the exact one (calibration)
    wrapped_sqnr_db: Optional[float] = None  # unrepaired output wrapped at the width vs exact
    chunks: Optional[list] = None        # split: [start, end) of each reduction chunk
    l1_before: Optional[list] = None     # project: ||w - z_w||_1 of the repaired channels
    l1_after: Optional[list] = None

    def to_dict(self) -> dict:
        def num(v):
            return None if v is None else (None if not math.isfinite(v) else round(v, 3))
        return {"method": self.method, "channels": [int(c) for c in self.channels],
                "sqnr_db": num(self.sqnr_db), "wrapped_sqnr_db": num(self.wrapped_sqnr_db),
                "exact": self.sqnr_db == math.inf, "chunks": self.chunks,
                "l1_before": self.l1_before, "l1_after": self.l1_after}


@dataclass
class LayerReport:
    """Bounds (and observations) of one MAC layer, per output channel."""

    name: str
    op: str
    reduction: int
    x_range: tuple
    operand_range: Optional[tuple]
    lo: np.ndarray                       # exact worst-case accumulator interval
    hi: np.ndarray
    l1_bound: np.ndarray                 # A2Q bound (>= max(|lo|, |hi|))
    weight_l1: Optional[np.ndarray]
    bias: np.ndarray
    acc_bits: Optional[int]              # the node's acc_bits attribute (integer graphs)
    observed: Optional[ObservedStats] = None
    repair: Optional[RepairInfo] = None

    @property
    def channels(self) -> int:
        return int(self.lo.size)

    @property
    def bits_needed(self) -> np.ndarray:
        return signed_bits(self.lo, self.hi)

    @property
    def bound(self) -> np.ndarray:
        """max |acc| per channel over all inputs."""
        return np.maximum(np.abs(self.lo), np.abs(self.hi))

    def unsafe_channels(self, bits: int) -> np.ndarray:
        a, b = acc_limits(bits)
        return np.flatnonzero((self.lo < a) | (self.hi > b))

    def to_dict(self) -> dict:
        ints = lambda a: None if a is None else [int(v) for v in np.asarray(a).reshape(-1)]
        d = {"name": self.name, "op": self.op, "channels": self.channels,
             "reduction": self.reduction, "x_range": list(self.x_range),
             "operand_range": None if self.operand_range is None else list(self.operand_range),
             "lo": ints(self.lo), "hi": ints(self.hi), "l1_bound": ints(self.l1_bound),
             "weight_l1": ints(self.weight_l1), "bias": ints(self.bias),
             "bits_needed": ints(self.bits_needed), "max_bits_needed": int(self.bits_needed.max()),
             "acc_bits": self.acc_bits}
        if self.observed is not None and self.observed.min is not None:
            d["observed"] = {"min": ints(self.observed.min), "max": ints(self.observed.max),
                             "bits": ints(self.observed.bits),
                             "max_bits": int(self.observed.bits.max()),
                             "count": self.observed.count,
                             "overflow": {str(k): v for k, v in self.observed.overflow.items()}}
        if self.repair is not None:
            d["repair"] = self.repair.to_dict()
        return d


def layer_report(layer: MacLayer) -> LayerReport:
    lo, hi = layer.sum_interval()
    if layer.rows is not None:
        lo, hi = lo + layer.bias_q, hi + layer.bias_q
    acc_bits = layer.node.attrs.get("acc_bits") if layer.integer else None
    return LayerReport(layer.name, layer.node.op, layer.reduction, tuple(layer.x_range),
                       layer.operand_range, lo, hi, layer.l1_bound(), layer.weight_l1(),
                       layer.bias_q.copy(), acc_bits)


@dataclass
class AccumulatorReport:
    """Per-layer, per-channel accumulator bounds of a graph, checked against `bits`."""

    layers: list
    bits: Optional[int] = None

    def layer(self, name: str) -> LayerReport:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(f"no MAC layer %{name} in the accumulator report")

    def unsafe(self, bits: Optional[int] = None) -> list[tuple[LayerReport, np.ndarray]]:
        bits = self.bits if bits is None else bits
        out = []
        for r in self.layers:
            bad = r.unsafe_channels(bits)
            if bad.size:
                out.append((r, bad))
        return out

    def to_dict(self) -> dict:
        return {"bits": self.bits, "layers": [r.to_dict() for r in self.layers],
                "unsafe": {r.name: [int(c) for c in bad]
                           for r, bad in (self.unsafe() if self.bits else [])}}

    def table(self, title: str = "accumulator width"):
        """A rich Table: one row per layer, maxima over its channels."""
        from rich.table import Table
        t = Table(title=title + (f" (checked at {self.bits} bits)" if self.bits else ""))
        for col in ("layer", "op", "C", "K", "x range", "max ||w||1", "bound", "bits",
                    "observed", "obs bits", "unsafe ch", "repair"):
            t.add_column(col, justify="left" if col in ("layer", "op", "repair") else "right",
                         overflow="fold", no_wrap=col != "layer")
        for r in self.layers:
            bad = r.unsafe_channels(self.bits).size if self.bits else 0
            obs = r.observed
            seen = obs is not None and obs.min is not None
            bits = int(r.bits_needed.max())
            rep = "-"
            if r.repair is not None:
                rep = r.repair.method
                if r.repair.sqnr_db is not None:
                    rep += " exact" if r.repair.sqnr_db == math.inf else \
                        f" {r.repair.sqnr_db:.1f} dB"
            t.add_row(r.name, r.op, str(r.channels), str(r.reduction),
                      f"[{r.x_range[0]}, {r.x_range[1]}]",
                      "-" if r.weight_l1 is None else str(int(r.weight_l1.max())),
                      str(int(r.bound.max())),
                      f"[red]{bits}[/red]" if self.bits and bits > self.bits else str(bits),
                      str(int(max(-obs.min.min(), obs.max.max()))) if seen else "-",
                      str(int(obs.bits.max())) if seen else "-",
                      f"[red]{bad}[/red]" if bad else "0", rep)
        return t

    def print(self, console: Any = None) -> None:
        from rich.console import Console
        (console or Console()).print(self.table())


def analyze(graph: Graph, data: Any = None, bits: Optional[int] = None,
            max_batches: int = 0) -> AccumulatorReport:
    """The accumulator report of every MAC layer of `graph`; with `data` (anything
    `iter_calibration` accepts) also the accumulators reached on it (and, with `bits`, how
    many values would wrap at that width)."""
    layers = mac_layers(graph)
    reports = [layer_report(l) for l in layers]
    if data is not None and layers:
        obs = AccumulatorObserver(graph, layers, widths=(bits,) if bits else ()).run(
            data, max_batches)
        for r in reports:
            r.observed = obs.stats[r.name]
    return AccumulatorReport(reports, bits)


# --------------------------------------------------------------------------- repair: projection

@dataclass
class Projection:
    """The result of `project_rows`: new centred weights and biases for every channel (the
    unchanged ones equal the input), the factor `gamma` each channel's weight scale is
    multiplied by (1 where unchanged or without refit), which channels changed, and those whose
    bias had to be clamped (the mean accumulator alone overflows)."""

    rows: np.ndarray
    bias: np.ndarray
    gamma: np.ndarray
    changed: np.ndarray
    clamped: np.ndarray


def project_rows(layer: MacLayer, bits: int, sums: Optional[np.ndarray] = None,
                 count: int = 0, refit: bool = True, grid: int = 64,
                 iterations: int = 40) -> Projection:
    """A2Q-style repair of `layer`'s offending channels for a `bits`-wide accumulator.

    Two candidate integer weight vectors q per offending channel (centred codes v):
      * projection: q = round(sign(v) max(|v| - t, 0)), the Euclidean projection onto an L1 ball
        (soft-thresholding) followed by re-quantization;
      * coarsening: q = round(v / a), the same weights on a grid `a` times coarser;
    each with the smallest t (or a) found for which the exact bound fits (a grid scan refined by
    bisection). With `refit` the channel's weight scale is then
    multiplied by the least-squares gamma = <v, q> / <q, q>, so gamma * q approximates v (the
    caller rescales the weight, bias and requantization multiplier); the candidate with the
    smaller ||gamma q - v|| wins. With patch `sums`/`count` (see `MacLayer.patch_matrix_means`)
    the bias absorbs the mean change of the accumulator (bias correction). The bound is checked
    with the final (rescaled, corrected) bias. Channels that fit are untouched."""
    if layer.rows is None:
        raise AccumulatorError(f"layer %{layer.name} multiplies two activations: there are no "
                               f"weights to project (use method=split)")
    a, b = acc_limits(bits)
    rows, bias = layer.rows, layer.bias_q
    lo, hi = layer.sum_interval()
    bad = np.flatnonzero((lo + bias < a) | (hi + bias > b))
    n = rows.shape[0]
    new_rows, new_bias, gamma = rows.copy(), bias.copy(), np.ones(n)
    clamped = np.zeros(n, bool)
    if bad.size == 0:
        return Projection(new_rows, new_bias, gamma, bad, np.flatnonzero(clamped))
    v = rows[bad].astype(np.float64)
    means = None if sums is None or not count else np.asarray(sums, np.float64)[bad] / count
    b0 = bias[bad].astype(np.float64)

    def threshold(t):
        return np.sign(v) * np.rint(np.maximum(np.abs(v) - t[:, None], 0.0))

    def coarsen(t):
        return np.rint(v / t[:, None])

    def candidate(shape_fn, t, clamp):
        w = shape_fn(t)
        g = np.ones(bad.size)
        if refit:
            ww = (w * w).sum(axis=1)
            g = np.where(ww > 0, (v * w).sum(axis=1) / np.where(ww > 0, ww, 1), 1.0)
            g = np.where(g > 0, g, 1.0)
        # the real bias and the mean accumulator stay put: b' g = b + (v - g q) . mean
        target = b0 if means is None else b0 + ((v - g[:, None] * w) * means).sum(axis=1)
        nb = np.rint(target / g).astype(np.int64)
        wi = w.astype(np.int64)
        slo, shi = layer.sum_interval(wi)
        nb = np.where(clamp, np.clip(nb, a - slo, b - shi), nb)
        ok = (slo + nb >= a) & (shi + nb <= b) & (shi - slo <= b - a)
        return wi, nb, g, ok

    vmax = np.abs(v).max(axis=1)
    steps = np.linspace(0.0, 1.0, grid + 1)[1:]
    best = None
    for shape_fn, start, top in ((threshold, np.zeros(bad.size), vmax + 1.0),
                                 (coarsen, np.ones(bad.size), 2.0 * vmax + 2.0)):
        # With the refit and the bias correction the bound is not monotone in t (the bias
        # shrinks as the scale grows), so scan a grid for the first t that fits, preferring an
        # unclamped bias, then bisect between that grid point and the one before it.
        ts = start[None, :] + (top - start)[None, :] * (steps ** 2)[:, None]
        clamp = np.zeros(bad.size, bool)
        first = np.full(bad.size, -1)
        for mode in (False, True):
            todo = first < 0
            for i, t in enumerate(ts):
                ok = candidate(shape_fn, t, np.full(bad.size, mode))[3] & todo & (first < 0)
                first = np.where(ok, i, first)
            clamp = np.where(todo & (first >= 0), mode, clamp)
        if (first < 0).any():  # t = top (all zero, clamped bias) always fits
            raise AccumulatorError(f"layer %{layer.name}: projection failed for channels "
                                   f"{bad[first < 0].tolist()}")
        hi_t = ts[first, np.arange(bad.size)]
        lo_t = np.where(first > 0, ts[np.maximum(first - 1, 0), np.arange(bad.size)], start)
        for _ in range(iterations):
            mid = (lo_t + hi_t) / 2
            ok = candidate(shape_fn, mid, clamp)[3]
            hi_t = np.where(ok, mid, hi_t)
            lo_t = np.where(ok, lo_t, mid)
        w, nb, g, ok = candidate(shape_fn, hi_t, clamp)
        err = ((g[:, None] * w - v) ** 2).sum(axis=1)
        # a clamped bias costs more than any weight error: prefer the unclamped candidate
        err = np.where(clamp, np.inf, err)
        if best is None:
            best = [w, nb, g, clamp, err]
        else:
            take = (err < best[4]) | (np.isinf(best[4]) & np.isinf(err) & ~clamp)
            best = [np.where(take[:, None], w, best[0]), np.where(take, nb, best[1]),
                    np.where(take, g, best[2]), np.where(take, clamp, best[3]),
                    np.where(take, err, best[4])]
    new_rows[bad], new_bias[bad], gamma[bad], clamped[bad] = best[:4]
    return Projection(new_rows, new_bias, gamma, bad, np.flatnonzero(clamped))


def sqnr_db(ref: np.ndarray, other: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - other)^2) in dB; inf when equal."""
    ref = np.asarray(ref, np.float64)
    noise = float(np.sum((np.asarray(other, np.float64) - ref) ** 2))
    if noise == 0.0:
        return math.inf
    signal = float(np.sum(ref * ref))
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)


# --------------------------------------------------------------------------- repair: split plan

def split_chunks(layer: MacLayer, bits: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges of the reduction (in `rows` order: conv input channel, then
    kernel row, then column; linear / matmul: the reduction axis) whose partial sums are each
    provably inside `bits` for every output channel (bias-free: the bias joins the wide sum,
    where it cannot take room from a narrow partial; the total must fit int32). Greedy:
    a chunk grows while it still fits, which gives the fewest contiguous chunks (a range's
    bound only grows with it, since every term's range contains 0)."""
    a, b = acc_limits(bits)
    units = layer.reduction
    if layer.rows is None:
        lo1, hi1 = (v // layer.reduction for v in layer.sum_interval())  # one term's extremes

    def fits(start: int, end: int) -> bool:
        if layer.rows is None:
            lo, hi, bias = lo1 * (end - start), hi1 * (end - start), 0
        else:
            lo, hi = layer.sum_interval(layer.rows[:, start:end])
            bias = 0
        return bool(np.all(lo + bias >= a) and np.all(hi + bias <= b))

    lo, hi = layer.sum_interval()
    if layer.rows is not None:
        lo, hi = lo + layer.bias_q, hi + layer.bias_q
    if np.any(signed_bits(lo, hi) > 32):
        raise AccumulatorError(f"layer %{layer.name}: the whole sum needs "
                               f"{int(signed_bits(lo, hi).max())} bits, more than the 32-bit "
                               f"adds that collect the partial sums; use method=project")
    chunks, start = [], 0
    while start < units:
        if not fits(start, start + 1):
            raise AccumulatorError(
                f"layer %{layer.name}: a single product (reduction element {start}) can leave "
                f"a {bits}-bit accumulator, "
                f"so splitting the reduction cannot help; use method=project or a wider "
                f"accumulator")
        lo_e, hi_e = start + 1, units  # binary search the largest end that still fits
        while lo_e < hi_e:
            mid = (lo_e + hi_e + 1) // 2
            if fits(start, mid):
                lo_e = mid
            else:
                hi_e = mid - 1
        chunks.append((start, lo_e))
        start = lo_e
    return chunks


def _real(layer: MacLayer, acc: np.ndarray, gamma: Optional[np.ndarray] = None) -> np.ndarray:
    """Accumulators in units of s_x (times the per-channel weight scale, rescaled by `gamma`),
    so channels weigh in an SQNR as they do in the real-valued output."""
    scale = np.asarray(layer.w.quant.scale, np.float64)
    if gamma is not None:
        scale = scale * gamma
    if scale.size == 1 or layer.rows is None:
        return acc.astype(np.float64) * float(scale.reshape(-1)[0])
    shape = [1] * acc.ndim
    shape[layer.channel_axis] = scale.size
    return acc.astype(np.float64) * scale.reshape(shape)


def project_layer(layer: MacLayer, bits: int, inputs: Sequence[tuple],
                  refit: bool = True) -> tuple[Projection, RepairInfo]:
    """`project_rows` with bias correction and SQNR measured on `inputs` (centred inputs of the
    layer, as `AccumulatorObserver(keep_inputs=...)` collects them; may be empty: then there is
    no bias correction and no SQNR)."""
    sums, count = None, 0
    for x_c, _ in inputs:
        s, c = layer.patch_matrix_means(x_c)
        sums = s if sums is None else sums + s
        count += c
    if layer.kind == "matmul":
        sums = None  # a matmul has no bias to absorb the mean change
    proj = project_rows(layer, bits, sums, count, refit=refit)
    info = RepairInfo("project", [int(c) for c in proj.changed],
                      l1_before=[int(v) for v in np.abs(layer.rows[proj.changed]).sum(axis=1)],
                      l1_after=[int(v) for v in np.abs(proj.rows[proj.changed]).sum(axis=1)])
    if inputs:
        ref, new, wrapped = [], [], []
        for x_c, _ in inputs:
            exact = layer.exact(x_c)
            ref.append(_real(layer, exact).reshape(-1))
            wrapped.append(_real(layer, wrap(exact, bits)).reshape(-1))
            repaired = layer.exact(x_c, rows=proj.rows, bias=proj.bias)
            new.append(_real(layer, repaired, proj.gamma).reshape(-1))
        ref_all = np.concatenate(ref)
        info.sqnr_db = sqnr_db(ref_all, np.concatenate(new))
        info.wrapped_sqnr_db = sqnr_db(ref_all, np.concatenate(wrapped))
    return proj, info


# The wide sum of split partial accumulators is `add`'s "int" kernel (qcompile/ir/ops/defs/integer.py).
