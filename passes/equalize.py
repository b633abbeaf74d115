"""`equalize`: cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV 2019, section 4.1).

For two layers joined by ops that commute with a positive per-channel scale (relu, prelu,
leaky_relu, identity, pooling, reshapes: see `qcompile.quant.chains`),

    W2 f(W1 x + b1) = (W2 S) f(S^-1 W1 x + S^-1 b1)      for S = diag(s), s > 0,

so dividing output channel i of layer 1 (weights and bias) by s_i and multiplying the weights of
layer 2 that read channel i by s_i leaves the float function unchanged. Choosing

    s_i = sqrt(r1_i * r2_i) / r2_i
    (r1_i: max |W1| of output channel i; r2_i: max |W2| over the weights that read channel i)

gives both layers the same range sqrt(r1_i * r2_i) for that channel, which makes per-tensor
weight quantization far less lossy when channel ranges differ a lot (depthwise convs). In a
chain of three or more layers a middle layer is both a "layer 2" and a "layer 1", so the pairs
are visited in turn until no scale moves by more than `tolerance` or `iterations` sweeps are done.
prelu and leaky_relu keep their slopes: prelu(x / s) = prelu(x) / s for s > 0.

clip (ReLU6) is not positively homogeneous: clip(x / s, 0, 6) != clip(x, 0, 6) / s. With
`clip=skip` (the default) a clip ends a chain, so the float function is preserved exactly and
the graph keeps its fusable clip ops. With `clip=per-channel` the chain goes through and each
such clip becomes relu (or maximum with per-channel lower bounds) followed by minimum with
per-channel upper bounds max_i / s_i: still exactly the same float function, but the thresholds
now differ per channel, which the quantizer sees as an elementwise minimum with a constant
instead of a fused activation. The paper instead replaces ReLU6 by ReLU, which changes the
function; we never do that silently.

`graph.meta["bn_stats"]` of every rescaled layer output is divided by s (gamma and beta; the
stats describe that pre-activation output).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from qcompile.ir.graph import Graph, Node
from qcompile.passmanager import Pass, PassContext, register_pass
from qcompile.quant.chains import (Chain, channels_at, expand_to, find_chains, in_ranges,
                                   input_index, out_ranges, set_param)


def equalize_chain(weights: list[np.ndarray], biases: list[Optional[np.ndarray]], chain: Chain,
                   iterations: int, tolerance: float) -> tuple[list[np.ndarray], int]:
    """Equalize `weights`/`biases` (float64, updated in place) of `chain`'s layers.

    Returns the total scale applied to each link's channels and the number of sweeps done."""
    totals = [np.ones(link.src.inputs[1].type.shape[0]) for link in chain.links]
    indices = [input_index(link.dst, weights[k + 1], link.channel_map)
               for k, link in enumerate(chain.links)]
    sweeps = 0
    for sweeps in range(1, iterations + 1):
        largest = 0.0
        for k in range(len(chain.links)):
            w1, w2, index = weights[k], weights[k + 1], indices[k]
            r1 = out_ranges(w1)
            r2 = in_ranges(w2, index, r1.size)
            # A channel that is all zeros on either side has nothing to balance.
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
            weights[k] = w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))
            if biases[k] is not None:
                biases[k] = biases[k] / s
            weights[k + 1] = w2 * expand_to(s[index], w2)
            totals[k] *= s
            largest = max(largest, float(np.max(np.abs(s - 1.0))))
        if largest < tolerance:
            break
    return totals, sweeps


def _per_channel_clip(graph: Graph, clip: Node, channels: np.ndarray, scale: np.ndarray) -> None:
    """Replace clip{min,max}(x) by minimum(relu-or-maximum(x), max / s) with per-channel bounds."""
    x = clip.inputs[0]
    shape = (len(channels),) + (1,) * (x.type.rank - 2)
    s = scale[channels].reshape(shape)
    lo, hi = float(clip.attrs["min"]), float(clip.attrs["max"])
    dtype = x.type.dtype
    if lo == 0.0:
        lower = graph.make_node("relu", [x], name=clip.name + ".relu", loc=clip.loc)
    else:
        lo_c = graph.add_constant(clip.name + ".lo", np.full(shape, lo) / s, dtype=dtype)
        lower = graph.make_node("maximum", [x, lo_c], name=clip.name + ".lo", loc=clip.loc)
    graph.insert_before(clip, lower)
    hi_c = graph.add_constant(clip.name + ".hi", np.full(shape, hi) / s, dtype=dtype)
    upper = graph.make_node("minimum", [lower.output, hi_c], name=clip.name + ".hi",
                            loc=clip.loc, output_types=[clip.output.type])
    name = clip.output.name
    graph.replace_node(clip, upper)
    graph.rename(upper.output, name)


@register_pass("equalize")
@dataclass(frozen=True)
class Equalize(Pass):
    """Cross-layer equalization of weight ranges along conv/linear chains (float-exact)."""

    iterations: int = 20
    tolerance: float = 1e-8
    clip: Literal["skip", "per-channel"] = "skip"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if self.iterations < 1:
            from qcompile.errors import PipelineError
            raise PipelineError(f"pass 'equalize', option 'iterations': expected >= 1, "
                                f"got {self.iterations}")
        if graph.meta.get("ranges"):
            ctx.warn("equalize runs after calibration: the recorded activation ranges of "
                     "rescaled layers are now stale; run calibrate again")
        changed = False
        for chain in find_chains(graph, allow_clip=self.clip == "per-channel"):
            quantized = [n for n in chain.layers if n.inputs[1].quant is not None]
            if quantized:
                ctx.warn(f"chain {chain} not equalized: %{quantized[0].inputs[1].name} is "
                         f"already quantized (run equalize before quantize)", chain.layers[0])
                continue
            self._equalize(graph, ctx, chain)
            changed = True
        return changed

    def _equalize(self, graph: Graph, ctx: PassContext, chain: Chain) -> None:
        weights = [n.inputs[1].data.astype(np.float64) for n in chain.layers]
        biases = [None if n.input(2) is None else n.input(2).data.astype(np.float64)
                  for n in chain.layers]
        # Clip channels must be read before the graph changes (the links hold its nodes).
        clips = [(op, channels_at(link.src, link.ops[:link.ops.index(op)]), k)
                 for k, link in enumerate(chain.links) for op in link.ops if op.op == "clip"]
        totals, sweeps = equalize_chain(weights, biases, chain, self.iterations, self.tolerance)

        for node, w, b in zip(chain.layers, weights, biases):
            set_param(graph, node, 1, w)
            if b is not None:
                set_param(graph, node, 2, b)
        stats = dict(graph.meta.get("bn_stats", {}))
        for link, s in zip(chain.links, totals):
            entry = stats.get(link.src.output.name)
            if entry is not None:
                stats[link.src.output.name] = {**entry, "gamma": entry["gamma"] / s,
                                               "beta": entry["beta"] / s}
        if stats:
            graph.meta["bn_stats"] = stats
        for clip, channels, k in clips:
            _per_channel_clip(graph, clip, channels, totals[k])
        spread = max(float(np.max(np.abs(np.log(s)))) for s in totals)
        ctx.note(f"equalized chain {chain} in {sweeps} sweep(s); largest scale "
                 f"{np.exp(spread):.3g}x", chain.layers[0])
