"""qcompile.quant.intmath against the published tie tables and a slow exact reference.

The reference below is written independently of the implementation: exact rationals
(`fractions.Fraction`) and Python big ints, with each rounding rule stated as a formula on the
exact real value rather than as shifts and masks.
"""
from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import numpy as np
import pytest

from qcompile.errors import QCompileError
from qcompile.quant import (IntegerOverflowError, QuantError, multiplier_value, quantize_float,
                            quantize_multiplier, quantize_multipliers, rdbpot, requantize,
                            round_half_away, round_half_even, saturate, shift_requantize, srdhm)

I32_MIN, I32_MAX = -(2 ** 31), 2 ** 31 - 1
HALF = Fraction(1, 2)


# --------------------------------------------------------------------------- exact reference

def ref_half_up(v: Fraction) -> int:
    return math.floor(v + HALF)


def ref_half_away(v: Fraction) -> int:
    return int(math.copysign(1, v)) * math.floor(abs(v) + HALF) if v else 0


def ref_srdhm(a: int, b: int) -> int:
    if a == b == I32_MIN:
        return I32_MAX
    return ref_half_up(Fraction(2 * a * b, 2 ** 32))


def ref_requant(x: int, m: int, shift: int, rounding: str) -> int:
    real = Fraction(x * m) * Fraction(2) ** (shift - 31)
    if rounding == "single_half_up":
        return ref_half_up(real)
    if rounding == "single_half_away":
        return ref_half_away(real)
    # gemmlowp double rounding: the high-mul is rounded first, then the power-of-two divide.
    high = ref_srdhm(x * 2 ** max(shift, 0), m)
    return ref_half_away(Fraction(high, 2 ** max(-shift, 0)))


def ref_quantize_multiplier(m: float) -> tuple[int, int]:
    exact = Fraction(m)
    e = 0
    while exact >= Fraction(2) ** e:
        e += 1
    while exact < Fraction(2) ** (e - 1):
        e -= 1
    q = ref_half_away(exact / Fraction(2) ** e * 2 ** 31)
    if q == 2 ** 31:
        q, e = 2 ** 30, e + 1
    if e < -31:
        return 0, 0
    return q, e


# --------------------------------------------------------------------------- float rounding

def test_round_half_away_and_even_ties():
    v = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999999999999994, -0.49999999999999994, 3.0])
    assert round_half_away(v).tolist() == [-3, -2, -1, 1, 2, 3, 0, 0, 3]
    assert round_half_even(v).tolist() == [-2, -2, 0, 0, 2, 2, 0, 0, 3]
    assert round_half_away(np.float32([2.5])).dtype == np.float32


def test_round_half_away_matches_decimal():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.uniform(-1e6, 1e6, 2000), np.arange(-50, 50) + 0.5,
                        rng.integers(-2 ** 52, 2 ** 52, 50) + 0.5])
    ref = [float(Decimal(float(x)).quantize(Decimal(1), rounding=ROUND_HALF_UP)) for x in v]
    assert round_half_away(v).tolist() == ref


def test_quantize_float_tie_table_and_saturation():
    x = np.float32([-5, -3, -1, 1, 5])  # / 2 -> exact ties
    assert quantize_float(x, 2.0, 0, -128, 127, "half_even").tolist() == [-2, -2, 0, 0, 2]
    assert quantize_float(x, 2.0, 0, -128, 127, "half_away").tolist() == [-3, -2, -1, 1, 3]
    y = np.float32([-np.inf, -1e30, 1e30, np.inf, 0.0])
    assert quantize_float(y, 0.1, 3, -128, 127).tolist() == [-128, -128, 127, 127, 3]
    assert quantize_float(np.float32([1.0]), 0.5, 250, 0, 255).tolist() == [252]


def test_quantize_float_divides_in_float32():
    # Find inputs where float32 and float64 division round differently, and check the float32 one wins.
    rng = np.random.default_rng(1)
    x = rng.uniform(-100, 100, 200000).astype(np.float32)
    s = np.float32(0.0123)
    f32 = round_half_away(x / s)
    f64 = round_half_away(x.astype(np.float64) / np.float64(s))
    differ = f32 != f64
    assert differ.any()
    got = quantize_float(x[differ], s, 0, -(2 ** 20), 2 ** 20, "half_away")
    assert got.tolist() == f32[differ].astype(np.int64).tolist()


def test_quantize_float_per_channel_broadcast():
    x = np.float32([[1.0, 2.0], [1.0, 2.0]])
    out = quantize_float(x, np.array([[0.5], [0.25]]), np.array([[0], [10]]), -128, 127)
    assert out.tolist() == [[2, 4], [14, 18]]


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf, 1e-50])
def test_quantize_float_rejects_bad_scale(bad):
    with pytest.raises(QuantError, match="scale"):
        quantize_float(np.float32([1.0]), bad, 0, -128, 127)


def test_quantize_float_rejects_nan_and_unknown_rounding():
    with pytest.raises(QuantError, match="NaN"):
        quantize_float(np.float32([np.nan]), 1.0, 0, -128, 127)
    with pytest.raises(QuantError, match="half_away, half_even"):
        quantize_float(np.float32([1.0]), 1.0, 0, -128, 127, "stochastic")


# --------------------------------------------------------------------------- multiplier encoding

def test_quantize_multiplier_known_values():
    assert quantize_multiplier(1.0) == (2 ** 30, 1)
    assert quantize_multiplier(0.5) == (2 ** 30, 0)
    assert quantize_multiplier(0.75) == (3 * 2 ** 29, 0)
    # Just below 1: q * 2**31 rounds to 2**31, renormalised to (2**30, shift + 1).
    assert quantize_multiplier(1 - 2 ** -53) == (2 ** 30, 1)
    assert quantize_multiplier(1 - 2 ** -31) == (2 ** 31 - 1, 0)
    assert quantize_multiplier(1 - 2 ** -32) == (2 ** 30, 1)  # exact tie 2**31 - 0.5: away, carry
    # Around 2**-31 .. 2**-32: the last representable shift is -31, below that the flush to 0.
    assert quantize_multiplier(0.75 * 2 ** -31) == (3 * 2 ** 29, -31)
    assert quantize_multiplier(2 ** -32) == (2 ** 30, -31)
    assert quantize_multiplier(0.75 * 2 ** -32) == (0, 0)
    assert quantize_multiplier((1 - 2 ** -53) * 2 ** -32) == (2 ** 30, -31)  # carry rescues it
    assert quantize_multiplier(2.0 ** 31 - 1) == (2 ** 31 - 1, 31)


def test_quantize_multiplier_matches_exact_reference():
    rng = np.random.default_rng(2)
    ms = np.concatenate([10.0 ** rng.uniform(-10, 9, 3000), rng.uniform(0.49, 0.51, 200),
                         [0.5 + 2 ** -32, 0.5 + 2 ** -33, 0.5 + 3 * 2 ** -33]])  # last: exact ties
    m0, shift = quantize_multipliers(ms)
    assert m0.dtype == np.int32 and m0.shape == ms.shape
    for m, a, b in zip(ms, m0, shift):
        assert (int(a), int(b)) == ref_quantize_multiplier(float(m)), m
        if a:  # encoding error is at most half a unit in the last place of m0
            assert abs(Fraction(int(a)) * Fraction(2) ** (int(b) - 31) - Fraction(float(m))) \
                <= Fraction(2) ** (int(b) - 32)
    assert np.allclose(multiplier_value(m0, shift)[m0 > 0], ms[m0 > 0], rtol=2 ** -30)


@pytest.mark.parametrize("bad", [0.0, -0.5, np.nan, np.inf, -np.inf])
def test_quantize_multiplier_rejects(bad):
    with pytest.raises(QuantError, match="multiplier"):
        quantize_multiplier(bad)


def test_quantize_multiplier_too_large_and_channel_in_message():
    with pytest.raises(IntegerOverflowError, match="2\\*\\*31"):
        quantize_multiplier(2.0 ** 31)
    with pytest.raises(IntegerOverflowError):
        quantize_multiplier((1 - 2 ** -40) * 2.0 ** 31)  # rounds up into shift 32
    with pytest.raises(QuantError, match="channel 2"):
        quantize_multipliers([0.1, 0.2, 0.0])
    assert issubclass(QuantError, QCompileError)


# --------------------------------------------------------------------------- srdhm / rdbpot

def test_srdhm_edges():
    assert srdhm(I32_MIN, I32_MIN).tolist() == I32_MAX
    assert srdhm(I32_MIN, I32_MAX).tolist() == ref_srdhm(I32_MIN, I32_MAX) == -I32_MAX
    assert srdhm(I32_MAX, I32_MAX).tolist() == ref_srdhm(I32_MAX, I32_MAX)
    # Ties at half: -1 * 2**30 / 2**31 = -0.5 -> 0 (half up), +0.5 -> 1.
    assert srdhm([-1, 1, -3, 3], 2 ** 30).tolist() == [0, 1, -1, 2]
    with pytest.raises(IntegerOverflowError):
        srdhm(2 ** 31, 1)


def test_srdhm_random_vs_reference():
    rng = np.random.default_rng(3)
    a = rng.integers(I32_MIN, I32_MAX, 3000, endpoint=True)
    b = rng.integers(I32_MIN, I32_MAX, 3000, endpoint=True)
    a[:20], b[:20] = I32_MIN, rng.integers(I32_MIN, I32_MAX, 20)
    got = srdhm(a, b)
    assert got.tolist() == [ref_srdhm(int(x), int(y)) for x, y in zip(a, b)]


def test_rdbpot_edges_and_reference():
    assert rdbpot([-3, -2, -1, 1, 2, 3], 1).tolist() == [-2, -1, -1, 1, 1, 2]
    assert rdbpot([I32_MIN, I32_MAX, -1, 7], 0).tolist() == [I32_MIN, I32_MAX, -1, 7]
    assert rdbpot([I32_MIN, I32_MAX, 2 ** 30, -(2 ** 30), -(2 ** 30) - 1], 31).tolist() == [-1, 1, 1, -1, -1]
    rng = np.random.default_rng(4)
    x = rng.integers(I32_MIN, I32_MAX, 4000, endpoint=True)
    e = rng.integers(0, 32, 4000)
    assert rdbpot(x, e).tolist() == [ref_half_away(Fraction(int(v), 2 ** int(k))) for v, k in zip(x, e)]
    with pytest.raises(IntegerOverflowError, match="exponent"):
        rdbpot(5, 32)


# --------------------------------------------------------------------------- requantize

TIE_TABLE = {  # field table: x -> (TFL-double, TFL-single, TVM-TONEAREST) at q = 2**30, shift 0
    -5: (-2, -2, -3), -3: (-1, -1, -2), -1: (0, 0, -1), 1: (1, 1, 1), 5: (3, 3, 3)}


@pytest.mark.parametrize("rounding,column", [("gemmlowp_double", 0), ("single_half_up", 1),
                                             ("single_half_away", 2)])
def test_requantize_tie_table(rounding, column):
    xs = list(TIE_TABLE)
    assert requantize(xs, 2 ** 30, 0, rounding).tolist() == [TIE_TABLE[x][column] for x in xs]


def test_onnx_column_of_tie_table_is_round_half_even():
    xs = np.float32(list(TIE_TABLE))
    assert quantize_float(xs, 2.0, 0, -128, 127, "half_even").tolist() == [-2, -2, 0, 0, 2]


def test_double_rounding_vectors():
    assert requantize([1, 5], 2 ** 30, -1, "gemmlowp_double").tolist() == [1, 2]
    assert requantize([1, 5], 2 ** 30, -1, "single_half_up").tolist() == [0, 1]
    assert requantize([1, 5], 2 ** 30, -1, "single_half_away").tolist() == [0, 1]
    assert requantize(806623, 1332603979, -7, "gemmlowp_double").tolist() == 3911
    assert requantize(806623, 1332603979, -7, "single_half_up").tolist() == 3910


@pytest.mark.parametrize("rounding", ["gemmlowp_double", "single_half_up", "single_half_away"])
def test_requantize_random_vs_reference(rounding):
    rng = np.random.default_rng(5)
    n = 3000
    m0, shift = quantize_multipliers(10.0 ** rng.uniform(-9.5, 0.5, n))
    bound = np.where(shift > 0, 2 ** 20, 2 ** 31)  # keep acc * 2**left inside int32
    x = (rng.uniform(-1, 1, n) * bound).astype(np.int64)
    x[:10] = [I32_MIN, I32_MAX, 0, -1, 1, 2, -2, 3, -3, I32_MIN + 1]
    shift[:10] = np.minimum(shift[:10], 0)
    got = requantize(x, m0, shift, rounding)
    ref = [ref_requant(int(a), int(b), int(c), rounding) for a, b, c in zip(x, m0, shift)]
    assert got.tolist() == ref


def test_double_and_single_rounding_disagree_at_the_documented_rate():
    rng = np.random.default_rng(6)
    m0, shift = quantize_multipliers(10.0 ** rng.uniform(-5, np.log10(0.3), 200000))
    x = rng.integers(-(2 ** 20), 2 ** 20, 200000, endpoint=True)
    rate = (requantize(x, m0, shift, "gemmlowp_double") != requantize(x, m0, shift, "single_half_up")).mean()
    assert 0.01 < rate < 0.04  # about 2.3 % in the field measurement


def test_requantize_single_rounding_is_correctly_rounded():
    rng = np.random.default_rng(7)
    m0, shift = quantize_multipliers(10.0 ** rng.uniform(-6, 0, 5000))
    x = rng.integers(-(2 ** 31), 2 ** 31, 5000)
    exact = x.astype(np.float64) * multiplier_value(m0, shift)
    got = requantize(x, m0, shift, "single_half_away")
    assert np.all(np.abs(got - exact) <= 0.5 + 1e-6)
    dbl = requantize(x, m0, shift, "gemmlowp_double")
    assert np.all(np.abs(dbl - exact) <= 1.0)


def test_requantize_per_channel_broadcast():
    acc = np.arange(-630, 630, 7).reshape(-1, 3)
    m0, shift = quantize_multipliers([0.01, 0.3, 1.7])
    got = requantize(acc, m0, shift)
    for c in range(3):
        assert got[:, c].tolist() == requantize(acc[:, c], int(m0[c]), int(shift[c])).tolist()


def test_requantize_shift_extremes():
    # shift -31 with the largest multiplier: x * ~2**-31.
    assert requantize([I32_MIN, I32_MAX, 2 ** 30], I32_MAX, -31).tolist() == [
        ref_requant(v, I32_MAX, -31, "gemmlowp_double") for v in (I32_MIN, I32_MAX, 2 ** 30)]
    # shift 31 (multiplier ~2**31) only fits for accumulators 0 and -1 ...
    assert requantize([0, -1], 2 ** 30, 31).tolist() == [0, -(2 ** 30)]
    # ... anything else would wrap in the reference kernels, so it is refused.
    with pytest.raises(IntegerOverflowError, match="shifted left"):
        requantize([1], 2 ** 30, 31)
    # single rounding refuses shift 31 rather than silently saturating the multiplier.
    with pytest.raises(IntegerOverflowError, match="single-rounding"):
        requantize([1], 2 ** 30, 31, "single_half_up")
    # shift 30, single rounding: result leaves int32 -> refused.
    with pytest.raises(IntegerOverflowError, match="leaves int32"):
        requantize([4], 2 ** 30, 30, "single_half_up")
    # flushed multiplier: everything becomes 0
    assert requantize([I32_MIN, I32_MAX], *quantize_multiplier(1e-12)).tolist() == [0, 0]


def test_requantize_input_errors():
    with pytest.raises(IntegerOverflowError, match="accumulator"):
        requantize([2 ** 31], 2 ** 30, 0)
    with pytest.raises(QuantError, match="integer"):
        requantize(np.float32([1.0]), 2 ** 30, 0)
    with pytest.raises(IntegerOverflowError, match="shift"):
        requantize([1], 2 ** 30, -32)
    with pytest.raises(QuantError, match="gemmlowp_double"):
        requantize([1], 2 ** 30, 0, "nearest")


# --------------------------------------------------------------------------- shift / saturate

def test_shift_requantize_vs_reference():
    rng = np.random.default_rng(8)
    s = rng.integers(-31, 1, 3000)
    x = rng.integers(I32_MIN, I32_MAX, 3000, endpoint=True)
    got = shift_requantize(x, s)
    assert got.tolist() == [ref_half_away(Fraction(int(v)) * Fraction(2) ** int(k)) for v, k in zip(x, s)]
    assert shift_requantize([-3, -1, 1, 3], -1).tolist() == [-2, -1, 1, 2]  # ties away from zero
    assert shift_requantize([-3, 5], 4).tolist() == [-48, 80]
    with pytest.raises(IntegerOverflowError):
        shift_requantize([2 ** 28], 4)


def test_saturate():
    assert saturate([-300, -128, 0, 127, 300], 8, True).tolist() == [-128, -128, 0, 127, 127]
    assert saturate([-5, 0, 255, 256], 8, False).tolist() == [0, 0, 255, 255]
    assert saturate([-9, 9], 4, True).tolist() == [-8, 7]
    assert saturate([2 ** 40], 32, True).tolist() == [I32_MAX]
    with pytest.raises(QuantError):
        saturate([1.5], 8)
    with pytest.raises(QuantError):
        saturate([1], 0)
