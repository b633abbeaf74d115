"""Quantize and dequantize: the boundary between float and integer tensors.

Both are "quant_aware": their kernels receive the QuantParams of the node's input and output
values (`in_quant`, `out_quant`) from the interpreter, so scales and zero points live once, on
the values. The scale is used as float32 (as an ONNX float32 scale tensor, TFLite and the C
backends hold it), so the interpreter and generated code divide by the same number.
"""
from __future__ import annotations

import numpy as np

from ....quant.intmath import quantize_float
from ...types import INT_DTYPES, UINT_DTYPES, QuantParams, numpy_dtype
from ..registry import AttrSpec, register_op
from .common import fail, fmt, is_int, require_float


def _params(which: str, quant, op: str) -> QuantParams:
    q = quant[0] if quant else None
    if q is None:
        raise ValueError(f"{op} needs QuantParams on its {which} value")
    return q


def _scale_f32(q: QuantParams, rank: int) -> np.ndarray:
    if q.axis is not None and not -rank <= q.axis < rank:
        raise ValueError(f"per-channel axis {q.axis} out of range for a rank-{rank} tensor")
    return q.scale_array(rank).astype(np.float32)


@register_op("quantize",
             attrs={"rounding": AttrSpec("str", "half_even", choices=("half_even", "half_away"),
                                         doc="ties to even (ONNX) or away from zero (TFLite)"),
                    "dtype": AttrSpec("str", "i8", doc="output integer dtype (i2..i16, i32, "
                                      "u2..u16); equals the output QuantParams' storage dtype")},
             traits=("quant_aware",))
def quantize(x, *, rounding, dtype):
    """q = clamp(round(x / scale) + zero_point, qmin, qmax), x / scale in float32, per tensor or channel.

    scale, zero_point, qmin and qmax come from the output value's QuantParams (per channel along
    its axis). x / scale is one float32 division; half_even then rounds ties to even (np.rint,
    ONNX QuantizeLinear), half_away rounds them away from zero (TFLite's TfLiteRound), so
    0.35 / 0.1 = 3.5 in float32 gives 4 either way and 4.5 gives 4 / 5. A nan input is an error.
    """
    require_float("quantize", x)
    if dtype not in INT_DTYPES + UINT_DTYPES:
        fail("quantize", f"dtype {dtype!r} is not an integer IR dtype (i2..i16, i32, u2..u16)")
    return x.with_dtype(dtype)


@quantize.kernel("float")
def _quantize(x, *, rounding, dtype, out_quant, in_quant=None):
    # The one definition of float -> int quantization lives in intmath; this kernel only
    # shapes the per-channel parameters and picks the storage type.
    q = _params("output", out_quant, "quantize")
    out = quantize_float(x, _scale_f32(q, x.ndim), q.zero_point_array(x.ndim), q.qmin, q.qmax,
                         rounding)
    return out.astype(numpy_dtype(dtype))


def dequantize_array(q_values: np.ndarray, q: QuantParams) -> np.ndarray:
    """real = (q - zero_point) * scale, scale as float32, result float32."""
    centred = q_values.astype(np.int64) - q.zero_point_array(q_values.ndim)
    return (centred * _scale_f32(q, q_values.ndim).astype(np.float64)).astype(np.float32)


@register_op("dequantize", traits=("quant_aware",))
def dequantize(x):
    """real = (q - zero_point) * scale as f32 (scale taken as float32), per tensor or channel."""
    if not is_int(x.dtype):
        fail("dequantize", f"input must be an integer tensor, got {x.dtype} {fmt(x.shape)}")
    return x.with_dtype("f32")


@dequantize.kernel("float")
def _dequantize(x, *, in_quant, out_quant=None):
    return dequantize_array(x, _params("input", in_quant, "dequantize"))
