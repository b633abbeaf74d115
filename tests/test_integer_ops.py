"""Integer ops against slow references written here with Python ints and Fractions (loops over
output positions, rational rounding), never with the kernels' helpers: MACs with zero points,
padding and acc_bits wrapping, requantize in every rounding mode (ties, per channel, clamps),
qadd/qsub/qmul, qprelu, qavg_pool2d, lut, the "int" kernels of data-movement ops, and the
attribute checks of type inference."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

import qcompile
from qcompile.errors import OpError
from qcompile.ir import Graph, TensorType
from qcompile.ir.ops import registry
from qcompile.ir.types import QuantParams, dtype_from_numpy, numpy_dtype
from qcompile.quant.intmath import IntegerOverflowError, quantize_multiplier

rng = np.random.default_rng(7)


# ---- reference arithmetic (Fractions) ------------------------------------------------------------

def half_up(r: Fraction) -> int:
    return math.floor(r + Fraction(1, 2))


def half_away(r: Fraction) -> int:
    return int(math.copysign(math.floor(abs(r) + Fraction(1, 2)), r)) if r else 0


def ref_rescale(acc: int, m0: int, shift: int, rounding: str) -> int:
    """acc * m0 * 2**(shift-31) rounded as each mode specifies, on exact rationals."""
    if rounding == "shift_only":
        return acc * 2 ** shift if shift >= 0 else half_away(Fraction(acc, 2 ** -shift))
    if rounding == "gemmlowp_double":
        high = half_up(Fraction(acc * 2 ** max(shift, 0) * m0, 2 ** 31))  # doubling high mul
        return half_away(Fraction(high, 2 ** max(-shift, 0)))
    exact = Fraction(acc * m0, 2 ** (31 - shift))
    return half_up(exact) if rounding == "single_half_up" else half_away(exact)


def wrap(v: int, bits: int) -> int:
    r = v % (1 << bits)
    return r - (1 << bits) if r >= 1 << (bits - 1) else r


def run_int(op: str, *arrays, in_quant=None, out_quant=None, **attrs) -> np.ndarray:
    """Complete attrs, infer the type, run the "int" kernel; the two must agree."""
    opdef = registry.get(op)
    attrs = opdef.complete_attrs(attrs)
    types = [None if a is None else TensorType(a.shape, dtype_from_numpy(a.dtype)) for a in arrays]
    (expected,) = opdef.infer(types, attrs)
    kw = dict(attrs)
    if "quant_aware" in opdef.traits:
        kw.update(in_quant=in_quant or [None] * len(arrays), out_quant=out_quant or [None])
    out = np.asarray(opdef.kernels["int"](*arrays, **kw))
    assert out.shape == expected.shape and out.dtype == numpy_dtype(expected.dtype), \
        f"{op}: kernel gave {out.shape} {out.dtype}, inference {expected}"
    return out


def q8(scale=0.05, zp=0, signed=True, bits=8, axis=None) -> QuantParams:
    return QuantParams(scale, zp, bits=bits, signed=signed, axis=axis)


def acc_q(n=1, axis=None) -> QuantParams:
    return QuantParams([1e-3] * n, [0] * n, bits=32, signed=True, axis=axis)


def ints(lo, hi, *shape, dtype=np.int8):
    return rng.integers(lo, hi + 1, size=shape).astype(dtype)


# ---- qconv2d ---------------------------------------------------------------------------------

def ref_conv(x, w, b, zx, zw, stride, pad, dil, groups, bits):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + pad[0] + pad[2] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + pad[1] + pad[3] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow), dtype=np.int64)
    og = o // groups
    for b_, oc, i, j in itertools.product(range(n), range(o), range(oh), range(ow)):
        g = oc // og
        s = 0 if b is None else int(b[oc])
        for ci, di, dj in itertools.product(range(cg), range(kh), range(kw)):
            y = i * stride[0] - pad[0] + di * dil[0]
            xx = j * stride[1] - pad[1] + dj * dil[1]
            if 0 <= y < h and 0 <= xx < wd:  # a padding tap adds nothing
                s += (int(x[b_, g * cg + ci, y, xx]) - zx) * (int(w[oc, ci, di, dj]) - int(zw[oc]))
        out[b_, oc, i, j] = wrap(s, bits)
    return out


CONV_CASES = [
    # (x shape, o, k, stride, padding, dilation, groups, x signed, weight zps, bias, acc_bits)
    ((2, 3, 6, 5), 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, False, "zero", True, 32),
    ((1, 4, 7, 7), 6, (3, 2), (2, 1), (0, 1, 2, 0), (1, 2), 2, True, "mixed", True, 32),
    ((1, 3, 5, 5), 3, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3, True, "zero", False, 32),  # dw
    ((1, 2, 5, 5), 6, (2, 2), (1, 1), (1, 0, 0, 1), (1, 1), 2, False, "zero", True, 32),  # dw x3
    ((1, 8, 4, 4), 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, False, "zero", True, 16),  # wraps
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_qconv2d_matches_loop_reference(case):
    shape, o, k, stride, pad, dil, groups, signed, wzp, has_bias, bits = case
    c = shape[1]
    if signed:
        x, zx, qx = ints(-128, 127, *shape), -7, q8(zp=-7)
    else:
        x, zx, qx = ints(0, 255, *shape, dtype=np.uint8), 131, q8(zp=131, signed=False)
    if bits == 16:
        x = np.full(shape, 255, np.uint8)  # every product large: the sum passes 2**15
    w = ints(-127, 127, o, c // groups, *k)
    if bits == 16:
        w = np.full_like(w, 127)
    zw = np.zeros(o, np.int64) if wzp == "zero" else rng.integers(-3, 4, o)
    qw = QuantParams([0.01] * o, zw, bits=8, signed=True, axis=0)
    b = rng.integers(-5000, 5000, o).astype(np.int32) if has_bias else None
    got = run_int("qconv2d", x, w, b, in_quant=[qx, qw, acc_q(o, 0) if has_bias else None],
                  out_quant=[acc_q(o, 1)], stride=stride, padding=pad, dilation=dil,
                  groups=groups, acc_bits=bits)
    want = ref_conv(x, w, b, zx, zw, stride, pad, dil, groups, bits)
    np.testing.assert_array_equal(got, want)
    if bits == 16:
        unwrapped = ref_conv(x, w, b, zx, zw, stride, pad, dil, groups, 62)
        assert (unwrapped != want).any() and want.min() >= -2 ** 15 and want.max() < 2 ** 15


def test_qconv2d_int64_path_when_float64_would_not_be_exact():
    # 16-bit operands over 4096 taps: partial sums can pass 2**53, so the kernel must use int64.
    x = np.full((1, 1024, 2, 2), 32767, np.int16)
    w = np.full((1, 1024, 2, 2), -32768, np.int16)
    qx, qw = q8(zp=-32768, bits=16), QuantParams([0.1], [0], bits=16, signed=True, axis=0)
    got = run_int("qconv2d", x, w, in_quant=[qx, qw, None], out_quant=[acc_q()])
    exact = 4096 * 65535 * -32768
    assert int(got[0, 0, 0, 0]) == wrap(exact, 32)


def test_qlinear_and_qmatmul_match_reference():
    x = ints(0, 255, 3, 5, dtype=np.uint8)
    w = ints(-127, 127, 4, 5)
    zw = np.array([0, 1, -2, 0])
    b = np.array([10, -20, 30, 2 ** 31 - 1], np.int32)
    qx, qw = q8(zp=100, signed=False), QuantParams([0.1] * 4, zw, bits=8, signed=True, axis=0)
    for bits in (32, 16):
        got = run_int("qlinear", x, w, b, in_quant=[qx, qw, acc_q(4, 0)], out_quant=[acc_q(4, 1)],
                      acc_bits=bits)
        for i, j in itertools.product(range(3), range(4)):
            s = sum((int(x[i, k]) - 100) * (int(w[j, k]) - int(zw[j])) for k in range(5))
            s += int(b[j])
            assert int(got[i, j]) == wrap(s, bits)
    a, bm = ints(-128, 127, 2, 3, 4), ints(-128, 127, 4, 5)
    qa, qb = q8(zp=3), q8(zp=-9)
    got = run_int("qmatmul", a, bm, in_quant=[qa, qb], out_quant=[acc_q()])
    for t, i, j in itertools.product(range(2), range(3), range(5)):
        s = sum((int(a[t, i, k]) - 3) * (int(bm[k, j]) + 9) for k in range(4))
        assert int(got[t, i, j]) == s


# ---- requantize ------------------------------------------------------------------------------

ROUNDINGS = ("gemmlowp_double", "single_half_up", "single_half_away")


@pytest.mark.parametrize("rounding,want", [
    ("gemmlowp_double", [-2, -1, 0, 1, 3]),
    ("single_half_up", [-2, -1, 0, 1, 3]),
    ("single_half_away", [-3, -2, -1, 1, 3]),
])
def test_requantize_ties_follow_the_documented_table(rounding, want):
    acc = np.array([-5, -3, -1, 1, 5], np.int32)  # M = 1/2: every value is a tie
    got = run_int("requantize", acc, in_quant=[acc_q()], out_quant=[q8()], multiplier=[2 ** 30],
                  shift=[0], rounding=rounding, clamp_min=-128, clamp_max=127)
    assert got.tolist() == want


def test_requantize_shift_only_ties_away_and_exact_left_shift():
    acc = np.array([-6, -2, 2, 6, 7], np.int32)
    got = run_int("requantize", acc, in_quant=[acc_q()], out_quant=[q8()], multiplier=[0],
                  shift=[-2], rounding="shift_only", clamp_min=-128, clamp_max=127)
    assert got.tolist() == [-2, -1, 1, 2, 2]  # -1.5 -> -2, -0.5 -> -1, 1.75 -> 2
    got = run_int("requantize", np.array([-3, 5], np.int32), in_quant=[acc_q()], out_quant=[q8()],
                  multiplier=[0], shift=[3], rounding="shift_only", clamp_min=-128, clamp_max=127)
    assert got.tolist() == [-24, 40]


@pytest.mark.parametrize("rounding", ROUNDINGS + ("shift_only",))
def test_requantize_per_channel_with_clamp_matches_fractions(rounding):
    c = 3
    acc = rng.integers(-2 ** 20, 2 ** 20, size=(2, c, 4, 3)).astype(np.int32)
    if rounding == "shift_only":
        m0, shift = [0] * c, [-9, -12, -14]
    else:
        pairs = [quantize_multiplier(m) for m in (3.1e-4, 7.7e-5, 1.3e-3)]
        m0, shift = [p[0] for p in pairs], [p[1] for p in pairs]
    qo = q8(zp=5, signed=False)
    got = run_int("requantize", acc, in_quant=[acc_q(c, 1)], out_quant=[qo], multiplier=m0,
                  shift=shift, axis=1, rounding=rounding, clamp_min=5, clamp_max=200,
                  dtype="u8")
    for idx in np.ndindex(acc.shape):
        ch = idx[1]
        want = min(max(ref_rescale(int(acc[idx]), m0[ch], shift[ch], rounding) + 5, 5), 200)
        assert int(got[idx]) == want, (idx, rounding)


def test_requantize_subtracts_the_input_zero_point_and_saturates():
    x = np.array([-128, -1, 0, 127], np.int8)
    m0, shift = quantize_multiplier(3.0)  # a multiplier > 1: left shift
    got = run_int("requantize", x, in_quant=[q8(zp=-10)], out_quant=[q8(zp=3)], multiplier=[m0],
                  shift=[shift], clamp_min=-128, clamp_max=127)
    want = [min(max(ref_rescale(int(v) + 10, m0, shift, "gemmlowp_double") + 3, -128), 127)
            for v in x]
    assert got.tolist() == want and got.max() == 127  # (127 + 10) * 3 saturates


def test_requantize_refuses_to_wrap():
    with pytest.raises(IntegerOverflowError):
        run_int("requantize", np.array([2 ** 30], np.int32), in_quant=[acc_q()], out_quant=[q8()],
                multiplier=[2 ** 30], shift=[3], clamp_min=-128, clamp_max=127)


# ---- element-wise ----------------------------------------------------------------------------

def add_attrs(sa, sb, sy, left_shift=20):
    twice = 2 * max(sa, sb)
    (ma, ea), (mb, eb) = quantize_multiplier(sa / twice), quantize_multiplier(sb / twice)
    mo, eo = quantize_multiplier(twice / (2 ** left_shift * sy))
    return dict(a_multiplier=ma, a_shift=ea, b_multiplier=mb, b_shift=eb, out_multiplier=mo,
                out_shift=eo, left_shift=left_shift)


@pytest.mark.parametrize("op,rounding", [("qadd", "gemmlowp_double"), ("qsub", "single_half_up"),
                                         ("qadd", "single_half_away")])
def test_qadd_qsub_follow_tflite_recipe_and_real_sum(op, rounding):
    sa, sb, sy = 0.02, 0.013, 0.03
    qa, qb, qy = q8(sa, -3), q8(sb, 10), q8(sy, -1)
    a = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    b = ints(-128, 127, 16)  # broadcasts along the last axis
    attrs = add_attrs(np.float32(sa).item(), np.float32(sb).item(), np.float32(sy).item())
    got = run_int(op, a, b, in_quant=[qa, qb], out_quant=[qy], rounding=rounding,
                  clamp_min=-100, clamp_max=127, **attrs)
    sign = 1 if op == "qadd" else -1
    for i, j in np.ndindex(a.shape):
        ra = ref_rescale((int(a[i, j]) + 3) << 20, attrs["a_multiplier"], attrs["a_shift"],
                         rounding)
        rb = ref_rescale((int(b[j]) - 10) << 20, attrs["b_multiplier"], attrs["b_shift"],
                         rounding)
        y = ref_rescale(ra + sign * rb, attrs["out_multiplier"], attrs["out_shift"], rounding) - 1
        assert int(got[i, j]) == min(max(y, -100), 127)
        real = (sa * (int(a[i, j]) + 3) + sign * sb * (int(b[j]) - 10)) / sy - 1
        if -100 <= real <= 127:
            assert abs(int(got[i, j]) - real) <= 1


def test_qmul_matches_reference():
    a, b = ints(0, 255, 50, dtype=np.uint8), ints(-128, 127, 50)
    m0, shift = quantize_multiplier(0.1 * 0.02 / 0.05)
    got = run_int("qmul", a, b, in_quant=[q8(0.1, 7, signed=False), q8(0.02, -4)],
                  out_quant=[q8(0.05, 2)], multiplier=m0, shift=shift, clamp_min=-128,
                  clamp_max=127)
    for i in range(50):
        y = ref_rescale((int(a[i]) - 7) * (int(b[i]) + 4), m0, shift, "gemmlowp_double") + 2
        assert int(got[i]) == min(max(y, -128), 127)


def test_qprelu_per_channel_slopes():
    c = 3
    x = ints(-128, 127, 2, c, 4, 4)
    slope = np.array([25, -64, 127], np.int8)
    sx, sy, ss = 0.05, 0.04, np.array([0.002, 0.001, 0.004])
    mp, ep = quantize_multiplier(sx / sy)
    neg = [quantize_multiplier(sx * s / sy) for s in ss]
    got = run_int("qprelu", x, slope, in_quant=[q8(sx, 6), QuantParams(ss, [0] * c, axis=0)],
                  out_quant=[q8(sy, -2)], pos_multiplier=mp, pos_shift=ep,
                  neg_multiplier=[m for m, _ in neg], neg_shift=[e for _, e in neg],
                  clamp_min=-128, clamp_max=127)
    for idx in np.ndindex(x.shape):
        xc = int(x[idx]) - 6
        ch = idx[1]
        y = ref_rescale(xc, mp, ep, "gemmlowp_double") if xc >= 0 else \
            ref_rescale(xc * int(slope[ch]), neg[ch][0], neg[ch][1], "gemmlowp_double")
        assert int(got[idx]) == min(max(y - 2, -128), 127)


# ---- average pooling ---------------------------------------------------------------------------

def ref_avg(x, zp, k, s, pad, ceil_mode, include):
    n, c, h, w = x.shape
    def out_len(size, kk, ss, lo, hi):
        span = size + lo + hi - kk
        o = (-(-span // ss) if ceil_mode else span // ss) + 1
        if ceil_mode and (o - 1) * ss >= size + lo:
            o -= 1
        return o
    oh, ow = out_len(h, k[0], s[0], pad[0], pad[2]), out_len(w, k[1], s[1], pad[1], pad[3])
    out = np.zeros((n, c, oh, ow), np.int64)
    for b, ch, i, j in itertools.product(range(n), range(c), range(oh), range(ow)):
        total, count = 0, 0
        for di, dj in itertools.product(range(k[0]), range(k[1])):
            y, xx = i * s[0] - pad[0] + di, j * s[1] - pad[1] + dj
            inside_padded = -pad[0] <= y < h + pad[2] and -pad[1] <= xx < w + pad[3]
            real = 0 <= y < h and 0 <= xx < w
            if real:
                total, count = total + int(x[b, ch, y, xx]), count + 1
            elif include and inside_padded:
                total, count = total + zp, count + 1
        out[b, ch, i, j] = half_away(Fraction(total, count))
    return out


@pytest.mark.parametrize("pad,ceil_mode,include", [
    ((0, 0, 0, 0), False, True), ((1, 1, 1, 1), False, True), ((1, 1, 1, 1), False, False),
    ((1, 0, 0, 1), True, True), ((0, 1, 1, 0), True, False)])
def test_qavg_pool2d_matches_reference(pad, ceil_mode, include):
    x = ints(-128, 127, 2, 3, 7, 6)
    zp = -20
    got = run_int("qavg_pool2d", x, in_quant=[q8(zp=zp)], out_quant=[q8(zp=zp)], kernel=(3, 2),
                  stride=(2, 2), padding=pad, ceil_mode=ceil_mode, count_include_pad=include)
    np.testing.assert_array_equal(got, ref_avg(x, zp, (3, 2), (2, 2), pad, ceil_mode, include))


def test_qavg_pool2d_ties_round_half_away_from_zero():
    x = np.array([[[[1, 2], [-3, -4]]]], np.int8)  # windows (1, 2) -> 1.5, (-3, -4) -> -3.5
    got = run_int("qavg_pool2d", x, in_quant=[q8()], out_quant=[q8()], kernel=(1, 2))
    assert got.ravel().tolist() == [2, -4]


def test_qavg_pool2d_clamp_is_a_fused_activation():
    """clamp_min/clamp_max (a fused relu/relu6) clamp the rounded average; by default only the
    storage range does."""
    x = ints(-128, 127, 1, 2, 6, 6)
    attrs = dict(kernel=(2, 2), stride=(2, 2))
    full = run_int("qavg_pool2d", x, in_quant=[q8(zp=-5)], out_quant=[q8(zp=-5)], **attrs)
    np.testing.assert_array_equal(full, ref_avg(x, -5, (2, 2), (2, 2), (0,) * 4, False, True))
    got = run_int("qavg_pool2d", x, in_quant=[q8(zp=-5)], out_quant=[q8(zp=-5)], clamp_min=-5,
                  clamp_max=40, **attrs)
    np.testing.assert_array_equal(got, np.clip(full, -5, 40))
    assert (full < -5).any() and (full > 40).any()  # both bounds were exercised


# ---- lookup table ------------------------------------------------------------------------------

def test_lut_indexes_from_qmin():
    table = list(range(127, -129, -1))  # y = -1 - x on i8
    x = np.array([-128, -1, 0, 127], np.int8)
    got = run_int("lut", x, in_quant=[q8()], out_quant=[q8()], table=table)
    assert got.tolist() == [127, 0, -1, -128]
    u4 = QuantParams(1.0, 0, bits=4, signed=False)
    graph = Graph("lut")
    xv = graph.add_input("x", TensorType((3,), "u4"), quant=u4)
    y = graph.add_node("lut", [xv], {"table": list(range(15, -1, -1)), "dtype": "u4"})
    y.output.quant = u4
    graph.outputs = [y.output]
    graph.verify()
    out = qcompile.run(graph, [np.array([0, 5, 15], np.uint8)], mode="int")[0]
    assert out.tolist() == [15, 10, 0]


# ---- data movement on integers -----------------------------------------------------------------

def test_int_kernels_of_data_movement_ops():
    x = ints(-128, 127, 1, 2, 5, 5)
    mp = run_int("max_pool2d", x, kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1))
    for c, i, j in itertools.product(range(2), range(3), range(3)):
        window = [int(x[0, c, y, xx]) for y in range(2 * i - 1, 2 * i + 2)
                  for xx in range(2 * j - 1, 2 * j + 2) if 0 <= y < 5 and 0 <= xx < 5]
        assert int(mp[0, c, i, j]) == max(window)
    assert run_int("concat", x, x, axis=1).shape == (1, 4, 5, 5)
    np.testing.assert_array_equal(run_int("transpose", x, perm=(0, 2, 3, 1)),
                                  x.transpose(0, 2, 3, 1))
    padded = run_int("pad", x, pads=(0, 0, 1, 0, 0, 0, 0, 2), value=-7.0)
    assert padded.dtype == np.int8 and (padded[:, :, 0] == -7).all()
    assert (padded[..., -2:] == -7).all()
    with pytest.raises(ValueError, match="not an integer code"):
        registry.get("pad").kernels["int"](x, pads=(0,) * 8, mode="constant", value=0.5)


def test_quantize_and_dequantize_run_in_int_mode():
    g = Graph("qdq")
    x = g.add_input("x", TensorType((4,)))
    q = g.add_node("quantize", [x], {"dtype": "u8"}, name="xq")
    q.output.quant = q8(0.5, 10, signed=False)
    d = g.add_node("dequantize", [q.output], name="y")
    g.outputs = [d.output]
    out = qcompile.run(g, [np.float32([-1.0, 0.25, 0.75, 200.0])], mode="int")[0]
    assert out.tolist() == [-1.0, 0.0, 1.0, 122.5]  # ties to even: 0.5 -> 0, 1.5 -> 2


# ---- inference checks --------------------------------------------------------------------------

@pytest.mark.parametrize("op,types,attrs,message", [
    ("requantize", [TensorType((2, 3), "i32")], dict(multiplier=[2 ** 31], shift=[0], clamp_min=-1,
                                                     clamp_max=1), "not a Q31 int32"),
    ("requantize", [TensorType((2, 3), "i32")], dict(multiplier=[1, 2], shift=[0, 0], clamp_min=-1,
                                                     clamp_max=1), "2 multipliers for 3 channels"),
    ("requantize", [TensorType((2, 3), "i32")], dict(multiplier=[1], shift=[32], clamp_min=0,
                                                     clamp_max=1), "outside [-31, 31]"),
    ("requantize", [TensorType((2, 3), "i32")], dict(multiplier=[1], shift=[0], clamp_min=0,
                                                     clamp_max=300, dtype="u8"), "inside [0, 255]"),
    ("qconv2d", [TensorType((1, 3, 4, 4), "f32"), TensorType((2, 3, 1, 1), "i8"), None], {},
     "integer tensor"),
    ("qconv2d", [TensorType((1, 3, 4, 4), "u8"), TensorType((2, 4, 1, 1), "i8"), None], {},
     "qconv2d: input (1, 3, 4, 4) has 3 channels"),
    ("qconv2d", [TensorType((1, 3, 4, 4), "u8"), TensorType((2, 3, 1, 1), "i8"),
                 TensorType((2,), "f32")], {}, "bias must be i32"),
    ("qlinear", [TensorType((1, 3), "u8"), TensorType((2, 3), "i8"), None], dict(acc_bits=40),
     "acc_bits"),
    ("qavg_pool2d", [TensorType((1, 1, 4, 4), "u8")], dict(kernel=(2, 2), clamp_min=-9,
                                                           clamp_max=-1), "leaves no code of u8"),
    ("lut", [TensorType((3,), "i8")], dict(table=[0] * 255), "needs 256"),
    ("lut", [TensorType((3,), "i16")], dict(table=[0] * 256), "at most 8 bits"),
    ("qadd", [TensorType((3,), "i8"), TensorType((4,), "i8")],
     dict(a_multiplier=1, a_shift=0, b_multiplier=1, b_shift=0, out_multiplier=1, out_shift=0,
          clamp_min=-1, clamp_max=1), "do not broadcast"),
])
def test_inference_rejects_bad_inputs_and_attributes(op, types, attrs, message):
    opdef = registry.get(op)
    with pytest.raises(OpError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")):
        opdef.infer(types, opdef.complete_attrs(attrs))


def test_integer_ops_are_quant_aware_and_documented():
    for name in ("qconv2d", "qlinear", "qmatmul", "requantize", "qadd", "qsub", "qmul", "qprelu",
                 "qavg_pool2d", "lut"):
        op = registry.get(name)
        assert "quant_aware" in op.traits and op.doc
        assert op.kernels["int"] is op.kernels["float"]
    for name in ("reshape", "flatten", "transpose", "squeeze", "unsqueeze", "slice", "concat",
                 "identity", "max_pool2d", "pad", "quantize", "dequantize"):
        assert "int" in registry.get(name).kernels
    for name in ("conv2d", "linear", "relu", "sigmoid"):
        assert "int" not in registry.get(name).kernels  # float ops stay out of integer graphs
