"""The ONNX interchange ops `quantize_linear` / `dequantize_linear` (blocked, run-time and
float8/float4 parameters) and the ops the expanded DynamicQuantizeLinear needs (`round`,
`reduce_min`, ReduceMin/ReduceMax/Min/Max/Round/Clip/Cast importers): hand-computed values,
shape errors, and one-node ONNX models compared bit for bit with `onnx.reference`."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ml_dtypes = pytest.importorskip("ml_dtypes")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from qcompile import from_onnx  # noqa: E402
from qcompile.errors import FrontendError, OpError  # noqa: E402
from qcompile.interp.interpreter import Interpreter  # noqa: E402
from qcompile.ir.graph import Graph  # noqa: E402
from qcompile.ir.ops import registry  # noqa: E402
from qcompile.ir.types import TensorType, dtype_from_numpy, numpy_dtype  # noqa: E402

E4M3, E5M2, F4 = ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.float4_e2m1fn
F32 = TensorProto.FLOAT


def kernel(op: str, *arrays, **attrs):
    opdef = registry.get(op)
    return opdef.kernels["float"](*arrays, **opdef.complete_attrs(attrs))


def bits(a: np.ndarray) -> np.ndarray:
    """The stored bytes of `a`, so -0 / +0 and nan compare as the bit patterns they are."""
    a = np.ascontiguousarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def assert_bits_equal(got, want) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, want.dtype)
    np.testing.assert_array_equal(bits(got), bits(want), err_msg=f"got {got}\nwant {want}")


# ---- the IR dtypes --------------------------------------------------------------------------------
def test_narrow_float_dtypes_are_storage_only():
    for ir, np_t in (("f8e4m3fn", E4M3), ("f8e5m2", E5M2), ("f4e2m1", F4)):
        assert numpy_dtype(ir) == np.dtype(np_t) and dtype_from_numpy(np_t) == ir
    for op in ("exp", "quantize"):  # not an arithmetic float type
        with pytest.raises(OpError, match="must be a float tensor"):
            _infer(op, [TensorType((2,), "f8e4m3fn")])


# ---- quantize_linear: hand-computed values --------------------------------------------------------
def test_quantize_linear_integer_rounds_half_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1e30, -np.inf, 3.0], np.float32)
    y = kernel("quantize_linear", x, np.float32(1.0), np.uint8(10), dtype="u8")
    assert y.dtype == np.uint8
    assert y.tolist() == [10, 12, 12, 10, 8, 255, 0, 13]


def test_quantize_linear_nan_is_an_error_for_integers():
    with pytest.raises(ValueError, match="nan"):
        kernel("quantize_linear", np.array([0.0, np.nan], np.float32), np.float32(1), dtype="i8")


def test_quantize_linear_blocked_scales_cover_blocks_with_a_short_last_one():
    # 5 columns in blocks of 2: scales (2, 3) cover columns {0, 1}, {2, 3}, {4}.
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    scale = np.array([[1, 2, 4], [0.5, 1, 2]], np.float32)
    zp = np.array([[0, 1, 2], [3, 4, 5]], np.int8)
    y = kernel("quantize_linear", x, scale, zp, axis=1, block_size=2, dtype="i8")
    want = np.rint(x / np.repeat(scale, 2, axis=1)[:, :5]) + np.repeat(zp, 2, axis=1)[:, :5]
    assert y.tolist() == want.astype(np.int64).tolist()


def test_quantize_linear_float8_rounds_to_nearest_even():
    # e4m3fn has 3 mantissa bits: between 16 and 20 the spacing is 2, so 17 and 19 are ties.
    x = np.array([17, 19, 0.3, -0.0], np.float32)
    y = kernel("quantize_linear", x, np.float32(1), dtype="f8e4m3fn")
    assert y.dtype == np.dtype(E4M3)
    assert y.astype(np.float32).tolist() == [16, 20, 0.3125, 0.0]
    assert np.signbit(y.astype(np.float32)[3])  # -0 stays -0 (no zero point is added)


@pytest.mark.parametrize("dtype, top, overflow", [("f8e4m3fn", 448, np.nan),
                                                  ("f8e5m2", 57344, np.inf)])
def test_quantize_linear_float8_saturate(dtype, top, overflow):
    x = np.array([1e6, -1e6, np.inf, np.nan], np.float32)
    sat = kernel("quantize_linear", x, np.float32(1), dtype=dtype).astype(np.float32)
    np.testing.assert_array_equal(sat, [top, -top, top, np.nan])
    raw = kernel("quantize_linear", x, np.float32(1), dtype=dtype, saturate=False)
    raw = raw.astype(np.float32)
    np.testing.assert_array_equal(raw[:2], [overflow, -overflow])
    assert np.isnan(raw[3])


def test_quantize_linear_float4_saturates_and_turns_minus_zero_positive():
    x = np.array([0.25, 0.75, 2.5, 100, -100, -0.0], np.float32)
    y = kernel("quantize_linear", x, np.float32(1), dtype="f4e2m1").astype(np.float32)
    # e2m1 holds 0, 0.5, 1, 1.5, 2, 3, 4, 6: ties go to the even mantissa.
    assert y.tolist() == [0.0, 1.0, 2.0, 6.0, -6.0, 0.0]
    assert not np.signbit(y[5])


def test_quantize_linear_divides_in_float16_for_float16_operands():
    # 96.25 / 0.9575 is 100.5 in float16 (a tie, to even: 100) but 100.52 in float32 (101).
    x, s = np.array([96.25], np.float16), np.float16(0.9575)
    assert x / s == np.float16(100.5)
    assert kernel("quantize_linear", x, s, dtype="i16").tolist() == [100]
    assert kernel("quantize_linear", x.astype(np.float32), s, dtype="i16").tolist() == [101]


# ---- dequantize_linear: hand-computed values ------------------------------------------------------
def test_dequantize_linear_int32_goes_through_float64_like_the_reference():
    # numpy forms float32(x) - zp in float64 for an int32 zero point, and the product too; here
    # that rounds differently from an all-float32 computation, and the op follows numpy (the
    # ONNX reference's arithmetic).
    x, zp, scale = np.array([-570276253], np.int32), np.int32(779), np.float32(0.8225514)
    y = kernel("dequantize_linear", x, scale, zp)
    want = ((x.astype(np.float32) - zp) * scale).astype(np.float32)
    all_f32 = (x.astype(np.float32) - np.float32(zp)) * scale
    assert_bits_equal(y, want)
    assert y[0] != all_f32[0]


def test_dequantize_linear_float8_and_float16_scale():
    x = np.array([0.5, -448, 1], E4M3)
    y = kernel("dequantize_linear", x, np.float16(3))
    assert y.dtype == np.float16 and y.tolist() == [1.5, -1344.0, 3.0]


# ---- inference errors -----------------------------------------------------------------------------
def _infer(op, types, **attrs):
    opdef = registry.get(op)
    return opdef.infer(types, opdef.complete_attrs(attrs))


@pytest.mark.parametrize("op, types, attrs, match", [
    ("quantize_linear", [TensorType((3, 4)), TensorType((3, 3))], dict(block_size=2, dtype="u8"),
     r"dimension 1 should be 2"),
    ("quantize_linear", [TensorType((3, 4)), TensorType((2, 4))], dict(block_size=2, axis=1,
                                                                      dtype="u8"),
     r"dimension 0 should be 3"),
    ("quantize_linear", [TensorType((3, 4)), TensorType((3,))], dict(axis=1, dtype="u8"),
     r"3 scales for 4 elements along axis 1"),
    ("quantize_linear", [TensorType((3,)), TensorType(()), TensorType((), "i8")],
     dict(dtype="u8"), r"zero_point must be u8"),
    ("quantize_linear", [TensorType((3,)), TensorType(()), TensorType((), "f8e4m3fn")],
     dict(dtype="f8e4m3fn"), r"takes no zero_point"),
    ("quantize_linear", [TensorType((3,), "i8"), TensorType(())], dict(dtype="u8"),
     r"input must be f32 or f16"),
    ("dequantize_linear", [TensorType((3,), "f32"), TensorType(())], {},
     r"integer or float8/float4"),
    ("dequantize_linear", [TensorType((3,), "u8"), TensorType((), "i32")], {},
     r"scale must be f32 or f16"),
])
def test_bad_parameters_raise_op_error(op, types, attrs, match):
    with pytest.raises(OpError, match=match):
        _infer(op, types, **attrs)


def test_quantize_linear_dtype_choices():
    with pytest.raises(OpError, match="dtype"):
        _infer("quantize_linear", [TensorType((3,)), TensorType(())], dtype="i64")


def test_interchange_ops_infer_what_their_kernels_return():
    cases = [
        ("quantize_linear", [np.ones((2, 5), np.float32), np.ones((2, 3), np.float32),
                             np.zeros((2, 3), np.int8)], dict(block_size=2, dtype="i8")),
        ("quantize_linear", [np.ones(3, np.float16), np.float16(2)], dict(dtype="f8e5m2")),
        ("dequantize_linear", [np.ones((4, 2), np.uint8), np.ones((2, 2), np.float16)],
         dict(axis=0, block_size=2)),
        ("dequantize_linear", [np.ones(3, F4), np.float32(2)], {}),
        ("round", [np.array([0.5, 1.5], np.float32)], {}),
        ("reduce_min", [np.ones((2, 3), np.float32)], dict(axes=(1,), keepdims=True)),
    ]
    for op, arrays, attrs in cases:
        types = _infer(op, [TensorType(np.shape(a), dtype_from_numpy(np.asarray(a).dtype))
                            for a in arrays], **attrs)
        for mode in ("float", "int") if "int" in registry.get(op).kernels else ("float",):
            opdef = registry.get(op)
            out = np.asarray(opdef.kernels[mode](*arrays, **opdef.complete_attrs(attrs)))
            assert TensorType(out.shape, dtype_from_numpy(out.dtype)) == types[0], op


def test_round_and_reduce_min_kernels():
    r = kernel("round", np.array([0.5, 1.5, 2.5, -0.5, -2.5, 2.4, np.inf], np.float32))
    assert_bits_equal(r, np.array([0.0, 2, 2, -0.0, -2, 2, np.inf], np.float32))
    m = kernel("reduce_min", np.array([[3, -1, 2], [0, 5, -7]], np.int8), axes=(1,))
    assert m.dtype == np.int8 and m.tolist() == [-1, -7]
    with pytest.raises(OpError, match="empty axis"):
        _infer("reduce_min", [TensorType((2, 0))], axes=(1,))


def test_graph_with_float8_values_prints_and_parses():
    from qcompile.ir.parser import parse
    g = Graph()
    x = g.add_input("x", TensorType((5,), "f8e4m3fn"))
    s = g.add_constant("s", np.float32(2.0))
    y = g.add_node("dequantize_linear", [x, s], {"axis": 0}).outputs[0]
    q = g.add_node("quantize_linear", [y, s], {"dtype": "f8e5m2", "saturate": False})
    g.outputs = [q.outputs[0]]
    g.verify()
    text = g.dump(full=True)
    assert "tensor<5xf8e4m3fn>" in text and parse(text).dump(full=True) == text


# ---- one-node ONNX models against onnx.reference ---------------------------------------------------
def _model(nodes, inputs, outputs, inits=(), opset=21):
    graph = helper.make_graph(nodes, "m", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) if not
                               isinstance(v, TensorProto) else v for k, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _check(model, feeds: dict, ops: set = None):
    g = from_onnx(model)
    g.verify()
    if ops is not None:
        assert set(g.op_counts()) == ops, g.op_counts()
    got = Interpreter(g, "float").run(feeds)
    want = ReferenceEvaluator(model).run(None, feeds)
    for a, b in zip(got, want):
        assert_bits_equal(a, b)
    return g, got


def _f8_tensor(name, arr):
    return numpy_helper.from_array(arr, name)


@pytest.mark.parametrize("seed", range(4))
def test_blocked_quantize_linear_matches_reference(seed):
    rng = np.random.default_rng(seed)
    zp_type, np_t = [(TensorProto.UINT8, np.uint8), (TensorProto.INT8, np.int8),
                     (TensorProto.INT16, np.int16), (TensorProto.UINT16, np.uint16)][seed]
    info = np.iinfo(np_t)
    rows, cols, block = 3, 7, 3  # a short last block
    x = (rng.standard_normal((rows, cols)) * 50).astype(np.float32)
    scale = rng.uniform(0.05, 2, (rows, 3)).astype(np.float32)
    zp = rng.integers(info.min // 2 if info.min else 0, info.max // 2, (rows, 3)).astype(np_t)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=1, block_size=block)
    model = _model([node], [_vi("x", F32, x.shape)], [_vi("y", zp_type, None)],
                   [("s", scale), ("z", zp)])
    _check(model, {"x": x}, {"quantize_linear"})


def test_blocked_dequantize_linear_of_an_int4_initializer_folds_exactly():
    """Blocked 4-bit weights (the usual LLM layout) dequantize at import time to the reference's
    float32 constant, which the run-time MatMul then reads."""
    rng = np.random.default_rng(1)
    w = rng.integers(-8, 8, (8, 4)).astype(ml_dtypes.int4)
    scale = rng.uniform(0.01, 0.1, (2, 4)).astype(np.float32)
    zp = rng.integers(-2, 3, (2, 4)).astype(ml_dtypes.int4)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], axis=0, block_size=4),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    model = _model(nodes, [_vi("x", F32, (2, 8))], [_vi("y", F32, None)],
                   [("w", numpy_helper.from_array(w, "w")), ("s", scale),
                    ("z", numpy_helper.from_array(zp, "z"))])
    g = from_onnx(model)
    assert "dequantize_linear" not in g.op_counts()
    want = ReferenceEvaluator(model.graph.node[0]).run(None, {"w": w, "s": scale, "z": zp})[0]
    (const,) = [v for v in g.constants.values() if v.data.shape == (4, 8)]  # linear's (out, in)
    assert_bits_equal(const.data.T, want)


def test_blocked_dequantize_linear_of_a_run_time_int4_input():
    rng = np.random.default_rng(2)
    x = rng.integers(-8, 8, (2, 6)).astype(np.int8)
    scale = rng.uniform(0.5, 2, (2, 2)).astype(np.float32)
    zp = rng.integers(-8, 8, (2, 2)).astype(ml_dtypes.int4)
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=1, block_size=3)
    model = _model([node], [_vi("x", TensorProto.INT4, x.shape)], [_vi("y", F32, None)],
                   [("s", scale), ("z", numpy_helper.from_array(zp, "z"))])
    g = from_onnx(model)
    assert g.op_counts() == {"dequantize_linear": 1}
    assert [v.dtype for v in g.constants.values() if v.data.dtype == np.int8] == ["i4"]
    (got,) = Interpreter(g, "float").run({"x": x})
    want = ReferenceEvaluator(model).run(None, {"x": x.astype(ml_dtypes.int4)})[0]
    assert_bits_equal(got, want)


@pytest.mark.parametrize("elem, np_t", [(TensorProto.FLOAT8E4M3FN, E4M3),
                                        (TensorProto.FLOAT8E5M2, E5M2),
                                        (TensorProto.FLOAT4E2M1, F4)])
@pytest.mark.parametrize("saturate", [1, 0])
def test_float8_quantize_linear_matches_reference(elem, np_t, saturate):
    rng = np.random.default_rng(5)
    special = [0.0, -0.0, np.inf, -np.inf, 1e9, -1e9, 448, 464, 57344, 61440, 7, 0.001,
               np.nan, -np.nan, 5.0, 0.25, 0.75]
    x = np.concatenate([rng.standard_normal(40) * 100, special]).astype(np.float32)
    scale = rng.uniform(0.1, 2, x.size).astype(np.float32)
    kw = {"saturate": saturate} if elem != TensorProto.FLOAT4E2M1 else {}
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=0, **kw)
    model = _model([node], [_vi("x", F32, x.shape)], [_vi("y", elem, None)],
                   [("s", scale), ("z", numpy_helper.from_array(np.zeros(x.size, np_t), "z"))])
    _check(model, {"x": x}, {"quantize_linear"})


@pytest.mark.parametrize("elem, np_t", [(TensorProto.FLOAT8E4M3FN, E4M3),
                                        (TensorProto.FLOAT8E5M2, E5M2),
                                        (TensorProto.FLOAT4E2M1, F4)])
@pytest.mark.parametrize("scale_t", [np.float32, np.float16])
def test_float8_dequantize_linear_matches_reference_on_every_code(elem, np_t, scale_t):
    x = np.arange(16 if np_t is F4 else 256, dtype=np.uint8).view(np_t)  # every code
    node = helper.make_node("DequantizeLinear", ["x", "s"], ["y"])
    s_elem = TensorProto.FLOAT if scale_t is np.float32 else TensorProto.FLOAT16
    model = _model([node], [_vi("x", elem, x.shape)], [_vi("y", s_elem, None)],
                   [("s", scale_t(0.375))])
    _check(model, {"x": x}, {"dequantize_linear"})


def test_nonzero_float8_zero_point_is_refused():
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])
    model = _model([node], [_vi("x", TensorProto.FLOAT8E4M3FN, (3,))], [_vi("y", F32, None)],
                   [("s", np.float32(1)), ("z", numpy_helper.from_array(np.array(1, E4M3), "z"))])
    with pytest.raises(FrontendError, match="zero point .* must be 0|requires float8/float4 zero"):
        from_onnx(model)


def test_cast_to_float8_is_refused():
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E4M3FN)
    model = _model([node], [_vi("x", F32, (3,))], [_vi("y", TensorProto.FLOAT8E4M3FN, None)])
    with pytest.raises(FrontendError, match="Cast"):
        from_onnx(model)


def test_run_time_scale_and_zero_point():
    """Scale and zero point as graph inputs: QuantizeLinear and DequantizeLinear nodes."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    model = _model(nodes, [_vi("x", F32, (2, 5)), _vi("s", F32, ()),
                           _vi("z", TensorProto.INT8, ())],
                   [_vi("q", TensorProto.INT8, None), _vi("y", F32, None)])
    rng = np.random.default_rng(3)
    feeds = {"x": (rng.standard_normal((2, 5)) * 4).astype(np.float32),
             "s": np.float32(0.037), "z": np.int8(-5)}
    _check(model, feeds, {"quantize_linear", "dequantize_linear"})


def test_constant_per_tensor_parameters_still_become_quant_params():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
             helper.make_node("Relu", ["y"], ["r"])]
    model = _model(nodes, [_vi("x", F32, (2, 3))], [_vi("r", F32, None)],
                   [("s", np.float32(0.1)), ("z", np.int8(2))])
    g = from_onnx(model)
    assert g.op_counts() == {"relu": 1} and g.inputs[0].quant.zero_point == (2,)


def test_float16_quantize_and_dequantize_of_integers():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT16, (6,))], [_vi("q", TensorProto.UINT8, None)],
                   [("s", np.float16(0.3)), ("z", np.uint8(100))])
    x = np.array([1.0, -2.5, 30.1, 0.15, 0.45, -29.9], np.float16)
    _check(model, {"x": x}, {"quantize_linear"})
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])
    model = _model([node], [_vi("q", TensorProto.UINT8, (4,))],
                   [_vi("y", TensorProto.FLOAT16, None)], [("s", np.float16(0.3)),
                                                           ("z", np.uint8(100))])
    _check(model, {"q": np.array([0, 100, 255, 7], np.uint8)}, {"dequantize_linear"})


# ---- the ops of the expanded DynamicQuantizeLinear --------------------------------------------------
def test_reduce_min_max_with_axes_input_and_keepdims():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    nodes = [helper.make_node("ReduceMin", ["x", "ax"], ["a"], keepdims=1),
             helper.make_node("ReduceMax", ["x", "ax"], ["b"], keepdims=0),
             helper.make_node("ReduceMin", ["x"], ["c"], keepdims=0)]
    model = _model(nodes, [_vi("x", F32, x.shape)], [_vi(n, F32, None) for n in "abc"],
                   [("ax", np.array([-1, 0], np.int64))], opset=18)
    g, (a, b, c) = _check(model, {"x": x}, {"reduce_min", "reduce_max"})
    assert a.shape == (1, 3, 1) and b.shape == (3,) and c.shape == ()


def test_nary_min_max_round_and_clip_with_run_time_bounds():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 4)) * 3).astype(np.float32)
    x[0, :4] = [0.5, 1.5, 2.5, -2.5]
    lo, hi = np.float32(-1.5), np.float32(2.0)
    nodes = [helper.make_node("Min", ["x", "lo", "hi"], ["mn"]),
             helper.make_node("Max", ["x", "lo", "hi"], ["mx"]),
             helper.make_node("Round", ["x"], ["r"]),
             helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
             helper.make_node("Clip", ["x", "", "hi"], ["c_hi"])]
    model = _model(nodes, [_vi("x", F32, x.shape), _vi("lo", F32, ()), _vi("hi", F32, ())],
                   [_vi(n, F32, None) for n in ("mn", "mx", "r", "c", "c_hi")], opset=13)
    g, outs = _check(model, {"x": x, "lo": lo, "hi": hi},
                     {"minimum", "maximum", "round"})
    assert outs[2][0].tolist() == [0.0, 2.0, 2.0, -2.0]


def test_cast_of_a_rounded_float_to_uint8_is_exact():
    x = np.array([0.0, 1.0, 254.0, 255.0, 17.0], np.float32)
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.UINT8)
    model = _model([node], [_vi("x", F32, x.shape)], [_vi("y", TensorProto.UINT8, None)])
    _check(model, {"x": x}, {"cast"})


def _expanded_dynamic_quantize_linear():
    from onnx import defs
    from onnx.backend.test.case.node import function_expand_helper
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero_point"])
    schema = defs.get_schema("DynamicQuantizeLinear", 11)
    nodes = function_expand_helper(node, schema.function_body, "dql")
    outs = [_vi("y", TensorProto.UINT8, None), _vi("y_scale", F32, None),
            _vi("y_zero_point", TensorProto.UINT8, None)]
    return nodes, outs


@pytest.mark.parametrize("seed", range(5))
def test_expanded_dynamic_quantize_linear_matches_reference(seed):
    nodes, outs = _expanded_dynamic_quantize_linear()
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(17) * rng.uniform(0.1, 50) + rng.uniform(-5, 5)).astype(np.float32)
    model = _model(nodes, [_vi("x", F32, x.shape)], outs, opset=11)
    g, _ = _check(model, {"x": x})
    assert "quantize_linear" in g.op_counts()


def test_blocked_dequantize_linear_of_int32_with_int32_zero_point():
    """An i32 zero point stays i32 (not the i64 the builder gives plain int32 constants), and
    the float64 arithmetic numpy does for it matches the reference bit for bit."""
    rng = np.random.default_rng(6)
    x = rng.integers(-2 ** 31, 2 ** 31 - 1, (4, 3)).astype(np.int32)
    scale = rng.uniform(0.001, 1, (2, 3)).astype(np.float32)
    zp = rng.integers(-1000, 1000, (2, 3)).astype(np.int32)
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=0, block_size=2)
    model = _model([node], [_vi("x", TensorProto.INT32, x.shape)], [_vi("y", F32, None)],
                   [("s", scale), ("z", zp)])
    g, _ = _check(model, {"x": x}, {"dequantize_linear"})
    assert sorted(v.dtype for v in g.constants.values()) == ["f32", "i32"]


def test_per_tensor_dequantize_linear_of_a_run_time_int32_follows_the_reference():
    """int32 codes above 2**24 round when ONNX converts them to float32; the IR's dequantize
    would be exact, so such a DequantizeLinear imports as dequantize_linear."""
    rng = np.random.default_rng(8)
    x = rng.integers(-2 ** 31, 2 ** 31 - 1, (64,)).astype(np.int32)
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])
    model = _model([node], [_vi("x", TensorProto.INT32, x.shape)], [_vi("y", F32, None)],
                   [("s", np.float32(0.8225514)), ("z", np.int32(779))])
    _check(model, {"x": x}, {"dequantize_linear"})
