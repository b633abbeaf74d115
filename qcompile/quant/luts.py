"""Lookup tables of 8-bit (and narrower) element-wise activations, as TFLite computes them.

An element-wise function of an integer input with at most 256 codes is a table of output codes,
one per input code. These are the one definition of how such a table is filled: `lower-integer`
builds its `lut` nodes with them, and the TFLite conformance suite checks them against TFLite's
reference kernels on every code.

- `float32_lut`: TFLite's LUTPopulate (LOGISTIC, TANH, and any function without a fixed-point
  recipe): the input code is dequantized, transformed and rescaled in float32, and rounded half
  away from zero.
- `hard_swish_table`: TFLite's int16 fixed-point HARD_SWISH; the float table of
  x * relu6(x + 3) / 6 differs from it on some codes.

docs/integer-semantics.md ("Lookup tables") states both recipes in prose.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .intmath import QuantError, quantize_multiplier, rdbpot, round_half_away

f32 = np.float32

_I16_MIN, _I16_MAX = -(1 << 15), (1 << 15) - 1


def _codes(qmin: int, qmax: int) -> np.ndarray:
    if not qmin < qmax or qmax - qmin >= 1 << 16:
        raise QuantError(f"a lookup table needs a code range of 2..65536 entries, "
                         f"got [{qmin}, {qmax}]")
    return np.arange(qmin, qmax + 1, dtype=np.int64)


def float32_lut(fn: Callable[[np.ndarray], np.ndarray], s_x: float, z_x: int, s_y: float,
                z_y: int, in_range: tuple[int, int] = (-128, 127),
                out_range: tuple[int, int] = (-128, 127)) -> list[int]:
    """TFLite's LUTPopulate, all in float32: for every input code q in `in_range`,
    table[q - qmin] = clamp(round_half_away(fn(s_x * (q - z_x)) * (1 / s_y)) + z_y, out_range).

    `fn` maps a float32 array to float32 values (TFLite calls the single precision libm
    function; see `sigmoid_f32`, `tanh_f32`). Scales are rounded to float32 first, as a .tflite
    file stores them; the reciprocal 1 / s_y is a float32 division and the product a float32
    multiply (a division by s_y would round differently on some codes)."""
    q = _codes(*in_range)
    dequantized = f32(s_x) * (q - z_x).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        transformed = np.asarray(fn(dequantized)).astype(np.float32)
        rescaled = (transformed * (f32(1) / f32(s_y))).astype(np.float32)
    if not np.all(np.isfinite(rescaled)):
        i = int(np.argmax(~np.isfinite(rescaled)))
        raise QuantError(f"the function is not finite at input code {int(q[i])} "
                         f"(input {float(dequantized[i])!r})")
    # Clip in float before the int cast so huge values saturate instead of wrapping.
    r = np.clip(round_half_away(rescaled).astype(np.float64), -(2.0 ** 40), 2.0 ** 40)
    return [int(v) for v in np.clip(r.astype(np.int64) + z_y, *out_range)]


def sigmoid_f32(x: np.ndarray) -> np.ndarray:
    """TFLite's logistic in float32: 1.0f / (1.0f + expf(-x)), expf correctly rounded, then a
    float32 add and divide (not the correctly rounded sigmoid, which differs by an ulp)."""
    with np.errstate(over="ignore"):
        e = np.exp(-np.asarray(x).astype(np.float64)).astype(np.float32)  # +inf past range
    return f32(1) / (f32(1) + e)


def tanh_f32(x: np.ndarray) -> np.ndarray:
    """tanhf: tanh correctly rounded to float32."""
    return np.tanh(np.asarray(x).astype(np.float64)).astype(np.float32)


def _srdhm16(a, b, rounding: bool = True) -> np.ndarray:
    """The int16 SaturatingRoundingDoublingHighMul (rounding half up), or with rounding=False
    the truncating SaturatingDoublingHighMul (toward zero): the high 16 bits of 2*a*b."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    if rounding:
        ab = ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    q = np.where(ab >= 0, ab >> 15, -((-ab) >> 15))  # C division truncates
    return np.where((a == _I16_MIN) & (b == _I16_MIN), _I16_MAX, q)


def _q31_to_q15(m0: int) -> int:
    """DownScaleInt32ToInt16Multiplier: round the Q31 multiplier to Q15, saturating."""
    if m0 >= (1 << 31) - 1 - (1 << 15):
        return _I16_MAX
    return (m0 + (1 << 15)) >> 16


def hard_swish_table(s_x: float, z_x: int, s_y: float, z_y: int,
                     in_range: tuple[int, int] = (-128, 127),
                     out_range: tuple[int, int] = (-128, 127)) -> list[int]:
    """HARD_SWISH as TFLite's reference kernel computes it, in int16 fixed point, for every
    input code in `in_range`.

    x is lifted to a 'hires' scale s_x/128; a relu-ish factor in [0, 1] (x rescaled so that 3.0
    maps to 32768, then moved from [-1, 1] to [0, 1]) multiplies x on the pre-shift output
    scale; a final rounding shift lands on s_y. Multipliers are formed in float32 and rounded
    from Q31 to Q15. Needs s_x / 128 <= s_y (TFLite's own precondition), else QuantError."""
    hires = f32(1 / 128) * f32(s_x)
    m_out, e_out = quantize_multiplier(float(hires / f32(s_y)))
    m_relu, e_relu = quantize_multiplier(float(hires / f32(3 / 32768)))
    m_out, m_relu = _q31_to_q15(m_out), _q31_to_q15(m_relu)
    if e_out > 0:
        raise QuantError(f"hard swish needs s_x / 128 <= s_y (got s_x={s_x}, s_y={s_y})")
    x = (_codes(*in_range) - z_x) * 128
    if x.max() > _I16_MAX or x.min() < _I16_MIN:
        raise QuantError(f"hard swish: input codes {in_range} with zero point {z_x} leave the "
                         f"int16 'hires' range")
    on_out_scale = _srdhm16(x, m_out)
    relu = x
    if e_relu > 0:  # saturating left shift, the last bit after the multiply
        relu = np.clip(relu * (1 << (e_relu - 1)), _I16_MIN, _I16_MAX)
    relu = _srdhm16(relu, m_relu)
    if e_relu > 0:
        relu = np.clip(relu * 2, _I16_MIN, _I16_MAX)
    elif e_relu < 0:
        relu = rdbpot(relu, -e_relu)
    relu = (relu + (1 << 15)) >> 1
    y = rdbpot(_srdhm16(relu, on_out_scale, rounding=False), -e_out) + z_y
    return [int(v) for v in np.clip(y, *out_range)]
