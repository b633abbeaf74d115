"""`absorb-bias`: high-bias absorption (Nagel et al., ICCV 2019, section 4.1.1).

After equalization a layer can be left with large biases that inflate the activation range the
next quantizer has to cover. When layer 1's output channel i is (almost) always at least c_i, and
the activation is the identity above zero (relu, prelu, leaky_relu), then

    f(y) = f(y - c) + c   for y >= c >= 0,   so   W2 f(y) + b2 = W2 f(y - c) + (b2 + W2 c),

and c can be moved from b1 into b2. Following the paper, c_i = max(0, beta_i - 3 gamma_i) from
the batch norm statistics `fold-bn` left in `graph.meta["bn_stats"]` (the pre-activation output
is about N(beta, gamma^2); a layer without them is left alone): y >= c holds for all but ~0.1 % of
a normal distribution, so the change is an approximation, not an identity. For a conv2d layer 2,
W2 c sums over the kernel taps, which is exact away from the borders; where layer 2 pads with
zeros, the padding used to stand for f(y) = 0 but now stands for f(y - c) = 0, i.e. an input of
c, and border outputs shift by the taps that fall on padding. Both effects are measured on real
data in the tests; the pass notes per layer how much it absorbed.

Pooling between the layers must commute with subtracting c: max pooling (pads with -inf) and
global average pooling do; average pooling does only without padding or with
count_include_pad=false. The activation ops must all be relu, prelu or leaky_relu (or identity),
with at least one of them; clip (ReLU6) is not shifted by a constant, so it ends the pair.
"""
from __future__ import annotations

import numpy as np

from qcompile.ir.graph import Graph, Node
from qcompile.passmanager import PassContext, register_pass
from qcompile.quant.chains import Link, apply_to_inputs, find_links, set_param

_RELU_LIKE = ("relu", "prelu", "leaky_relu")


def _shift_safe(node: Node) -> bool:
    """Whether `node` commutes with subtracting a per-channel constant."""
    if node.op == "avg_pool2d":
        return not any(node.attrs["padding"]) or not node.attrs["count_include_pad"]
    return node.op != "clip"


def absorbable(link: Link, stats: dict) -> bool:
    acts = [n.op for n in link.activations]
    return (link.src.output.name in stats and any(a in _RELU_LIKE for a in acts)
            and all(a in _RELU_LIKE + ("identity",) for a in acts)
            and all(_shift_safe(n) for n in link.ops))


@register_pass("absorb-bias")
def absorb_bias(graph: Graph, ctx: PassContext) -> bool:
    """Move the always-positive part of biases (from BN stats) through ReLUs into the next layer."""
    stats = dict(graph.meta.get("bn_stats", {}))
    changed = False
    done: set = set()
    # Giving layer 2 a bias rebuilds its node and invalidates found links, so look again after.
    while True:
        todo = [link for link in find_links(graph) if link.src.output.name not in done]
        if not todo:
            break
        for link in todo:
            done.add(link.src.output.name)
            if not absorbable(link, stats):
                continue
            entry = stats[link.src.output.name]
            c = np.maximum(0.0, np.asarray(entry["beta"]) - 3.0 * np.abs(entry["gamma"]))
            if not np.any(c > 0):
                continue
            rebuilt = link.src.input(2) is None or link.dst.input(2) is None
            b1 = np.zeros(c.size) if link.src.input(2) is None else \
                link.src.inputs[2].data.astype(np.float64)
            w2 = link.dst.inputs[1].data.astype(np.float64)
            b2 = np.zeros(w2.shape[0]) if link.dst.input(2) is None else \
                link.dst.inputs[2].data.astype(np.float64)
            set_param(graph, link.src, 2, b1 - c)
            stats[link.src.output.name] = {**entry, "beta": np.asarray(entry["beta"]) - c}
            set_param(graph, link.dst, 2, b2 + apply_to_inputs(link.dst, w2, c, link.channel_map))
            ctx.note(f"absorbed bias into %{link.dst.name} from {int(np.sum(c > 0))} of "
                     f"{c.size} channels (largest {float(c.max()):.3g})", link.src)
            changed = True
            if rebuilt:
                break
    if changed:
        graph.meta["bn_stats"] = stats
    return changed
