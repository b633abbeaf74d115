"""The TVM backend's int32 element-wise kernels (qadd/qsub, qmul, qprelu, standalone requantize)
and vectorised max pooling against the interpreter: bit-exact on extreme codes and zero points,
every rounding mode, per-channel constants, broadcasting, 16-bit outputs and sizes that are not
a whole number of vectors."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompile  # noqa: E402
from qcompile.ir.types import QuantParams  # noqa: E402
from qcompile.targets import tvm as qtvm  # noqa: E402
from qcompile.targets.c.testing import IntGraphBuilder  # noqa: E402

ROUNDINGS = ["gemmlowp_double", "single_half_up", "single_half_away", "shift_only"]
RANGES = {"u8": (0, 255), "i8": (-128, 127), "i16": (-32768, 32767)}
NP = {"u8": np.uint8, "i8": np.int8, "i16": np.int16}


def _input(b: IntGraphBuilder, shape, dtype: str, zp: int, name: str = "x"):
    x = b.input(shape, dtype, name=name)
    bits = 16 if dtype.endswith("16") else 8
    x.quant = QuantParams((0.05,), (zp,), bits, dtype.startswith("i"))
    return x


def _codes(x, rng, extreme: bool) -> np.ndarray:
    lo, hi = RANGES[x.dtype]
    if extreme:  # only the two end codes: the largest centred values the kernels can see
        return rng.choice([lo, hi], x.shape).astype(NP[x.dtype])
    return rng.integers(lo, hi + 1, x.shape).astype(NP[x.dtype])


def _check(g, xs, batch: int):
    ref = qcompile.run(g, xs, mode="int")
    out = qtvm.build(g, None, batch=batch)(*xs)
    for r, o in zip(ref, out):
        assert r.dtype == o.dtype and r.shape == o.shape
        np.testing.assert_array_equal(r, o)
    return ref


# ---- qadd / qsub / qmul

BINARY = [
    # (a shape, b shape, a dtype/zp, b dtype/zp): same shapes (the flat kernel) with a total
    # that is not a multiple of the vector, broadcasting along channels, rows and a scalar
    ((2, 5, 7, 9), (2, 5, 7, 9), ("i8", -128), ("i8", 127)),
    ((2, 6, 5, 11), (1, 6, 1, 1), ("u8", 255), ("u8", 0)),
    ((3, 4, 13), (13,), ("i8", 127), ("u8", 255)),
    ((4, 24), (1,), ("u8", 0), ("i8", -128)),
]


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("case", range(len(BINARY)))
def test_qadd_qsub_qmul_are_bit_exact(rounding, case):
    ash, bsh, (adt, azp), (bdt, bzp) = BINARY[case]
    b = IntGraphBuilder("ew", seed=10 + case, rounding=rounding)
    x, y = _input(b, ash, adt, azp), _input(b, bsh, bdt, bzp, "y")
    g = b.output(b.add(x, y), b.add(x, y, sub=True, dtype="u8"), b.mul(x, y))
    rng = np.random.default_rng(case)
    for extreme in (True, False):
        _check(g, [_codes(x, rng, extreme), _codes(y, rng, extreme)], ash[0])


def _qadd(b: IntGraphBuilder, a, c, rounding: str, dtype: str, left_shift: int,
          relu: bool = False):
    """A qadd with chosen constants: the rescalings of TFLite's ADD for similar scales."""
    q = b.qparams(dtype)
    lo, hi = (max(q.qmin, q.zero_point[0]) if relu else q.qmin), q.qmax
    m = 0 if rounding == "shift_only" else 1 << 30
    return b._node("qadd", [a, c], {
        "a_multiplier": m or 1 << 30, "a_shift": -1 if rounding != "shift_only" else -2,
        "b_multiplier": (m or 1 << 30) + 12345, "b_shift": -1,
        "out_multiplier": 1518500250, "out_shift": -left_shift + 1 if left_shift else 0,
        "left_shift": left_shift, "rounding": rounding, "clamp_min": lo, "clamp_max": hi,
        "dtype": dtype}, q, "add")


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_qadd_with_16_bit_inputs_and_output_and_a_relu_clamp(rounding):
    # i16 inputs with left_shift 15 put (q - z) << 15 right at the int32 edge
    b = IntGraphBuilder("e16", seed=3, rounding=rounding)
    x, y = _input(b, (1, 3, 5, 7), "i16", 0), _input(b, (1, 3, 5, 7), "i16", 0, "y")
    g = b.output(_qadd(b, x, y, rounding, "i16", 15), _qadd(b, x, y, rounding, "i8", 15, True))
    rng = np.random.default_rng(4)
    ref = _check(g, [_codes(x, rng, True), _codes(y, rng, True)], 1)
    assert len(np.unique(ref[0])) > 2  # not everything saturated


# ---- qprelu

@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("shape,dtype,zp", [
    ((2, 6, 5, 11), "u8", 255),     # rows of 55: a vectorised part and a scalar tail
    ((3, 9, 4), "i8", -128),        # channels of a 3-D value
    ((5, 12), "i8", 127),           # channels innermost
    ((2, 5, 9, 9), "i16", 0),       # 16-bit codes times extreme slopes
])
def test_qprelu_per_channel_slopes(rounding, shape, dtype, zp):
    b = IntGraphBuilder("pr", seed=len(shape), rounding=rounding)
    x = _input(b, shape, dtype, zp)
    y = b.prelu(x)
    g = b.output(y, b.prelu(x, dtype="i16"))
    slope = next(v for v in g.constants.values() if v.name.startswith("slope"))
    slope.data.reshape(-1)[:2] = [-128, 127]   # the extreme slopes
    rng = np.random.default_rng(7)
    for extreme in (True, False):
        _check(g, [_codes(x, rng, extreme)], shape[0])


def test_qprelu_with_one_slope_runs_flat():
    b = IntGraphBuilder("pr1", seed=2, rounding="single_half_away")
    x = _input(b, (2, 3, 7, 5), "i8", 3)
    g = b.output(b.prelu(x))
    for n in g.nodes:
        if n.op == "qprelu":
            n.attrs["neg_multiplier"] = n.attrs["neg_multiplier"][:1]
            n.attrs["neg_shift"] = n.attrs["neg_shift"][:1]
            slope = n.inputs[1]
            slope.data = slope.data[:1].copy()
    _check(g, [_codes(x, np.random.default_rng(1), False)], 2)


# ---- standalone requantize

@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("dtype,zp,out", [("i8", -128, "u8"), ("u8", 255, "i8"),
                                          ("i16", 0, "i16")])
def test_rescale_of_activations(rounding, dtype, zp, out):
    b = IntGraphBuilder("rs", seed=5, rounding=rounding)
    x = _input(b, (2, 3, 9, 11), dtype, zp)
    g = b.output(b.rescale(x, out))
    rng = np.random.default_rng(2)
    for extreme in (True, False):
        _check(g, [_codes(x, rng, extreme)], 2)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_requantize_per_channel_with_per_channel_zero_points(rounding):
    # i16 codes requantized per channel to i16 with per-channel output zero points at the
    # ends of i16: clamp bounds minus zy leave the int16 range but fit int32
    b = IntGraphBuilder("pc", seed=6, rounding=rounding)
    x = _input(b, (2, 6, 3, 7), "i16", -32768)
    y = b.requant(x, dtype="i16", per_channel=True)
    g = b.output(y)
    y.quant = QuantParams((0.1,) * 6, (-32768, 32767, 0, 5, -7, 100), 16, True, axis=1)
    for n in g.nodes:
        if n.op == "requantize":
            n.attrs["clamp_min"], n.attrs["clamp_max"] = -32768, 32767
    _check(g, [_codes(x, np.random.default_rng(3), True)], 2)


def test_requantize_clamp_beyond_int32_keeps_the_wide_clamp():
    # an i32 output with zy = -5: clamp_max - zy leaves int32, the int64 clamp path
    b = IntGraphBuilder("w", seed=8, rounding="gemmlowp_double")
    x = _input(b, (1, 4, 3, 3), "i16", 7)
    y = b.requant(x, dtype="i32", per_channel=False)
    g = b.output(y)
    y.quant = QuantParams((0.1,), (-5,), 32, True)
    for n in g.nodes:
        if n.op == "requantize":
            n.attrs["clamp_min"], n.attrs["clamp_max"] = -(1 << 31), (1 << 31) - 1
            n.attrs["multiplier"], n.attrs["shift"] = [1 << 30], [10]
    _check(g, [_codes(x, np.random.default_rng(5), True)], 1)


# ---- max pooling

POOLS = [
    # (input shape, kernel, stride, padding, ceil_mode, dilation)
    ((2, 3, 13, 13), 3, (2, 2), (1, 1, 1, 1), False, (1, 1)),   # padded, ResNet's stem pool
    ((1, 5, 11, 11), 3, (2, 2), (0, 0, 0, 0), True, (1, 1)),    # ceil_mode overrun, RNet's
    ((2, 4, 9, 10), 2, (2, 2), (0, 0, 0, 0), False, (1, 1)),    # no padding: plain loads
    ((1, 3, 12, 9), (2, 3), (1, 2), (1, 0, 0, 1), True, (2, 1)),  # dilation, asymmetric pad
    ((1, 2, 12, 12), 5, (3, 3), (2, 2, 2, 2), False, (1, 1)),   # 25 taps: the reduce form
]


@pytest.mark.parametrize("case", range(len(POOLS)))
@pytest.mark.parametrize("dtype", ["i8", "u8", "i16"])
def test_max_pool_is_bit_exact(case, dtype):
    shape, k, stride, padding, ceil, dil = POOLS[case]
    b = IntGraphBuilder("mp", seed=case)
    x = _input(b, shape, dtype, 0)
    g = b.output(b.max_pool(x, k, stride, padding, ceil, dil))
    rng = np.random.default_rng(case)
    _check(g, [_codes(x, rng, False)], shape[0])
    # all the lowest code: a padded tap must never win over a real one
    lo = RANGES[dtype][0]
    _check(g, [np.full(shape, lo, NP[dtype])], shape[0])
