"""The requantize formulas of targets/tvm/arith.py built as whole vectors, the form the
pixel-lanes MAC kernels give their epilogue (one channel's constants for every lane, or a
vector of them), against intmath on the values where a wrong lane pairing, sign extension or
rounding shows: products of both signs up to 2**62, multipliers up to 2**31 - 1, ties of
both roundings, every shift, odd and even lanes that differ."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from qcompile.quant import intmath  # noqa: E402
from qcompile.targets.tvm import arith  # noqa: E402
from qcompile.targets.tvm.testing import lanes_kernel  # noqa: E402

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
ROUNDINGS = ("gemmlowp_double", "single_half_up", "single_half_away")


SHIFTS = {"any": (-31, 31), "right": (-31, -1), "left": (0, 31)}


def _cases(rounding: str, lanes: int, per_vector: bool, shifts: str = "any", seed: int = 0):
    """(acc, m0, shift) lists whose every element is in intmath.requantize's domain; with
    per_vector, m0 and shift are constant over each vector (one channel per vector); the
    shifts lie in SHIFTS[shifts]."""
    rng = np.random.default_rng(seed)
    n = 64 * lanes
    shift = rng.integers(*SHIFTS[shifts], n, endpoint=True)
    if rounding != "gemmlowp_double":
        shift = np.minimum(shift, 30)
    m0 = rng.choice([1 << 30, I32_MAX, (1 << 30) + 1], n)
    m0 = np.where(rng.random(n) < 0.5, m0, rng.integers(1 << 30, 1 << 31, n))
    if per_vector:
        shift = np.repeat(shift[::lanes], lanes)
        m0 = np.repeat(m0[::lanes], lanes)
    # extremes of int32 and the ties of x * m0 / 2**31 (x = ±1, ±3 with m0 = 2**30), plus
    # random values of every magnitude
    edges = np.array([I32_MIN, I32_MAX, I32_MIN + 1, -1, 0, 1, 3, -3, 5, -5, 1 << 20, -(1 << 20)])
    acc = rng.integers(I32_MIN, I32_MAX, n, endpoint=True) >> rng.integers(0, 31, n)
    acc[:len(edges)] = edges
    acc[len(edges):2 * len(edges)] = edges[::-1]
    # only where the interpreter runs clean (acc * 2**left and the result in int32); elsewhere
    # acc's sign, 0 or -1, which always is
    clean = np.array([_in_range(a, m, s, rounding) for a, m, s in zip(acc, m0, shift)])
    acc = np.where(clean, acc, acc >> 31)
    expect = intmath.requantize(acc, m0, shift, rounding)
    return acc.astype(np.int32), m0.astype(np.int32), shift.astype(np.int32), expect


def _in_range(a, m, s, rounding) -> bool:
    try:
        intmath.requantize(a, m, s, rounding)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("per_vector", [True, False], ids=["channel-per-vector", "per-lane"])
@pytest.mark.parametrize("shifts", list(SHIFTS))
def test_vector_requantize_matches_intmath(rounding, lanes, per_vector, shifts):
    """With the shifts' static range passed on, as the MAC epilogues do: "right" (every shift
    <= -1) takes the short RDBPOT, "left" drops the right shift, "any" keeps both."""
    acc, m0, shift, expect = _cases(rounding, lanes, per_vector, shifts)
    static = (int(shift.min()), int(shift.max()))

    def body(first, x, m, s):
        def at(buf):  # one constant per vector, or one per lane
            return buf[first] if per_vector else buf[arith.tir.Ramp(first, 1, lanes)]
        return arith.requantize32(x[arith.tir.Ramp(first, 1, lanes)], at(m), at(s), rounding,
                                  static)

    run = lanes_kernel(("requantize32", rounding, lanes, per_vector, static), body, lanes,
                       ("int32", "int32", "int32"), "int32")
    np.testing.assert_array_equal(run(acc, m0, shift), expect)


@pytest.mark.parametrize("e", [1, 2, 7, 30, 31])
def test_short_rdbpot_matches_intmath_at_ties_and_extremes(e):
    """_rdbpot_from_1 against intmath.rdbpot on every tie of x / 2**e near zero and the
    largest magnitudes an srdhm result can take (|x| <= 2**31 - 2), at a constant shift."""
    half = 1 << (e - 1)
    x = np.array([0, 1, -1, half, -half, half - 1, -half + 1, half + 1, -half - 1,
                  3 * half, -3 * half, I32_MAX - 1, I32_MIN + 2, I32_MAX - 1 - half,
                  I32_MIN + 2 + half, 5 * half], dtype=np.int64)
    x = np.where((x > I32_MIN + 1) & (x < I32_MAX), x, 0)  # the srdhm results' range

    def body(first, xs):
        return arith._rdbpot_from_1(xs[arith.tir.Ramp(first, 1, 16)], e)

    run = lanes_kernel(("rdbpot_from_1", e), body, 16, ("int32",), "int32")
    np.testing.assert_array_equal(run(x), intmath.rdbpot(x, e))


def test_srdhm_pairs_is_exact_at_the_extremes():
    """srdhm's two-lanes-per-word form on its whole domain's corners: both signs, products up
    to 2**62, the nudge carrying into the upper half."""
    a = np.array([I32_MAX, I32_MIN, -1, 1, I32_MAX, I32_MIN + 1, 3, -3, 12345, -12345,
                  1 << 30, -(1 << 30), 2, -2, 0, 7], dtype=np.int64)
    m = np.array([I32_MAX, I32_MAX, 1 << 30, 1 << 30, 1, I32_MAX, 1 << 30, 1 << 30,
                  I32_MAX - 5, 1 << 30, I32_MAX, I32_MAX, 1 << 29, 1 << 29, I32_MAX, 3],
                 dtype=np.int64)

    def body(first, x, mm):
        ramp = arith.tir.Ramp(first, 1, 16)
        return arith.i32(arith.srdhm(x[ramp], mm[ramp]))

    run = lanes_kernel("srdhm16", body, 16, ("int32", "int32"), "int32")
    np.testing.assert_array_equal(run(a, m), intmath.srdhm(a, m))
