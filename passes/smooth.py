"""`smooth`: SmoothQuant-style migration of activation outliers into weights (Xiao et al.,
"SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models",
ICML 2023).

A layer_norm whose output is read only by linears (as their data input) can hand a positive
per-channel scale to them without changing the float function:

    linear(LN(x; gamma, beta), W) = linear(LN(x; gamma / s, beta / s), W diag(s))

because the LN output is `gamma * n + beta` per channel and a linear's input column j only ever
multiplies channel j. With

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(max|X_j| over the calibration data, max|W_j| over column j of every linear reading the LN),
channels whose activations are large get divided down and the weights that read them grow by the
same factor, so the activation range shrinks and the two quantization problems are balanced;
alpha = 0.5 splits the difficulty evenly, alpha -> 1 pushes it all onto the weights.

The transformation is exact only when *every* user of the LN output applies it: if the output
also reaches a residual add (post-norm BERT), that add would see the scaled channels, so such a
layer_norm is left alone, with a note naming the user. Per-channel weight quantization absorbs
the larger columns well; per-tensor activation quantization is what gains.

Run it before `calibrate` (it changes the LN outputs, so earlier ranges would be stale); it
collects its own per-channel maxima on `ctx.calibration_data` (the last axis is the channel axis
of a linear's input, which is not what `calibrate`'s per-channel statistics describe).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from qcompile.errors import PipelineError
from qcompile.interp.interpreter import Interpreter
from qcompile.ir.graph import Graph, Node, Value
from qcompile.passmanager import Pass, PassContext, register_pass
from qcompile.quant.calibration import CalibrationData


@dataclass
class SmoothSite:
    """A layer_norm whose output feeds only linears: the unit `smooth` rescales."""

    norm: Node
    linears: list[Node]

    @property
    def value(self) -> Value:
        return self.norm.outputs[0]


def _unsmoothable(graph: Graph, norm: Node) -> Optional[str]:
    """Why `norm`'s output cannot be smoothed exactly, or None when it can."""
    out = norm.outputs[0]
    channels = out.type.shape[-1] if out.type.rank else None
    axis = int(norm.attrs.get("axis", -1))
    if out.type.rank == 0 or axis % out.type.rank != out.type.rank - 1:
        return "it normalises over more than the last axis"
    gamma, beta = norm.input(1), norm.input(2)
    if gamma is None or gamma.data is None:
        return "its gamma is not a constant"
    if beta is not None and beta.data is None:
        return "its beta is not a constant"
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t is not None and t.data.shape != (channels,):
            return f"its {name} has shape {t.data.shape}, not ({channels},)"
    if out in graph.outputs:
        return "its output is a graph output"
    if not out.users:
        return "its output is unused"
    for user in out.users:
        w = user.input(1) if user.op == "linear" else None
        if user.op != "linear" or user.inputs[0] is not out or any(v is out for v in user.inputs[1:]):
            return f"its output also feeds {user.name} ({user.op}), which would see the scale"
        if w is None or w.data is None or w.data.ndim != 2 or w.data.shape[1] != channels:
            return f"{user.name} has no constant ({channels}-column) weight to take the scale"
        if w.quant is not None:
            return f"{user.name}'s weight is already quantized (run smooth before quantize)"
    return None


def find_sites(graph: Graph, ctx: Optional[PassContext] = None) -> list[SmoothSite]:
    """Every layer_norm that can be smoothed exactly; the others are noted on `ctx`."""
    sites = []
    for node in graph.nodes:
        if node.op != "layer_norm":
            continue
        why = _unsmoothable(graph, node)
        if why is None:
            sites.append(SmoothSite(node, list(dict.fromkeys(node.outputs[0].users))))
        elif ctx is not None:
            ctx.note(f"layer_norm not smoothed: {why}", node)
    return sites


def activation_maxima(graph: Graph, values: list[Value], source, batch_size: int,
                      batches: int = 0) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each of `values` over the calibration batches."""
    wanted = {v.name for v in values}
    maxima: dict[str, np.ndarray] = {}

    def hook(node: Node, outs: list) -> None:
        for v, o in zip(node.outputs, outs):
            if v.name in wanted:
                a = np.abs(np.asarray(o, np.float64)).reshape(-1, o.shape[-1]).max(axis=0)
                maxima[v.name] = np.maximum(maxima[v.name], a) if v.name in maxima else a

    interp = Interpreter(graph, "float", observer=hook)
    for i, batch in enumerate(CalibrationData(source, graph, batch_size)):
        if batches and i >= batches:
            break
        interp.run(batch)
    return maxima


def smoothing_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = act_max_j**alpha / weight_max_j**(1 - alpha); 1 where either side is zero (a dead
    channel has nothing to balance) or the result is not a finite positive number."""
    act_max = np.asarray(act_max, np.float64)
    weight_max = np.asarray(weight_max, np.float64)
    s = np.ones_like(act_max)
    ok = (act_max > 0) & (weight_max > 0)
    s[ok] = act_max[ok] ** alpha / weight_max[ok] ** (1.0 - alpha)
    s[~np.isfinite(s) | (s <= 0)] = 1.0
    return s


def _replace_constant(graph: Graph, node: Node, i: int, data: np.ndarray) -> None:
    """Input `i` of `node` becomes a fresh constant (constants may be shared: never in place)."""
    old = node.inputs[i]
    const = graph.add_constant(old.name, data.astype(old.data.dtype), dtype=old.type.dtype)
    graph.set_input(node, i, const)
    if old.producer is None and not old.users and old not in graph.outputs \
            and old.name in graph.constants:
        graph.remove_constant(old)


@register_pass("smooth")
@dataclass(frozen=True)
class Smooth(Pass):
    """Migrate per-channel activation range from layer_norm outputs into the linears reading
    them (SmoothQuant; float-exact)."""

    alpha: float = 0.5      # migration strength: 0 keeps activations, 1 moves all into weights
    batches: int = 0        # 0: all calibration batches
    batch_size: int = 64    # rows per batch when the calibration data is one array

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = {
            "alpha": (0.0 <= self.alpha <= 1.0, "must be in [0, 1]"),
            "batches": (self.batches >= 0, "must be >= 0 (0 means all)"),
            "batch_size": (self.batch_size >= 1, "must be >= 1"),
        }
        for option, (ok, expected) in problems.items():
            if not ok:
                raise PipelineError(f"pass 'smooth', option '{option}': {expected}, got "
                                    f"{getattr(self, option)!r}")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        sites = find_sites(graph, ctx)
        if not sites:
            return False
        if graph.meta.get("ranges"):
            ctx.warn("smooth runs after calibration: the recorded ranges of the smoothed "
                     "layer_norm outputs are now stale; run calibrate again")
        maxima = activation_maxima(graph, [s.value for s in sites], ctx.calibration_data,
                                   self.batch_size, self.batches)
        scales = dict(graph.meta.get("smooth_scales", {}))
        for site in sites:
            s = self._smooth(graph, site, maxima[site.value.name])
            scales[site.value.name] = scales.get(site.value.name, 1.0) * s
            ctx.note(f"smoothed %{site.value.name} into {', '.join(n.name for n in site.linears)}"
                     f"; scales {s.min():.3g}..{s.max():.3g}", site.norm)
        graph.meta["smooth_scales"] = scales
        return True

    def _smooth(self, graph: Graph, site: SmoothSite, act_max: np.ndarray) -> np.ndarray:
        weights = [n.input(1).data.astype(np.float64) for n in site.linears]
        weight_max = np.max([np.abs(w).max(axis=0) for w in weights], axis=0)
        s = smoothing_scales(act_max, weight_max, self.alpha)
        norm = site.norm
        _replace_constant(graph, norm, 1, norm.input(1).data.astype(np.float64) / s)
        if norm.input(2) is not None:
            _replace_constant(graph, norm, 2, norm.input(2).data.astype(np.float64) / s)
        for node, w in zip(site.linears, weights):
            _replace_constant(graph, node, 1, w * s)  # column j reads channel j
        return s
