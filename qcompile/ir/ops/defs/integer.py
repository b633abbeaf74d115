"""Integer ops: what `lower-integer` emits and the "int" interpreter mode runs.

Every op here has the "quant_aware" trait: its kernel receives the QuantParams of its input
and output values (`in_quant`, `out_quant`), so zero points and scales live once, on the
values. Requantization constants (Q31 multipliers, shifts, clamp bounds) are attributes: they
are compile-time integers a backend emits verbatim. All rounding goes through
`qcompile.quant.intmath`; docs/integer-semantics.md states each recipe in prose.

The same kernel is registered for the "int" and "float" modes: an integer op has one meaning,
whatever mode runs the graph around it. Data-movement ops that are exact on integers (reshape,
transpose, concat of equally quantized inputs, max pooling, ...) get "int" kernels here too,
reusing their float kernels.

Width discipline: kernels compute in int64 and check every value that must fit a declared
width (intmath raises `IntegerOverflowError` instead of wrapping). The one deliberate wrap is
the MAC accumulator: `acc_bits` models a narrow hardware accumulator, and the sum is taken
modulo 2**acc_bits exactly as two's complement hardware would.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ....errors import OpError
from ....quant.intmath import (INT32_MAX, INT32_MIN, REQUANT_ROUNDINGS, IntegerOverflowError,
                               requantize, round_half_away, shift_requantize)
from ...types import TensorType, int_bits, int_range, is_signed, numpy_dtype
from .. import registry
from ..registry import AttrSpec, OpDef, register_op
from . import nn, pool, quant, shape
from .common import broadcast_shapes, fail, fmt, is_int, norm_axis

#: Requantization modes: the three Q31 multiplier roundings of intmath plus shift-only
#: (power-of-two scales: the multiplier attribute is ignored and `shift` is the exponent).
ROUNDINGS = REQUANT_ROUNDINGS + ("shift_only",)

_ROUNDING = AttrSpec("str", "gemmlowp_double", choices=ROUNDINGS,
                     doc="how acc * M is rounded (docs/integer-semantics.md)")
_ACC_BITS = AttrSpec("int", 32, doc="accumulator width; the sum wraps (two's complement) to it")
_DTYPE = AttrSpec("str", "i8", doc="output dtype (the output QuantParams' storage dtype)")
_CLAMP = {"clamp_min": AttrSpec("int", doc="lowest output code (fused relu/clip raise it)"),
          "clamp_max": AttrSpec("int", doc="highest output code")}

# Products of centred operands are summed in float64 (BLAS) when every partial sum is provably
# an integer below 2**53, hence exact; otherwise in int64 (no BLAS, slower, still exact).
_F64_EXACT = float(2 ** 53)


# ---- type-inference helpers ---------------------------------------------------------------------

def _require_int(op: str, t: TensorType, what: str, max_bits: int = 16) -> None:
    if not is_int(t.dtype) or t.dtype == "i64" or int_bits(t.dtype) > max_bits:
        fail(op, f"{what} must be an integer tensor of at most {max_bits} bits, got "
                 f"{t.dtype} {fmt(t.shape)}")


def _check_dtype(op: str, dtype: str) -> tuple[int, int]:
    """The [qmin, qmax] of an output dtype attribute (i2..i16, i32, u2..u16)."""
    if not is_int(dtype) or dtype == "i64":
        fail(op, f"dtype {dtype!r} is not an integer IR dtype (i2..i16, i32, u2..u16)")
    return int_range(int_bits(dtype), is_signed(dtype))


def _check_clamp(op: str, dtype: str, clamp_min: int, clamp_max: int) -> None:
    lo, hi = _check_dtype(op, dtype)
    if not lo <= clamp_min <= clamp_max <= hi:
        fail(op, f"clamp [{clamp_min}, {clamp_max}] must be a non-empty range inside "
                 f"[{lo}, {hi}] of {dtype}")


def _check_multipliers(op: str, what: str, multipliers: Sequence[int],
                       shifts: Sequence[int]) -> None:
    if len(multipliers) != len(shifts) or not multipliers:
        fail(op, f"{what}: {len(multipliers)} multipliers and {len(shifts)} shifts; expected "
                 f"the same number, at least one")
    for m in multipliers:
        if not 0 <= m < 2 ** 31:
            fail(op, f"{what}: multiplier {m} is not a Q31 int32 in [0, 2**31)")
    for s in shifts:
        if not -31 <= s <= 31:
            fail(op, f"{what}: shift {s} is outside [-31, 31]")


def _check_channels(op: str, x: TensorType, axis: int, n: int, what: str) -> None:
    if n == 1:
        return
    ax = norm_axis(op, axis, x.rank)
    c = x.shape[ax]
    if c is not None and c != n:
        fail(op, f"{n} {what} for {c} channels along axis {axis} of {fmt(x.shape)}")


def _delegate(op: str, float_op: OpDef, types: Sequence[Optional[TensorType]], **attrs):
    """Shape inference of the float op `float_op` on float stand-ins of `types`, with errors
    renamed to `op`: the integer op accepts exactly the shapes its float twin does."""
    stand_ins = [None if t is None else t.with_dtype("f32") for t in types]
    try:
        return float_op.infer_fn(*stand_ins, **attrs)
    except OpError as exc:
        msg = str(exc)
        prefix = f"{float_op.name}:"
        raise OpError(f"{op}:{msg[len(prefix):]}" if msg.startswith(prefix) else f"{op}: {msg}") \
            from None


# ---- kernel helpers ----------------------------------------------------------------------------

def _params(quants, i: int, op: str, what: str):
    q = quants[i] if quants is not None and i < len(quants) else None
    if q is None:
        raise ValueError(f"{op} needs QuantParams on its {what}")
    return q


def _centred(q_values: np.ndarray, q) -> np.ndarray:
    """q - zero_point as int64 (per channel along the params' axis)."""
    return q_values.astype(np.int64) - q.zero_point_array(q_values.ndim)


def _along(values: Sequence[int], rank: int, axis: int) -> np.ndarray:
    """Per-channel integer attributes shaped to broadcast along `axis` (a scalar for one)."""
    arr = np.asarray(values, dtype=np.int64)
    if arr.size == 1:
        return arr.reshape(())
    shape = [1] * rank
    shape[axis % rank] = arr.size
    return arr.reshape(shape)


def _rescale(x: np.ndarray, m0, shift, rounding: str) -> np.ndarray:
    """x * M rounded per `rounding`; the only place the integer ops requantize."""
    if rounding == "shift_only":
        return shift_requantize(x, shift)
    return requantize(x, m0, shift, rounding)


def _wrap(acc: np.ndarray, bits: int) -> np.ndarray:
    """acc modulo 2**bits, sign-extended: what a `bits`-wide two's complement register holds."""
    half = np.int64(1) << np.int64(bits - 1)
    return ((acc + half) & ((half << 1) - 1)) - half


def _finish(y: np.ndarray, q_out, clamp_min: int, clamp_max: int, dtype: str) -> np.ndarray:
    """+ output zero point, clamp (which includes saturation to `dtype`), store."""
    y = y + q_out.zero_point_array(y.ndim)
    return np.clip(y, clamp_min, clamp_max).astype(numpy_dtype(dtype))


def _exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul of int64 arrays, exactly, in float64 BLAS when that is provably exact."""
    k = a.shape[-1] if a.ndim else 1
    if _fits_f64(a, b, k):
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a, b)


def _fits_f64(a: np.ndarray, b: np.ndarray, terms: int) -> bool:
    amax = float(np.abs(a).max()) if a.size else 0.0
    bmax = float(np.abs(b).max()) if b.size else 0.0
    return amax * bmax * max(terms, 1) < _F64_EXACT


def _both(opdef: OpDef):
    """Register the decorated kernel for the "int" and the "float" interpreter modes."""
    def deco(fn):
        opdef.kernel("int")(fn)
        opdef.kernel("float")(fn)
        return fn
    return deco


# ---- MACs: qconv2d, qlinear, qmatmul ------------------------------------------------------------

@register_op("qconv2d", inputs=("x", "weight", "bias?"),
             attrs={**{k: nn.conv2d.attrs[k] for k in ("stride", "padding", "dilation", "groups")},
                    "acc_bits": _ACC_BITS},
             traits=("quant_aware",))
def qconv2d(x, weight, bias=None, *, stride, padding, dilation, groups, acc_bits):
    """Integer conv2d: acc = sum (x - zx)(w - zw) + bias, wrapped to acc_bits, stored as i32.

    Shapes and attributes as conv2d (NCHW, OIHW, groups, asymmetric padding). zx comes from
    the input's QuantParams, zw from the weight's (per output channel along axis 0), the bias is
    i32 with zero point 0 in units of s_x * s_w. Padding taps contribute 0 (the input is padded
    with zx). The exact integer sum is reduced modulo 2**acc_bits and sign-extended (two's
    complement wrap), then stored as i32. The output carries the accumulator's QuantParams:
    scale s_x * s_w per channel along axis 1, zero point 0, 32 bits.
    """
    _require_int("qconv2d", x, "input x")
    _require_int("qconv2d", weight, "weight")
    if bias is not None and bias.dtype != "i32":
        fail("qconv2d", f"bias must be i32, got {bias.dtype} {fmt(bias.shape)}")
    _check_acc_bits("qconv2d", acc_bits)
    out = _delegate("qconv2d", nn.conv2d, (x, weight, bias), stride=stride, padding=padding,
                    dilation=dilation, groups=groups)
    return out.with_dtype("i32")


def _check_acc_bits(op: str, acc_bits: int) -> None:
    if not 2 <= acc_bits <= 32:
        fail(op, f"acc_bits must be in 2..32, got {acc_bits}")


def _add_bias(acc: np.ndarray, bias: Optional[np.ndarray], in_quant, axis: int) -> np.ndarray:
    if bias is None:
        return acc
    qb = in_quant[2] if in_quant is not None and len(in_quant) > 2 else None
    b = bias.astype(np.int64)
    if qb is not None:
        b = b - qb.zero_point_array(1)
    shape = [1] * acc.ndim
    shape[axis % acc.ndim] = b.size
    return acc + b.reshape(shape)


@_both(qconv2d)
def _qconv2d(x, weight, bias=None, *, stride, padding, dilation, groups, acc_bits,
             in_quant=None, out_quant=None):
    xc = _centred(x, _params(in_quant, 0, "qconv2d", "input"))
    wc = _centred(weight, _params(in_quant, 1, "qconv2d", "weight"))
    terms = int(np.prod(weight.shape[1:]))
    # The float conv kernel (im2col + one GEMM per group, or depthwise taps) pads with 0, which
    # on centred values is padding with zx; it is exact on these operands (see _fits_f64).
    dt = np.float64 if _fits_f64(xc, wc, terms) else np.int64
    acc = nn._conv2d(xc.astype(dt), wc.astype(dt), None, stride=stride, padding=padding,
                     dilation=dilation, groups=groups)
    acc = _add_bias(np.asarray(acc).astype(np.int64), bias, in_quant, 1)
    return _wrap(acc, acc_bits).astype(np.int32)


@register_op("qlinear", inputs=("x", "weight", "bias?"), attrs={"acc_bits": _ACC_BITS},
             traits=("quant_aware",))
def qlinear(x, weight, bias=None, *, acc_bits):
    """Integer linear: acc = (x - zx) @ (w - zw).T + bias over the last axis, wrapped to acc_bits.

    weight is (out, in) with per-row (axis 0) zero points; the output is i32 with the
    accumulator's QuantParams (scale s_x * s_w along the last axis, zero point 0).
    """
    _require_int("qlinear", x, "input x")
    _require_int("qlinear", weight, "weight")
    if bias is not None and bias.dtype != "i32":
        fail("qlinear", f"bias must be i32, got {bias.dtype} {fmt(bias.shape)}")
    _check_acc_bits("qlinear", acc_bits)
    return _delegate("qlinear", nn.linear, (x, weight, bias)).with_dtype("i32")


@_both(qlinear)
def _qlinear(x, weight, bias=None, *, acc_bits, in_quant=None, out_quant=None):
    xc = _centred(x, _params(in_quant, 0, "qlinear", "input"))
    wc = _centred(weight, _params(in_quant, 1, "qlinear", "weight"))
    acc = _add_bias(_exact_matmul(xc, wc.T), bias, in_quant, -1)
    return _wrap(acc, acc_bits).astype(np.int32)


@register_op("qmatmul", inputs=("a", "b"), attrs={"acc_bits": _ACC_BITS}, traits=("quant_aware",))
def qmatmul(a, b, *, acc_bits):
    """Integer matmul: acc = (a - za) @ (b - zb) (numpy matmul rules), wrapped to acc_bits, i32."""
    _require_int("qmatmul", a, "a")
    _require_int("qmatmul", b, "b")
    _check_acc_bits("qmatmul", acc_bits)
    return _delegate("qmatmul", nn.matmul, (a, b)).with_dtype("i32")


@_both(qmatmul)
def _qmatmul(a, b, *, acc_bits, in_quant=None, out_quant=None):
    ac = _centred(a, _params(in_quant, 0, "qmatmul", "a"))
    bc = _centred(b, _params(in_quant, 1, "qmatmul", "b"))
    return _wrap(np.asarray(_exact_matmul(ac, bc)), acc_bits).astype(np.int32)


# ---- requantize ---------------------------------------------------------------------------------

@register_op("requantize",
             attrs={"multiplier": AttrSpec("ints", doc="Q31 m0 per channel (or one)"),
                    "shift": AttrSpec("ints", doc="per channel (or one): M = m0 * 2**(shift - 31)"),
                    "axis": AttrSpec("int", 1, doc="channel axis of per-channel multipliers"),
                    "rounding": _ROUNDING, **_CLAMP, "dtype": _DTYPE},
             traits=("quant_aware",))
def requantize_op(x, *, multiplier, shift, axis, rounding, clamp_min, clamp_max, dtype):
    """y = clamp(requantize(x - zx, m0, shift, rounding) + zy, clamp_min, clamp_max).

    x is any integer tensor (usually an i32 accumulator, zero point 0); zx and zy come from the
    input's and output's QuantParams. One (m0, shift) pair, or one per channel along `axis`.
    rounding "shift_only" multiplies by 2**shift with shift_requantize (m0 is ignored). A fused
    relu/relu6/clip is the clamp range; the clamp also saturates to `dtype`.
    """
    _require_int("requantize", x, "input x", max_bits=32)
    _check_multipliers("requantize", "multiplier/shift", multiplier, shift)
    _check_channels("requantize", x, axis, len(multiplier), "multipliers")
    _check_clamp("requantize", dtype, clamp_min, clamp_max)
    return x.with_dtype(dtype)


@_both(requantize_op)
def _requantize(x, *, multiplier, shift, axis, rounding, clamp_min, clamp_max, dtype,
                in_quant=None, out_quant=None):
    xc = _centred(x, _params(in_quant, 0, "requantize", "input"))
    y = _rescale(xc, _along(multiplier, x.ndim, axis), _along(shift, x.ndim, axis), rounding)
    return _finish(y, _params(out_quant, 0, "requantize", "output"), clamp_min, clamp_max, dtype)


# ---- element-wise arithmetic --------------------------------------------------------------------

def _qbinary_infer(op: str, a: TensorType, b: TensorType) -> tuple:
    _require_int(op, a, "a")
    _require_int(op, b, "b")
    return broadcast_shapes(a.shape, b.shape, op)


_ADD_ATTRS = {**{f"{w}_{k}": AttrSpec("int", doc=f"{w} rescale: Q31 m0" if k == "multiplier"
                                      else f"{w} rescale: shift")
                 for w in ("a", "b", "out") for k in ("multiplier", "shift")},
              "left_shift": AttrSpec("int", 20, doc="headroom bits before rescaling the inputs"),
              "rounding": _ROUNDING, **_CLAMP, "dtype": _DTYPE}


def _declare_qaddsub(name: str, sign: int) -> OpDef:
    def infer(a, b, *, a_multiplier, a_shift, b_multiplier, b_shift, out_multiplier, out_shift,
              left_shift, rounding, clamp_min, clamp_max, dtype):
        shape = _qbinary_infer(name, a, b)
        for w, m, s in (("a", a_multiplier, a_shift), ("b", b_multiplier, b_shift),
                        ("out", out_multiplier, out_shift)):
            _check_multipliers(name, f"{w}_multiplier/{w}_shift", [m], [s])
        if not 0 <= left_shift <= 30:
            fail(name, f"left_shift must be in 0..30, got {left_shift}")
        _check_clamp(name, dtype, clamp_min, clamp_max)
        return TensorType(shape, dtype)
    verb = "a + b" if sign > 0 else "a - b"
    infer.__doc__ = (
        f"TFLite int8 {'ADD' if sign > 0 else 'SUB'}: {verb} of differently quantized inputs, "
        f"rescaled to the output with Q31 multipliers.\n"
        "Each input is centred and shifted left by left_shift, ((q - z) * 2**left_shift), then "
        "rescaled by its multiplier (s_in / (2 max(s_a, s_b))); the two are "
        f"{'added' if sign > 0 else 'subtracted'} in int32, rescaled by the output multiplier "
        "(2 max(s_a, s_b) / (2**left_shift s_y)), offset by zy and clamped. All three "
        "rescalings use `rounding`. a and b broadcast (numpy rules).")
    infer.__name__ = name
    opdef = register_op(name, inputs=("a", "b"), attrs=_ADD_ATTRS, traits=("quant_aware",))(infer)

    @_both(opdef)
    def kernel(a, b, *, a_multiplier, a_shift, b_multiplier, b_shift, out_multiplier, out_shift,
               left_shift, rounding, clamp_min, clamp_max, dtype, in_quant=None, out_quant=None):
        lift = np.int64(1) << np.int64(left_shift)
        sa = _rescale(_centred(a, _params(in_quant, 0, name, "input a")) * lift,
                      a_multiplier, a_shift, rounding)
        sb = _rescale(_centred(b, _params(in_quant, 1, name, "input b")) * lift,
                      b_multiplier, b_shift, rounding)
        raw = sa + sb if sign > 0 else sa - sb
        y = _rescale(raw, out_multiplier, out_shift, rounding)
        return _finish(y, _params(out_quant, 0, name, "output"), clamp_min, clamp_max, dtype)
    return opdef


qadd = _declare_qaddsub("qadd", +1)
qsub = _declare_qaddsub("qsub", -1)


@register_op("qmul", inputs=("a", "b"),
             attrs={"multiplier": AttrSpec("int", doc="Q31 m0 of s_a * s_b / s_y"),
                    "shift": AttrSpec("int"), "rounding": _ROUNDING, **_CLAMP, "dtype": _DTYPE},
             traits=("quant_aware",))
def qmul(a, b, *, multiplier, shift, rounding, clamp_min, clamp_max, dtype):
    """TFLite int8 MUL: clamp(requantize((a - za)(b - zb), m0, shift) + zy), a, b broadcast."""
    shape = _qbinary_infer("qmul", a, b)
    _check_multipliers("qmul", "multiplier/shift", [multiplier], [shift])
    _check_clamp("qmul", dtype, clamp_min, clamp_max)
    return TensorType(shape, dtype)


@_both(qmul)
def _qmul(a, b, *, multiplier, shift, rounding, clamp_min, clamp_max, dtype, in_quant=None,
          out_quant=None):
    prod = _centred(a, _params(in_quant, 0, "qmul", "input a")) * \
        _centred(b, _params(in_quant, 1, "qmul", "input b"))
    y = _rescale(prod, multiplier, shift, rounding)
    return _finish(y, _params(out_quant, 0, "qmul", "output"), clamp_min, clamp_max, dtype)


# ---- prelu with per-channel slopes --------------------------------------------------------------

@register_op("qprelu", inputs=("x", "slope"),
             attrs={"pos_multiplier": AttrSpec("int", doc="Q31 m0 of s_x / s_y"),
                    "pos_shift": AttrSpec("int"),
                    "neg_multiplier": AttrSpec("ints", doc="per channel: s_x * s_slope / s_y"),
                    "neg_shift": AttrSpec("ints"),
                    "axis": AttrSpec("int", 1, doc="channel axis of x"),
                    "rounding": _ROUNDING, **_CLAMP, "dtype": _DTYPE},
             traits=("quant_aware",))
def qprelu(x, slope, *, pos_multiplier, pos_shift, neg_multiplier, neg_shift, axis, rounding,
           clamp_min, clamp_max, dtype):
    """TFLite int8 PRELU with per-channel slopes: two multipliers, one per sign of x - zx.

    With xc = x - zx: y = requantize(xc, pos) if xc >= 0 else requantize(xc * (slope - zs),
    neg[c]), then + zy and clamp. slope is an integer (C,) or (1,) tensor along `axis` with its
    own QuantParams (per channel allowed), so each channel's negative branch has its own
    multiplier s_x * s_slope[c] / s_y.
    """
    _require_int("qprelu", x, "input x")
    _require_int("qprelu", slope, "slope")
    if slope.rank != 1:
        fail("qprelu", f"slope must have rank 1, got {fmt(slope.shape)}")
    _check_channels("qprelu", x, axis, slope.shape[0] or 1, "slopes")
    _check_multipliers("qprelu", "pos_multiplier/pos_shift", [pos_multiplier], [pos_shift])
    _check_multipliers("qprelu", "neg_multiplier/neg_shift", neg_multiplier, neg_shift)
    _check_channels("qprelu", x, axis, len(neg_multiplier), "negative-branch multipliers")
    _check_clamp("qprelu", dtype, clamp_min, clamp_max)
    return x.with_dtype(dtype)


@_both(qprelu)
def _qprelu(x, slope, *, pos_multiplier, pos_shift, neg_multiplier, neg_shift, axis, rounding,
            clamp_min, clamp_max, dtype, in_quant=None, out_quant=None):
    xc = _centred(x, _params(in_quant, 0, "qprelu", "input"))
    sc = _centred(slope, _params(in_quant, 1, "qprelu", "slope"))
    sc = _along(sc, x.ndim, axis) if sc.size > 1 else sc.reshape(())
    m_neg = np.broadcast_to(_along(neg_multiplier, x.ndim, axis), xc.shape)
    s_neg = np.broadcast_to(_along(neg_shift, x.ndim, axis), xc.shape)
    pos = xc >= 0
    y = np.empty(xc.shape, dtype=np.int64)
    # Each branch only on its own elements, so a large multiplier of the branch not taken
    # cannot raise a spurious overflow.
    y[pos] = _rescale(xc[pos], pos_multiplier, pos_shift, rounding)
    prod = (xc * sc)[~pos]
    y[~pos] = _rescale(prod, m_neg[~pos], s_neg[~pos], rounding)
    return _finish(y, _params(out_quant, 0, "qprelu", "output"), clamp_min, clamp_max, dtype)


# ---- average pooling ----------------------------------------------------------------------------

# qavg_pool2d's clamp is optional: the defaults (the int32 range) leave only the saturation to
# the storage range, so a pool without a fused activation needs no clamp attributes.
_POOL_CLAMP = {"clamp_min": AttrSpec("int", INT32_MIN, doc="lowest output code (a fused "
                                     "relu/relu6 raises it); the default clamps nothing"),
               "clamp_max": AttrSpec("int", INT32_MAX, doc="highest output code (a fused relu6 "
                                     "lowers it); the default clamps nothing")}


@register_op("qavg_pool2d", attrs={**pool.avg_pool2d.attrs, **_POOL_CLAMP},
             traits=("quant_aware",))
def qavg_pool2d(x, *, kernel, stride, padding, ceil_mode, count_include_pad, clamp_min,
                clamp_max):
    """TFLite int8 AVERAGE_POOL: integer window sum / count, rounded half away from zero.

    Sums the stored codes q (not q - zx) of each window; with count_include_pad, padding taps
    hold zx and count; ceil_mode overrun never counts. The divisor follows avg_pool2d. The
    input and output share QuantParams (a requantize follows when they differ); a global
    average pool is qavg_pool2d with the kernel equal to H x W. The average is clamped to
    [max(qmin, clamp_min), min(qmax, clamp_max)]: a fused RELU/RELU6 is that clamp, as in
    TFLite, with no requantize.
    """
    _require_int("qavg_pool2d", x, "input x")
    lo, hi = int_range(int_bits(x.dtype), is_signed(x.dtype))
    if max(lo, clamp_min) > min(hi, clamp_max):
        fail("qavg_pool2d", f"clamp [{clamp_min}, {clamp_max}] leaves no code of {x.dtype} "
                            f"[{lo}, {hi}]")
    out = _delegate("qavg_pool2d", pool.avg_pool2d, (x,), kernel=kernel, stride=stride,
                    padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    return out.with_dtype(x.dtype)


@_both(qavg_pool2d)
def _qavg_pool2d(x, *, kernel, stride, padding, ceil_mode, count_include_pad, clamp_min,
                 clamp_max, in_quant=None, out_quant=None):
    q = _params(in_quant, 0, "qavg_pool2d", "input")
    stride = pool._stride(kernel, stride)
    oh, ow = pool._out_hw(x.shape, kernel, stride, padding, (1, 1), ceil_mode)
    h, w = x.shape[2:]
    # Declared padding holds the zero point (real 0) when it counts, else nothing (0 in a sum
    # of codes); the ceil_mode overrun past it never counts, so it is 0 either way.
    fill = int(q.zero_point[0]) if count_include_pad else 0
    if count_include_pad and len(set(q.zero_point)) > 1:
        raise ValueError("qavg_pool2d with count_include_pad needs one zero point per tensor")
    xp = nn.pad_nchw(x.astype(np.int64), *padding, fill)
    extra_h = nn.ceil_extra(h, oh, kernel[0], stride[0], 1, padding[0], padding[2])
    extra_w = nn.ceil_extra(w, ow, kernel[1], stride[1], 1, padding[1], padding[3])
    xp = nn.pad_nchw(xp, 0, 0, extra_h, extra_w, 0)
    total = None
    for _, view in nn.tap_views(xp, kernel, stride, (1, 1), oh, ow):
        total = view.astype(np.int64) if total is None else total + view
    dh = pool._divisor_1d(h, oh, kernel[0], stride[0], padding[0], padding[2], count_include_pad)
    dw = pool._divisor_1d(w, ow, kernel[1], stride[1], padding[1], padding[3], count_include_pad)
    count = np.outer(dh, dw).astype(np.int64)
    # round_half_away of the float64 quotient is the exact integer rounding here: sum and count
    # are exact in float64, a tie k + 1/2 is representable, and a non-tie is at least 1/(2 count)
    # from every half-integer, far more than float64's error for |sum| < 2**40.
    if total.size and np.abs(total).max() >= 2 ** 31:
        raise IntegerOverflowError("qavg_pool2d: a window sum leaves int32")
    avg = round_half_away(total.astype(np.float64) / count).astype(np.int64)
    lo, hi = max(q.qmin, clamp_min), min(q.qmax, clamp_max)
    return np.clip(avg, lo, hi).astype(x.dtype)


# ---- lookup tables ------------------------------------------------------------------------------

@register_op("lut", attrs={"table": AttrSpec("ints", doc="2**bits output codes, by q - qmin"),
                           "dtype": _DTYPE},
             traits=("quant_aware",))
def lut(x, *, table, dtype):
    """y = table[x - qmin(x)]: any function of an (at most 8-bit) integer as a lookup table.

    lower-integer fills the table with TFLite's recipe for f (qcompile.quant.luts): float32
    LUTPopulate, or the int16 fixed-point HARD_SWISH.
    """
    _require_int("lut", x, "input x", max_bits=8)
    n = 1 << int_bits(x.dtype)
    if len(table) != n:
        fail("lut", f"table has {len(table)} entries; a {x.dtype} input needs {n}")
    lo, hi = _check_dtype("lut", dtype)
    bad = [v for v in table if not lo <= v <= hi]
    if bad:
        fail("lut", f"table entry {bad[0]} does not fit the output dtype {dtype} [{lo}, {hi}]")
    return x.with_dtype(dtype)


@_both(lut)
def _lut(x, *, table, dtype, in_quant=None, out_quant=None):
    q = in_quant[0] if in_quant else None
    qmin = q.qmin if q is not None else int(np.iinfo(x.dtype).min)
    idx = x.astype(np.int64) - qmin
    tab = np.asarray(table, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= tab.size):
        raise ValueError(f"lut: input code outside the table's {tab.size} entries")
    return tab[idx].astype(numpy_dtype(dtype))


# ---- "int" kernels of existing ops ---------------------------------------------------------------

# Pure data movement is exact on integers: the float kernels serve unchanged. max_pool2d pads with
# the dtype's lowest value, which never wins (every window holds a real element).
for _opdef in (shape.reshape, shape.flatten, shape.transpose, shape.squeeze, shape.unsqueeze,
               shape.expand, shape.slice_, shape.identity, shape.concat, pool.max_pool2d,
               quant.quantize, quant.dequantize):
    _opdef.kernel("int")(_opdef.kernels["float"])


@shape.pad.kernel("int")
def _pad_int(x, *, pads, mode, value):
    # On an integer graph `value` is the fill *code* (lower-integer writes the zero point, or the
    # code of the float fill); it must be an integer the dtype holds.
    if mode == "constant":
        info = np.iinfo(x.dtype)
        if value != int(value) or not info.min <= value <= info.max:
            raise ValueError(f"pad on {x.dtype}: fill value {value!r} is not an integer code "
                             f"of the dtype")
    return shape.pad.kernels["float"](x, pads=pads, mode=mode, value=value)


@registry.get("add").kernel("int")
def _add_accumulators(a, b):
    """`add` in an integer graph sums i32 accumulators (zero point 0, one shared scale), e.g. the
    partial sums of a reduction that check-accumulator split into chunks. Narrower integers carry
    zero points and go through `qadd`. Exact in int64; leaving int32 is an error, not a wrap."""
    if a.dtype != np.int32 or b.dtype != np.int32:
        raise ValueError(f"integer add is defined for i32 accumulators only, got {a.dtype} and "
                         f"{b.dtype}; quantized 8-bit tensors are added with qadd")
    out = a.astype(np.int64) + b.astype(np.int64)
    if out.size and (out.min() < INT32_MIN or out.max() > INT32_MAX):
        raise IntegerOverflowError("add of i32 accumulators leaves int32")
    return out.astype(np.int32)
