"""ONNX interchange semantics that the integer-only ops do not cover.

These ops exist so that ONNX's quantized operators import *exactly*, bit for bit as the ONNX
reference implementation computes them. They are not integer-only arithmetic: each one uses
floating point at run time. `lower-integer` never emits them; a backend for an integer-only
target rejects them. The integer ops (`qconv2d`, `requantize`, ...) are the compilation
targets; these are what an ONNX model *says*.

* `requantize_float`: QLinearConv / QLinearMatMul rescale their int32 accumulator with a float
  multiplier `M = x_scale * w_scale / y_scale` and round half to even, where the dyadic
  `requantize` uses a Q31 integer multiplier and gemmlowp rounding. The two differ by one LSB on
  some outputs, so an exact import needs this op. TFLite's reference FULLY_CONNECTED kernel does
  the same in double precision with ties away from zero (`rounding="half_away"`,
  `scale_dtype="f64"`), which is how a TFLite model's fully connected layers are represented
  exactly.
* `dynamic_quantize_linear`: DynamicQuantizeLinear chooses scale and zero point from the data at
  run time; QuantParams are compile-time facts, so the result carries none and the scale and
  zero point are ordinary outputs.
* `quantize_linear` / `dequantize_linear`: QuantizeLinear / DequantizeLinear whose parameters
  QuantParams cannot describe (one scale per block of `block_size` elements along an axis,
  scales or zero points computed at run time, float8/float4 storage). The parameters are tensor
  inputs, and the ops compute what the ONNX reference computes. Q/DQ with constant per-tensor or
  per-axis integer parameters keep importing as `quantize` / `dequantize` with QuantParams.
"""
from __future__ import annotations

import numpy as np

from ....quant.intmath import quantize_float, round_half_away, round_half_even
from ...types import (INT_DTYPES, NARROW_FLOAT_DTYPES, UINT_DTYPES, TensorType, int_bits,
                      int_range, is_float, is_int, is_narrow_float, is_signed, numpy_dtype)
from ..registry import AttrSpec, register_op
from .common import fail, fmt, norm_axis

_SCALE_DTYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64}


def _quant_of(quant, which: str, op: str):
    q = quant[0] if quant else None
    if q is None:
        raise ValueError(f"{op} needs QuantParams on its {which} value")
    return q


# ---- requantize_float ---------------------------------------------------------------------------
@register_op("requantize_float",
             attrs={"rounding": AttrSpec("str", "half_even", choices=("half_even", "half_away"),
                                         doc="half_even: add the zero point, then round ties to "
                                         "even (ONNX QLinearConv/QLinearMatMul); half_away: round "
                                         "ties away from zero, then add the zero point (TFLite's "
                                         "reference FULLY_CONNECTED)"),
                    "clamp_min": AttrSpec("int", -(2 ** 31), doc="lower clamp (fused activation)"),
                    "clamp_max": AttrSpec("int", 2 ** 31 - 1, doc="upper clamp (fused activation)"),
                    "scale_dtype": AttrSpec("str", "f32", choices=tuple(_SCALE_DTYPES),
                                            doc="float type of the ONNX scale tensors; the "
                                            "multiplier is computed in it"),
                    "dtype": AttrSpec("str", doc="output integer dtype; equals the output "
                                      "QuantParams' storage dtype")},
             traits=("quant_aware",))
def requantize_float(x, *, rounding, scale_dtype, dtype, clamp_min, clamp_max):
    """ONNX requantization with a float multiplier (QLinearConv, QLinearMatMul); not integer-only.

    With s_in the input's QuantParams scale (the accumulator's, x_scale * w_scale, per channel
    along its axis) and s_out, z_out the output's: M = T(T(s_in) / T(s_out)) in T = scale_dtype
    (float32, or float16 for float16 ONNX scales), exactly the rounded products and quotient the
    ONNX reference forms; y = clamp(round_half_even(float64(x - z_in) * float64(M) + z_out),
    qmin, qmax). The product is float64 as in the ONNX reference (numpy promotes int32 x
    float32 to float64); onnxruntime's MLAS kernels multiply in float32 and can differ by one LSB
    on accumulators above 2**24. With rounding="half_away" (TFLite's reference FULLY_CONNECTED,
    scale_dtype="f64"): y = clamp(round_half_away(float64(x - z_in) * M) + z_out, ...). The clamp
    is [max(qmin, clamp_min), min(qmax, clamp_max)]. `lower-integer` never emits this op: it is
    the import form of ONNX's (and TFLite's FC) rescaling, to be replaced by `requantize` for
    integer-only targets.
    """
    if not is_int(x.dtype):
        fail("requantize_float",
             f"input must be an integer accumulator, got {x.dtype} {fmt(x.shape)}")
    if not is_int(dtype) or dtype == "i64":
        fail("requantize_float", f"dtype {dtype!r} is not an integer storage dtype")
    return x.with_dtype(dtype)


def float_multiplier(s_in: np.ndarray, s_out: np.ndarray, scale_dtype: str) -> np.ndarray:
    """M = T(T(s_in) / T(s_out)): the ONNX reference's `x_scale * w_scale / y_scale`.

    `s_in` is the accumulator scale as the exact float64 product x_scale * w_scale (exact for
    float32 and float16 factors), so its cast to T rounds once, exactly like T's own multiply."""
    t = _SCALE_DTYPES[scale_dtype]
    with np.errstate(over="ignore", under="ignore"):
        return (np.asarray(s_in).astype(t) / np.asarray(s_out).astype(t)).astype(t)


def _requantize_float(x, *, rounding, scale_dtype, dtype, in_quant, out_quant,
                      clamp_min=-(2 ** 31), clamp_max=2 ** 31 - 1):
    qi = _quant_of(in_quant, "input", "requantize_float")
    qo = _quant_of(out_quant, "output", "requantize_float")
    rank = x.ndim
    m = float_multiplier(qi.scale_array(rank), qo.scale_array(rank), scale_dtype)
    centred = x.astype(np.int64) - qi.zero_point_array(rank)
    real = centred.astype(np.float64) * m.astype(np.float64)
    zp_out = qo.zero_point_array(rank)
    if rounding == "half_even":
        # ONNX's order: float64 product, add the zero point, then round.
        r = np.clip(round_half_even(real + zp_out.astype(np.float64)), -(2.0 ** 62), 2.0 ** 62)
        r = r.astype(np.int64)
    else:
        # TFLite's order: round the scaled value, then add the zero point.
        r = np.clip(round_half_away(real), -(2.0 ** 62), 2.0 ** 62).astype(np.int64) + zp_out
    lo, hi = max(qo.qmin, clamp_min), min(qo.qmax, clamp_max)
    return np.clip(r, lo, hi).astype(numpy_dtype(dtype))


# As the integer ops: one meaning whatever interpreter mode runs the graph around it.
requantize_float.kernel("int")(_requantize_float)
requantize_float.kernel("float")(_requantize_float)


# ---- dynamic_quantize_linear ---------------------------------------------------------------------
@register_op("dynamic_quantize_linear", num_outputs=3)
def dynamic_quantize_linear(x):
    """ONNX DynamicQuantizeLinear: u8 data, f32 scale and u8 zero point chosen from x at run time.

    lo = min(0, min x), hi = max(0, max x) (float32); scale = (hi - lo) / 255 in float32, or
    1 / 255 when hi == lo; zero point = round_half_even(clamp(0 - lo / scale, 0, 255));
    y = clamp(round_half_even(x / scale) + zero point, 0, 255) with the float32 division of
    `quantize`. The data-dependent scale cannot be QuantParams (compile-time facts), so y
    carries none; this is a float-to-integer boundary with no integer-only form.
    """
    if x.dtype != "f32":
        fail("dynamic_quantize_linear", f"input must be f32, got {x.dtype} {fmt(x.shape)}")
    return [x.with_dtype("u8"), TensorType((), "f32"), TensorType((), "u8")]


def _dynamic_quantize_linear(x):
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        raise ValueError("dynamic_quantize_linear of an empty tensor has no range")
    hi = np.float32(max(np.float32(0), np.max(x)))
    lo = np.float32(min(np.float32(0), np.min(x)))
    scale = np.float32(np.float32(1.0) if hi == lo else np.float32(hi - lo)) / np.float32(255)
    zp_real = np.float32(0) - lo / scale
    zp = int(round_half_even(np.clip(zp_real, np.float32(0), np.float32(255))))
    y = quantize_float(x, scale, zp, 0, 255, "half_even")
    return y.astype(np.uint8), np.array(scale, dtype=np.float32), np.array(zp, dtype=np.uint8)


# A float-to-integer boundary like `quantize`: the same computation in either interpreter mode.
dynamic_quantize_linear.kernel("float")(_dynamic_quantize_linear)
dynamic_quantize_linear.kernel("int")(_dynamic_quantize_linear)


# ---- quantize_linear / dequantize_linear ---------------------------------------------------------
# Integer storage dtypes ONNX quantizes to (i64 is no quantized type).
_Q_INT_DTYPES = tuple(d for d in INT_DTYPES + UINT_DTYPES if d != "i64")
_Q_DTYPES = _Q_INT_DTYPES + tuple(NARROW_FLOAT_DTYPES)
_PARAM_ATTRS = {
    "axis": AttrSpec("int", 1, doc="the axis a 1-D (per-axis) or blocked scale runs along"),
    "block_size": AttrSpec("int", 0, doc="0: per tensor / per axis; > 0: each scale covers "
                           "block_size consecutive elements along `axis`"),
}


def _check_params(op: str, x: TensorType, scale: TensorType, zero_point, axis: int,
                  block_size: int, zp_dtype: str) -> None:
    """The parameter shapes ONNX allows: a scalar (or one element), a 1-D tensor along `axis`,
    or (block_size > 0) x's shape with `axis` shrunk to ceil(x.shape[axis] / block_size)."""
    if not is_float(scale.dtype):
        fail(op, f"scale must be f32 or f16, got {scale.dtype} {fmt(scale.shape)}")
    if block_size < 0:
        fail(op, f"block_size {block_size} is negative")
    numel = None if not scale.is_static else scale.numel
    if numel == 1:
        pass  # per tensor: the axis is not read
    elif block_size:
        ax = norm_axis(op, axis, x.rank)
        if scale.rank != x.rank:
            fail(op, f"a blocked scale must have the input's rank: scale {fmt(scale.shape)}, "
                     f"input {fmt(x.shape)}")
        for d, (dx, ds) in enumerate(zip(x.shape, scale.shape)):
            want = dx if d != ax or dx is None else -(-dx // block_size)
            if dx is not None and ds is not None and ds != want:
                fail(op, f"blocked scale {fmt(scale.shape)} does not fit input {fmt(x.shape)} "
                         f"with block_size {block_size} along axis {ax} (dimension {d} should "
                         f"be {want})")
    else:
        ax = norm_axis(op, axis, x.rank)
        if scale.rank != 1:
            fail(op, f"scale {fmt(scale.shape)} must be a scalar or 1-D (per axis) without "
                     f"block_size")
        if x.shape[ax] is not None and scale.shape[0] is not None and scale.shape[0] != x.shape[ax]:
            fail(op, f"{scale.shape[0]} scales for {x.shape[ax]} elements along axis {ax} of "
                     f"input {fmt(x.shape)}")
    if zero_point is not None:
        if zero_point.dtype != zp_dtype:
            fail(op, f"zero_point must be {zp_dtype}, got {zero_point.dtype} "
                     f"{fmt(zero_point.shape)}")
        if zero_point.shape != scale.shape:
            fail(op, f"zero_point {fmt(zero_point.shape)} and scale {fmt(scale.shape)} differ "
                     f"in shape")


def expand_param(p: np.ndarray, x_shape: tuple, axis: int, block_size: int) -> np.ndarray:
    """A scale / zero point shaped to broadcast against x: a one-element tensor as a scalar, a
    1-D one along `axis`, a blocked one repeated `block_size` times along `axis` and cut to
    x's length there (the last block may be shorter)."""
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(())
    axis = axis % len(x_shape)
    if not block_size:
        shape = [1] * len(x_shape)
        shape[axis] = p.size
        return p.reshape(shape)
    return np.repeat(p, block_size, axis=axis).take(range(x_shape[axis]), axis=axis)


@register_op("quantize_linear", inputs=("x", "scale", "zero_point?"),
             attrs={**_PARAM_ATTRS,
                    "dtype": AttrSpec("str", choices=_Q_DTYPES, doc="output dtype: an integer, "
                                      "or the float8/float4 storage types f8e4m3fn, f8e5m2, "
                                      "f4e2m1"),
                    "saturate": AttrSpec("bool", True, doc="float8 only: clamp out-of-range "
                                         "values to the largest finite value")})
def quantize_linear(x, scale, zero_point=None, *, axis, block_size, dtype, saturate):
    """ONNX QuantizeLinear with parameters as tensor inputs (blocked, run-time or float8/float4).

    scale and zero_point are broadcast against x as ONNX does: a one-element tensor per tensor,
    a 1-D tensor along `axis`, or (block_size > 0) a tensor of x's rank whose `axis` dimension
    is ceil(x.shape[axis] / block_size), each element repeated over block_size consecutive
    elements along `axis`. v = x / scale is one division in the wider float type of x and scale
    (float32 unless both are float16). Integer dtypes: y = clamp(round_half_even(v) +
    zero_point, qmin, qmax) (zero point 0 when absent); the result saturates also where the
    ONNX reference's int32 cast of round(v) would overflow, and a nan v is an error. float8
    (f8e4m3fn, f8e5m2): y = v converted with round to nearest even, after clamping v to
    [-max, max] when saturate (inf then becomes +-max; nan stays nan); without saturate an
    out-of-range v becomes nan (e4m3fn, which has no inf) or +-inf (e5m2). f4e2m1: y = v + 0.0
    converted with round to nearest even, always saturating (the format has no inf or nan; a
    nan converts to a zero as ml_dtypes, which the ONNX reference uses, converts it); the
    reference adds its zero point, which must be 0, so -0 becomes +0. The float formats take no
    zero_point input (ONNX requires it to be 0). The conversions are ml_dtypes' float32 (or
    float16) to float8/float4 casts. Not integer-only: `lower-integer` never emits this op.
    """
    op = "quantize_linear"
    if not is_float(x.dtype):
        fail(op, f"input must be f32 or f16, got {x.dtype} {fmt(x.shape)}")
    if is_narrow_float(dtype) and zero_point is not None:
        fail(op, f"a {dtype} result takes no zero_point input (ONNX requires it to be 0)")
    _check_params(op, x, scale, zero_point, axis, block_size, dtype)
    return x.with_dtype(dtype)


def _quotient(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return np.asarray(x / scale)  # numpy promotes f16 / f32 to f32, as ONNX's reference


def _quantize_linear(x, scale, zero_point=None, *, axis, block_size, dtype, saturate):
    shape = x.shape
    v = _quotient(x, expand_param(scale, shape, axis, block_size))
    if is_narrow_float(dtype):
        target = numpy_dtype(dtype)
        if dtype == "f4e2m1":
            v = v + v.dtype.type(0.0)  # the reference's `x + zero_point`: -0 -> +0
        elif saturate:
            import ml_dtypes
            top = float(ml_dtypes.finfo(target).max)
            v = np.clip(v, -top, top)
        return v.astype(target)
    if np.isnan(v).any():
        raise ValueError(f"quantize_linear: {int(np.isnan(v).sum())} values of x / scale are "
                         f"nan (nan input, or 0 / 0)")
    # Clamp in float before the int cast, so huge quotients and +-inf saturate.
    r = np.clip(np.rint(v).astype(np.float64), -(2.0 ** 40), 2.0 ** 40).astype(np.int64)
    if zero_point is not None:
        r = r + expand_param(zero_point, shape, axis, block_size).astype(np.int64)
    lo, hi = int_range(int_bits(dtype), is_signed(dtype))
    return np.clip(r, lo, hi).astype(numpy_dtype(dtype))


# A float-to-integer boundary like `quantize`: the same computation in either interpreter mode.
quantize_linear.kernel("float")(_quantize_linear)
quantize_linear.kernel("int")(_quantize_linear)


@register_op("dequantize_linear", inputs=("x", "scale", "zero_point?"), attrs=_PARAM_ATTRS)
def dequantize_linear(x, scale, zero_point=None, *, axis, block_size):
    """ONNX DequantizeLinear with parameters as tensor inputs (blocked, run-time or float8/float4).

    scale and zero_point broadcast against x as for `quantize_linear`. y = T((float32(x) -
    zero_point) * scale) in the scale's type T (f32 or f16), with numpy's promotions, as the ONNX
    reference computes: x is first rounded to float32 (exact up to 2**24), the difference and the
    product are float32, except with an i32 zero point, which makes both float64 (a float16
    scale is multiplied in float32), and the result is rounded once to T. Without a zero point
    y = T(float32(x) * scale). float8/float4 inputs (f8e4m3fn, f8e5m2, f4e2m1) take no
    zero_point input (ONNX requires it to be 0), and their products are exact in float32. Not
    integer-only: `lower-integer` never emits this op.
    """
    op = "dequantize_linear"
    if not (is_int(x.dtype) and x.dtype != "i64") and not is_narrow_float(x.dtype):
        fail(op, f"input must be an integer or float8/float4 tensor, got {x.dtype} "
                 f"{fmt(x.shape)}")
    if is_narrow_float(x.dtype) and zero_point is not None:
        fail(op, f"a {x.dtype} input takes no zero_point input (ONNX requires it to be 0)")
    _check_params(op, x, scale, zero_point, axis, block_size, x.dtype)
    return x.with_dtype(scale.dtype)


def _dequantize_linear(x, scale, zero_point=None, *, axis, block_size):
    dx = x.astype(np.float32)
    if zero_point is not None:
        dx = dx - expand_param(zero_point, x.shape, axis, block_size)
    y = dx * expand_param(scale, x.shape, axis, block_size)
    return np.asarray(y).astype(scale.dtype)


dequantize_linear.kernel("float")(_dequantize_linear)
dequantize_linear.kernel("int")(_dequantize_linear)
