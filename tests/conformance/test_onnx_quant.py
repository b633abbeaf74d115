"""ONNX quantization conformance: the onnx package's own node test cases for QuantizeLinear,
DequantizeLinear, QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger and
DynamicQuantizeLinear, imported with `from_onnx`, run in the interpreter and compared with
the cases' expected outputs bit for bit.

The cases feed scales and zero points as graph inputs; QuantParams are compile-time facts, so
those inputs (and convolution weights, which real models hold as initializers) are frozen into
initializers with the case's values before import. Everything else stays a run-time input.
Parameters QuantParams cannot hold (blocked, float8/float4, the run-time scale of the expanded
DynamicQuantizeLinear) import as `quantize_linear` / `dequantize_linear` (CASE_OPS). A case
qcompile cannot represent would be a strict xfail naming what it needs (UNSUPPORTED).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from qcompile import from_onnx  # noqa: E402
from qcompile.errors import FrontendError  # noqa: E402
from qcompile.frontend.onnx_qops import freeze_inputs  # noqa: E402
from qcompile.interp.interpreter import Interpreter  # noqa: E402
from qcompile.ir.ops import registry  # noqa: E402
from qcompile.ir.types import int_bits, is_int, is_signed  # noqa: E402

from .gen_onnx_quant_cases import collect_cases, write_case  # noqa: E402

CASES = {c.name: c for c in collect_cases()}

# Per ONNX op: the input positions holding quantization parameters (plus conv weights/bias).
FROZEN_INPUTS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2),
                 "QLinearConv": (1, 2, 3, 4, 5, 6, 7, 8), "QLinearMatMul": (1, 2, 4, 5, 6, 7),
                 "ConvInteger": (1, 2, 3), "MatMulInteger": (2, 3)}
# The IR ops each ONNX op must import as (exactly this set for a one-node case).
EXPECTED_OPS = {"QuantizeLinear": {"quantize"}, "DequantizeLinear": {"dequantize"},
                "QLinearConv": {"qconv2d", "requantize_float"},
                "QLinearMatMul": {"qmatmul", "requantize_float"},
                "ConvInteger": {"qconv2d"}, "MatMulInteger": {"qmatmul"},
                "DynamicQuantizeLinear": {"dynamic_quantize_linear"}}

# Cases whose import differs from their op's EXPECTED_OPS: parameters QuantParams cannot hold
# (blocks, float8/float4 storage, run-time scales) import as the interchange ops, and the
# expanded DynamicQuantizeLinear is a graph of several ONNX ops.
_QL, _DQL = {"quantize_linear"}, {"dequantize_linear"}
_EXPANDED_DQL = {"reduce_min", "reduce_max", "minimum", "maximum", "sub", "div", "clip", "round",
                 "cast", "quantize_linear"}
CASE_OPS = {
    "test_quantizelinear_e4m3fn": _QL, "test_quantizelinear_e5m2": _QL,
    "test_quantizelinear_float4e2m1": _QL, "test_quantizelinear_blocked_asymmetric": _QL,
    "test_quantizelinear_blocked_symmetric": _QL,
    "test_dequantizelinear_e4m3fn": _DQL, "test_dequantizelinear_e4m3fn_float16": _DQL,
    "test_dequantizelinear_e4m3fn_zero_point": _DQL, "test_dequantizelinear_e5m2": _DQL,
    "test_dequantizelinear_float4e2m1": _DQL, "test_dequantizelinear_blocked": _DQL,
    "test_dynamicquantizelinear_expanded": _EXPANDED_DQL,
    "test_dynamicquantizelinear_max_adjusted_expanded": _EXPANDED_DQL,
    "test_dynamicquantizelinear_min_adjusted_expanded": _EXPANDED_DQL,
}

# Unsupported cases: (reason, pattern the FrontendError must match, so each fails for its reason).
# Every official case imports now; an entry here must name a real case.
UNSUPPORTED: dict[str, tuple[str, str]] = {}


@pytest.fixture(scope="session")
def onnx_cases(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx_quant_cases")
    for case in CASES.values():
        write_case(case, out)
    return out


def _read_tensor(path: Path) -> TensorProto:
    t = TensorProto()
    t.ParseFromString(path.read_bytes())
    return t


def _load(case_dir: Path):
    model = onnx.load(str(case_dir / "model.onnx"))
    data = case_dir / "test_data_set_0"
    ins = [_read_tensor(data / f"input_{j}.pb") for j in range(len(model.graph.input))]
    outs = [_read_tensor(data / f"output_{j}.pb") for j in range(len(model.graph.output))]
    return model, ins, outs


def _frozen(model, ins) -> dict:
    """{input name: tensor} for the graph inputs that hold quantization parameters."""
    by_name = {vi.name: t for vi, t in zip(model.graph.input, ins)}
    frozen = {}
    for node in model.graph.node:
        for pos in FROZEN_INPUTS.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos] in by_name:
                frozen[node.input[pos]] = by_name[node.input[pos]]
    return frozen


def _interpreter_mode(graph) -> str:
    """"int" when every op has an integer kernel (an integer graph), else "float"."""
    ops = {n.op for n in graph.nodes}
    return "int" if all("int" in registry.get(op).kernels for op in ops) else "float"


def _assert_exact(got: np.ndarray, ir_dtype: str, want: TensorProto, name: str) -> None:
    expected = numpy_helper.to_array(want)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != {expected.shape}"
    if is_int(ir_dtype) and expected.dtype.kind not in "iuf":  # ml_dtypes int4 / int2 outputs
        bits_signed = {"int4": (4, True), "uint4": (4, False), "int2": (2, True),
                       "uint2": (2, False)}[expected.dtype.name]
        assert (int_bits(ir_dtype), is_signed(ir_dtype)) == bits_signed, (name, ir_dtype)
        expected = expected.astype(np.int64)
        got = got.astype(np.int64)
    else:
        assert got.dtype == expected.dtype, f"{name}: dtype {got.dtype} != {expected.dtype}"
    # Bit for bit: compare the stored bytes, so -0 against +0 (and nan payloads) count too.
    width = np.dtype(f"u{got.dtype.itemsize}")
    diff = np.ascontiguousarray(got).view(width) != np.ascontiguousarray(expected).view(width)
    assert not diff.any(), (f"{name}: {int(diff.sum())} of {diff.size} values differ\n"
                            f"got      {got.reshape(-1)[:16]}\n"
                            f"expected {expected.reshape(-1)[:16]}")


# ml_dtypes' packed narrow integers (what `numpy_helper.to_array` returns for INT4/UINT4/INT2/
# UINT2 tensors) -> the ordinary numpy dtype an IR value of that width is held in.
_UNPACKED = {"int4": np.int8, "uint4": np.uint8, "int2": np.int8, "uint2": np.uint8}


def _feed(t: TensorProto) -> np.ndarray:
    """A case's input tensor as the interpreter takes it: narrow integers one code per int8/uint8
    element (the case files pack two 4-bit or four 2-bit codes per byte)."""
    arr = numpy_helper.to_array(t)
    wide = _UNPACKED.get(arr.dtype.name)
    return arr if wide is None else arr.astype(wide)


def run_case(case_dir: Path):
    """Import one case (quantization parameters frozen) and run it; returns the graph and the
    outputs next to the expected tensors."""
    model, ins, outs = _load(case_dir)
    frozen = _frozen(model, ins)
    graph = from_onnx(freeze_inputs(model, frozen))
    graph.verify()
    feeds = {vi.name: _feed(t) for vi, t in zip(model.graph.input, ins) if vi.name not in frozen}
    got = Interpreter(graph, _interpreter_mode(graph)).run(feeds)
    return graph, model, got, outs


def _param(name: str):
    if name in UNSUPPORTED:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, raises=FrontendError,
                                                          reason=UNSUPPORTED[name][0]))
    return pytest.param(name)


@pytest.mark.parametrize("name", [_param(n) for n in CASES])
def test_onnx_node_case(name, onnx_cases):
    try:
        graph, model, got, outs = run_case(onnx_cases / name)
    except FrontendError as exc:
        if name in UNSUPPORTED:  # a failure for another reason is no expected failure
            assert re.search(UNSUPPORTED[name][1], str(exc)), str(exc)
        raise
    if name in CASE_OPS:
        assert set(graph.op_counts()) == CASE_OPS[name], graph.op_counts()
    else:
        onnx_ops = {n.op_type for n in model.graph.node}
        assert len(onnx_ops) == 1, onnx_ops
        assert set(graph.op_counts()) == EXPECTED_OPS[onnx_ops.pop()], graph.op_counts()
    assert len(got) == len(outs)
    for g, v, want in zip(got, graph.outputs, outs):
        _assert_exact(np.asarray(g), v.dtype, want, f"{name}:{v.name}")


def test_unsupported_table_names_real_cases():
    """A stale entry (a case renamed or dropped by a newer onnx) would hide nothing silently."""
    assert set(UNSUPPORTED) <= set(CASES), sorted(set(UNSUPPORTED) - set(CASES))


def test_integer_cases_run_in_int_mode(onnx_cases):
    """QLinearConv imports as an integer graph: integer ops only, run with "int" kernels."""
    graph, *_ = run_case(onnx_cases / "test_qlinearconv")
    assert _interpreter_mode(graph) == "int"
    acc = graph.find("qconv2d")[0].outputs[0]
    assert acc.dtype == "i32" and acc.quant.zero_point == (0,) and acc.quant.bits == 32


# ---- beyond the official cases: random models against onnx.reference ---------------------------
def _reference(model, feeds: dict) -> list:
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(model).run(None, feeds)


def _qlinear_conv_model(rng, signed: bool, per_channel: bool, bias: bool):
    qt, np_t = (TensorProto.INT8, np.int8) if signed else (TensorProto.UINT8, np.uint8)
    lo, hi = (-128, 127) if signed else (0, 255)
    cin, cout, groups = 4, 6, 2
    x = rng.integers(lo, hi + 1, (1, cin, 7, 6)).astype(np_t)
    w = rng.integers(-127, 128, (cout, cin // groups, 3, 3)).astype(np.int8)
    nsc = cout if per_channel else 1
    inits = {
        "xs": np.float32(rng.uniform(0.002, 0.05)), "xz": np_t(rng.integers(lo, hi + 1)),
        "w": w, "ws": rng.uniform(0.001, 0.02, nsc).astype(np.float32),
        "wz": np.zeros(nsc, np.int8),
        "ys": np.float32(rng.uniform(0.01, 0.2)), "yz": np_t(rng.integers(lo, hi + 1)),
    }
    names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias:
        inits["b"] = rng.integers(-5000, 5000, cout).astype(np.int32)
        names.append("b")
    node = helper.make_node("QLinearConv", names, ["y"], pads=[1, 0, 1, 2], strides=[1, 2],
                            group=groups)
    graph = helper.make_graph([node], "qconv", [helper.make_tensor_value_info("x", qt, x.shape)],
                              [helper.make_tensor_value_info("y", qt, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), {"x": x}


@pytest.mark.parametrize("seed", range(6))
def test_random_qlinear_conv_matches_reference(seed):
    rng = np.random.default_rng(seed)
    model, feeds = _qlinear_conv_model(rng, signed=bool(seed % 2), per_channel=seed % 3 != 0,
                                       bias=seed % 3 != 1)
    graph = from_onnx(model)
    graph.verify()
    (got,) = Interpreter(graph, "int").run(feeds)
    (want,) = _reference(model, feeds)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def _qlinear_matmul_model(a, b, scales, zero_points, const_b: bool):
    """QLinearMatMul(a, b) with constant scales (as, bs, ys) and zero points (az, bz, yz)."""
    qt = helper.np_dtype_to_tensor_dtype(a.dtype)
    inits = dict(zip(("as", "bs", "ys"), scales), **dict(zip(("az", "bz", "yz"), zero_points)))
    if const_b:
        inits["b"] = b
    inputs = [helper.make_tensor_value_info("a", qt, a.shape)]
    if not const_b:
        inputs.append(helper.make_tensor_value_info("b", qt, b.shape))
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    graph = helper.make_graph([node], "qmm", inputs, [helper.make_tensor_value_info("y", qt, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return model, ({"a": a} if const_b else {"a": a, "b": b})


def _run_against_reference(model, feeds, op: str):
    g = from_onnx(model)
    assert op in g.op_counts(), g.op_counts()
    (got,) = Interpreter(g, "int").run(feeds)
    (want,) = _reference(model, feeds)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    return got


@pytest.mark.parametrize("seed", range(4))
def test_random_qlinear_matmul_matches_reference(seed):
    """Both paths: a run-time right operand (qmatmul) and a constant one with per-column
    scales and zero points (a per-channel qlinear)."""
    rng = np.random.default_rng(100 + seed)
    const_b = seed % 2 == 0
    a = rng.integers(0, 256, (3, 5, 16)).astype(np.uint8)
    b = rng.integers(0, 256, (16, 7)).astype(np.uint8)
    ranges = ((0.01, 0.05), (0.01, 0.05), (0.05, 0.5))
    scales = [np.float32(rng.uniform(lo, hi)) for lo, hi in ranges]
    zps = [np.uint8(rng.integers(0, 256)) for _ in range(3)]
    if const_b:  # per-column weight parameters: a per-channel qlinear
        scales[1] = rng.uniform(0.01, 0.05, 7).astype(np.float32)
        zps[1] = rng.integers(0, 256, 7).astype(np.uint8)
    model, feeds = _qlinear_matmul_model(a, b, scales, zps, const_b)
    _run_against_reference(model, feeds, "qlinear" if const_b else "qmatmul")


def test_requantize_float_ties_to_even():
    """M = 0.5 exactly: odd accumulators are ties, which ONNX rounds to even."""
    acc = np.array([1, 3, 5, 7, -1, -3, -5, -7, 4], np.int8)
    model, feeds = _qlinear_matmul_model(acc.reshape(-1, 1), np.ones((1, 1), np.int8),
                                         [np.float32(1), np.float32(0.5), np.float32(1)],
                                         [np.int8(0)] * 3, const_b=False)
    got = _run_against_reference(model, feeds, "qmatmul")
    assert got.reshape(-1).tolist() == [0, 2, 2, 4, 0, -2, -2, -4, 2]


@pytest.mark.parametrize("scale_type", [np.float32, np.float16])
def test_multiplier_is_rounded_in_the_scale_type(scale_type):
    """ONNX forms x_scale * w_scale / y_scale in the scales' own float type. Find scales where
    that multiplier and the exact quotient round some int8 product differently, and check the
    import follows ONNX there."""
    rng = np.random.default_rng(7)
    codes = np.arange(-128, 128)
    products = np.outer(codes, codes)
    for _ in range(1000):
        s = rng.uniform(0.01, 0.1, 3).astype(scale_type)
        m_onnx = float(scale_type(scale_type(s[0] * s[1]) / s[2]))
        m_exact = float(s[0]) * float(s[1]) / float(s[2])
        ia, ib = np.nonzero(np.clip(np.rint(products * m_onnx), -128, 127) !=
                            np.clip(np.rint(products * m_exact), -128, 127))
        if ia.size:
            break
    else:
        pytest.fail("no discriminating scales found")
    a = codes[ia[:8]].astype(np.int8).reshape(-1, 1)
    b = codes[ib[:8]].astype(np.int8).reshape(1, -1)
    model, feeds = _qlinear_matmul_model(a, b, list(s), [np.int8(0)] * 3, const_b=False)
    got = _run_against_reference(model, feeds, "qmatmul")
    exact = np.clip(np.rint((a.astype(np.int64) * b) * m_exact), -128, 127)
    assert (np.diagonal(got) != np.diagonal(exact)).all()


def test_accumulator_product_is_float64():
    """The ONNX reference multiplies the int32 accumulator by the multiplier in float64 (numpy
    promotes int32 x float32). Find an accumulator above 2**24 where a float32 product (as
    onnxruntime's MLAS computes) rounds differently, build a QLinearMatMul that sums to it,
    and check the import follows the reference."""
    rng = np.random.default_rng(3)
    accs = np.arange(2 ** 24, 2 ** 24 + 2 ** 21, dtype=np.int64)
    for _ in range(100):
        m = np.float32(rng.uniform(1e-6, 7e-6))
        hit = np.nonzero(np.rint(accs * float(m)) != np.rint(accs.astype(np.float32) * m))[0]
        if hit.size:
            break
    else:
        pytest.fail("no discriminating accumulator found")
    target = int(accs[hit[0]])
    q, r = divmod(target, 255 * 255)  # target = sum a_i b_i with u8 codes, zero points 0
    a = np.array([255] * q + [255, r % 255], np.uint8).reshape(1, -1)
    b = np.array([255] * q + [r // 255, 1], np.uint8).reshape(-1, 1)
    assert (a.astype(np.int64) @ b.astype(np.int64)).item() == target
    model, feeds = _qlinear_matmul_model(a, b, [m, np.float32(1), np.float32(1)],
                                         [np.uint8(0)] * 3, const_b=False)
    got = _run_against_reference(model, feeds, "qmatmul")
    assert int(got[0, 0]) == int(np.rint(target * float(m)))
    assert int(got[0, 0]) != int(np.rint(np.float32(target) * m))


# ---- import behaviour ---------------------------------------------------------------------------
def _qdq_relu_model():
    s = numpy_helper.from_array(np.float32(0.05), "s")
    z = numpy_helper.from_array(np.int8(3), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Relu", ["dq"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", 1, (2, 3))],
                              [helper.make_tensor_value_info("y", 1, (2, 3))], [s, z])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_qdq_pair_still_becomes_quant_params():
    g = from_onnx(_qdq_relu_model())
    assert "quantize" not in g.op_counts() and "dequantize" not in g.op_counts()
    assert g.inputs[0].quant is not None and g.inputs[0].quant.zero_point == (3,)


def test_quantize_output_read_as_integer_becomes_a_node():
    """The same Q, also a graph output: a real quantize node, and the DQ a real dequantize."""
    model = _qdq_relu_model()
    model.graph.output.append(helper.make_tensor_value_info("q", TensorProto.INT8, (2, 3)))
    g = from_onnx(model)
    assert g.op_counts()["quantize"] == 1 and g.op_counts()["dequantize"] == 1
    x = np.array([[-1.0, 0.025, 0.075], [6.4, -7.0, 0.124]], np.float32)
    y, q = Interpreter(g, "float").run([x])
    np.testing.assert_array_equal(q, _reference(model, {"x": x})[1])
    np.testing.assert_array_equal(y, _reference(model, {"x": x})[0])


def test_dynamic_zero_point_cannot_feed_matmul_integer():
    """DynamicQuantizeLinear -> MatMulInteger reads a zero point computed at run time."""
    b = numpy_helper.from_array(np.ones((3, 2), np.uint8), "b")
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("MatMulInteger", ["q", "b", "z"], ["y"])]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", 1, (2, 3))],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, (2, 2))], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(FrontendError, match=r"MatMulInteger.*zero point is computed at run time"):
        from_onnx(model)


def test_conflicting_parameters_on_one_input_are_reported():
    """One u8 graph input read by two QLinearMatMuls with different scales has no single
    QuantParams; the error names the input and both scales."""
    consts = [numpy_helper.from_array(np.asarray(v), k) for k, v in {
        "s1": np.float32(0.1), "s2": np.float32(0.2), "z": np.uint8(0),
        "b": np.ones((3, 2), np.uint8)}.items()]
    nodes = [helper.make_node("QLinearMatMul", ["a", "s1", "z", "b", "s1", "z", "s1", "z"], ["y1"]),
             helper.make_node("QLinearMatMul", ["a", "s2", "z", "b", "s1", "z", "s1", "z"], ["y2"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("a", 2, (2, 3))],
                              [helper.make_tensor_value_info("y1", 2, None),
                               helper.make_tensor_value_info("y2", 2, None)], consts)
    with pytest.raises(FrontendError, match=r"a already carries scale"):
        from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_freeze_inputs_rejects_unknown_names():
    with pytest.raises(FrontendError, match="not inputs of graph"):
        freeze_inputs(_qdq_relu_model(), {"nope": np.float32(1)})


def test_onnxruntime_qoperator_model(tmp_path):
    """A float model quantized by onnxruntime in QOperator format (QuantizeLinear, QLinearConv
    with int32 bias and per-channel weights, Flatten, QLinearMatMul, DequantizeLinear) imports
    as an integer graph and runs bit-exact with the ONNX reference and with onnxruntime.
    reduce_range keeps weights to 7 bits: full-range u8 x s8 products saturate in onnxruntime's
    x86 kernels without VNNI, which no exact reference reproduces."""
    ort = pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(0, 0.3, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, 8),
             "w2": rng.normal(0, 0.2, (4, 8, 3, 3)), "wm": rng.normal(0, 0.2, (4 * 6 * 6, 10))}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("MatMul", ["f", "wm"], ["y"])]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", 1, (1, 3, 12, 12))],
        [helper.make_tensor_value_info("y", 1, (1, 10))],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
              tmp_path / "float.onnx")
    batches = [rng.normal(0, 1, (1, 3, 12, 12)).astype(np.float32) for _ in range(12)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": x} for x in batches[:8])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "q.onnx"), Reader(),
                    quant_format=QuantFormat.QOperator, per_channel=True, reduce_range=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    g = from_onnx(tmp_path / "q.onnx")
    g.verify()
    assert g.op_counts() == {"quantize": 1, "qconv2d": 2, "flatten": 1, "qlinear": 1,
                             "requantize_float": 3, "dequantize": 1}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    model21 = onnx.load(str(tmp_path / "q.onnx"))  # onnx.reference has Q/DQ from opset 19
    for imp in model21.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = 21
    interp = Interpreter(g, "int")
    for x in batches:
        (got,) = interp.run([x])
        np.testing.assert_array_equal(got, _reference(model21, {"x": x})[0])
        np.testing.assert_array_equal(got, session.run(None, {"x": x})[0])


# ---- the two interchange ops on their own -------------------------------------------------------
@pytest.mark.parametrize("x", [np.zeros((2, 3)), np.full((4,), 2.5), np.full((4,), -0.7),
                               np.array([[-3.1, 0.2, 7.75], [1e-3, -1e-3, 0.0]])],
                         ids=["zeros", "positive", "negative", "mixed"])
def test_dynamic_quantize_linear_matches_reference(x):
    x = x.astype(np.float32)
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    graph = helper.make_graph([node], "dql", [helper.make_tensor_value_info("x", 1, x.shape)],
                              [helper.make_tensor_value_info(n, t, None)
                               for n, t in (("y", 2), ("s", 1), ("z", 2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    g = from_onnx(model)
    got = Interpreter(g, "int").run([x])
    for a, v, b in zip(got, g.outputs, _reference(model, {"x": x})):
        assert a.dtype == b.dtype and a.shape == b.shape, (v, a.dtype, b.dtype)
        np.testing.assert_array_equal(a, b)


def test_interchange_ops_infer_what_their_kernels_return():
    from qcompile.ir.types import QuantParams, TensorType, dtype_from_numpy
    acc = np.array([[1000, -2000, 37], [5, 0, -1]], np.int32)
    x = np.array([[-1.5, 0.25, 3.0]], np.float32)
    examples = [
        ("requantize_float", [acc], dict(dtype="u8"),
         dict(in_quant=[QuantParams((0.001, 0.002, 0.003), (0, 0, 0), 32, True, 1)],
              out_quant=[QuantParams((0.05,), (128,), 8, False)])),
        ("dynamic_quantize_linear", [x], {}, {}),
    ]
    for op, arrays, attrs, quant in examples:
        opdef = registry.get(op)
        attrs = opdef.complete_attrs(attrs)
        types = opdef.infer([TensorType(a.shape, dtype_from_numpy(a.dtype)) for a in arrays],
                            attrs)
        for mode in ("int", "float"):
            outs = opdef.kernels[mode](*arrays, **attrs, **quant)
            outs = outs if isinstance(outs, tuple) else (outs,)
            assert [TensorType(o.shape, dtype_from_numpy(o.dtype)) for o in outs] == types, op
