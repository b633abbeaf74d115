"""Integer-only lowering of transformer ops (I-BERT recipes), plus `fold-attention-mask`.

`lower-integer` rules for softmax / masked_softmax (`qsoftmax`), layer_norm (`qlayer_norm`),
gelu (`qgelu` or a lookup table), and what a BERT encoder with mean pooling needs besides:
gather of a quantized embedding table, reduce_sum (`qreduce_sum`), div (`qdiv`, or a requantize
for a positive scalar divisor) and cast of a plain integer (a 0/1 mask) to a quantized float
(`qcast`). The constants each op needs are computed here, at compile time, by the
`*_attrs` functions (tests and backends call them too); the ops' semantics live in
`qcompile/ir/ops/defs/integer_transformer.py` and docs/integer-semantics.md.

GELU: an 8-bit input has 256 codes, so the lookup table of `lower-integer` (GELU evaluated per
code, at most one step from the fake-quant simulation) is kept for it; the I-BERT polynomial
(`qgelu`) is used for wider inputs, or for every gelu when
`ctx.options["integer_gelu"] == "polynomial"`.

`fold-attention-mask` must run before `calibrate`: HuggingFace BERT adds
`where(mask, 0, -FLT_MAX)` to the attention scores, and a calibrated range that includes
-3.4e38 leaves no resolution for the scores. The pass rewrites
`softmax(add(x, where(m, 0, -big)))` into `masked_softmax(x, m)` (same float result).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from qcompile.ir.graph import Graph, Node, Value
from qcompile.ir.types import QuantParams, is_float, is_int
from qcompile.passes.lower_integer import (CannotLower, LoweringState, _f32, lower_lut,
                                           lowering_rule)
from qcompile.passmanager import PassContext, register_pass
from qcompile.quant.intmath import quantize_float

LN2 = math.log(2.0)
#: I-BERT's i-exp polynomial on (-ln2, 0]: exp(r) ~ A (r + B)**2 + C.
IEXP_A, IEXP_B, IEXP_C = 0.3585, 1.353, 0.344
#: I-BERT's i-erf: erf(v) ~ sign(v) (1 - A (min(|v|, B) - B)**2).
IERF_A, IERF_B = 0.2888, 1.769
#: Width of the integer gamma of qlayer_norm (symmetric, zero point 0).
GAMMA_BITS = 16
#: Additive masks at least this large (in magnitude) are folded by `fold-attention-mask`.
MASK_MIN_MAGNITUDE = 1e4


def _multiplier(real: float, what: str) -> tuple[int, int]:
    from qcompile.quant.intmath import quantize_multiplier
    m0, shift = quantize_multiplier(float(real))
    if m0 == 0:
        raise CannotLower(f"{what} multiplier {real!r} is below 2**-32")
    return m0, shift


def _max_centred(q: QuantParams) -> int:
    z = q.zero_point[0]
    return max(q.qmax - z, z - q.qmin)


# ---- compile-time constants ---------------------------------------------------------------------

def softmax_attrs(q_in: QuantParams, frac_bits: int = 14) -> dict:
    """qsoftmax's constants for input params `q_in`: the multiplier taking q - max onto the grid
    ln2 / 2**frac_bits, and the i-exp coefficients on that grid."""
    s_t = LN2 / 2 ** frac_bits
    real = float(_f32(q_in.scale)[0]) / s_t
    # gemmlowp_double shifts (q - max) left by the multiplier's exponent inside int32.
    if (q_in.qmax - q_in.qmin) * 2.0 ** max(math.ceil(math.log2(real)), 0) >= 2 ** 31:
        raise CannotLower(f"softmax input scale {q_in.scale[0]!r} is too large for the "
                          f"ln2/2**{frac_bits} grid")
    m0, shift = _multiplier(real, "softmax input")
    return {"in_multiplier": m0, "in_shift": shift, "frac_bits": frac_bits,
            "exp_b": int(round(IEXP_B / s_t)), "exp_c": int(round(IEXP_C / (IEXP_A * s_t * s_t)))}


def gelu_attrs(q_in: QuantParams, q_out: QuantParams) -> dict:
    """qgelu's constants: the largest input shift whose product t (erf_c + erf_int) provably
    fits int32, the i-erf coefficients at that grid, and the output multiplier
    s_t / (2 erf_c s_y) (erf_c stands for 1.0, so its rounding is accounted for)."""
    s_x = float(_f32(q_in.scale)[0])
    max_d = _max_centred(q_in)
    for k in range(24, -17, -1):
        s_t = s_x * 2.0 ** -k
        erf_b = int(round(IERF_B * math.sqrt(2.0) / s_t))
        erf_c = int(round(2.0 / (IERF_A * s_t * s_t)))
        max_t = max_d * 2 ** k if k >= 0 else -(-max_d >> -k) + 1
        if erf_b >= 1 and erf_c > erf_b ** 2 and max_t * 2 * erf_c < 2 ** 31:
            m0, shift = _multiplier(s_t / (2 * erf_c * float(_f32(q_out.scale)[0])), "gelu")
            return {"in_shift": k, "erf_b": erf_b, "erf_c": erf_c, "multiplier": m0,
                    "shift": shift, "clamp_min": q_out.qmin, "clamp_max": q_out.qmax,
                    "dtype": q_out.storage_dtype}
    raise CannotLower(f"no internal grid keeps the i-GELU product of input scale {s_x!r} in int32")


def layer_norm_attrs(q_in: QuantParams, q_out: QuantParams, n: int, eps: float,
                     gamma: np.ndarray, beta: np.ndarray
                     ) -> tuple[dict, np.ndarray, QuantParams, np.ndarray, QuantParams]:
    """(attrs, gamma codes, gamma params, beta codes, beta params) of qlayer_norm.

    gamma is quantized symmetric to GAMMA_BITS at s_g = max|gamma| / (2**15 - 1); the fraction
    bits F of the normalised value are the most that keep |z| (gamma - 0) + |beta| in int32,
    with |z| <= sqrt(N) 2**F; beta is quantized at s_g 2**-F (i32).

    A per-channel output (one scale s_y[c] per element of the normalised last axis) is folded
    into gamma and beta: the codes are those of gamma / s_y and beta / s_y, so gamma's params
    are per channel (s_g s_y[c]) and one multiplier s_g 2**-F serves every channel; the
    kernel is unchanged."""
    s_y = _f32(q_out.scale)
    per_channel = q_out.per_channel
    unit = s_y if per_channel else 1.0
    gamma = np.asarray(gamma, np.float64) / unit
    beta = np.asarray(beta, np.float64) / unit
    g_max = float(np.abs(gamma).max()) if gamma.size else 0.0
    s_g = g_max / (2 ** (GAMMA_BITS - 1) - 1) if g_max > 0 else 1.0
    g_codes = quantize_float(gamma, s_g, 0, -(2 ** (GAMMA_BITS - 1)) + 1, 2 ** (GAMMA_BITS - 1) - 1)
    b_max = float(np.abs(beta).max()) if beta.size else 0.0
    bound = (math.sqrt(n) + 1) * float(np.abs(g_codes).max(initial=1)) + b_max / s_g
    frac_bits = min(int(math.floor(math.log2((2 ** 31 - 1) / bound))), 24)
    if frac_bits < 4:
        raise CannotLower(f"layer_norm over {n} elements leaves only {frac_bits} fraction bits "
                          f"in int32 (beta too large against gamma)")
    s_b = s_g * 2.0 ** -frac_bits
    b_codes = quantize_float(beta, s_b, 0, -(2 ** 31), 2 ** 31 - 1)
    s_x = float(_f32(q_in.scale)[0])
    eps_int = int(round(eps * float(n) ** 3 / (s_x * s_x)))
    m0, shift = _multiplier(s_b / (1.0 if per_channel else float(s_y[0])), "layer_norm")
    attrs = {"eps_int": eps_int, "frac_bits": frac_bits, "multiplier": m0, "shift": shift,
             "clamp_min": q_out.qmin, "clamp_max": q_out.qmax, "dtype": q_out.storage_dtype}
    if per_channel:
        zeros = np.zeros(s_y.size, np.int64)
        q_g = QuantParams(s_g * s_y, zeros, bits=GAMMA_BITS, signed=True, axis=0)
        q_b = QuantParams(s_b * s_y, zeros, bits=32, signed=True, axis=0)
    else:
        q_g = QuantParams(s_g, 0, bits=GAMMA_BITS, signed=True)
        q_b = QuantParams(s_b, 0, bits=32, signed=True)
    return attrs, g_codes, q_g, b_codes, q_b


def layer_norm_input_grid(state: LoweringState, xi: Value, n: int, eps: float,
                          name: str) -> Value:
    """A per-channel LayerNorm input on one per-tensor i16 grid (qlayer_norm centres and sums
    its input exactly, which needs one scale): the finest grid on which qlayer_norm's exact
    N (sum c**2 + eps_int), with c[k] = N d[k] - sum(d), provably stays below 2**62."""
    def fits(scale: float, bound: np.ndarray) -> bool:
        bound = np.broadcast_to(bound, (n,)) if bound.size == 1 else bound
        c = n * bound + bound.sum()
        eps_int = eps * float(n) ** 3 / (scale * scale)
        return float(n) * (float(np.sum(c * c)) + eps_int + 1) < 2.0 ** 62
    scale, bits = state.grid_for(xi, fits, "the LayerNorm's sum of squares within 62 bits")
    return state.common_grid(xi, scale, bits, name=name)


# ---- rules --------------------------------------------------------------------------------------

def _per_tensor_int(state: LoweringState, v: Value) -> Value:
    vi = state.int_value(v)
    if vi.quant.per_channel:
        raise CannotLower(f"%{v.name} has per-channel params; this op takes per-tensor inputs")
    return vi


def _out(state: LoweringState, node: Node) -> QuantParams:
    q = state.params(node.outputs[0])
    if q.per_channel:
        raise CannotLower(f"per-channel params on %{node.outputs[0].name}")
    return q


@lowering_rule("softmax", "masked_softmax")
def lower_softmax(graph: Graph, node: Node, state: LoweringState) -> bool:
    """qsoftmax; the output must be on the fixed grid 2**-k (quantize{transformer=true})."""
    q_out = _out(state, node)
    k = -math.log2(q_out.scale[0])
    if k != round(k):
        raise CannotLower(f"softmax output scale {q_out.scale[0]!r} is not 2**-k; quantize "
                          f"with transformer=true gives softmax outputs the fixed scale "
                          f"2**-bits")
    xi = _per_tensor_int(state, node.inputs[0])
    mask = node.inputs[1] if node.op == "masked_softmax" else None
    attrs = {"axis": node.attrs["axis"], **softmax_attrs(xi.quant), "rounding": _dyadic(state),
             "dtype": q_out.storage_dtype}
    y = state.emit("qsoftmax", [xi, mask], attrs, name=f"{node.name}.q", quant=q_out)
    state.set_int(node.outputs[0], y)
    return True


def _dyadic(state: LoweringState) -> str:
    """The internal rescalings of these ops need a multiplier; shift_only targets get the
    TFLite rounding for them (their scales are powers of two, so the multiplier is exact)."""
    return "gemmlowp_double" if state.rounding == "shift_only" else state.rounding


@lowering_rule("gelu")
def lower_gelu(graph: Graph, node: Node, state: LoweringState) -> bool:
    """A lookup table for inputs of up to 8 bits (GELU per code), else I-BERT's
    i-GELU polynomial (qgelu); ctx.options["integer_gelu"] = "polynomial" forces the latter."""
    xi = _per_tensor_int(state, node.inputs[0])
    polynomial = state.ctx.options.get("integer_gelu") == "polynomial"
    if xi.quant.bits <= 8 and not polynomial:
        return lower_lut(graph, node, state)
    if node.attrs.get("approximate", "none") != "none":
        raise CannotLower("the i-GELU polynomial approximates the erf form; this gelu is "
                          "the tanh approximation")
    q_out = _out(state, node)
    attrs = {**gelu_attrs(xi.quant, q_out), "rounding": _dyadic(state)}
    y = state.emit("qgelu", [xi], attrs, name=f"{node.name}.q", quant=q_out)
    state.set_int(node.outputs[0], y)
    return True


@lowering_rule("layer_norm")
def lower_layer_norm(graph: Graph, node: Node, state: LoweringState) -> bool:
    """qlayer_norm with an i16 gamma and an i32 beta built from the float constants."""
    x, gamma, beta = node.inputs[0], node.input(1), node.input(2)
    axis = node.attrs["axis"] % x.type.rank
    norm_shape = x.type.shape[axis:]
    if any(d is None for d in norm_shape):
        raise CannotLower(f"layer_norm over dynamic dims {norm_shape}")
    n = int(np.prod(norm_shape, dtype=np.int64))
    last = x.type.rank - 1
    q_out = state.params(node.outputs[0])
    per_channel_ok = axis == last  # per channel of the one normalised axis: folded into gamma
    if q_out.per_channel and not (per_channel_ok and q_out.axis % x.type.rank == last):
        raise CannotLower(f"per-channel params on %{node.outputs[0].name} along axis "
                          f"{q_out.axis}; only the normalised last axis has a per-channel form")
    xi = state.int_value(x)
    if xi.quant.per_channel:
        if not (per_channel_ok and xi.quant.axis % x.type.rank == last):
            raise CannotLower(f"%{x.name} is per-channel along axis {xi.quant.axis}; only the "
                              f"normalised last axis can be put on one grid")
        xi = layer_norm_input_grid(state, xi, n, node.attrs["eps"], f"{x.name}.g16")
    arrays = []
    for v, default in ((gamma, 1.0), (beta, 0.0)):
        if v is None:
            arrays.append(np.full(norm_shape, default))
        elif v.data is None or not is_float(v.dtype):
            raise CannotLower(f"layer_norm parameter %{v.name} is not a float constant")
        else:
            arrays.append(np.asarray(v.data, np.float64))
    attrs, g_codes, q_g, b_codes, q_b = layer_norm_attrs(xi.quant, q_out, n, node.attrs["eps"],
                                                         *arrays)
    gi = graph.add_constant(f"{gamma.name if gamma is not None else node.name + '.gamma'}.q",
                            g_codes, dtype=q_g.storage_dtype, quant=q_g)
    bi = graph.add_constant(f"{beta.name if beta is not None else node.name + '.beta'}.q",
                            b_codes, dtype="i32", quant=q_b)
    y = state.emit("qlayer_norm", [xi, gi, bi],
                   {"axis": node.attrs["axis"], **attrs, "rounding": _dyadic(state)},
                   name=f"{node.name}.q", quant=q_out)
    state.set_int(node.outputs[0], y)
    return True


@lowering_rule("gather")
def lower_gather(graph: Graph, node: Node, state: LoweringState) -> bool:
    """gather of integer rows (an embedding table quantized per tensor) by plain integer
    indices; a requantize follows if the output has other params than the table."""
    data, indices = node.inputs
    if not is_int(indices.dtype) or indices.quant is not None:
        raise CannotLower(f"gather indices %{indices.name} must be plain integers")
    q_out = _out(state, node)
    di = _per_tensor_int(state, data)
    y = state.emit("gather", [di, indices], dict(node.attrs), name=f"{node.name}.g",
                   quant=di.quant)
    state.set_int(node.outputs[0], state.rescale_to(y, q_out, name=f"{node.name}.q"))
    return True


@lowering_rule("reduce_sum")
def lower_reduce_sum(graph: Graph, node: Node, state: LoweringState) -> bool:
    """qreduce_sum: an int32 sum of centred codes requantized by s_x / s_y."""
    q_out = _out(state, node)
    xi = _per_tensor_int(state, node.inputs[0])
    m0, shift = _multiplier(float(_f32(xi.quant.scale)[0] / _f32(q_out.scale)[0]), "reduce_sum")
    y = state.emit("qreduce_sum", [xi], {**node.attrs, "multiplier": m0, "shift": shift,
                                         "rounding": _dyadic(state), "clamp_min": q_out.qmin,
                                         "clamp_max": q_out.qmax,
                                         "dtype": q_out.storage_dtype},
                   name=f"{node.name}.q", quant=q_out)
    state.set_int(node.outputs[0], y)
    return True


@lowering_rule("div")
def lower_div(graph: Graph, node: Node, state: LoweringState) -> bool:
    """Division by a positive scalar constant c is a requantize by s_x / (c s_y); by an
    activation it is qdiv (one exact integer division per element)."""
    a, b = node.inputs
    q_out = _out(state, node)
    ai = _per_tensor_int(state, a)
    if b.is_constant:
        if b.data is None or b.data.size != 1 or not float(b.data.reshape(-1)[0]) > 0:
            raise CannotLower(f"division by constant %{b.name}: only a positive scalar has an "
                              f"integer form")
        real = float(_f32(ai.quant.scale)[0]) / (float(b.data.reshape(-1)[0])
                                                 * float(_f32(q_out.scale)[0]))
        state.set_int(node.outputs[0], state.requantize(ai, q_out, real, name=f"{node.name}.q"))
        return True
    bi = _per_tensor_int(state, b)
    m0, shift = _multiplier(float(_f32(ai.quant.scale)[0] / (_f32(bi.quant.scale)[0]
                                                            * _f32(q_out.scale)[0])), "div")
    y = state.emit("qdiv", [ai, bi], {"multiplier": m0, "shift": shift, "clamp_min": q_out.qmin,
                                      "clamp_max": q_out.qmax, "dtype": q_out.storage_dtype},
                   name=f"{node.name}.q", quant=q_out)
    state.set_int(node.outputs[0], y)
    return True


@lowering_rule("cast")
def lower_cast(graph: Graph, node: Node, state: LoweringState) -> bool:
    """A plain integer or bool (no params: a 0/1 attention mask) cast to a quantized float is
    qcast, requantizing the integer itself (scale 1) by 1 / s_y."""
    x = node.inputs[0]
    if not (is_int(x.dtype) or x.dtype == "bool") or x.quant is not None:
        raise CannotLower(f"only a cast of plain integers to float has an integer form; "
                          f"%{x.name} is {x.dtype}{' with params' if x.quant else ''}")
    q_out = _out(state, node)
    m0, shift = _multiplier(1.0 / float(_f32(q_out.scale)[0]), "cast")
    y = state.emit("qcast", [x], {"multiplier": m0, "shift": shift, "rounding": _dyadic(state),
                                  "clamp_min": q_out.qmin, "clamp_max": q_out.qmax,
                                  "dtype": q_out.storage_dtype},
                   name=f"{node.name}.q", quant=q_out)
    state.set_int(node.outputs[0], y)
    return True


# ---- fold-attention-mask ------------------------------------------------------------------------

def _scalar_const(v: Value) -> Optional[float]:
    if v.data is None:
        return None
    vals = np.unique(np.asarray(v.data, np.float64))
    return float(vals[0]) if vals.size == 1 else None


def _mask_of(add: Node, x_index: int) -> Optional[Value]:
    """The bool mask m when add's other input is where(m, 0, -big)."""
    other = add.inputs[1 - x_index]
    where = other.producer
    if where is None or where.op != "where":
        return None
    cond, keep, drop = where.inputs
    k, d = _scalar_const(keep), _scalar_const(drop)
    if cond.dtype != "bool" or k != 0.0 or d is None or d > -MASK_MIN_MAGNITUDE:
        return None
    return cond


@register_pass("fold-attention-mask")
def fold_attention_mask(graph: Graph, ctx: PassContext) -> bool:
    """Rewrite softmax(add(x, where(m, 0, -big))) as masked_softmax(x, m) (run before calibrate)."""
    changed = False
    for node in list(graph.nodes):
        if node.op != "softmax" or node.graph is not graph:
            continue
        add = node.inputs[0].producer
        if add is None or add.op != "add" or len(add.outputs[0].users) != 1 or \
                add.outputs[0] in graph.outputs:
            continue
        for i in (0, 1):
            x = add.inputs[i]
            mask = _mask_of(add, i)
            if mask is not None and x.type.shape == add.outputs[0].type.shape:
                break
        else:
            continue
        new = graph.make_node("masked_softmax", [x, mask], {"axis": node.attrs["axis"]},
                              name=node.name + ".masked", loc=node.loc)
        name = node.outputs[0].name
        graph.replace_node(node, new)
        graph.rename(new.outputs[0], name)  # consumers and dumps keep the softmax's name
        where = add.inputs[1 - i].producer
        graph.erase(add)
        if not where.outputs[0].users and where.outputs[0] not in graph.outputs:
            graph.erase(where)
        changed = True
    if changed:
        ctx.note("folded additive attention masks into masked_softmax")
    return changed
