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
"""
from __future__ import annotations

import numpy as np

from ....quant.intmath import quantize_float, round_half_away, round_half_even
from ...types import TensorType, is_int, numpy_dtype
from ..registry import AttrSpec, register_op
from .common import fail, fmt

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
