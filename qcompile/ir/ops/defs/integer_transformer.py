"""Integer-only transformer ops (I-BERT style): softmax, GELU, LayerNorm and the helpers a
BERT encoder with mean pooling needs (integer sums, division, int-to-quantized casts).

Recipes follow Kim et al., "I-BERT: Integer-only BERT Quantization" (ICML 2021), adapted to
8-bit inputs: every op first moves its centred input onto a finer internal fixed-point grid
(an exact left shift or a dyadic requantize), so the polynomial constants can be integers with
many bits instead of being rounded at the coarse 8-bit input scale. All constants (polynomial
coefficients, internal grids, requantization multipliers) are computed by `lower-integer` at
compile time and stored as attributes; kernels use only integer arithmetic (int64
intermediates, shifts, integer division with a stated rounding) and `intmath` for every
requantization. docs/integer-semantics.md, section "Transformer ops", states each recipe.

Like the ops of `integer.py`, each op's kernel serves the "int" and the "float" modes.
`masked_softmax` is the one float op here: `fold-attention-mask` rewrites BERT's additive
`-FLT_MAX` attention mask into it, so calibration never sees the mask's huge values.
"""
from __future__ import annotations

import numpy as np

from ....quant.intmath import INT32_MAX, INT32_MIN, IntegerOverflowError, rdbpot
from ...types import TensorType, int_bits, int_range, is_signed
from ..registry import AttrSpec, register_op
from . import reduce, shape
from .common import broadcast_shapes, fail, fmt, is_int, norm_axes, norm_axis, require_float
from .integer import (_CLAMP, _DTYPE, _ROUNDING, _both, _centred, _check_clamp,
                      _check_multipliers, _finish, _params, _require_int, _rescale)

#: Newton iterations of `isqrt`: enough for every n < 2**62 from the power-of-two start
#: (relative error <= 1, then e' = e^2 / 2(1 + e): 1 -> 1/4 -> 1/40 -> 3e-4 -> 5e-8 -> 1e-15).
ISQRT_ITERATIONS = 6


# ---- exact integer helpers ----------------------------------------------------------------------

def _bit_length(n: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values (0 for 0), by comparisons only (no floats)."""
    bits = np.zeros(n.shape, np.int64)
    for k in range(63):
        bits += (n >> np.int64(k)) > 0
    return bits


def isqrt(n: np.ndarray) -> np.ndarray:
    """floor(sqrt(n)) of int64 values in [0, 2**62), by Newton's iteration on integers.

    x0 = 2**ceil(bits(n)/2) >= sqrt(n); then ISQRT_ITERATIONS times x <- min(x, (x + n // x) // 2)
    (floor divisions); a last step x <- x - [x*x > n] fixes the case where the sequence stopped
    one above. The result is exactly floor(sqrt(n)) (tests check it against math.isqrt)."""
    n = np.asarray(n, np.int64)
    if n.size and (n.min() < 0 or n.max() >= 2 ** 62):
        raise IntegerOverflowError("isqrt: operand outside [0, 2**62)")
    x = np.int64(1) << ((_bit_length(n) + 1) >> 1)
    for _ in range(ISQRT_ITERATIONS):
        x = np.minimum(x, (x + n // np.maximum(x, 1)) >> 1)
    return x - (x * x > n)


def div_round_away(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den rounded to nearest, ties away from zero, for den != 0 (exact int64).

    |q| = (2|num| + |den|) // (2|den|), sign(q) = sign(num) * sign(den)."""
    num, den = np.asarray(num, np.int64), np.asarray(den, np.int64)
    an, ad = np.abs(num), np.abs(den)
    if (an.size and an.max() >= 2 ** 61) or (ad.size and ad.max() >= 2 ** 61):
        raise IntegerOverflowError("division operand leaves 61 bits")
    q = (2 * an + ad) // (2 * ad)
    return np.where((num < 0) != (den < 0), -q, q)


def _check_int32(x: np.ndarray, what: str) -> np.ndarray:
    if x.size and (x.min() < INT32_MIN or x.max() > INT32_MAX):
        bad = int(x.max() if x.max() > INT32_MAX else x.min())
        raise IntegerOverflowError(f"{what} value {bad} leaves int32")
    return x


def _out_frac_bits(q_out, op: str) -> int:
    """k with output scale 2**-k (softmax's fixed output grid)."""
    s = q_out.scale[0]
    k = -np.log2(s)
    if len(q_out.scale) != 1 or k != round(k) or not 1 <= k <= 16:
        raise ValueError(f"{op} needs a per-tensor output scale 2**-k (k in 1..16), got {s!r}")
    return int(round(k))


# ---- masked_softmax (float) ---------------------------------------------------------------------

@register_op("masked_softmax", inputs=("x", "mask"), attrs={"axis": AttrSpec("int", -1)})
def masked_softmax(x, mask, *, axis):
    """softmax over `axis` of the positions where `mask` is true; masked positions give 0.

    mask is bool and broadcasts to x. A slice with no true position is uniform, 1/n (adding
    -FLT_MAX everywhere in float32 absorbs x). This is `softmax(x + where(mask, 0, -big))` with
    the mask kept apart, written by `fold-attention-mask`.
    """
    require_float("masked_softmax", x)
    if mask.dtype != "bool":
        fail("masked_softmax", f"mask must be bool, got {mask.dtype} {fmt(mask.shape)}")
    if broadcast_shapes(x.shape, mask.shape, "masked_softmax") != x.shape:
        fail("masked_softmax", f"mask {fmt(mask.shape)} does not broadcast to x {fmt(x.shape)}")
    norm_axis("masked_softmax", axis, x.rank)
    return x


def _effective_mask(mask: np.ndarray, shape: tuple, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(the mask broadcast to `shape` with fully masked slices unmasked, those slices)."""
    m = np.broadcast_to(np.asarray(mask, bool), shape)
    empty = ~m.any(axis=axis, keepdims=True)
    return m | empty, empty


@masked_softmax.kernel("float")
def _masked_softmax(x, mask, *, axis):
    m, empty = _effective_mask(mask, x.shape, axis)
    # A fully masked slice is uniform: adding -FLT_MAX in float32 absorbs every x.
    x64 = np.where(empty, 0.0, np.where(m, x.astype(np.float64), -np.inf))
    e = np.exp(x64 - x64.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


# ---- qsoftmax -----------------------------------------------------------------------------------

@register_op("qsoftmax", inputs=("x", "mask?"),
             attrs={"axis": AttrSpec("int", -1),
                    "in_multiplier": AttrSpec("int", doc="Q31 m0 of s_x * 2**frac_bits / ln 2"),
                    "in_shift": AttrSpec("int", doc="shift of that multiplier"),
                    "frac_bits": AttrSpec("int", 14, doc="K: internal grid ln2 / 2**K"),
                    "exp_b": AttrSpec("int", doc="round(1.353 / ln2 * 2**K)"),
                    "exp_c": AttrSpec("int", doc="round(0.344 / (0.3585 (ln2 / 2**K)**2))"),
                    "rounding": _ROUNDING, "dtype": _DTYPE},
             traits=("quant_aware",))
def qsoftmax(x, mask=None, *, axis, in_multiplier, in_shift, frac_bits, exp_b, exp_c, rounding,
             dtype):
    """I-BERT integer softmax: i-exp of (q - max) on a ln2/2**K grid, integer normalisation.

    d = q - max(q) over the unmasked positions; t = requantize(d, in_multiplier, in_shift) is
    d * s_x in units of ln2 / 2**K (t <= 0). With u = -t: p = u >> K, r = -(u & (2**K - 1)), so
    x = -p ln2 + r exactly on that grid; exp(r) ~ 0.3585 (r + 1.353)**2 + 0.344 is
    z = (r + exp_b)**2 + exp_c; e = z >> min(p, 31); masked positions e = 0. The output, on the
    fixed grid 2**-k of the output scale (1/256 for 8 bits), is
    floor((e * 2**(k+1) + S) / (2 S)) with S = sum(e) (e 2**k / S rounded half up), + zy, clamped.
    A slice with no unmasked position is uniform (as masked_softmax).
    """
    _require_int("qsoftmax", x, "input x")
    if mask is not None:
        if mask.dtype != "bool":
            fail("qsoftmax", f"mask must be bool, got {mask.dtype} {fmt(mask.shape)}")
        if broadcast_shapes(x.shape, mask.shape, "qsoftmax") != x.shape:
            fail("qsoftmax", f"mask {fmt(mask.shape)} does not broadcast to x {fmt(x.shape)}")
    norm_axis("qsoftmax", axis, x.rank)
    _check_multipliers("qsoftmax", "in_multiplier/in_shift", [in_multiplier], [in_shift])
    if not 4 <= frac_bits <= 15:
        fail("qsoftmax", f"frac_bits must be in 4..15, got {frac_bits}")
    if not (exp_b > 0 and exp_c > 0 and exp_b ** 2 + exp_c < 2 ** 31):
        fail("qsoftmax", f"exp_b {exp_b}, exp_c {exp_c}: need exp_b, exp_c > 0 and "
                         f"exp_b**2 + exp_c < 2**31")
    if exp_b <= (1 << frac_bits):
        fail("qsoftmax", f"exp_b {exp_b} must exceed 2**frac_bits (r + exp_b > 0)")
    _check_clamp("qsoftmax", dtype, *_dtype_range(dtype))
    return x.with_dtype(dtype)


def _dtype_range(dtype: str) -> tuple[int, int]:
    return int_range(int_bits(dtype), is_signed(dtype))


@_both(qsoftmax)
def _qsoftmax(x, mask=None, *, axis, in_multiplier, in_shift, frac_bits, exp_b, exp_c, rounding,
              dtype, in_quant=None, out_quant=None):
    q_out = _params(out_quant, 0, "qsoftmax", "output")
    k = _out_frac_bits(q_out, "qsoftmax")
    q = x.astype(np.int64)
    m = None
    if mask is not None:
        m, empty = _effective_mask(mask, q.shape, axis)
        q = np.where(empty, 0, q)  # a fully masked slice is uniform, as in masked_softmax
    live = np.where(m, q, np.iinfo(np.int64).min) if m is not None else q
    d = q - live.max(axis=axis, keepdims=True)
    d = np.where(m, d, 0) if m is not None else d  # masked entries are dropped below
    t = _rescale(d, in_multiplier, in_shift, rounding)
    u = -t
    p = np.minimum(u >> np.int64(frac_bits), 31)
    r = -(u & np.int64((1 << frac_bits) - 1))
    z = (r + exp_b) ** 2 + exp_c
    e = z >> p
    if m is not None:
        e = np.where(m, e, 0)
    total = e.sum(axis=axis, keepdims=True)
    y = (e * np.int64(1 << (k + 1)) + total) // (2 * total)
    lo, hi = _dtype_range(dtype)
    return _finish(y, q_out, lo, hi, dtype)


# ---- qgelu --------------------------------------------------------------------------------------

@register_op("qgelu",
             attrs={"in_shift": AttrSpec("int", doc="t = (q - zx) * 2**in_shift (right: rdbpot)"),
                    "erf_b": AttrSpec("int", doc="round(1.769 sqrt2 / s_t)"),
                    "erf_c": AttrSpec("int", doc="round(2 / (0.2888 s_t**2))"),
                    "multiplier": AttrSpec("int", doc="Q31 m0 of s_t / (2 erf_c s_y)"),
                    "shift": AttrSpec("int"), "rounding": _ROUNDING, **_CLAMP, "dtype": _DTYPE},
             traits=("quant_aware",))
def qgelu(x, *, in_shift, erf_b, erf_c, multiplier, shift, rounding, clamp_min, clamp_max,
          dtype):
    """I-BERT i-GELU: x/2 (1 + erf(x/sqrt2)) with erf a clipped second-order polynomial.

    t = (q - zx) * 2**in_shift (a right shift rounds half away, rdbpot) has scale s_t; on the
    grid s_t/sqrt2 of erf's argument, erf(v) ~ sign(v)(1 - 0.2888 (min(|v|, 1.769) - 1.769)**2)
    becomes erf_int = sign(t)(erf_c - (min(|t|, erf_b) - erf_b)**2), where erf_c stands for 1.
    gelu = t (erf_c + erf_int) at scale s_t / (2 erf_c) (an int32), then
    y = clamp(requantize(., multiplier, shift) + zy, clamp_min, clamp_max).
    """
    _require_int("qgelu", x, "input x")
    if not -16 <= in_shift <= 24:
        fail("qgelu", f"in_shift must be in -16..24, got {in_shift}")
    if not (erf_b > 0 and erf_c > erf_b ** 2):
        fail("qgelu", f"need 0 < erf_b and erf_b**2 < erf_c, got erf_b {erf_b}, erf_c {erf_c}")
    _check_multipliers("qgelu", "multiplier/shift", [multiplier], [shift])
    _check_clamp("qgelu", dtype, clamp_min, clamp_max)
    return x.with_dtype(dtype)


@_both(qgelu)
def _qgelu(x, *, in_shift, erf_b, erf_c, multiplier, shift, rounding, clamp_min, clamp_max,
           dtype, in_quant=None, out_quant=None):
    d = _centred(x, _params(in_quant, 0, "qgelu", "input"))
    t = d << np.int64(in_shift) if in_shift >= 0 else rdbpot(d, -in_shift)
    a = np.minimum(np.abs(t), erf_b) - erf_b
    erf_int = np.sign(t) * (erf_c - a * a)
    prod = _check_int32(t * (erf_c + erf_int), "qgelu product")
    y = _rescale(prod, multiplier, shift, rounding)
    return _finish(y, _params(out_quant, 0, "qgelu", "output"), clamp_min, clamp_max, dtype)


# ---- qlayer_norm --------------------------------------------------------------------------------

@register_op("qlayer_norm", inputs=("x", "gamma", "beta"),
             attrs={"axis": AttrSpec("int", -1, doc="normalise over dims axis..end"),
                    "eps_int": AttrSpec("int", doc="round(eps N**3 / s_x**2)"),
                    "frac_bits": AttrSpec("int", doc="F: fraction bits of the normalised value"),
                    "multiplier": AttrSpec("int", doc="Q31 m0 of s_gamma 2**-F / s_y"),
                    "shift": AttrSpec("int"), "rounding": _ROUNDING, **_CLAMP, "dtype": _DTYPE},
             traits=("quant_aware",))
def qlayer_norm(x, gamma, beta, *, axis, eps_int, frac_bits, multiplier, shift, rounding,
                clamp_min, clamp_max, dtype):
    """Integer LayerNorm: exact centred sums, Newton integer sqrt, fixed-point normalisation.

    d = q - zx over the N normalised elements; c = N d - sum(d) (N times the deviation, exact);
    v = sum(c**2); r = isqrt(N (v + eps_int)) (floor, exact); z = c N 2**F / r rounded half away
    (z ~ (x - mean) / sqrt(var + eps) * 2**F; z = 0 when r = 0). Then
    acc = z (gamma - zg) + (beta - zb) must fit int32 (gamma is i16 at scale s_g, beta i32 at
    s_g 2**-F) and y = clamp(requantize(acc, multiplier, shift) + zy, clamp_min, clamp_max).
    """
    _require_int("qlayer_norm", x, "input x")
    _require_int("qlayer_norm", gamma, "gamma", max_bits=32)
    _require_int("qlayer_norm", beta, "beta", max_bits=32)
    ax = norm_axis("qlayer_norm", axis, x.rank)
    norm_shape = x.shape[ax:]
    for name, t in (("gamma", gamma), ("beta", beta)):
        if broadcast_shapes(norm_shape, t.shape, "qlayer_norm") != norm_shape:
            fail("qlayer_norm", f"{name} shape {fmt(t.shape)} does not broadcast to the "
                                f"normalised shape {fmt(norm_shape)} of input {fmt(x.shape)}")
    if eps_int < 0 or not 0 <= frac_bits <= 24:
        fail("qlayer_norm", f"need eps_int >= 0 and frac_bits in 0..24, got {eps_int}, {frac_bits}")
    _check_multipliers("qlayer_norm", "multiplier/shift", [multiplier], [shift])
    _check_clamp("qlayer_norm", dtype, clamp_min, clamp_max)
    return x.with_dtype(dtype)


@_both(qlayer_norm)
def _qlayer_norm(x, gamma, beta, *, axis, eps_int, frac_bits, multiplier, shift, rounding,
                 clamp_min, clamp_max, dtype, in_quant=None, out_quant=None):
    axes = tuple(range(axis % x.ndim, x.ndim))
    n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    d = _centred(x, _params(in_quant, 0, "qlayer_norm", "input"))
    c = n * d - d.sum(axis=axes, keepdims=True)
    v = (c * c).sum(axis=axes, keepdims=True)
    if v.size and v.max() >= 2 ** 62 // n - eps_int:
        raise IntegerOverflowError("qlayer_norm: N (sum of squares + eps_int) leaves 62 bits")
    r = isqrt(n * (v + eps_int))
    safe = np.maximum(r, 1)
    z = np.where(r > 0, div_round_away(c * (n << frac_bits), safe), 0)
    g = _centred(gamma, _params(in_quant, 1, "qlayer_norm", "gamma"))
    b = _centred(beta, _params(in_quant, 2, "qlayer_norm", "beta"))
    acc = _check_int32(z * g + b, "qlayer_norm accumulator")
    y = _rescale(acc, multiplier, shift, rounding)
    return _finish(y, _params(out_quant, 0, "qlayer_norm", "output"), clamp_min, clamp_max, dtype)


# ---- helpers for pooling heads: qreduce_sum, qdiv, qcast -----------------------------------------

@register_op("qreduce_sum",
             attrs={**reduce._ATTRS,
                    "multiplier": AttrSpec("int", doc="Q31 m0 of s_x / s_y"),
                    "shift": AttrSpec("int"), "rounding": _ROUNDING, **_CLAMP, "dtype": _DTYPE},
             traits=("quant_aware",))
def qreduce_sum(x, *, axes, keepdims, multiplier, shift, rounding, clamp_min, clamp_max, dtype):
    """acc = sum(q - zx) over `axes` (must fit int32); y = clamp(requantize(acc) + zy)."""
    _require_int("qreduce_sum", x, "input x")
    axes_n = norm_axes("qreduce_sum", axes, x.rank) if axes else tuple(range(x.rank))
    _check_multipliers("qreduce_sum", "multiplier/shift", [multiplier], [shift])
    _check_clamp("qreduce_sum", dtype, clamp_min, clamp_max)
    if keepdims:
        out = tuple(1 if i in axes_n else d for i, d in enumerate(x.shape))
    else:
        out = tuple(d for i, d in enumerate(x.shape) if i not in axes_n)
    return TensorType(out, dtype)


@_both(qreduce_sum)
def _qreduce_sum(x, *, axes, keepdims, multiplier, shift, rounding, clamp_min, clamp_max, dtype,
                 in_quant=None, out_quant=None):
    d = _centred(x, _params(in_quant, 0, "qreduce_sum", "input"))
    acc = _check_int32(d.sum(axis=tuple(axes) if axes else None, keepdims=keepdims),
                       "qreduce_sum accumulator")
    y = _rescale(acc, multiplier, shift, rounding)
    return _finish(y, _params(out_quant, 0, "qreduce_sum", "output"), clamp_min, clamp_max, dtype)


@register_op("qdiv", inputs=("a", "b"),
             attrs={"multiplier": AttrSpec("int", doc="Q31 m0 of s_a / (s_b s_y)"),
                    "shift": AttrSpec("int"), **_CLAMP, "dtype": _DTYPE},
             traits=("quant_aware",))
def qdiv(a, b, *, multiplier, shift, clamp_min, clamp_max, dtype):
    """a / b: y = clamp(round_away((a - za) m0 / ((b - zb) 2**(31 - shift))) + zy).

    One exact integer division rounded half away from zero (int64 operands). b - zb = 0 gives
    qmax or qmin by the sign of a - za (0 when a - za = 0), before the clamp."""
    _require_int("qdiv", a, "a")
    _require_int("qdiv", b, "b")
    out = broadcast_shapes(a.shape, b.shape, "qdiv")
    _check_multipliers("qdiv", "multiplier/shift", [multiplier], [shift])
    _check_clamp("qdiv", dtype, clamp_min, clamp_max)
    return TensorType(out, dtype)


@_both(qdiv)
def _qdiv(a, b, *, multiplier, shift, clamp_min, clamp_max, dtype, in_quant=None,
          out_quant=None):
    num = _centred(a, _params(in_quant, 0, "qdiv", "a")) * np.int64(multiplier)
    bc = _centred(b, _params(in_quant, 1, "qdiv", "b"))
    if bc.size and np.abs(bc).max() >= 2 ** (61 - (31 - shift)):
        raise IntegerOverflowError("qdiv: divisor * 2**(31 - shift) leaves 61 bits")
    den = bc << np.int64(31 - shift)
    num, den = np.broadcast_arrays(num, den)
    lo, hi = _dtype_range(dtype)
    y = np.where(den != 0, div_round_away(num, np.where(den != 0, den, 1)),
                 np.sign(num) * (hi - lo))
    return _finish(y, _params(out_quant, 0, "qdiv", "output"), clamp_min, clamp_max, dtype)


@register_op("qcast",
             attrs={"multiplier": AttrSpec("int", doc="Q31 m0 of 1 / s_y"),
                    "shift": AttrSpec("int"), "rounding": _ROUNDING, **_CLAMP, "dtype": _DTYPE},
             traits=("quant_aware",))
def qcast(x, *, multiplier, shift, rounding, clamp_min, clamp_max, dtype):
    """A plain integer x (real value x, no QuantParams: a 0/1 mask, a count) onto the output's
    grid: y = clamp(requantize(x, multiplier, shift) + zy); |x| must fit int32."""
    if not is_int(x.dtype) and x.dtype != "bool":
        fail("qcast", f"input must be an integer or bool tensor, got {x.dtype} {fmt(x.shape)}")
    _check_multipliers("qcast", "multiplier/shift", [multiplier], [shift])
    _check_clamp("qcast", dtype, clamp_min, clamp_max)
    return x.with_dtype(dtype)


@_both(qcast)
def _qcast(x, *, multiplier, shift, rounding, clamp_min, clamp_max, dtype, in_quant=None,
           out_quant=None):
    v = _check_int32(x.astype(np.int64), "qcast input")
    y = _rescale(v, multiplier, shift, rounding)
    return _finish(y, _params(out_quant, 0, "qcast", "output"), clamp_min, clamp_max, dtype)


# ---- "int" kernels of data-movement ops a transformer's integer graph keeps ----------------------

# gather (embedding rows, mask positions) and cast between integer/bool dtypes are exact on
# integers; their float kernels serve unchanged.
for _opdef in (shape.gather, shape.cast):
    if "int" not in _opdef.kernels:
        _opdef.kernel("int")(_opdef.kernels["float"])
