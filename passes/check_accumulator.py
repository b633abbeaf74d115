"""`check-accumulator`: prove that every MAC accumulator fits the target's accumulator width, and
stop, warn or repair where it cannot.

    ...,quantize,lower-integer,check-accumulator{bits=16,policy=repair,method=split}

Where it runs. After `lower-integer` (the normal place) it checks qconv2d / qlinear / qmatmul
with their exact integer weights and biases, repairs them in the integer graph, and sets
`acc_bits` on every MAC node to the checked width, so the integer interpreter wraps exactly
where the hardware would. Before `lower-integer` (right after `quantize`) it checks conv2d /
linear / matmul from the weights' and inputs' QuantParams; `method=project` then edits the float
weights onto the repaired integer grid, so the lowering quantizes them to the repaired codes
(`method=split` needs the integer graph; give lower-integer its `acc_bits`). Running it in both
places is harmless: the second run finds nothing left to repair.

For each MAC op and output channel the bound is the exact extreme of
`sum (w - z_w)(x - z_x) + bias` over the input's integer range (reached by an adversarial input;
it lies inside the A2Q bound `||w - z_w||_1 max|x - z_x| + |bias|`, also reported). See
`qcompile.quant.accumulator` and docs/integer-semantics.md, "Accumulator width".

policy=error  a layer that can overflow is an error naming it, its channels, bounds and widths.
policy=warn   the same as warnings; the graph keeps its weights (and wraps at `bits`).
policy=repair method=project: A2Q-style L1 projection (soft-thresholding) of the offending
              channels' weights to the largest L1 ball whose bound fits, re-quantized, with the
              mean accumulator change moved into the bias (measured on the calibration data,
              which also gives the layer-output SQNR before/after, noted per layer).
              method=split: the reduction is cut into chunks of input channels whose partial
              sums provably fit `bits`; each chunk is a MAC node with acc_bits=bits and the
              partials are summed by 32-bit adds (exact: the result equals the unsplit sum).
The report (per layer and channel) is left in `graph.meta["accumulator"]`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from qcompile.errors import PipelineError
from qcompile.ir.graph import Graph, Node, Value
from qcompile.ir.types import QuantParams, is_float
from qcompile.passmanager import Pass, PassContext, register_pass
from qcompile.quant.intmath import quantize_multipliers
from qcompile.quant.accumulator import (AccumulatorError, AccumulatorObserver, AccumulatorReport,
                                        LayerReport, MacLayer, RepairInfo, is_integer_graph,
                                        layer_report, mac_layers, project_layer, split_chunks)

#: How many channels an error or warning spells out.
_SHOWN = 4


@register_pass("check-accumulator")
@dataclass(frozen=True)
class CheckAccumulator(Pass):
    """Prove MAC accumulators fit `bits`; error, warn or repair (project/split) where not."""

    bits: Optional[int] = None  # none: the target's accumulator_bits, else 32
    policy: Literal["error", "warn", "repair"] = "error"
    method: Literal["project", "split"] = "project"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits is not None and not 2 <= self.bits <= 32:
            raise PipelineError(f"pass 'check-accumulator', option 'bits': {self.bits} is not an "
                                f"accumulator width in 2..32")

    def width(self, ctx: PassContext) -> int:
        if self.bits is not None:
            return self.bits
        target_bits = getattr(ctx.target, "accumulator_bits", None) if ctx.target else None
        return int(target_bits) if target_bits is not None else 32

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        bits = self.width(ctx)
        try:
            layers = mac_layers(graph)
        except AccumulatorError as exc:
            ctx.error(str(exc))
            return False
        report = AccumulatorReport([layer_report(l) for l in layers], bits)
        unsafe = {r.name: bad for r, bad in report.unsafe()}
        integer = is_integer_graph(graph)
        if unsafe and self.policy == "repair" and self.method == "split" and not integer:
            ctx.error("method=split rewrites integer MAC ops: run check-accumulator after "
                      "lower-integer (before it, use method=project)")
            return False
        keep = set(unsafe) if self.policy == "repair" and self.method == "project" else set()
        observer = self._observe(graph, layers, bits, keep, ctx)
        if observer is not None:
            for r in report.layers:
                r.observed = observer.stats[r.name]
        changed = False
        errors_before = len(ctx.errors)
        for layer, rep in zip(layers, report.layers):
            bad = unsafe.get(layer.name)
            if bad is None:
                continue
            message = _describe(rep, bad, bits)
            if self.policy == "error":
                ctx.error(message + "; use policy=repair (method=project or split), or a wider "
                          "accumulator", layer.node)
            elif self.policy == "warn":
                ctx.warn(message, layer.node)
            else:
                try:
                    rep.repair = self._repair(graph, layer, bits, observer, ctx)
                except AccumulatorError as exc:
                    ctx.error(f"{message}; cannot repair: {exc}", layer.node)
                    continue
                changed = True
        if len(ctx.errors) > errors_before:
            graph.meta["accumulator"] = report.to_dict()
            return changed
        for node in graph.nodes:  # every MAC now provably fits (or the user accepted the wrap)
            if node.op in ("qconv2d", "qlinear", "qmatmul") and node.attrs["acc_bits"] != bits:
                node.attrs["acc_bits"] = bits
                graph.version += 1  # attrs are set in place; tell the pass manager
                changed = True
        graph.meta["accumulator"] = report.to_dict()
        graph.meta["accumulator_bits"] = bits
        return changed

    # ---- helpers -----------------------------------------------------------------------------
    def _observe(self, graph: Graph, layers: list, bits: int, keep: set,
                 ctx: PassContext) -> Optional[AccumulatorObserver]:
        if ctx.calibration_data is None or not layers:
            if keep:
                ctx.note("no calibration data: projection without bias correction or SQNR")
            return None
        return AccumulatorObserver(graph, layers, widths=(bits,), keep_inputs=keep).run(
            ctx.calibration_data)

    def _repair(self, graph: Graph, layer: MacLayer, bits: int,
                observer: Optional[AccumulatorObserver], ctx: PassContext) -> RepairInfo:
        if self.method == "split":
            chunks = split_chunks(layer, bits)
            _split(graph, layer, chunks, bits)
            info = RepairInfo("split", list(range(layer.channels)), sqnr_db=math.inf,
                              chunks=[list(c) for c in chunks])
            sizes = sorted({e - s for s, e in chunks})
            ctx.note(f"split the reduction of {layer.reduction} products into {len(chunks)} "
                     f"chunks ({sizes[0]} to {sizes[-1]} products) with {bits}-bit partial sums, "
                     f"summed in 32 bits (exact)", layer.node)
            return info
        inputs = observer.inputs[layer.name] if observer is not None else []
        proj, info = project_layer(layer, bits, inputs, refit=_can_rescale(layer))
        _write_projection(graph, layer, proj)
        graph.version += 1  # QuantParams and requantize attributes change in place
        sqnr = "" if info.sqnr_db is None else (
            f"; layer output SQNR {_db(info.sqnr_db)} (unrepaired, wrapping at {bits} bits: "
            f"{_db(info.wrapped_sqnr_db)})")
        ctx.note(f"projected {len(info.channels)} channel(s) to fit {bits} bits (L1 "
                 f"{max(info.l1_before)} -> {max(info.l1_after)} at most){sqnr}", layer.node)
        if len(proj.clamped):
            ctx.warn(f"channels {proj.clamped.tolist()[:_SHOWN]}: the mean accumulator alone "
                     f"leaves {bits} bits, so their bias was clamped", layer.node)
        return info


def _db(v: float) -> str:
    return "exact" if v == math.inf else f"{v:.1f} dB"


def _describe(rep: LayerReport, bad: np.ndarray, bits: int) -> str:
    shown = ", ".join(f"{int(c)}: [{int(rep.lo[c])}, {int(rep.hi[c])}] needs "
                      f"{int(rep.bits_needed[c])} bits" for c in bad[:_SHOWN])
    more = f" and {bad.size - _SHOWN} more" if bad.size > _SHOWN else ""
    return (f"{rep.op} %{rep.name}: {bad.size} of {rep.channels} output channels can overflow "
            f"a {bits}-bit accumulator (channel {shown}{more}; worst case needs "
            f"{int(rep.bits_needed.max())} bits)")


# ---- rewriting: projection -------------------------------------------------------------------

def _can_rescale(layer: MacLayer) -> bool:
    """Whether a channel's weight scale may change: the float graph's scales are free unless
    constrained to powers of two; in the integer graph every reader of the accumulator must be a
    requantize with a Q31 multiplier, which absorbs the change."""
    if layer.w.quant.pow2:
        return False
    if not layer.integer:
        return True
    out = layer.node.output
    return bool(out.users) and out not in layer.node.graph.outputs and all(
        u.op == "requantize" and u.attrs["rounding"] != "shift_only" for u in out.users)


def _rescaled(q: QuantParams, gamma: np.ndarray, axis: int) -> QuantParams:
    """`q` with channel c's scale multiplied by gamma[c] (per-tensor params become per-channel
    along `axis` when the factors differ)."""
    if np.all(gamma == 1.0):
        return q
    scale = np.broadcast_to(np.asarray(q.scale, np.float64), gamma.shape) * gamma
    zp = np.broadcast_to(np.asarray(q.zero_point, np.int64), gamma.shape)
    return dataclasses.replace(q, scale=tuple(scale), zero_point=tuple(zp), axis=axis)


def _weight_codes(layer: MacLayer, rows: np.ndarray) -> np.ndarray:
    """Centred `rows` back in the weight's layout, with the zero point added."""
    w = layer.w
    centred = rows.T if layer.kind == "matmul" else rows.reshape(w.shape)
    return centred + w.quant.zero_point_array(centred.ndim)


def _replace_input(graph: Graph, node: Node, index: int, name: str, data: np.ndarray,
                   dtype: str, quant: QuantParams) -> None:
    """Give `node` a fresh constant at input `index` (never edit shared arrays or constants
    other nodes read), dropping the old constant when nothing else uses it."""
    old = node.input(index)
    new = graph.add_constant(name, data, dtype=dtype, quant=quant)
    if index < len(node.inputs):
        graph.set_input(node, index, new)
    else:
        node.inputs.append(new)
        new.users.append(node)
        graph.version += 1
    if old is not None and not old.users and old not in graph.outputs:
        graph.remove_constant(old)


def _bias_params(layer: MacLayer) -> QuantParams:
    """Accumulator-unit params for a bias the layer did not have: scale s_x * s_w, zp 0."""
    sw = np.broadcast_to(np.asarray(layer.w.quant.scale, np.float64), (layer.channels,))
    scale = layer.x.quant.scale[0] * sw
    return QuantParams(scale, np.zeros(scale.size, np.int64), bits=32, signed=True,
                       axis=0 if scale.size > 1 else None)


def _write_projection(graph: Graph, layer: MacLayer, proj) -> None:
    node, w = layer.node, layer.w
    rows, bias, gamma = proj.rows, proj.bias, proj.gamma
    codes = _weight_codes(layer, rows)
    rank = codes.ndim
    w_axis = rank - 1 if layer.kind == "matmul" else 0
    qw = _rescaled(w.quant, gamma, w_axis)
    if is_float(w.dtype):
        # Float graph: the repaired channels sit exactly on their (rescaled) grid, s_w * code;
        # untouched channels keep their float weights bit for bit.
        grid = ((codes - qw.zero_point_array(rank)).astype(np.float32)
                * qw.scale_array(rank).astype(np.float32))
        changed = (rows != layer.rows).any(axis=1) | (gamma != 1.0)  # per output channel
        mask = changed[None, :] if layer.kind == "matmul" else \
            changed.reshape((-1,) + (1,) * (rank - 1))
        data = np.where(mask, grid, np.asarray(w.data, np.float32))
        _replace_input(graph, node, 1, w.name + ".acc", data, w.dtype, qw)
    else:
        _replace_input(graph, node, 1, w.name + ".acc", codes, w.dtype, qw)
        _rescale_accumulator(layer, gamma)
    if layer.kind == "matmul":
        return
    b = layer.bias
    if b is None and not np.any(bias):
        return
    q = b.quant if b is not None and b.quant is not None else _bias_params(layer)
    q = _rescaled(q, gamma, 0)
    name = (b.name if b is not None else node.name + ".bias") + ".acc"
    if (b is not None and is_float(b.dtype)) or (b is None and not layer.integer):
        data = (bias.astype(np.float64) * q.scale_array(1)).astype(np.float32)
        _replace_input(graph, node, 2, name, data, "f32", q)
    else:
        _replace_input(graph, node, 2, name, bias.astype(np.int32), "i32", q)


def _rescale_accumulator(layer: MacLayer, gamma: np.ndarray) -> None:
    """Integer graph: the accumulator's scale s_x * s_w[c] grows by gamma[c]; its requantize
    readers get multipliers M[c] * gamma[c], re-encoded as lower-integer encodes them."""
    if np.all(gamma == 1.0):
        return
    out = layer.node.output
    axis = layer.channel_axis % out.type.rank
    out.quant = _rescaled(out.quant, gamma, axis)
    for user in out.users:
        y = user.output.quant
        m = out.quant.scale_array(1) / np.float32(y.scale[0]).astype(np.float64)
        m0, shift = quantize_multipliers(m)
        user.attrs.update(multiplier=tuple(int(v) for v in m0), shift=tuple(int(v) for v in shift),
                          axis=axis)


# ---- rewriting: split ------------------------------------------------------------------------

def _split(graph: Graph, layer: MacLayer, chunks: list, bits: int) -> None:
    """Replace `layer.node` by one MAC node per reduction chunk (acc_bits=bits) and a chain of
    32-bit adds of the partial accumulators.

    The bias is added last, in the wide sum. linear / matmul: chunk i reads x[..., s:e] and the
    weight rows s:e. conv2d (chunks run over
    input channel, kernel row, kernel column): chunk i reads the input channels it touches and
    a weight whose taps outside the chunk hold the zero point, so they contribute exactly 0;
    grouped convs keep the whole input and mask the weight only."""
    node = layer.node
    acc_q = node.output.quant
    x, w, bias = layer.x, layer.w, layer.bias
    partials: list[Value] = []

    def emit(op: str, inputs: list, attrs: dict, hint: str, quant) -> Value:
        new = graph.make_node(op, inputs, attrs, name=hint, loc=node.loc)
        graph.insert_before(node, new)
        new.output.quant = quant
        return new.output

    def slice_of(v: Value, axis: int, start: int, end: int, hint: str) -> Value:
        if start == 0 and end == v.shape[axis]:
            return v
        if v.is_constant:
            index = [slice(None)] * v.type.rank
            index[axis] = slice(start, end)
            return graph.add_constant(hint, np.ascontiguousarray(v.data[tuple(index)]),
                                      dtype=v.dtype, quant=v.quant)
        return emit("slice", [v], {"axes": [axis], "starts": [start], "ends": [end]}, hint,
                    v.quant)

    for i, (start, end) in enumerate(chunks):
        if layer.kind == "conv2d":
            o, cg, kh, kw = w.shape
            taps = kh * kw
            c0, c1 = (start // taps, -(-end // taps)) if layer.groups == 1 else (0, cg)
            codes = np.asarray(w.data)
            zero = w.quant.zero_point_array(4).astype(codes.dtype)
            keep = np.zeros(cg * taps, bool)
            keep[start:end] = True
            masked = np.where(keep.reshape(1, cg, kh, kw), codes, zero)[:, c0:c1]
            xs = slice_of(x, 1, c0 * layer.groups, c1 * layer.groups, f"{node.name}.x{i}") \
                if layer.groups == 1 else x
            ws = graph.add_constant(f"{w.name}.k{i}", np.ascontiguousarray(masked),
                                    dtype=w.dtype, quant=w.quant)
        elif layer.kind == "linear":
            xs = slice_of(x, x.type.rank - 1, start, end, f"{node.name}.x{i}")
            ws = slice_of(w, 1, start, end, f"{w.name}.k{i}")
        else:
            xs = slice_of(x, x.type.rank - 1, start, end, f"{node.name}.x{i}")
            ws = slice_of(w, w.type.rank - 2, start, end, f"{w.name}.k{i}")
        attrs = {**node.attrs, "acc_bits": bits}
        partials.append(emit(node.op, [xs, ws], attrs, f"{node.name}.part{i}", acc_q))
    if bias is not None:  # the bias joins the wide sum, shaped to broadcast along the channels
        shape = (1, -1, 1, 1) if layer.kind == "conv2d" else (-1,)
        axis = 1 if layer.kind == "conv2d" else 0
        qb = bias.quant if bias.quant.axis is None else dataclasses.replace(bias.quant, axis=axis)
        partials.append(graph.add_constant(f"{bias.name}.wide", bias.data.reshape(shape),
                                           dtype="i32", quant=qb))
    total = partials[0]
    for i, p in enumerate(partials[1:], 1):
        total = emit("add", [total, p], {}, f"{node.name}.sum{i}", acc_q)
    name = node.output.name
    graph.replace_all_uses(node.output, total)
    graph.erase(node)
    for v in (w, bias):
        if v is not None and v.is_constant and not v.users and v not in graph.outputs:
            graph.remove_constant(v)
    graph.rename(total, name)
