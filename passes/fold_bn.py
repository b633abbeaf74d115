"""`fold-bn`: fold inference batch norm into the conv2d/linear in front of it.

    BN(W x + b) = g * (W x + b - mean) / sqrt(var + eps) + beta
                = (k * W) x + (k * (b - mean) + beta),   k = g / sqrt(var + eps) per output channel

so the weight is scaled along its output-channel axis (axis 0: OIHW for conv2d, including
depthwise and grouped convs, (out, in) for linear) and the bias absorbs the rest; a bias is
created when the layer had none. Arithmetic is done in float64 and rounded once to the weight's
dtype, which keeps the float outputs within float32 rounding of the original.

The folded layer's output takes over the batch norm output's name, and the BN's parameters are
kept in `graph.meta["bn_stats"][name]` (float64): after folding they describe the distribution
of that pre-activation output, N(beta, gamma^2) per channel, which `absorb-bias` and analytic
`bias-correct` read and `equalize` keeps up to date.

A batch norm is folded only when the MAC output feeds nothing else (otherwise the other user
would see the normalised values too) and all its parameters are constants; any other batch norm
(after an add, a pooling, ...) stays in the graph with a note saying why.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from qcompile.ir.graph import Graph, Node
from qcompile.passmanager import PassContext, register_pass
from qcompile.quant.chains import is_layer, out_axis


def _why_not(graph: Graph, bn: Node) -> Optional[str]:
    """None if `bn` can be folded into its producer, else the reason it cannot."""
    producer = bn.inputs[0].producer
    if producer is None or not is_layer(producer):
        what = "a graph input" if producer is None else f"{producer.op} %{producer.name}"
        return f"its input comes from {what}, not a conv2d/linear with constant weights"
    if any(v is None or v.data is None for v in bn.inputs[1:5]):
        return "its gamma/beta/mean/var are not all constants"
    mac_out = producer.output
    if len(mac_out.users) != 1 or mac_out in graph.outputs:
        return f"%{mac_out.name} has other users besides the batch norm"
    rank = mac_out.type.rank
    if int(bn.attrs.get("axis", 1)) % rank != out_axis(producer):
        return (f"it normalises axis {bn.attrs.get('axis')} but the output channels of "
                f"{producer.op} %{producer.name} are on axis {out_axis(producer)}")
    return None


def _fold(graph: Graph, bn: Node) -> str:
    """Replace producer + bn by one layer; returns the name the folded output now has."""
    mac = bn.inputs[0].producer
    gamma, beta, mean, var = (bn.inputs[i].data.astype(np.float64) for i in range(1, 5))
    eps = float(bn.attrs.get("eps", 1e-5))
    w = mac.inputs[1].data.astype(np.float64)
    bias = mac.input(2)
    b = bias.data.astype(np.float64) if bias is not None else np.zeros(w.shape[0])

    k = gamma / np.sqrt(var + eps)
    dtype = mac.inputs[1].type.dtype
    scaled = w * k.reshape((-1,) + (1,) * (w.ndim - 1))  # per output channel (axis 0)
    new_w = graph.add_constant(mac.inputs[1].name + ".folded", scaled, dtype=dtype)
    new_b = graph.add_constant((bias.name if bias is not None else mac.name + ".bias") + ".folded",
                               (b - mean) * k + beta, dtype=dtype)
    name = bn.output.name
    folded = graph.make_node(mac.op, [mac.inputs[0], new_w, new_b], mac.attrs,
                             name=name + ".folded", loc=mac.loc, output_types=[bn.output.type])
    graph.insert_before(bn, folded)
    graph.replace_all_uses(bn.output, folded.output)
    graph.erase(bn)
    graph.erase(mac)
    graph.rename(folded.output, name)

    stats = dict(graph.meta.get("bn_stats", {}))  # a new dict: graph copies share meta's values
    stats[name] = {"gamma": gamma, "beta": beta, "mean": mean, "var": var, "eps": eps}
    graph.meta["bn_stats"] = stats
    return name


@register_pass("fold-bn")
def fold_bn(graph: Graph, ctx: PassContext) -> bool:
    """Fold batch_norm into the preceding conv2d/linear (weights and bias); record BN stats."""
    changed = False
    for bn in graph:
        if bn.op != "batch_norm":
            continue
        reason = _why_not(graph, bn)
        if reason is not None:
            ctx.note(f"batch_norm not folded: {reason}", bn)
            continue
        orphans = [v for v in bn.inputs[1:] + bn.inputs[0].producer.inputs[1:] if v is not None]
        _fold(graph, bn)
        # The old weights, bias and BN parameters are dead unless another node shares them.
        for value in orphans:
            if not value.users and value not in graph.outputs and value.name in graph.constants:
                graph.remove_constant(value)
        changed = True
    return changed
