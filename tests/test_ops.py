"""Op registry: float kernels against torch.nn.functional, inference against the kernels,
attribute and shape errors, quantize/dequantize rounding, and the generated op reference."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qcompile.errors import OpError
from qcompile.ir.ops import registry
from qcompile.ir.types import QuantParams, TensorType, dtype_from_numpy
from qcompile.quant.intmath import quantize_multiplier

rng = np.random.default_rng(0)


def randn(*shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def run_all(op: str, *arrays, in_quant=None, out_quant=None, **attrs) -> list[np.ndarray]:
    """Infer the op's output types, run its float kernel, and check each output against them."""
    opdef = registry.get(op)
    attrs = opdef.complete_attrs(attrs)
    types = [None if a is None else TensorType(a.shape, dtype_from_numpy(a.dtype)) for a in arrays]
    expected = opdef.infer(types, attrs)
    kwargs = dict(attrs)
    if "quant_aware" in opdef.traits:
        kwargs.update(in_quant=in_quant or [None] * len(arrays),
                      out_quant=out_quant or [None] * len(expected))
    result = opdef.kernels["float"](*arrays, **kwargs)
    outs = [np.asarray(o) for o in (result if isinstance(result, (tuple, list)) else (result,))]
    assert len(outs) == len(expected), \
        f"{op}: kernel gave {len(outs)} outputs, inference {len(expected)}"
    for i, (out, want) in enumerate(zip(outs, expected)):
        assert out.shape == want.shape, \
            f"{op} output {i}: kernel gave {out.shape}, inference {want.shape}"
        assert out.dtype == np.dtype(_np_dtype(want.dtype)), \
            f"{op} output {i}: {out.dtype} vs {want.dtype}"
    return outs


def run(op: str, *arrays, in_quant=None, out_quant=None, **attrs) -> np.ndarray:
    """`run_all` of a one-output op: its output."""
    (out,) = run_all(op, *arrays, in_quant=in_quant, out_quant=out_quant, **attrs)
    return out


def _np_dtype(dtype: str):
    from qcompile.ir.types import numpy_dtype
    return numpy_dtype(dtype)


def close(ours: np.ndarray, ref: torch.Tensor, atol=1e-5, rtol=1e-5) -> None:
    np.testing.assert_allclose(ours, ref.detach().numpy(), atol=atol, rtol=rtol)


# ---- one example per op: inference must match the kernel's output ---------------------------------

Q8 = QuantParams((0.05,), (3,), bits=8, signed=True)
EXAMPLES = {
    "abs": ([randn(2, 3)], {}),
    "add": ([randn(2, 1, 4), randn(3, 1)], {}),
    "avg_pool2d": ([randn(1, 2, 7, 6)], dict(kernel=(3, 2), stride=(2, 2), padding=(1, 1, 1, 1),
                                             ceil_mode=True)),
    "batch_norm": ([randn(2, 3, 4, 4), randn(3), randn(3), randn(3), np.abs(randn(3))], {}),
    "cast": ([randn(5)], dict(dtype="i32")),
    "clip": ([randn(4)], dict(min=-0.5, max=0.5)),
    "concat": ([randn(2, 3), randn(2, 1), randn(2, 4)], dict(axis=1)),
    "conv2d": ([randn(1, 4, 9, 7), randn(6, 2, 3, 2), randn(6)],
               dict(stride=(2, 1), padding=(1, 0, 2, 1), groups=2)),
    "dequantize": ([rng.integers(-128, 127, (2, 3)).astype(np.int8)], {}),
    "div": ([randn(3), randn(2, 3)], {}),
    "erf": ([randn(3, 2)], {}),
    "exp": ([randn(3)], {}),
    "expand": ([randn(3, 1)], dict(shape=(2, 3, 4))),
    "flatten": ([randn(2, 3, 4, 5)], dict(axis=2)),
    "gather": ([randn(5, 3), np.array([[0, -1], [2, 4]], np.int64)], dict(axis=0)),
    "gelu": ([randn(4)], {}),
    "global_avg_pool": ([randn(2, 3, 5, 4)], {}),
    "hardsigmoid": ([randn(4)], {}),
    "hardswish": ([randn(4)], {}),
    "identity": ([randn(2)], {}),
    "layer_norm": ([randn(2, 3, 4), randn(3, 4), None], dict(axis=1)),
    "leaky_relu": ([randn(4)], {}),
    "linear": ([randn(2, 5, 3), randn(4, 3), None], {}),
    "matmul": ([randn(2, 1, 3, 4), randn(5, 4, 2)], {}),
    "max_pool2d": ([randn(1, 2, 6, 7)], dict(kernel=(3, 3), stride=(2, 2), ceil_mode=True)),
    "maximum": ([randn(3), randn(3)], {}),
    "mean": ([randn(2, 3, 4)], dict(axes=(1, -1), keepdims=True)),
    "minimum": ([randn(3), randn(1)], {}),
    "mul": ([randn(2, 3), randn(3)], {}),
    "neg": ([randn(3)], {}),
    "pad": ([randn(2, 3)], dict(pads=(1, 0, 0, 2), mode="reflect")),
    "pow": ([np.abs(randn(3)), randn(3)], {}),
    "prelu": ([randn(2, 3, 2), randn(3)], {}),
    "quantize": ([randn(2, 3)], dict(dtype="i8")),
    "reduce_max": ([randn(2, 3, 4)], dict(axes=(0,))),
    "reduce_min": ([randn(2, 3, 4)], dict(axes=(1,), keepdims=True)),
    "round": ([randn(3) * 4], {}),
    "quantize_linear": ([randn(2, 5), np.abs(randn(2, 3)) + 0.1,
                         rng.integers(-5, 5, (2, 3)).astype(np.int8)],
                        dict(axis=1, block_size=2, dtype="i8")),
    "dequantize_linear": ([rng.integers(0, 256, (4, 3)).astype(np.uint8), np.abs(randn(3)),
                           rng.integers(0, 256, 3).astype(np.uint8)], dict(axis=1)),
    "reduce_sum": ([randn(2, 3, 4)], dict(axes=())),
    "relu": ([randn(3)], {}),
    "reshape": ([randn(2, 3, 4)], dict(shape=(4, -1))),
    "rsqrt": ([np.abs(randn(3))], {}),
    "sigmoid": ([randn(3)], {}),
    "slice": ([randn(5, 6)], dict(axes=(1, 0), starts=(-1, 1), ends=(-100, 10), steps=(-2, 1))),
    "softmax": ([randn(2, 5)], dict(axis=0)),
    "sqrt": ([np.abs(randn(3))], {}),
    "squeeze": ([randn(2, 1, 3, 1)], dict(axes=(1, -1))),
    "sub": ([randn(2, 3), randn(2, 1)], {}),
    "tanh": ([randn(3)], {}),
    "transpose": ([randn(2, 3, 4)], dict(perm=(2, 0, 1))),
    "unsqueeze": ([randn(2, 3)], dict(axes=(0, 3))),
    "where": ([randn(2, 3) > 0, randn(2, 3), randn(3)], {}),
}
QUANT_KW = {"quantize": dict(out_quant=[Q8]), "dequantize": dict(in_quant=[Q8])}


# ---- integer ops (quant_aware: their kernels read the values' QuantParams) ------------------------

def i8(*shape) -> np.ndarray:
    return rng.integers(-128, 128, shape).astype(np.int8)


ACC = QuantParams((0.001,), (0,), bits=32, signed=True)  # an i32 accumulator's params
U8 = QuantParams((0.05,), (128,), bits=8, signed=False)
# Neutral requantization attributes: M = 2**-20 (m0 = 2**30, shift -19), full i8 range.
_RQ = dict(multiplier=1 << 30, shift=-19, clamp_min=-128, clamp_max=127)
INT_EXAMPLES = {
    "qconv2d": ([i8(1, 2, 5, 5), i8(3, 2, 3, 3), np.arange(3, dtype=np.int32)],
                dict(padding=(1, 1, 1, 1))),
    "qlinear": ([i8(2, 4), i8(3, 4), None], {}),
    "qmatmul": ([i8(2, 3), i8(3, 4)], {}),
    "requantize": ([np.arange(-6, 6, dtype=np.int32).reshape(2, 6)],
                   dict(multiplier=[1 << 30], shift=[0], clamp_min=-128, clamp_max=127)),
    "qadd": ([i8(2, 3), i8(3)], dict(a_multiplier=1 << 30, a_shift=0, b_multiplier=1 << 30,
                                     b_shift=0, out_multiplier=1 << 30, out_shift=-18,
                                     clamp_min=-128, clamp_max=127)),
    "qsub": ([i8(2, 3), i8(3)], dict(a_multiplier=1 << 30, a_shift=0, b_multiplier=1 << 30,
                                     b_shift=0, out_multiplier=1 << 30, out_shift=-18,
                                     clamp_min=-128, clamp_max=127)),
    "qmul": ([i8(2, 3), i8(2, 3)], dict(multiplier=1 << 30, shift=-6, clamp_min=-128,
                                        clamp_max=127)),
    "qprelu": ([i8(1, 2, 3, 3), i8(2)], dict(pos_multiplier=1 << 30, pos_shift=1,
                                             neg_multiplier=[1 << 30], neg_shift=[-6],
                                             clamp_min=-128, clamp_max=127)),
    "qavg_pool2d": ([i8(1, 2, 5, 4)], dict(kernel=(2, 2), clamp_min=-100, clamp_max=100)),
    "lut": ([i8(4)], dict(table=list(range(-128, 128)))),
    "requantize_float": ([np.array([[1000, -2000, 37]], np.int32)], dict(dtype="u8")),
    "dynamic_quantize_linear": ([np.array([[-1.5, 0.25, 3.0]], np.float32)], {}),
}
INT_QUANT_KW = {
    **{op: dict(in_quant=[Q8, Q8, ACC][:len(arrays)],
                out_quant=[ACC if op in ("qconv2d", "qlinear", "qmatmul") else Q8])
       for op, (arrays, _) in INT_EXAMPLES.items()},
    "requantize": dict(in_quant=[ACC], out_quant=[Q8]),
    "requantize_float": dict(in_quant=[QuantParams((0.001,), (0,), 32, True)], out_quant=[U8]),
    "dynamic_quantize_linear": {},
}

# The transformer integer ops (a module still growing: TRANSFORMER_MODULE). Their constants
# are the lowering's formulas evaluated for Q8 inputs, so the kernels run in range.
TRANSFORMER_MODULE = "qcompile.ir.ops.defs.integer_transformer"
Q_SOFTMAX = QuantParams((1 / 256,), (-128,), bits=8, signed=True)
Q_GAMMA = QuantParams((0.01,), (0,), bits=16, signed=True)
Q_BETA = QuantParams((0.01 / 256,), (0,), bits=32, signed=True)
_SOFTMAX_K = 14  # frac_bits: the internal grid ln2 / 2**K


def _m(real: float) -> dict:
    m0, shift = quantize_multiplier(real)
    return {"multiplier": m0, "shift": shift}


_GELU_B = round(1.769 * math.sqrt(2) / 0.05)  # on the input grid (in_shift 0, s_t = s_x)
_GELU_C = round(2 / (0.2888 * 0.05 ** 2))
TRANSFORMER_EXAMPLES = {
    "masked_softmax": ([randn(2, 5), np.array([True, True, False, True, False])], {}),
    "qsoftmax": ([i8(2, 5), np.array([True, True, False, True, False])],
                 dict(in_multiplier=quantize_multiplier(0.05 * 2 ** _SOFTMAX_K / math.log(2))[0],
                      in_shift=quantize_multiplier(0.05 * 2 ** _SOFTMAX_K / math.log(2))[1],
                      frac_bits=_SOFTMAX_K,
                      exp_b=round(1.353 / math.log(2) * 2 ** _SOFTMAX_K),
                      exp_c=round(0.344 / (0.3585 * (math.log(2) / 2 ** _SOFTMAX_K) ** 2)))),
    "qgelu": ([i8(2, 6)], dict(in_shift=0, erf_b=_GELU_B, erf_c=_GELU_C,
                               **_m(0.05 / (2 * _GELU_C * 0.05)), clamp_min=-128,
                               clamp_max=127)),
    "qlayer_norm": ([i8(2, 3, 4), rng.integers(50, 150, 4).astype(np.int16),
                     rng.integers(-300, 300, 4).astype(np.int32)],
                    dict(eps_int=1, frac_bits=8, **_m(0.01 / 256 / 0.05), clamp_min=-128,
                         clamp_max=127)),
    "qreduce_sum": ([i8(2, 3, 4)], dict(axes=(1,), **_m(1 / 3), clamp_min=-128, clamp_max=127)),
    "qdiv": ([i8(2, 3), np.array([3, -7, 100], np.int8)], dict(**_m(0.5), clamp_min=-128,
                                                               clamp_max=127)),
    "qcast": ([np.array([[0, 1, 1], [1, 0, 1]], np.int32)], dict(**_m(1 / 0.05), clamp_min=-128,
                                                                 clamp_max=127)),
}
TRANSFORMER_QUANT_KW = {
    "masked_softmax": {},
    "qsoftmax": dict(in_quant=[Q8, None], out_quant=[Q_SOFTMAX]),
    "qlayer_norm": dict(in_quant=[Q8, Q_GAMMA, Q_BETA], out_quant=[Q8]),
    "qcast": dict(in_quant=[None], out_quant=[Q8]),
}
ALL_EXAMPLES = {**EXAMPLES, **INT_EXAMPLES, **TRANSFORMER_EXAMPLES}
ALL_QUANT_KW = {**QUANT_KW, **INT_QUANT_KW,
                **{op: TRANSFORMER_QUANT_KW.get(op, dict(in_quant=[Q8, Q8], out_quant=[Q8]))
                   for op in TRANSFORMER_EXAMPLES}}


def _module(op: str) -> str:
    return registry.get(op).infer_fn.__module__


@pytest.mark.parametrize("op", list(registry.all_ops()))
def test_inference_matches_kernel(op):
    opdef = registry.get(op)
    if op not in ALL_EXAMPLES and _module(op) == TRANSFORMER_MODULE:
        pytest.skip(f"{op} is new in {TRANSFORMER_MODULE} (still being written) and has no "
                    f"example here yet")
    assert op in ALL_EXAMPLES, f"no example for op {op}"
    assert "float" in opdef.kernels
    assert opdef.doc, f"{op} has no one-line doc"
    arrays, attrs = ALL_EXAMPLES[op]
    run_all(op, *arrays, **ALL_QUANT_KW.get(op, {}), **attrs)


def test_integer_examples_exercise_their_arithmetic():
    """The integer examples are not degenerate: outputs vary, and the clamps and rescalings the
    attributes ask for are visible."""
    for op, (arrays, attrs) in {**INT_EXAMPLES, **TRANSFORMER_EXAMPLES}.items():
        if op in registry.all_ops():
            outs = run_all(op, *arrays, **ALL_QUANT_KW.get(op, {}), **attrs)
            assert len(np.unique(outs[0])) > 1, f"{op}: constant output {outs[0]}"
    pooled = run("qavg_pool2d", *INT_EXAMPLES["qavg_pool2d"][0], **INT_QUANT_KW["qavg_pool2d"],
                 **INT_EXAMPLES["qavg_pool2d"][1])
    assert pooled.min() >= -100 and pooled.max() <= 100
    assert run("requantize", np.array([4, -6], np.int32), multiplier=[1 << 30], shift=[0],
               clamp_min=-128, clamp_max=127, in_quant=[ACC], out_quant=[Q8]).tolist() == [5, 0]


def test_catalog_traits():
    ops = registry.all_ops()
    for name in ("relu", "prelu", "leaky_relu", "identity"):
        assert "positively_homogeneous" in ops[name].traits
    for name in ("conv2d", "linear", "matmul"):
        assert "mac" in ops[name].traits
    for name in ("reshape", "flatten", "transpose", "squeeze", "unsqueeze", "expand", "slice",
                 "identity"):
        assert "shape" in ops[name].traits
    # Every op that reads QuantParams: the boundaries, the integer ops, ONNX's float-multiplier
    # requantization; the transformer module decides its own (masked_softmax is float).
    integer = {"qconv2d", "qlinear", "qmatmul", "requantize", "qadd", "qsub", "qmul", "qprelu",
               "qavg_pool2d", "lut"}
    quant_aware = {n for n, o in ops.items() if "quant_aware" in o.traits}
    transformer = {n for n in ops if _module(n) == TRANSFORMER_MODULE}
    assert quant_aware - transformer == {"quantize", "dequantize", "requantize_float"} | integer
    for name in integer | {"requantize_float"}:
        assert ops[name].kernels["int"] is ops[name].kernels["float"]
    assert "quant_aware" not in ops["dynamic_quantize_linear"].traits
    assert {n for n, o in ops.items() if "commutative" in o.traits} == {"add", "mul", "maximum",
                                                                          "minimum"}


# ---- conv2d ------------------------------------------------------------------------------------

CONV_CASES = [
    # (n, c, h, w, o, kh, kw, stride, (top, left, bottom, right), dilation, groups, bias)
    (2, 3, 9, 9, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    (1, 4, 11, 7, 6, 3, 2, (2, 3), (0, 0, 0, 0), (1, 1), 1, False),
    (3, 2, 13, 10, 4, 3, 3, (2, 1), (2, 1, 0, 3), (2, 3), 1, True),        # asymmetric + dilation
    (2, 6, 8, 8, 9, 3, 3, (1, 2), (1, 0, 1, 2), (1, 1), 3, True),           # grouped
    (2, 5, 10, 9, 5, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 5, True),          # depthwise
    (1, 4, 9, 9, 8, 5, 3, (1, 1), (2, 1, 3, 0), (2, 1), 4, False),          # depthwise x2 multiplier
    (5, 1, 28, 28, 6, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1, True),         # LeNet first layer
    (1, 16, 1, 1, 10, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, True),         # 1x1 on 1x1
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(case):
    n, c, h, w, o, kh, kw, stride, pad, dil, groups, use_bias = case
    x, wt = randn(n, c, h, w), randn(o, c // groups, kh, kw)
    b = randn(o) if use_bias else None
    ours = run("conv2d", x, wt, b, stride=stride, padding=pad, dilation=dil, groups=groups)
    top, left, bottom, right = pad
    ref = F.conv2d(F.pad(t(x), (left, right, top, bottom)), t(wt), None if b is None else t(b),
                   stride=stride, dilation=dil, groups=groups)
    close(ours, ref, atol=1e-4)


def test_conv2d_large_batch_is_chunked_consistently():
    # A batch whose column buffer exceeds one chunk gives the same result as image by image.
    x, wt = randn(40, 8, 16, 16), randn(16, 8, 3, 3)
    ours = run("conv2d", x, wt, None, padding=(1, 1, 1, 1))
    close(ours, F.conv2d(t(x), t(wt), padding=1), atol=1e-4)


# ---- pools -------------------------------------------------------------------------------------

POOL_CASES = [
    # (h, w, kernel, stride, padding (symmetric per axis), ceil_mode)
    (7, 7, (3, 3), (2, 2), (1, 1), True),
    (8, 8, (2, 2), (2, 2), (0, 0), False),
    (6, 9, (3, 2), (2, 3), (1, 0), True),
    (5, 5, (2, 2), (2, 2), (1, 1), True),   # a ceil window runs past the padded input
    (10, 11, (3, 3), (3, 2), (0, 1), True),
    (9, 9, (3, 3), (1, 1), (1, 1), False),
]


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("dilation", [(1, 1), (2, 1)])
def test_max_pool2d_matches_torch(case, dilation):
    h, w, k, s, (ph, pw), ceil = case
    x = randn(2, 3, h, w)
    ours = run("max_pool2d", x, kernel=k, stride=s, padding=(ph, pw, ph, pw), dilation=dilation,
               ceil_mode=ceil)
    close(ours, F.max_pool2d(t(x), k, s, (ph, pw), dilation, ceil_mode=ceil), atol=0)


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_matches_torch(case, count_include_pad):
    h, w, k, s, (ph, pw), ceil = case
    x = randn(2, 3, h, w)
    ours = run("avg_pool2d", x, kernel=k, stride=s, padding=(ph, pw, ph, pw), ceil_mode=ceil,
               count_include_pad=count_include_pad)
    close(ours, F.avg_pool2d(t(x), k, s, (ph, pw), ceil_mode=ceil,
                             count_include_pad=count_include_pad))


def test_pool_stride_defaults_to_kernel_and_asymmetric_padding():
    x = randn(1, 2, 7, 8)
    ours = run("max_pool2d", x, kernel=(2, 2), padding=(1, 0, 0, 1))
    ref = F.max_pool2d(F.pad(t(x), (0, 1, 1, 0), value=-math.inf), 2)
    close(ours, ref, atol=0)


def test_global_avg_pool():
    x = randn(3, 4, 5, 7)
    close(run("global_avg_pool", x), F.adaptive_avg_pool2d(t(x), 1))


# ---- linear algebra, normalisation -------------------------------------------------------------

def test_linear_and_matmul():
    x, w, b = randn(3, 4, 5), randn(6, 5), randn(6)
    close(run("linear", x, w, b), F.linear(t(x), t(w), t(b)))
    close(run("linear", x, w, None), F.linear(t(x), t(w)))
    for a_shape, b_shape in [((3, 4), (4, 2)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 4, 3)),
                             ((2, 3, 4), (4,)), ((4,), (4,))]:
        a, bb = randn(*a_shape), randn(*b_shape)
        close(run("matmul", a, bb), torch.matmul(t(a), t(bb)), atol=1e-5)


def test_batch_norm_along_axis():
    x = randn(2, 3, 4, 5)
    g, b, m, v = randn(3), randn(3), randn(3), np.abs(randn(3)) + 0.1
    close(run("batch_norm", x, g, b, m, v, eps=1e-3),
          F.batch_norm(t(x), t(m), t(v), t(g), t(b), training=False, eps=1e-3))
    y = randn(4, 6)
    g, b, m, v = randn(6), randn(6), randn(6), np.abs(randn(6)) + 0.1
    close(run("batch_norm", y, g, b, m, v, axis=-1),
          F.batch_norm(t(y), t(m), t(v), t(g), t(b), training=False))


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(axis):
    x = randn(3, 4, 5) * 30  # large logits: the stable form must not overflow
    close(run("softmax", x, axis=axis), F.softmax(t(x), dim=axis), atol=1e-6)


@pytest.mark.parametrize("axis,affine", [(-1, True), (1, True), (2, False), (0, True)])
def test_layer_norm(axis, affine):
    x = randn(2, 3, 4) * 3 + 1
    norm_shape = x.shape[axis % 3:]
    g = randn(*norm_shape) if affine else None
    b = randn(*norm_shape) if affine else None
    ref = F.layer_norm(t(x), norm_shape, None if g is None else t(g), None if b is None else t(b),
                       eps=1e-5)
    close(run("layer_norm", x, g, b, axis=axis), ref, atol=1e-5)


# ---- element-wise ------------------------------------------------------------------------------

UNARY_TORCH = {
    "relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "exp": torch.exp,
    "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "neg": torch.neg, "erf": torch.erf, "abs": torch.abs,
    "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
}


@pytest.mark.parametrize("op", sorted(UNARY_TORCH))
def test_unary_matches_torch(op):
    x = np.concatenate([randn(200) * 4, np.array([0, -3, 3, 2, -2, 1e-8, 40, -40, 90, -90],
                                                 np.float32)])
    if op in ("sqrt", "rsqrt"):
        x = np.abs(x) + np.float32(1e-3)
    close(run(op, x), UNARY_TORCH[op](t(x)), atol=1e-6, rtol=2e-6)


def test_erf_precision_across_branches():
    x = np.linspace(-6, 6, 4001)
    from qcompile.ir.ops.defs.elementwise import erf_f64
    assert np.max(np.abs(erf_f64(x) - np.array([math.erf(v) for v in x]))) < 1e-14
    assert erf_f64(np.array([np.inf, -np.inf])).tolist() == [1.0, -1.0]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    x = randn(500) * 4
    close(run("gelu", x, approximate=approximate), F.gelu(t(x), approximate=approximate),
          atol=1e-6)


def test_parametric_activations():
    x = randn(2, 4, 3)
    close(run("leaky_relu", x, alpha=0.2), F.leaky_relu(t(x), 0.2))
    close(run("clip", x, min=0.0, max=6.0), F.relu6(t(x)))
    close(run("clip", x, min=-0.3, max=0.25), torch.clamp(t(x), -0.3, 0.25))
    slope = randn(4)
    close(run("prelu", x, slope), F.prelu(t(x), t(slope)))
    close(run("prelu", x, slope[:1]), F.prelu(t(x), t(slope[:1])))
    y = randn(3, 5)
    close(run("prelu", y, slope[:3], axis=0), torch.where(t(y) >= 0, t(y), t(y) * t(slope[:3])[:, None]))


@pytest.mark.parametrize("op,fn", [("add", torch.add), ("sub", torch.sub), ("mul", torch.mul),
                                   ("div", torch.div), ("maximum", torch.maximum),
                                   ("minimum", torch.minimum), ("pow", torch.pow)])
def test_binary_broadcasting(op, fn):
    a, b = randn(2, 1, 4), randn(3, 1)
    if op == "pow":
        a = np.abs(a) + np.float32(0.1)
    close(run(op, a, b), fn(t(a), t(b)), atol=1e-5)


def test_integer_div_truncates_toward_zero():
    a = np.array([7, -7, 7, -7], np.int32)
    b = np.array([2, 2, -2, -2], np.int32)
    assert run("div", a, b).tolist() == [3, -3, -3, 3]


def test_where():
    c, a, b = randn(2, 3) > 0, randn(2, 3), randn(1, 3)
    close(run("where", c, a, b), torch.where(t(c), t(a), t(b)))


# ---- data movement -----------------------------------------------------------------------------

@pytest.mark.parametrize("axes,starts,ends,steps", [
    ((0,), (1,), (3,), (1,)),
    ((1,), (-3,), (1000,), (1,)),              # negative start, end clamped
    ((1, 0), (-1, 0), (-1000, -1), (-1, 2)),   # reverse through the start
    ((1,), (2,), (-2,), (2,)),
    ((), (1, 2), (4, 5), ()),                  # axes and steps default
    ((0,), (10,), (20,), (1,)),                # empty result
])
def test_slice_is_python_slicing(axes, starts, ends, steps):
    x = randn(5, 7)
    ours = run("slice", x, axes=axes, starts=starts, ends=ends, steps=steps)
    idx = [slice(None)] * 2
    for a, s, e, st in zip(axes or range(len(starts)), starts, ends, steps or [1] * len(starts)):
        idx[a] = slice(s, e, st)
    np.testing.assert_array_equal(ours, x[tuple(idx)])


@pytest.mark.parametrize("mode,torch_mode", [("reflect", "reflect"), ("edge", "replicate"),
                                             ("constant", "constant")])
def test_pad_modes(mode, torch_mode):
    x = randn(1, 2, 5, 6)
    pads = (0, 0, 2, 1, 0, 0, 1, 3)  # H: (2, 1), W: (1, 3)
    ours = run("pad", x, pads=pads, mode=mode, value=0.5)
    kw = {"value": 0.5} if mode == "constant" else {}
    close(ours, F.pad(t(x), (1, 3, 2, 1), mode=torch_mode, **kw), atol=0)


def test_shape_ops():
    x = randn(2, 3, 4)
    np.testing.assert_array_equal(run("reshape", x, shape=(3, -1, 2)), x.reshape(3, 4, 2))
    np.testing.assert_array_equal(run("flatten", x, axis=0), x.reshape(1, 24))
    np.testing.assert_array_equal(run("flatten", x, axis=-1), x.reshape(6, 4))
    np.testing.assert_array_equal(run("flatten", x, axis=3), x.reshape(24, 1))
    np.testing.assert_array_equal(run("transpose", x, perm=(1, 2, 0)), x.transpose(1, 2, 0))
    np.testing.assert_array_equal(run("unsqueeze", x, axes=(-1, 1)), x[:, None, :, :, None])
    np.testing.assert_array_equal(run("squeeze", x[:, None], axes=(1,)), x)
    np.testing.assert_array_equal(run("expand", x[:, :1], shape=(5, 2, 3, 4)),
                                  np.broadcast_to(x[:, :1], (5, 2, 3, 4)))
    np.testing.assert_array_equal(run("concat", x, x[:, :1], axis=-2),
                                  np.concatenate([x, x[:, :1]], axis=1))
    emb, ids = randn(10, 4), np.array([[1, 9, 0]], np.int64)
    close(run("gather", emb, ids), F.embedding(t(ids), t(emb)), atol=0)
    assert run("cast", np.array([1.7, -1.7], np.float32), dtype="i32").tolist() == [1, -1]


def test_reductions():
    x = randn(3, 4, 5)
    close(run("mean", x, axes=(0, 2)), t(x).mean(dim=(0, 2)), atol=1e-6)
    close(run("reduce_sum", x, axes=(1,), keepdims=True), t(x).sum(dim=1, keepdim=True), atol=1e-5)
    close(run("reduce_max", x, axes=(-1,)), t(x).amax(dim=-1), atol=0)
    close(run("reduce_sum", x, axes=()), t(x).sum(), atol=1e-4)


# ---- quantize / dequantize ---------------------------------------------------------------------

def quant(x, rounding="half_even", **qp):
    q = QuantParams(**qp)
    return run("quantize", x, rounding=rounding, dtype=q.storage_dtype, out_quant=[q])


def test_quantize_ties():
    x = np.array([2.5, -2.5, 0.5, -0.5, 1.5, 3.5], np.float32)
    assert quant(x, "half_even", scale=(1.0,), zero_point=(0,)).tolist() == [2, -2, 0, 0, 2, 4]
    assert quant(x, "half_away", scale=(1.0,), zero_point=(0,)).tolist() == [3, -3, 1, -1, 2, 4]
    # The largest float32 below 0.5 is not a tie: it rounds to 0 in both modes.
    below = np.array([np.nextafter(np.float32(0.5), np.float32(0))], np.float32)
    assert quant(below, "half_away", scale=(1.0,), zero_point=(0,)).tolist() == [0]


def test_quantize_divides_in_float32():
    # float32(0.35) / float32(0.1) is exactly 3.5 in float32 but 3.4999999 in float64, so the
    # division's precision decides these ties (TFLite and ONNX with f32 scales divide in float32).
    x = np.array([0.35, 0.45, -0.35], np.float32)
    assert quant(x, "half_away", scale=(0.1,), zero_point=(0,)).tolist() == [4, 5, -4]
    assert quant(x, "half_even", scale=(0.1,), zero_point=(0,)).tolist() == [4, 4, -4]


def test_quantize_saturates_and_uses_zero_point():
    x = np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0], np.float32)
    assert quant(x, scale=(0.5,), zero_point=(10,), bits=8, signed=True).tolist() == \
        [-128, 8, 10, 12, 127]
    assert quant(x, scale=(0.5,), zero_point=(3,), bits=4, signed=False).tolist() == \
        [0, 1, 3, 5, 15]
    out = quant(x, scale=(0.5,), zero_point=(0,), bits=4, signed=True)
    assert out.dtype == np.int8 and out.tolist() == [-8, -2, 0, 2, 7]


def test_quantize_per_channel_roundtrip():
    x = randn(2, 3, 4)
    q = QuantParams(scale=(0.01, 0.02, 0.04), zero_point=(0, 5, -5), axis=1)
    qx = run("quantize", x, dtype="i8", out_quant=[q])
    scale = np.array([0.01, 0.02, 0.04], np.float32).reshape(1, 3, 1)
    zp = np.array([0, 5, -5]).reshape(1, 3, 1)
    expected = np.clip(np.rint(x / scale) + zp, -128, 127)
    np.testing.assert_array_equal(qx, expected)
    back = run("dequantize", qx, in_quant=[q])
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, (expected - zp) * scale, rtol=1e-7)
    inside = np.abs(x / scale) < 120
    assert np.all(np.abs(back - x)[inside] <= (scale / 2 + 1e-7).repeat(2, 0).repeat(4, 2)[inside])


def test_quantize_dequantize_matches_torch_fake_quant_per_channel():
    x = randn(4, 3) * 3
    scales, zps = np.array([0.02, 0.05, 0.1]), np.array([1, -2, 0])
    q = QuantParams(scale=tuple(scales), zero_point=tuple(zps), axis=-1)
    ours = run("dequantize", run("quantize", x, dtype="i8", out_quant=[q]), in_quant=[q])
    ref = torch.fake_quantize_per_channel_affine(t(x), torch.tensor(scales, dtype=torch.float32),
                                                 torch.tensor(zps, dtype=torch.int32), 1, -128, 127)
    close(ours, ref, atol=1e-6)


def test_quantize_without_params_fails_clearly():
    with pytest.raises(ValueError, match="quantize needs QuantParams"):
        run("quantize", randn(2), dtype="i8")


# ---- errors ------------------------------------------------------------------------------------

def infer(op, *types, **attrs):
    opdef = registry.get(op)
    return opdef.infer(list(types), opdef.complete_attrs(attrs))


f32 = lambda *shape: TensorType(shape, "f32")  # noqa: E731


@pytest.mark.parametrize("op,types,attrs,match", [
    ("conv2d", [f32(1, 3, 8, 8), f32(4, 2, 3, 3)], {}, r"conv2d: input \(1, 3, 8, 8\) has 3 channels"),
    ("conv2d", [f32(1, 4, 8, 8), f32(6, 2, 3, 3)], dict(groups=2, stride=(0, 1)), "conv2d: stride"),
    ("conv2d", [f32(1, 3, 2, 2), f32(4, 3, 3, 3)], {}, "conv2d: output would be empty"),
    ("conv2d", [f32(3, 8, 8), f32(4, 3, 3, 3)], {}, r"conv2d: expects an NCHW .* \(3, 8, 8\)"),
    ("conv2d", [f32(1, 3, 8, 8), f32(4, 3, 3, 3), f32(5)], {}, r"conv2d: bias shape \(5,\)"),
    ("conv2d", [f32(1, 3, 8, 8)], {}, "conv2d: takes inputs"),
    ("linear", [f32(2, 5), f32(4, 3)], {}, r"linear: input \(2, 5\) does not fit weight \(4, 3\)"),
    ("matmul", [f32(2, 3), f32(4, 5)], {}, r"matmul: inner dimensions differ: \(2, 3\) @ \(4, 5\)"),
    ("add", [f32(2, 3), f32(4)], {}, r"add: shapes \(2, 3\) and \(4,\) do not broadcast"),
    ("add", [f32(2), TensorType((2,), "i8")], {}, "add: input dtypes differ"),
    ("reshape", [f32(2, 3)], dict(shape=(4, -1)), r"reshape: cannot reshape \(2, 3\)"),
    ("reshape", [f32(2, 3)], dict(shape=(-1, -1)), "reshape: shape"),
    ("transpose", [f32(2, 3)], dict(perm=(0, 0)), "transpose: perm"),
    ("squeeze", [f32(2, 3)], dict(axes=(1,)), r"squeeze: axis 1 of \(2, 3\) has size 3"),
    ("concat", [f32(2, 3), f32(3, 3)], dict(axis=1), "concat: inputs"),
    ("slice", [f32(4)], dict(starts=(0,), ends=(2,), steps=(0,)), "slice: steps"),
    ("pad", [f32(2, 3)], dict(pads=(1, 1)), "pad: pads"),
    ("pad", [f32(2, 3)], dict(pads=(0, 3, 0, 0), mode="reflect"), "pad: reflect padding"),
    ("max_pool2d", [f32(1, 1, 4, 4)], dict(kernel=(2, 2), padding=(2, 0, 0, 0)),
     "max_pool2d: padding"),
    ("avg_pool2d", [f32(1, 1, 4, 4)], dict(kernel=(2,)), "avg_pool2d: kernel"),
    ("batch_norm", [f32(1, 3, 2, 2), f32(4), f32(3), f32(3), f32(3)], {}, r"batch_norm: gamma shape \(4,\)"),
    ("layer_norm", [f32(2, 3), f32(2), None], {}, r"layer_norm: gamma shape \(2,\)"),
    ("softmax", [f32(2, 3)], dict(axis=2), "softmax: axis 2 is out of range"),
    ("prelu", [f32(1, 3, 2), f32(2)], {}, r"prelu: slope \(2,\)"),
    ("where", [f32(2), f32(2), f32(2)], {}, "where: cond must be bool"),
    ("gather", [f32(3), f32(2)], {}, "gather: indices must be integers"),
    ("clip", [f32(2)], dict(min=1.0, max=0.0), "clip: min"),
    ("cast", [f32(2)], dict(dtype="float32"), "cast: dtype 'float32'"),
    ("quantize", [f32(2)], dict(dtype="f32"), "quantize: dtype"),
    ("dequantize", [f32(2)], {}, "dequantize: input must be an integer"),
    ("sigmoid", [TensorType((2,), "i8")], {}, "sigmoid: input must be a float"),
    ("expand", [f32(3, 2)], dict(shape=(3, 4)), r"expand: cannot broadcast \(3, 2\)"),
    ("reduce_max", [f32(2, 3)], dict(axes=(0, 0)), "reduce_max: axes"),
    ("flatten", [f32(2, 3)], dict(axis=3), "flatten: axis 3"),
])
def test_bad_shapes_raise_op_error(op, types, attrs, match):
    with pytest.raises(OpError, match=match):
        infer(op, *types, **attrs)


@pytest.mark.parametrize("op,attrs,match", [
    ("conv2d", dict(stride=2), "attribute 'stride' must be ints"),
    ("conv2d", dict(strides=(1, 1)), "unknown attribute 'strides'.*did you mean stride"),
    ("gelu", dict(approximate="erf"), "attribute 'approximate' is 'erf'"),
    ("pad", dict(pads=(0, 0), mode="wrap"), "attribute 'mode'"),
    ("concat", {}, "missing attribute 'axis'"),
    ("quantize", dict(rounding="half_up"), "attribute 'rounding'"),
    ("max_pool2d", dict(kernel=(2, 2), ceil_mode=1), "attribute 'ceil_mode' must be bool"),
])
def test_bad_attributes_raise_op_error(op, attrs, match):
    with pytest.raises(OpError, match=match):
        registry.get(op).complete_attrs(attrs, where=f"node_{op}")
    with pytest.raises(OpError, match=f"node_{op}"):
        registry.get(op).complete_attrs(attrs, where=f"node_{op}")


def test_dynamic_dims_propagate():
    x = TensorType((None, 3, 8, 8), "f32")
    (y,) = infer("conv2d", x, f32(4, 3, 3, 3), padding=(1, 1, 1, 1))
    assert y.shape == (None, 4, 8, 8)
    assert infer("flatten", y)[0].shape == (None, 256)
    assert infer("reshape", y, shape=(-1, 16))[0].shape == (None, 16)
    assert infer("max_pool2d", TensorType((1, 2, None, 5), "f32"), kernel=(2, 2))[0].shape == \
        (1, 2, None, 2)


# ---- the generated reference -------------------------------------------------------------------

def test_docs_ops_md_is_generated_from_registry():
    path = Path(__file__).resolve().parents[1] / "docs" / "ops.md"
    assert path.read_text() == registry.markdown_reference(), \
        "docs/ops.md is stale: regenerate it with qcompile.ir.ops.registry.markdown_reference()"
    for name in registry.all_ops():
        assert f"| `{name}` |" in path.read_text()
