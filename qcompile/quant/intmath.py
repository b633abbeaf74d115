"""Integer arithmetic of quantized inference: the single definition every backend follows.

Everything here is vectorised numpy. Integer results are int64 arrays whose values lie in the
documented range (int32 for requantization); products are formed in int64 where they provably fit,
and any value that would leave its declared width raises `IntegerOverflowError` instead of
wrapping. `docs/integer-semantics.md` states each formula, tie rule and saturation in prose.

Conventions
- A real multiplier `M` is encoded as `(m0, shift)` with `M ~= m0 * 2**(shift - 31)`, `m0` a
  Q31 int32 in [2**30, 2**31) (TFLite QuantizeMultiplier). `shift > 0` is a left shift.
- `requantize(acc, m0, shift, rounding)` computes `acc * M` rounded to an int32; adding the
  output zero point and `saturate` to the storage width are separate, explicit steps.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ..errors import QCompileError

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

#: Requantization rounding modes (see `requantize`).
REQUANT_ROUNDINGS = ("gemmlowp_double", "single_half_up", "single_half_away")
#: Float -> int rounding modes (see `quantize_float`).
QUANTIZE_ROUNDINGS = ("half_away", "half_even")


class QuantError(QCompileError):
    """Bad quantization input: a non-positive or non-finite scale/multiplier, NaN data, an unknown
    rounding mode, an empty observer, or parameters that do not fit their integer encoding."""


class IntegerOverflowError(QuantError):
    """An integer value left its declared width. Raised instead of wrapping silently."""


# --------------------------------------------------------------------------- helpers

def _int_array(x: ArrayLike, name: str, lo: int = -(1 << 63), hi: int = (1 << 63) - 1) -> np.ndarray:
    """`x` as an int64 array, refusing floats and values outside [lo, hi]."""
    arr = np.asarray(x)
    if arr.dtype == object:  # Python ints too large for int64 end up here
        try:
            arr = arr.astype(np.int64)
        except (OverflowError, TypeError) as e:
            raise IntegerOverflowError(f"{name} does not fit in int64: {e}") from None
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise QuantError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > (1 << 63) - 1:
        raise IntegerOverflowError(f"{name} has values above the int64 range")
    arr = arr.astype(np.int64)
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        bad = arr[(arr < lo) | (arr > hi)].reshape(-1)[0]
        raise IntegerOverflowError(f"{name} value {int(bad)} is outside [{lo}, {hi}]")
    return arr


def _check_rounding(rounding: str, allowed: tuple, what: str) -> None:
    if rounding not in allowed:
        raise QuantError(f"unknown {what} rounding {rounding!r}; expected one of {', '.join(allowed)}")


def _pow2(e: np.ndarray) -> np.ndarray:
    """2**e as int64 for 0 <= e <= 62 (elementwise)."""
    return np.left_shift(np.int64(1), e.astype(np.int64))


# --------------------------------------------------------------------------- float rounding

def round_half_even(x: ArrayLike) -> np.ndarray:
    """Round to the nearest integer, ties to even (IEEE default; ONNX QuantizeLinear). Keeps dtype."""
    return np.rint(np.asarray(x))


def round_half_away(x: ArrayLike) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (C `std::round`, TFLite `TfLiteRound`).

    Computed as trunc(x) plus a carry decided on the exact fraction `x - trunc(x)`; the popular
    `floor(|x| + 0.5)` is wrong for 0.49999999999999994, whose sum rounds up to 1.0."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    t = np.trunc(x)
    frac = x - t  # exact: t and x share the exponent range, Sterbenz-style cancellation
    return t + np.where(np.abs(frac) >= 0.5, np.sign(x), 0).astype(x.dtype)


def quantize_float(x: ArrayLike, scale: ArrayLike, zero_point: ArrayLike, qmin: int, qmax: int,
                   rounding: str = "half_even") -> np.ndarray:
    """`clamp(round(x / scale) + zero_point, qmin, qmax)` as int64.

    The division is done in float32 in both modes: TFLite's AffineQuantize divides a float by
    `(float)scale`, and ONNX QuantizeLinear computes in the precision of its (float32) `y_scale`.
    `rounding` is "half_away" (TFLite QUANTIZE) or "half_even" (ONNX). They differ only at ties:
    2.5 -> 3 vs 2. `scale`/`zero_point` broadcast against `x` (per-channel: shape them yourself).
    +-inf saturate; NaN raises."""
    _check_rounding(rounding, QUANTIZE_ROUNDINGS, "quantize")
    xf = np.asarray(x, dtype=np.float32)
    s = np.asarray(scale, dtype=np.float64).astype(np.float32)  # checked after the float32 cast
    bad = ~(np.isfinite(s) & (s > 0))
    if bad.any():
        raise QuantError(f"quantize scale must be finite and > 0 in float32, got "
                         f"{float(np.asarray(scale, np.float64)[bad].reshape(-1)[0])!r}")
    if np.any(np.isnan(xf)):
        raise QuantError(f"cannot quantize NaN ({int(np.isnan(xf).sum())} NaN values in the input)")
    zp = _int_array(zero_point, "zero point", INT32_MIN, INT32_MAX)
    if qmin > qmax:
        raise QuantError(f"empty integer range [{qmin}, {qmax}]")
    with np.errstate(over="ignore"):  # x/scale may overflow to inf; inf saturates below
        v = xf / s
    r = round_half_away(v) if rounding == "half_away" else round_half_even(v)
    # Clip in float before the int cast so +-inf and huge values saturate instead of wrapping.
    r = np.clip(r.astype(np.float64), -(2.0 ** 40), 2.0 ** 40).astype(np.int64)
    return np.clip(r + zp, qmin, qmax)


# --------------------------------------------------------------------------- multiplier encoding

def quantize_multipliers(m: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised `quantize_multiplier`: returns (m0 int32 array, shift int32 array) of m's shape."""
    arr = np.asarray(m, dtype=np.float64)
    flat = arr.reshape(-1)
    bad = ~(np.isfinite(flat) & (flat > 0))
    if bad.any():
        i = int(np.argmax(bad))
        where = f" (channel {i})" if arr.ndim else ""
        raise QuantError(f"requantization multiplier{where} must be finite and > 0, got {flat[i]!r}")
    q, e = np.frexp(arr)  # arr = q * 2**e, q in [0.5, 1): exact
    # q * 2**31 is exact (power-of-two scaling), so the only rounding is the half-away one.
    q_fixed = round_half_away(np.ldexp(q, 31)).astype(np.int64)
    e = e.astype(np.int64)
    carry = q_fixed == (1 << 31)  # q rounded up to 1.0: renormalise to 0.5 * 2**(e+1)
    q_fixed = np.where(carry, q_fixed // 2, q_fixed)
    e = np.where(carry, e + 1, e)
    if (e > 31).any():
        i = int(np.argmax((e > 31).reshape(-1)))
        raise IntegerOverflowError(
            f"requantization multiplier {flat[i]!r} is >= 2**31; it does not fit the (int32, shift) "
            "encoding (an int32 left shift of at most 31 bits)")
    # TFLite: a shift below -31 would shift every bit out, so the multiplier is flushed to 0.
    tiny = e < -31
    q_fixed = np.where(tiny, 0, q_fixed)
    e = np.where(tiny, 0, e)
    return q_fixed.astype(np.int32), e.astype(np.int32)


def quantize_multiplier(m: float) -> tuple[int, int]:
    """Encode a real multiplier `m` as `(m0, shift)` with `m ~= m0 * 2**(shift - 31)` (TFLite).

    `frexp(m) = q * 2**shift`; `m0 = round_half_away(q * 2**31)`; if that is 2**31, halve it and
    increment `shift`. Multipliers below about 2**-32 (shift < -31) flush to (0, 0), which makes
    every requantized output 0. Raises for m <= 0, NaN, inf, and m >= 2**31 (shift > 31).
    Result ranges: m0 in [2**30, 2**31 - 1] (or 0 when flushed), shift in [-31, 31]."""
    if np.ndim(m) != 0:
        raise QuantError(f"quantize_multiplier takes a scalar; use quantize_multipliers for shape {np.shape(m)}")
    m0, shift = quantize_multipliers(m)
    return int(m0), int(shift)


def multiplier_value(m0: ArrayLike, shift: ArrayLike) -> np.ndarray:
    """The real multiplier `m0 * 2**(shift - 31)` an encoding represents (exact in float64)."""
    return np.ldexp(np.asarray(m0, dtype=np.float64), np.asarray(shift, dtype=np.int64) - 31)


# --------------------------------------------------------------------------- fixed-point primitives

def srdhm(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul: the high 32 bits of `2*a*b`, rounded half up (+inf).

    `a`, `b` are int32 values; `a*b` is exact in int64. The result is
    `trunc((a*b + nudge) / 2**31)` with `nudge = 2**30` if `a*b >= 0` else `1 - 2**30`, which
    equals `floor(a*b / 2**31 + 1/2)`. The only overflow, INT32_MIN * INT32_MIN, saturates to
    INT32_MAX."""
    a = _int_array(a, "srdhm operand a", INT32_MIN, INT32_MAX)
    b = _int_array(b, "srdhm operand b", INT32_MIN, INT32_MAX)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    s = ab + nudge
    # Truncating division (C semantics), not numpy's floor division.
    q = np.where(s >= 0, s >> 31, -((-s) >> 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), np.int64(INT32_MAX), q)


def rdbpot(x: ArrayLike, exponent: ArrayLike) -> np.ndarray:
    """RoundingDivideByPOT: `x / 2**exponent` rounded to nearest, ties away from zero.

    `(x >> e) + (rem > thr)` with `rem = x & (2**e - 1)` and `thr = ((2**e - 1) >> 1) + (x < 0)`.
    `x` is an int32 value, `exponent` in [0, 31] (broadcasts, so per-channel shifts work)."""
    x = _int_array(x, "rdbpot operand", INT32_MIN, INT32_MAX)
    e = _int_array(exponent, "rdbpot exponent", 0, 31)
    mask = _pow2(e) - 1
    rem = x & mask
    thr = (mask >> 1) + (x < 0)
    return (x >> e) + (rem > thr)


def _requant_double(x: np.ndarray, m0: np.ndarray, shift: np.ndarray) -> np.ndarray:
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    xs = x * _pow2(left)  # |x| < 2**31 and left <= 31: exact in int64
    if xs.size and (xs.min() < INT32_MIN or xs.max() > INT32_MAX):
        bad = (xs < INT32_MIN) | (xs > INT32_MAX)
        i = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise IntegerOverflowError(
            f"accumulator {int(np.broadcast_to(x, bad.shape)[i])} shifted left by "
            f"{int(np.broadcast_to(left, bad.shape)[i])} leaves int32 (gemmlowp_double requantization "
            "with a multiplier >= 1); the reference kernels would wrap here")
    return rdbpot(srdhm(xs, m0), right)


def _requant_single(x: np.ndarray, m0: np.ndarray, shift: np.ndarray, away: bool) -> np.ndarray:
    if shift.size and shift.max() > 30:
        raise IntegerOverflowError(
            f"shift {int(shift.max())} > 30 is outside single-rounding requantization (multiplier "
            ">= 2**30); TFLite would silently saturate the multiplier here")
    n = 31 - shift  # in [1, 62]
    prod = x * m0  # |x|, |m0| <= 2**31: |prod| <= 2**62, exact
    half = _pow2(n - 1)
    offset = np.where(prod >= 0, half, half - 1) if away else half
    return (prod + offset) >> n  # arithmetic shift = floor; |prod| + offset < 2**63


def requantize(acc: ArrayLike, m0: ArrayLike, shift: ArrayLike,
               rounding: str = "gemmlowp_double") -> np.ndarray:
    """`acc * m0 * 2**(shift - 31)` rounded to an int32 (returned as int64 values).

    `acc` are int32 accumulator values; `m0` int32 and `shift` in [-31, 31] broadcast against
    `acc` (per-channel: shape them along the channel axis). Modes:
    - "gemmlowp_double": TFLite's default `RDBPOT(SRDHM(acc * 2**max(shift,0), m0), max(-shift,0))`;
      two roundings (half up, then half away). `acc * 2**left` must stay in int32.
    - "single_half_up": `(acc*m0 + 2**(30-shift)) >> (31-shift)`; TFLITE_SINGLE_ROUNDING, TVM
      UPWARD. Requires shift <= 30.
    - "single_half_away": as above but the offset is `2**(30-shift) - 1` for negative products;
      TVM TONEAREST.
    A result outside int32 raises `IntegerOverflowError`."""
    _check_rounding(rounding, REQUANT_ROUNDINGS, "requantization")
    x = _int_array(acc, "accumulator", INT32_MIN, INT32_MAX)
    m = _int_array(m0, "multiplier m0", INT32_MIN, INT32_MAX)
    s = _int_array(shift, "shift", -31, 31)
    if rounding == "gemmlowp_double":
        out = _requant_double(x, m, s)
    else:
        out = _requant_single(x, m, s, away=rounding == "single_half_away")
    if out.size and (out.min() < INT32_MIN or out.max() > INT32_MAX):
        raise IntegerOverflowError(
            f"requantized value {int(out.max() if out.max() > INT32_MAX else out.min())} leaves int32 "
            f"({rounding}); the multiplier is too large for these accumulators")
    return out


def shift_requantize(acc: ArrayLike, shift: ArrayLike) -> np.ndarray:
    """Multiply by `2**shift` for power-of-two scales (no multiplier hardware).

    `shift >= 0`: exact left shift; the result must stay in int32. `shift < 0`: divide by
    `2**-shift` rounding half away from zero, exactly `rdbpot` (and CMSIS-NN's
    divide_by_power_of_two), chosen because it is unbiased for sign-symmetric data and shares
    one helper with the dyadic path. `acc` is int32; `shift` in [-31, 31]."""
    x = _int_array(acc, "accumulator", INT32_MIN, INT32_MAX)
    s = _int_array(shift, "shift", -31, 31)
    left = x * _pow2(np.maximum(s, 0))
    if left.size and (left.min() < INT32_MIN or left.max() > INT32_MAX):
        raise IntegerOverflowError(f"left shift by {int(s.max())} of the accumulator leaves int32")
    return np.where(s >= 0, left, rdbpot(x, np.maximum(-s, 0)))


def saturate(x: ArrayLike, bits: int, signed: bool = True) -> np.ndarray:
    """Clamp integers to the range of a `bits`-wide (un)signed integer; returns int64."""
    if not 1 <= bits <= 63:
        raise QuantError(f"saturate: bit width {bits} not in 1..63")
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return np.clip(_int_array(x, "saturate operand"), lo, hi)

