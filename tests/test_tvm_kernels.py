"""The TVM backend's scheduled CPU MAC kernels (packed convolutions, the vectorised requantize
epilogue) against the interpreter: bit-exact on awkward shapes and extreme codes."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompile  # noqa: E402
from qcompile.ir.types import QuantParams  # noqa: E402
from qcompile.targets import tvm as qtvm  # noqa: E402
from qcompile.targets.c.testing import IntGraphBuilder  # noqa: E402
from qcompile.targets.tvm.testing import (extreme_weights, quantized_input,  # noqa: E402
                                           random_codes)
from qcompile.targets.tvm import ops as tvm_ops  # noqa: E402
from qcompile.targets.tvm.schedules import mac_lanes  # noqa: E402
from qcompile.targets.tvm.target import make_target  # noqa: E402

HOST_PACKS = mac_lanes(make_target(None)) > 0


def _check(g, xs, packed: bool | None = None):
    module = qtvm.build(g, None, batch=xs.shape[0])
    ref = qcompile.run(g, [xs], mode="int")
    out = module(xs)
    for r, o in zip(ref, out):
        assert r.dtype == o.dtype and r.shape == o.shape
        np.testing.assert_array_equal(r, o)
    if packed is not None and HOST_PACKS:
        assert any(name.endswith(".packed") for name in module.params) == packed
    return ref


CONVS = [
    # (in shape, out channels, conv kwargs)
    ((1, 3, 11, 13), 10, dict(k=3, padding=(1, 1, 1, 1))),
    ((2, 5, 9, 9), 17, dict(k=3, stride=2, padding=(0, 1, 2, 0))),
    ((1, 8, 10, 12), 8, dict(k=(3, 2), dilation=2, padding=(2, 1, 2, 1))),
    ((1, 7, 16, 15), 24, dict(k=1, stride=2)),
    ((1, 3, 23, 23), 16, dict(k=7, stride=2, padding=(3, 3, 3, 3))),
    ((1, 16, 7, 7), 33, dict(k=3, padding=(1, 1, 1, 1), weight_zp=True)),
    ((1, 2, 5, 30), 9, dict(k=(1, 5), stride=(1, 3), padding=(0, 2, 0, 2))),
]


@pytest.mark.parametrize("case", range(len(CONVS)))
@pytest.mark.parametrize("dtype", ["u8", "i8"])
@pytest.mark.parametrize("pmadd", [True, False], ids=["vpmaddwd", "vpmulld"])
def test_packed_conv_is_bit_exact(case, dtype, pmadd, monkeypatch):
    monkeypatch.setattr(tvm_ops, "PMADD_CONV", pmadd)
    shape, o, kw = CONVS[case]
    b = IntGraphBuilder("conv", seed=case)
    x = b.input(shape, dtype)
    g = b.output(b.requant(b.conv(x, o, **kw), dtype="u8" if case % 2 else "i8"))
    _check(g, random_codes(x, np.random.default_rng(case)), packed=True)


@pytest.mark.parametrize("dtype,zp", [("u8", 0), ("u8", 255), ("i8", -128), ("i8", 127)])
def test_extreme_zero_points_codes_and_weights(dtype, zp):
    b = IntGraphBuilder("ext", seed=3, rounding="single_half_away")
    x = quantized_input(b, (1, 6, 8, 9), dtype, zp)
    acc = b.conv(x, 12, k=3, stride=2, padding=(1, 1, 1, 1))
    g = b.output(acc, b.requant(b.conv(x, 9, k=3, padding=(1, 0, 1, 0))))
    extreme_weights(g, "w")
    _check(g, random_codes(x, np.random.default_rng(1), extreme=True), packed=True)


@pytest.mark.parametrize("rounding", ["gemmlowp_double", "single_half_up", "single_half_away",
                                      "shift_only"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_requantize_epilogue_every_rounding(rounding, per_channel):
    b = IntGraphBuilder("rq", seed=5, rounding=rounding)
    x = b.input((2, 5, 9, 7), "u8")
    y = b.requant(b.conv(x, 11, k=3, padding=(1, 1, 1, 1)), per_channel=per_channel,
                  relu=True)
    g = b.output(y, b.requant(b.linear(b.op("flatten", [y], axis=1), 13), axis=1,
                              per_channel=per_channel))
    _check(g, random_codes(x, np.random.default_rng(2)))


def test_narrow_accumulator_wraps_in_the_packed_kernel():
    b = IntGraphBuilder("wrap", seed=11, rounding="single_half_up")
    x = b.input((1, 9, 6, 6), "u8")
    g = b.output(b.conv(x, 10, k=3, acc_bits=13),
                 b.requant(b.conv(x, 5, k=1, acc_bits=11, stride=2)))
    ref = _check(g, random_codes(x, np.random.default_rng(3), extreme=True), packed=True)
    assert np.abs(ref[0]).max() < 2 ** 12  # it did wrap


def test_int64_accumulator_keeps_the_plain_kernel():
    b = IntGraphBuilder("wide", seed=12, rounding="gemmlowp_double")
    x = b.input((1, 4, 5, 5), "u8")
    acc = b.conv(x, 6, k=3)
    g = b.output(acc)
    # a bias near the int32 limit: the build-time bound no longer fits int32
    bias = [v for v in g.constants.values() if v.dtype == "i32"][0]
    bias.data[:] = np.array([2**31 - 5, -2**31 + 3, 2**31 - 1, 7, -2**31, 0])[:bias.data.size]
    _check(g, random_codes(x, np.random.default_rng(4)), packed=False)


@pytest.mark.parametrize("groups", [2, 6])
def test_grouped_and_depthwise_convs(groups):
    b = IntGraphBuilder("grp", seed=groups, rounding="gemmlowp_double")
    x = b.input((2, 6, 9, 8), "i8")
    y = b.requant(b.conv(x, 6 if groups == 6 else 10, k=3, stride=2, groups=groups,
                         padding=(1, 1, 1, 1), weight_zp=True))
    g = b.output(y)
    _check(g, random_codes(x, np.random.default_rng(groups), extreme=True), packed=False)


@pytest.mark.parametrize("shape,o,kw", [
    ((1, 64, 5, 9), 20, dict(k=1)),                          # 1x1 over many channels
    ((2, 65, 6, 14), 9, dict(k=1, stride=2, weight_zp=True)),  # odd C, one lane group
    ((1, 12, 9, 29), 17, dict(k=3, padding=(1, 1, 1, 1))),   # a column tail after 6-wide tiles
])
def test_pmadd_conv_edges_with_extreme_codes(shape, o, kw):
    b = IntGraphBuilder("pm", seed=o, rounding="single_half_away")
    x = quantized_input(b, shape, "i8", -128)
    g = b.output(b.conv(x, o, **kw), b.requant(b.conv(x, o + 3, **kw), dtype="u8"))
    extreme_weights(g, "w")
    _check(g, random_codes(x, np.random.default_rng(o), extreme=True), packed=True)


@pytest.mark.parametrize("shape,o,dtype", [
    ((2, 7, 29, 31), 10, "u8"),    # odd C, a partial block of 6 channels, a pixel tail
    ((1, 16, 14, 15), 20, "i8"),   # a small map that widens: blocks of 4
    ((1, 64, 28, 28), 24, "i16"),  # 16-bit codes, pixels a whole number of tiles
    ((3, 10, 7, 7), 24, "u8"),     # 7x7 maps that widen: 49 pixels, 3 images
])
def test_pointwise_pixel_lanes_is_bit_exact(shape, o, dtype):
    b = IntGraphBuilder("pw", seed=o, rounding="gemmlowp_double")
    x = quantized_input(b, shape, dtype, 0 if dtype == "i16" else 5)
    g = b.output(b.requant(b.conv(x, o, k=1, weight_zp=True), relu=True),
                 b.conv(x, o + 1, k=1, acc_bits=19), b.requant(b.conv(x, o, k=1), dtype="u8"))
    extreme_weights(g, "w")
    module = qtvm.build(g, None, batch=shape[0])
    xs = random_codes(x, np.random.default_rng(o), extreme=True)
    for r, out in zip(qcompile.run(g, [xs], mode="int"), module(xs)):
        np.testing.assert_array_equal(r, out)
    if mac_lanes(make_target(None)) == 8:
        assert sum(name.endswith(".pairs") for name in module.params) == 3


def _rows_used(module) -> bool:
    """Whether a depthwise conv took the pixel-lanes kernel (its weights are `<w>.rows`)."""
    return any(name.endswith(".rows") for name in module.params)


DEPTHWISE = [
    # (in shape, conv kwargs): C a multiple of the lanes or not, strides, dilation, asymmetric
    # padding, widths that leave a tail after the column tile, a width-1 output
    ((1, 16, 14, 14), dict(k=3, padding=(1, 1, 1, 1))),
    ((2, 20, 15, 31), dict(k=3, stride=2, padding=(1, 1, 1, 1))),
    ((1, 8, 11, 26), dict(k=(3, 5), dilation=(2, 1), padding=(2, 0, 1, 3))),
    ((1, 3, 7, 7), dict(k=5, padding=(2, 2, 2, 2))),
    ((1, 9, 4, 3), dict(k=3)),
    # stride 2 across columns only, dilated: taps in both column phases at offsets 0 and 1
    ((1, 5, 9, 40), dict(k=3, stride=(1, 2), dilation=(1, 3), padding=(0, 3, 1, 2))),
    ((1, 7, 6, 70), dict(k=(1, 4), stride=(2, 1), padding=(0, 0, 0, 1))),  # 3 tiles per row
    # stride 2 over rows of even length: the phases come from 16-bit words (PAIRED_BYTES),
    # odd columns in the high byte with padding 1, in the low byte without padding
    ((2, 6, 12, 34), dict(k=3, stride=2, padding=(1, 1, 1, 1))),
    ((1, 4, 7, 36), dict(k=(2, 3), stride=2)),
]


@pytest.mark.parametrize("case", range(len(DEPTHWISE)))
@pytest.mark.parametrize("dtype,zp", [("u8", 255), ("i8", -128), ("u8", 3), ("i16", 0)])
def test_depthwise_pixel_lanes_is_bit_exact(case, dtype, zp):
    shape, kw = DEPTHWISE[case]
    b = IntGraphBuilder("dw", seed=case, rounding="gemmlowp_double")
    x = quantized_input(b, shape, dtype, zp)
    c = shape[1]
    g = b.output(b.conv(x, c, groups=c, weight_zp=case % 2 == 1, **kw),
                 b.requant(b.conv(x, c, groups=c, **kw), relu=True))
    extreme_weights(g, "w")
    module = qtvm.build(g, None, batch=shape[0])
    xs = random_codes(x, np.random.default_rng(case), extreme=zp != 3)
    for r, o in zip(qcompile.run(g, [xs], mode="int"), module(xs)):
        np.testing.assert_array_equal(r, o)
    if HOST_PACKS:  # column strides 1 and 2 take the pixel-lanes kernel, unless a row
        # is at most one vector
        ow = module.meta["outputs"][0]["shape"][3]
        assert _rows_used(module) == (ow > mac_lanes(make_target(None)))


def test_depthwise_fallbacks_stay_exact(monkeypatch):
    b = IntGraphBuilder("dwf", seed=2, rounding="single_half_up")
    x = b.input((1, 10, 9, 9), "u8")
    g = b.output(b.requant(b.conv(x, 10, k=3, groups=10, padding=(1, 1, 1, 1))),
                 b.conv(x, 20, k=3, groups=10))   # channel multiplier 2: the plain kernel
    xs = random_codes(x, np.random.default_rng(6))
    ref = qcompile.run(g, [xs], mode="int")
    for rows in (True, False):
        monkeypatch.setattr(tvm_ops, "DEPTHWISE_ROWS", rows)
        module = qtvm.build(g, None, batch=1)
        for r, o in zip(ref, module(xs)):
            np.testing.assert_array_equal(r, o)
        assert _rows_used(module) == (rows and HOST_PACKS)


@pytest.mark.parametrize("dtype", ["i16", "u8"])
def test_linear_takes_16_bit_inputs(dtype):
    b = IntGraphBuilder("fc", seed=8, rounding="single_half_up")
    x = quantized_input(b, (3, 37), dtype, 0)
    g = b.output(b.linear(x, 19), b.requant(b.linear(x, 21), axis=1, dtype="i16"))
    extreme_weights(g, "fc.w")
    _check(g, random_codes(x, np.random.default_rng(9), extreme=True))


# ---- the pmaddwd GEMM (qlinear, qmatmul of two activations)

LINEARS = [
    # (input shape, output channels): rows not a multiple of the 5-row tile, odd K, O not a
    # multiple of the lanes, 3-D inputs, a single row
    ((3, 37), 19),
    ((2, 7, 64), 40),
    ((1, 1, 9), 3),
    ((11, 130), 33),
]


@pytest.mark.parametrize("case", range(len(LINEARS)))
@pytest.mark.parametrize("dtype,zp", [("u8", 255), ("i8", -128), ("i16", 0)])
def test_packed_linear_is_bit_exact(case, dtype, zp):
    shape, o = LINEARS[case]
    b = IntGraphBuilder("fc", seed=20 + case, rounding="single_half_away")
    x = quantized_input(b, shape, dtype, zp)
    g = b.output(b.linear(x, o), b.requant(b.linear(x, o + 5), axis=len(shape) - 1))
    extreme_weights(g, "fc.w")
    _check(g, random_codes(x, np.random.default_rng(case), extreme=True), packed=True)


def test_packed_linear_wraps_a_narrow_accumulator():
    b = IntGraphBuilder("fcw", seed=13, rounding="gemmlowp_double")
    x = b.input((4, 50), "u8")
    g = b.output(b.linear(x, 12, acc_bits=12))
    ref = _check(g, random_codes(x, np.random.default_rng(5), extreme=True), packed=True)
    assert np.abs(ref[0]).max() < 2 ** 11


def _matmul(b: IntGraphBuilder, a, c):
    acc = b._node("qmatmul", [a, c], {"acc_bits": 32}, QuantParams((1.0,), (0,), 32, True),
                  "mm", 3000.0)
    return acc, b.requant(acc, per_channel=False)


MATMULS = [
    # (a shape, b shape, a dtype/zp, b dtype/zp)
    ((1, 3, 13, 7), (1, 3, 7, 17), ("i8", -128), ("i8", 127)),   # attention scores, odd K
    ((2, 2, 6, 12), (2, 2, 12, 8), ("u8", 255), ("i8", 0)),      # attention x V
    ((2, 9, 5), (5, 11), ("u8", 0), ("u8", 255)),                # b shared by every group
    ((4, 6), (6, 3), ("i8", 3), ("u8", 128)),                    # plain 2-D
]


@pytest.mark.parametrize("case", range(len(MATMULS)))
def test_packed_matmul_is_bit_exact(case):
    ash, bsh, (adt, azp), (bdt, bzp) = MATMULS[case]
    b = IntGraphBuilder("mm", seed=30 + case, rounding="single_half_up")
    a, c = quantized_input(b, ash, adt, azp), quantized_input(b, bsh, bdt, bzp)
    c.name = "y"
    g = b.output(*_matmul(b, a, c))
    rng = np.random.default_rng(case)
    module = qtvm.build(g, None, batch=ash[0])
    xs = [random_codes(a, rng, extreme=True), random_codes(c, rng, extreme=True)]
    for r, o in zip(qcompile.run(g, xs, mode="int"), module(*xs)):
        np.testing.assert_array_equal(r, o)


def test_wide_matmul_keeps_the_plain_kernel():
    # i16 x i16 over 40 steps can leave int32: the int64 kernel, still exact
    b = IntGraphBuilder("mmw", seed=40, rounding="single_half_up")
    a, c = quantized_input(b, (1, 3, 40), "i16", 0), quantized_input(b, (1, 40, 5), "i16", 0)
    c.name = "y"
    g = b.output(_matmul(b, a, c)[0])
    rng = np.random.default_rng(7)
    xs = [random_codes(a, rng, extreme=True), random_codes(c, rng, extreme=True)]
    module = qtvm.build(g, None, batch=1)
    np.testing.assert_array_equal(qcompile.run(g, xs, mode="int")[0], module(*xs)[0])
