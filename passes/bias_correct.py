"""`bias-correct`: remove the mean output error that weight quantization causes (Nagel et al.,
ICCV 2019, section 4.2). Runs after `quantize`, when weights carry QuantParams.

With eps = W_q - W (W_q: the fake-quantized weight the simulation uses), a layer computes
W_q x + b = W x + b + eps x, so its outputs are off by eps E[x] on average. The pass subtracts
that from the bias, per output channel; for conv2d, eps is summed over the kernel taps (exact
away from zero padding) and grouped/depthwise convs read their own input channels. The bias keeps
its QuantParams (scale s_x * s_w does not depend on the bias values); a layer without a bias gets
one, with those parameters when input and weight have them.

E[x], the mean of each input channel of the layer, comes from:
  * `method=empirical`: the float network on `ctx.calibration_data` (the per-channel means
    `calibrate` recorded in `graph.meta["calib_stats"]` are reused when they cover the layer).
    This corrects the error of each layer's own weights only, with float inputs; it does not
    try to correct error that upstream layers or activation quantization pass on.
  * `method=analytic`: no data. The layer feeding this one through an activation has batch norm
    statistics (`graph.meta["bn_stats"]`, from `fold-bn`): its pre-activation output is taken as
    N(beta, gamma^2) per channel, and the mean after the activation is that of a clipped normal:
    E[max(0, X)] = mu Phi(mu/sigma) + sigma phi(mu/sigma), the general clip(a, b) likewise, and
    other activations (prelu, leaky_relu) by quadrature. Average pooling keeps the mean; max
    pooling over a window of k raises it, modelled as the max of k independent samples
    (neighbouring pixels are correlated, so this overestimates; on the digits CNN it predicts
    1.33 where the data gives 1.2, against 0.5 when max pooling is ignored). Layers whose
    input has no such statistics (the first layer, layers after an add) are left alone, noted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
from scipy import stats as sps

from qcompile.errors import PassError
from qcompile.interp.interpreter import Interpreter, fake_quantize
from qcompile.ir.graph import Graph, Node
from qcompile.ir.types import QuantParams
from qcompile.passmanager import Pass, PassContext, register_pass
from qcompile.quant.chains import (Link, apply_to_inputs, channels_at, in_axis, is_layer,
                                   set_param, trace_input)


def weight_error(layer: Node) -> np.ndarray:
    """eps = W_q - W in float64 for a layer whose weight has QuantParams."""
    w = layer.inputs[1]
    return fake_quantize(w.data.astype(np.float64), w.quant) - w.data.astype(np.float64)


# ---- E[x] from data --------------------------------------------------------------------------

def measured_means(graph: Graph, layers: list[Node], source, batch_size: int) -> dict:
    """{layer name: per-input-channel mean of its data input} over the calibration data."""
    from qcompile.quant.calibration import iter_calibration
    wanted = {id(n.inputs[0]): n for n in layers}
    sums: dict = {}
    counts: dict = {}

    def add(layer: Node, data: np.ndarray) -> None:
        axis = in_axis(layer)
        moved = np.moveaxis(np.asarray(data, np.float64), axis, -1)
        rows = moved.reshape(-1, moved.shape[-1])
        sums[layer.name] = sums.get(layer.name, 0.0) + rows.sum(axis=0)
        counts[layer.name] = counts.get(layer.name, 0) + rows.shape[0]

    def observe(node: Node, outs: list) -> None:
        for value, data in zip(node.outputs, outs):
            layer = wanted.get(id(value))
            if layer is not None:
                add(layer, data)

    interp = Interpreter(graph, "float", observer=observe)
    for batch in iter_calibration(source, graph, batch_size):
        for value in graph.inputs:
            if id(value) in wanted:
                add(wanted[id(value)], batch[value.name])
        interp.run(batch)
    return {name: sums[name] / counts[name] for name in sums}


def _stats_means(graph: Graph, layers: list[Node]) -> Optional[dict]:
    """Per-channel means from `calibrate`'s statistics, if they cover every layer's input."""
    stats = graph.meta.get("calib_stats") or {}
    out = {}
    for layer in layers:
        entry = stats.get(layer.inputs[0].name)
        if entry is None or in_axis(layer) != 1 or np.ndim(entry.get("mean")) != 1 \
                or np.size(entry["mean"]) != layer.inputs[0].type.shape[1]:
            return None
        out[layer.name] = np.asarray(entry["mean"], np.float64)
    return out


# ---- E[x] from batch norm statistics -------------------------------------------------------------

def clipped_normal_mean(mu: np.ndarray, sigma: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """E[clip(X, lo, hi)] for X ~ N(mu, sigma^2), elementwise (lo/hi may be -inf/inf)."""
    mu = np.asarray(mu, np.float64)
    sigma = np.maximum(np.asarray(sigma, np.float64), 1e-12)
    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    cdf_a, cdf_b = sps.norm.cdf(a), sps.norm.cdf(b)
    # lo * P(X < lo) + hi * P(X > hi) + E[X; lo <= X <= hi]; a zero probability times an infinite
    # bound contributes nothing.
    below = np.where(cdf_a > 0, lo * cdf_a, 0.0) if np.isfinite(lo) else 0.0
    above = np.where(cdf_b < 1, hi * (1 - cdf_b), 0.0) if np.isfinite(hi) else 0.0
    inside = mu * (cdf_b - cdf_a) + sigma * (sps.norm.pdf(a) - sps.norm.pdf(b))
    return below + above + inside


def _activation_fn(link: Link, act: Optional[Node], channels: int):
    """The activation between the layers as a function on (channel, sample) arrays, and whether
    it is nondecreasing (so that it commutes with max pooling)."""
    if act is None or act.op == "identity":
        return (lambda v: v), True
    if act.op == "relu":
        return (lambda v: np.maximum(v, 0.0)), True
    if act.op == "clip":
        lo, hi = float(act.attrs["min"]), float(act.attrs["max"])
        return (lambda v: np.clip(v, lo, hi)), True
    if act.op == "leaky_relu":
        slope = np.full((channels, 1), float(act.attrs.get("alpha", 0.01)))
    else:  # prelu: slope per position along its axis; map positions back to source channels
        data = act.inputs[1].data.astype(np.float64).ravel()
        slope = np.full((channels, 1), data[0])
        if data.size > 1:
            slope[channels_at(link.src, link.ops[:link.ops.index(act)]), 0] = data
    return (lambda v: np.where(v >= 0, v, slope * v)), bool(np.all(slope >= 0))


def activation_mean(mu: np.ndarray, sigma: np.ndarray, fn, window: int = 1) -> np.ndarray:
    """E[fn(max of `window` independent N(mu, sigma^2))] per channel, by quadrature over the
    density of the maximum, window * phi(t) * Phi(t)^(window - 1)."""
    t = np.linspace(-10.0, 10.0, 4001)
    density = window * sps.norm.pdf(t) * sps.norm.cdf(t) ** (window - 1)
    values = fn(mu[:, None] + np.maximum(sigma, 1e-12)[:, None] * t[None, :])
    return np.trapezoid(values * density, t, axis=1) if hasattr(np, "trapezoid") \
        else np.trapz(values * density, t, axis=1)


def _input_mean(link: Link, act: Optional[Node], mu: np.ndarray, sigma: np.ndarray,
                layer: Node, ctx: PassContext) -> Optional[np.ndarray]:
    """Mean of each source channel as the next layer reads it (None: cannot model it)."""
    window = 1
    for node in link.ops:
        if node.op == "max_pool2d":
            window *= int(np.prod(node.attrs["kernel"]))
    if window == 1 and (act is None or act.op in ("identity", "relu", "clip")):
        # the closed forms of the paper
        if act is None or act.op == "identity":
            lo, hi = -np.inf, np.inf
        elif act.op == "relu":
            lo, hi = 0.0, np.inf
        else:
            lo, hi = float(act.attrs["min"]), float(act.attrs["max"])
        return clipped_normal_mean(mu, sigma, lo, hi)
    fn, monotone = _activation_fn(link, act, mu.size)
    if window > 1 and not monotone:
        ctx.note("bias not corrected analytically: max pooling after a decreasing activation",
                 layer)
        return None
    if window > 1:
        ctx.note(f"max pooling modelled as the max of {window} independent samples (neighbours "
                 f"are correlated, so this overestimates the mean somewhat)", layer)
    return activation_mean(mu, sigma, fn, window)


def analytic_means(graph: Graph, layers: list[Node], ctx: PassContext) -> dict:
    """{layer name: per-input-channel mean} for layers fed through one activation by a layer
    with batch norm statistics."""
    bn_stats = graph.meta.get("bn_stats") or {}
    out = {}
    for layer in layers:
        link = trace_input(graph, layer)
        entry = None if link is None else bn_stats.get(link.src.output.name)
        acts = [] if link is None else link.activations
        if entry is None or len(acts) > 1:
            why = ("more than one activation before it" if entry is not None else
                   "its input does not come from a layer with batch norm statistics")
            ctx.note(f"bias not corrected analytically: {why}", layer)
            continue
        mean = _input_mean(link, acts[0] if acts else None, np.asarray(entry["beta"], np.float64),
                           np.abs(np.asarray(entry["gamma"], np.float64)), layer, ctx)
        if mean is not None:
            out[layer.name] = mean[link.channel_map]
    return out


# ---- the pass ------------------------------------------------------------------------------------

def _bias_quant(layer: Node) -> Optional[QuantParams]:
    """Bias parameters s_x * s_w for a layer that had no bias (None if x or W is not quantized)."""
    qx, qw = layer.inputs[0].quant, layer.inputs[1].quant
    if qx is None or qw is None or len(qx.scale) != 1:
        return None
    scale = qx.scale[0] * np.asarray(qw.scale, np.float64)
    return QuantParams(scale, np.zeros(scale.size, np.int64), bits=32, signed=True,
                       axis=0 if qw.axis is not None else None, pow2=qw.pow2 and qx.pow2)


@register_pass("bias-correct")
@dataclass(frozen=True)
class BiasCorrect(Pass):
    """Subtract the expected output error of quantized weights from conv/linear biases."""

    method: Literal["empirical", "analytic"] = "empirical"
    batch_size: int = 64  # rows per batch when the calibration data is one big array

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        layers = [n for n in graph.nodes if is_layer(n) and n.inputs[1].quant is not None
                  and np.issubdtype(n.inputs[1].data.dtype, np.floating)]
        if not layers:
            raise PassError("bias-correct found no conv2d/linear with quantized float weights; "
                            "run it after quantize (e.g. 'calibrate,quantize,bias-correct')")
        if self.method == "empirical":
            means = _stats_means(graph, layers) if ctx.calibration_data is None else None
            if means is None:
                if ctx.calibration_data is None:
                    raise PassError("bias-correct{method=empirical} needs calibration data "
                                    "(PassContext.calibration_data) or the statistics of a "
                                    "calibrate pass; use method=analytic for data-free correction")
                means = measured_means(graph, layers, ctx.calibration_data, self.batch_size)
        else:
            means = analytic_means(graph, layers, ctx)

        changed = False
        for layer in layers:
            if layer.name not in means:
                continue
            error = apply_to_inputs(layer, weight_error(layer), means[layer.name])
            bias = layer.input(2)
            b = np.zeros(error.size) if bias is None else bias.data.astype(np.float64)
            quant = _bias_quant(layer) if bias is None else None
            if bias is None and quant is None:
                ctx.note("new bias left float: the layer's input or weight has no "
                         "quantization parameters", layer)
            name = layer.name
            set_param(graph, layer, 2, b - error, quant=quant)
            ctx.note(f"bias corrected by up to {float(np.max(np.abs(error))):.3g} "
                     f"({self.method})", graph.values[name].producer)
            changed = True
        return changed
