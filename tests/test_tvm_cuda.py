"""The CUDA dp4a kernels (targets/tvm/cuda_kernels.py) without a GPU.

The kernel builder makes the same TIR body for the CPU (serial loops instead of thread
bindings, a portable TIR dp4a instead of __dp4a), so an LLVM build with the dp4a lowering
forced on (`cuda_kernels.EMULATE_ON_CPU`) runs the kernels' indexing, packing, constant
folding and epilogue here and is compared bit for bit with the interpreter. The CUDA builds
are checked for __dp4a in the source and compiled to PTX with nvcc when it is installed;
nothing here runs on a GPU."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompile  # noqa: E402
from qcompile.ir.types import QuantParams  # noqa: E402
from qcompile.targets import tvm as qtvm  # noqa: E402
from qcompile.targets.c.testing import IntGraphBuilder  # noqa: E402
from qcompile.targets.tvm.testing import (extreme_weights, quantized_input,  # noqa: E402
                                           random_codes)
from qcompile.targets.tvm import cuda_kernels as ck  # noqa: E402


@pytest.fixture
def emulate(monkeypatch):
    """LLVM builds run the dp4a kernels (serial loops, portable dp4a)."""
    monkeypatch.setattr(ck, "EMULATE_ON_CPU", True)


def _dp4a_kernels(module) -> int:
    """How many MACs of a module run on the dp4a kernel (their weights are `<w>.dp4a`)."""
    return sum(name.endswith(".dp4a") for name in module.params)


def _check(g, xs, dp4a: int):
    module = qtvm.build(g, {"kind": "llvm"}, batch=xs.shape[0])
    assert _dp4a_kernels(module) == dp4a
    ref = qcompile.run(g, [xs], mode="int")
    out = module(xs)
    for r, o in zip(ref, out):
        assert r.dtype == o.dtype and r.shape == o.shape
        np.testing.assert_array_equal(r, o)
    return ref


# ---- the portable dp4a --------------------------------------------------------------------------

def test_portable_dp4a_matches_the_instruction_definition():
    """c + sum of the products of the four sign-extended byte pairs, in int32."""
    import tvm
    from tvm import te
    n = 4096
    rng = np.random.default_rng(0)
    words = rng.integers(-2**31, 2**31, (3, n), dtype=np.int64).astype(np.int32)
    words[:2, :8] = np.array([-1, 0x7F7F7F7F, -0x7F7F7F80, 0x80808080 - 2**32, 1, 0, 0x01FF80FF,
                              -2**31], dtype=np.int64).astype(np.int32)
    words[2] //= 4  # keep c + the products inside int32, as the kernels' bound does
    a, b, c = (te.placeholder((n,), "int32", name) for name in "abc")
    out = te.compute((n,), lambda i: ck._dp4a_portable(a[i], b[i], c[i]), name="out")
    f = tvm.compile(te.create_prim_func([a, b, c, out]), target="llvm")
    res = tvm.runtime.tensor(np.zeros(n, np.int32))
    f(*(tvm.runtime.tensor(w) for w in words), res)
    bytes_ = words[:2].view(np.int8).reshape(2, n, 4).astype(np.int64)  # little-endian bytes
    ref = words[2].astype(np.int64) + (bytes_[0] * bytes_[1]).sum(axis=1)
    np.testing.assert_array_equal(res.numpy(), ref)


def test_weight_words_put_the_first_step_in_the_low_byte():
    wc2 = np.array([[1, -2, 3, -128, 127], [0, 0, 0, 0, -1]])
    words = ck.pack_weight_words(wc2, 4)
    assert words.shape == (2, 4) and words.dtype == np.int32
    def column(o):
        return list(np.ascontiguousarray(words[:, o]).astype("<i4").view(np.int8))
    assert column(0) == [1, -2, 3, -128, 127, 0, 0, 0]
    assert column(1) == [0, 0, 0, 0, -1, 0, 0, 0]
    assert not words[:, 2:].any()


def test_tiles_cover_small_and_large_gemms():
    assert ck.choose_tiles(1, 10) == ck.Tiles(1, 1, 1, 16)     # a GEMV: no dead rows
    t = ck.choose_tiles(300, 3000)
    assert (t.ta, t.tb, t.bx) == (4, 4, 32) and t.by * t.bx <= 256


# ---- bit-exact on the CPU, dp4a lowering forced -------------------------------------------------

LINEARS = [
    # (input shape, out features, input dtype, input zero point)
    ((1, 37), 10, "u8", 131),         # a GEMV, K not a multiple of 4
    ((3, 64), 21, "i8", -5),          # batch 3, whole words
    ((37, 50), 150, "u8", 255),       # partial 4x4 tiles along both dims, several blocks
    ((2, 5, 9), 33, "i8", 127),       # leading dims (rows = 10), requantize on the last axis
]


@pytest.mark.parametrize("case", range(len(LINEARS)))
def test_qlinear_dp4a_is_bit_exact(emulate, case):
    shape, o, dtype, zp = LINEARS[case]
    b = IntGraphBuilder("lin", seed=case, rounding="gemmlowp_double")
    x = quantized_input(b, shape, dtype, zp)
    g = b.output(b.requant(b.linear(x, o), axis=len(shape) - 1, relu=case % 2 == 0),
                 b.linear(x, o + 1, bias=False))  # a bare accumulator too (no epilogue)
    _check(g, random_codes(x, np.random.default_rng(case)), dp4a=2)


CONVS = [
    # (in shape, out channels, conv kwargs): odd K (C*KH*KW), padding, strides, dilation,
    # batch > 1, partial tiles along both GEMM dims
    ((1, 3, 11, 13), 10, dict(k=3, padding=(1, 1, 1, 1))),
    ((2, 5, 9, 9), 17, dict(k=3, stride=2, padding=(0, 1, 2, 0))),
    ((1, 8, 10, 12), 8, dict(k=(3, 2), dilation=2, padding=(2, 1, 2, 1))),
    ((1, 7, 16, 15), 24, dict(k=1, stride=2, weight_zp=True)),
    ((2, 6, 12, 12), 40, dict(k=3, padding=(1, 1, 1, 1))),   # 288 pixels: 4x4 tiles, 3 blocks
    ((1, 2, 5, 30), 9, dict(k=(1, 5), stride=(1, 3), padding=(0, 2, 0, 2), weight_zp=True)),
]


@pytest.mark.parametrize("case", range(len(CONVS)))
@pytest.mark.parametrize("dtype", ["u8", "i8"])
def test_qconv2d_dp4a_is_bit_exact(emulate, case, dtype):
    shape, o, kw = CONVS[case]
    b = IntGraphBuilder("conv", seed=case)
    x = b.input(shape, dtype)  # a random non-zero zero point
    assert x.quant.zero_point[0] != 0
    g = b.output(b.requant(b.conv(x, o, **kw), dtype="u8" if case % 2 else "i8",
                           per_channel=case != 2, relu=case % 3 == 0))
    _check(g, random_codes(x, np.random.default_rng(case)), dp4a=1)


@pytest.mark.parametrize("dtype,zp", [("u8", 0), ("u8", 255), ("i8", -128), ("i8", 127)])
def test_extreme_codes_weights_and_zero_points(emulate, dtype, zp):
    """Only the end codes and end weights: every dp4a product at its largest; the padding
    taps hold the extreme zero point."""
    b = IntGraphBuilder("ext", seed=3, rounding="single_half_away")
    x = quantized_input(b, (2, 6, 8, 9), dtype, zp)
    g = b.output(b.conv(x, 12, k=3, stride=2, padding=(1, 1, 1, 1)),
                 b.requant(b.conv(x, 9, k=3, padding=(1, 0, 1, 0)), relu=True))
    extreme_weights(g)
    _check(g, random_codes(x, np.random.default_rng(1), extreme=True), dp4a=2)


def test_narrow_accumulator_wraps(emulate):
    b = IntGraphBuilder("wrap", seed=11, rounding="single_half_up")
    x = b.input((1, 9, 6, 6), "u8")
    y = b.op("flatten", [x], axis=1)
    g = b.output(b.conv(x, 10, k=3, acc_bits=13),
                 b.requant(b.conv(x, 5, k=1, acc_bits=11, stride=2)),
                 b.linear(y, 7, acc_bits=14))
    ref = _check(g, random_codes(x, np.random.default_rng(3), extreme=True), dp4a=3)
    assert np.abs(ref[0]).max() < 2 ** 12 and np.abs(ref[2]).max() < 2 ** 13  # it did wrap


def test_conv_and_linear_network(emulate):
    """A small CNN: conv -> relu requantize -> conv (stride 2) -> flatten -> linear; only the
    MACs change kernels, the rest stays on the usual path."""
    b = IntGraphBuilder("net", seed=7)
    x = b.input((2, 3, 12, 12), "u8")
    y = b.requant(b.conv(x, 8, k=3, padding=(1, 1, 1, 1)), relu=True)
    y = b.requant(b.conv(y, 12, k=3, stride=2, padding=(1, 1, 1, 1)), dtype="u8")
    y = b.max_pool(y, k=2)
    g = b.output(b.requant(b.linear(b.op("flatten", [y], axis=1), 10), axis=1))
    _check(g, random_codes(x, np.random.default_rng(7)), dp4a=3)


# ---- where the dp4a kernels do not apply --------------------------------------------------------

def test_int16_input_wide_weights_and_int64_accumulator_fall_back(emulate):
    b = IntGraphBuilder("fb", seed=4, rounding="gemmlowp_double")
    x16 = quantized_input(b, (1, 4, 6, 6), "i16", 0)
    g16 = b.output(b.requant(b.conv(x16, 5, k=3)))
    _check(g16, random_codes(x16, np.random.default_rng(4)), dp4a=0)

    b = IntGraphBuilder("fb", seed=5, rounding="gemmlowp_double")
    x = b.input((1, 4, 6, 6), "u8")
    g = b.output(b.conv(x, 6, k=3))
    w = g.constants["w"]
    w.data[0, 0, 0, 0] = -128
    # zw = 20 puts one centred weight at -148, outside int8
    w.quant = QuantParams(w.quant.scale, (20,) + (0,) * 5, 8, True, axis=0)
    _check(g, random_codes(x, np.random.default_rng(5)), dp4a=0)

    b = IntGraphBuilder("fb", seed=6, rounding="gemmlowp_double")
    x = b.input((1, 4, 5, 5), "u8")
    g = b.output(b.conv(x, 6, k=3))
    bias = [v for v in g.constants.values() if v.dtype == "i32"][0]
    bias.data[:] = [2**31 - 5, -2**31 + 3, 2**31 - 1, 7, -2**31, 0]  # an int64 accumulator
    _check(g, random_codes(x, np.random.default_rng(6)), dp4a=0)


def test_grouped_conv_keeps_its_kernel(emulate):
    b = IntGraphBuilder("grp", seed=2, rounding="gemmlowp_double")
    x = b.input((1, 6, 9, 8), "i8")
    g = b.output(b.requant(b.conv(x, 6, k=3, groups=6, padding=(1, 1, 1, 1))))
    _check(g, random_codes(x, np.random.default_rng(2)), dp4a=0)


def test_a_missing_fold_is_caught(emulate, monkeypatch):
    """The comparison can fail: without the 128 * sum(w - zw) term for u8 inputs the outputs
    differ from the interpreter's."""
    right = ck._dp4a_constant

    def no_fold(x, wc2, const, acc_dt, zx):
        ct = right(x, wc2, const, acc_dt, zx)
        return None if ct is None else const.astype(np.int32)
    monkeypatch.setattr(ck, "_dp4a_constant", no_fold)
    b = IntGraphBuilder("bug", seed=1)
    x = b.input((1, 3, 11, 13), "u8")
    g = b.output(b.conv(x, 10, k=3, padding=(1, 1, 1, 1)))
    with pytest.raises(AssertionError, match="Arrays are not equal"):
        _check(g, random_codes(x, np.random.default_rng(1)), dp4a=1)


def test_dp4a_mode_follows_the_target():
    from qcompile.targets.tvm.target import make_target
    assert ck.dp4a_mode(make_target({"kind": "cuda", "arch": "sm_80"})) == "cuda"
    assert ck.dp4a_mode(make_target({"kind": "cuda", "arch": "sm_90"})) == "cuda"
    assert ck.dp4a_mode(make_target({"kind": "cuda", "arch": "sm_52"})) is None  # no dp4a
    assert ck.dp4a_mode(make_target({"kind": "llvm"})) is None  # unless EMULATE_ON_CPU


# ---- CUDA: source, dlight, nvcc ----------------------------------------------------------------

def _cnn():
    b = IntGraphBuilder("cuda", seed=1)
    x = b.input((1, 3, 10, 10), "u8")
    y = b.requant(b.conv(x, 8, k=3, padding=(1, 1, 1, 1)), relu=True)
    y = b.requant(b.conv(y, 8, k=3, groups=8, padding=(1, 1, 1, 1)))  # depthwise: dlight
    return b.output(b.requant(b.linear(b.op("flatten", [y], axis=1), 10), axis=1))


def test_dlight_leaves_the_hand_written_kernels_alone():
    import tvm
    from qcompile.targets.tvm.compiler import _gpu_schedule, _lower
    from qcompile.targets.tvm.target import make_target
    tgt = make_target({"kind": "cuda", "arch": "sm_80"})
    mod, _ = _lower(_cnn(), 1, None, tgt)
    hand = {gv.name_hint: f for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs.get("tirx.is_scheduled")}
    assert sorted(hand) == ["conv_requantize", "fc_requantize"]
    after = _gpu_schedule(mod, tgt)
    for name, f in hand.items():
        tvm.ir.assert_structural_equal(after[name], f)
    # the rest (the packing stages among them) did get dlight's thread bindings
    others = [gv.name_hint for gv, f in after.functions_items()
              if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint not in hand]
    assert "conv_dp4a_im2col" in others and "fc_dp4a_pack" in others
    for name in others:
        assert "blockIdx" in str(after[name]) or "threadIdx" in str(after[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_module_uses_dp4a_and_compiles(tmp_path, arch):
    module = qtvm.build(_cnn(), {"kind": "cuda", "arch": arch})
    src = module.source
    assert src is not None and "__dp4a(" in src
    assert _dp4a_kernels(module) == 2  # the conv and the linear; the depthwise is not a GEMM
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed: the CUDA source was generated but not compiled")
    cu = tmp_path / "kernels.cu"
    cu.write_text(src)
    ptx = tmp_path / "k.ptx"
    r = subprocess.run(["nvcc", f"-arch={arch}", "--ptx", str(cu), "-o", str(ptx)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    text = ptx.read_text()
    assert ".entry conv_requantize_kernel" in text and "dp4a.s32.s32" in text
