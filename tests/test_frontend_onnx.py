"""ONNX front end: exporter output, old opsets, shape-chain folding, QDQ models, and errors."""
from __future__ import annotations

import logging

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from qcompile.errors import FrontendError  # noqa: E402
from qcompile.frontend import from_onnx  # noqa: E402
from qcompile.interp import run  # noqa: E402

logging.getLogger("torch").setLevel(logging.ERROR)


def rel_err(out, ref) -> float:
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))


class FlattenNet(nn.Module):
    """`x.view(x.size(0), -1)`: the legacy exporter writes Shape -> Gather -> Unsqueeze -> Concat."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 1)
        return torch.softmax(self.fc(x.view(x.size(0), -1)), dim=1)


def export_legacy(model, x, path, opset=17, dynamic=True):
    kw = dict(input_names=["x"], output_names=["y"], opset_version=opset, dynamo=False)
    if dynamic:
        kw["dynamic_axes"] = {"x": {0: "N"}, "y": {0: "N"}}
    torch.onnx.export(model, (x,), str(path), **kw)
    return str(path)


@pytest.fixture(scope="module")
def flatten_net(tmp_path_factory):
    torch.manual_seed(0)
    model = FlattenNet().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    path = export_legacy(model, x, tmp_path_factory.mktemp("onnx") / "flatten.onnx")
    return model, x, path


def test_shape_chain_folds_with_input_shapes(flatten_net):
    model, x, path = flatten_net
    proto_ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"Shape", "Gather", "Concat", "Reshape"} <= proto_ops
    g = from_onnx(path, input_shapes={"x": (2, 3, 8, 8)})
    g.verify()
    assert g.inputs[0].shape == (2, 3, 8, 8)
    assert g.op_counts()["reshape"] == 1
    assert g.find("reshape")[0].attrs["shape"] == (2, 144)
    assert rel_err(run(g, [x.numpy()])[0], model(x).detach().numpy()) < 1e-5
    # Node locations are the ONNX node names; weights keep their names.
    assert all(n.loc for n in g.nodes)
    assert "fc.weight" in g.constants or any("fc" in n for n in g.constants)


def test_dynamic_shape_chain_without_input_shapes_asks_for_them(flatten_net):
    _, _, path = flatten_net
    with pytest.raises(FrontendError, match="input_shapes"):
        from_onnx(path)


def test_input_shapes_as_list_and_errors(flatten_net):
    model, x, path = flatten_net
    g = from_onnx(path, input_shapes=[(3, 3, 8, 8)])
    x3 = torch.randn(3, 3, 8, 8)
    assert rel_err(run(g, [x3.numpy()])[0], model(x3).detach().numpy()) < 1e-5
    with pytest.raises(FrontendError, match="inputs are"):
        from_onnx(path, input_shapes={"nope": (1, 3, 8, 8)})
    with pytest.raises(FrontendError, match="rank"):
        from_onnx(path, input_shapes={"x": (1, 3, 8)})


def test_old_opset_is_upgraded(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3), nn.Softmax(dim=1)).eval()
    x = torch.randn(1, 3, 5, 5)
    path = export_legacy(model, x, tmp_path / "old.onnx", opset=9, dynamic=False)
    assert onnx.load(path).opset_import[0].version == 9
    g = from_onnx(path)
    assert rel_err(run(g, [x.numpy()])[0], model(x).detach().numpy()) < 1e-5


def _qdq_model(per_channel: bool, weight_int: np.ndarray, w_scale, bias_int, x_scale, y_scale):
    """A hand-written QDQ conv: Q/DQ on the input, DQ on int8 weights and int32 bias, Q/DQ out."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xdq"]),
        helper.make_node("DequantizeLinear", ["w_q", "ws", "wz"], ["w"],
                         **({"axis": 0} if per_channel else {})),
        helper.make_node("DequantizeLinear", ["b_q", "bs", "bz"], ["b"],
                         **({"axis": 0} if per_channel else {})),
        helper.make_node("Conv", ["xdq", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="the_conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="the_relu"),
        helper.make_node("QuantizeLinear", ["relu", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    oc = weight_int.shape[0]
    bias_scale = np.asarray(x_scale * np.asarray(w_scale), np.float32)
    inits = [
        numpy_helper.from_array(np.float32(x_scale), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
        numpy_helper.from_array(weight_int.astype(np.int8), "w_q"),
        numpy_helper.from_array(np.asarray(w_scale, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(np.shape(w_scale), np.int8), "wz"),
        numpy_helper.from_array(bias_int.astype(np.int32), "b_q"),
        numpy_helper.from_array(bias_scale, "bs"),
        numpy_helper.from_array(np.zeros(np.shape(w_scale), np.int32), "bz"),
        numpy_helper.from_array(np.float32(y_scale), "ys"), numpy_helper.from_array(np.uint8(0), "yz"),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, oc, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_model_imports_as_float_graph_with_quant_params(per_channel):
    rng = np.random.default_rng(0)
    w_int = rng.integers(-127, 128, (4, 3, 3, 3))
    w_scale = rng.uniform(0.002, 0.01, 4).astype(np.float32) if per_channel else np.float32(0.005)
    b_int = rng.integers(-500, 500, 4)
    model = _qdq_model(per_channel, w_int, w_scale, b_int, x_scale=0.02, y_scale=0.01)
    onnx.checker.check_model(model)
    g = from_onnx(model)
    assert g.op_counts() == {"conv2d": 1, "relu": 1}
    conv = g.find("conv2d")[0]
    x, w, b = conv.inputs
    # The weight is the exact float the int8 initializer encodes, and keeps scale/zero point.
    assert w.name == "w_q" and w.quant.bits == 8 and w.quant.signed
    assert w.quant.axis == (0 if per_channel else None)
    scale = np.asarray(w_scale, np.float32).reshape(-1, 1, 1, 1) if per_channel else w_scale
    np.testing.assert_array_equal(w.data, (w_int * scale).astype(np.float32))
    assert b.quant.bits == 32 and np.allclose(b.data, b_int * 0.02 * np.asarray(w_scale), rtol=1e-6)
    assert x.quant.scale == (pytest.approx(0.02),) and x.quant.zero_point == (128,)
    assert not x.quant.signed
    relu_out = g.find("relu")[0].output
    assert relu_out.quant.scale == (pytest.approx(0.01),) and relu_out.quant.zero_point == (0,)
    assert conv.loc == "the_conv"
    # Fake-quant simulation of the imported graph reproduces onnxruntime within one step.
    xin = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(model.SerializeToString(), so).run(None, {"x": xin})[0]
    out = run(g, [xin], mode="fakequant")[0]
    assert np.abs(out - ref).max() <= 0.01 + 1e-6


def test_onnxruntime_quantized_model_imports(tmp_path, flatten_net):
    quant = pytest.importorskip("onnxruntime.quantization")
    model, x, _ = flatten_net
    path = export_legacy(model, x, tmp_path / "f.onnx", dynamic=False)
    data = [{"x": torch.randn(2, 3, 8, 8).numpy()} for _ in range(4)]

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    qpath = str(tmp_path / "q.onnx")
    quant.quantize_static(path, qpath, Reader(), quant_format=quant.QuantFormat.QDQ,
                          per_channel=True, weight_type=quant.QuantType.QInt8)
    g = from_onnx(qpath)
    assert "QuantizeLinear" not in str(g.op_counts())
    assert any(v.quant is not None and v.quant.per_channel for v in g.constants.values())
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(qpath, so).run(None, {"x": data[0]["x"]})[0]
    out = run(g, [data[0]["x"]], mode="fakequant")[0]
    out_q = g.outputs[0].quant
    step = out_q.scale[0] if out_q is not None else 1e-2
    assert np.abs(out - ref).max() <= step + 1e-6
    # The conv weight is the float weight (BN folded in by the exporter) on its per-channel grid.
    w = next(v for v in g.constants.values() if v.shape == (4, 3, 3, 3))
    assert w.quant.axis == 0 and w.quant.bits == 8 and w.quant.signed
    floats = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    step = np.asarray(w.quant.scale).reshape(-1, 1, 1, 1)
    assert np.all(np.abs(w.data - floats[w.name.replace("_quantized", "")]) <= step / 2 + 1e-7)


def _model_with(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                helper.make_opsetid("com.example", 1)])
    m.ir_version = 8
    return m


def test_unsupported_ops_listed_together():
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="ok_relu"),
             helper.make_node("CumSum", ["r", "axis"], ["c"], name="my_cumsum"),
             helper.make_node("Log", ["c"], ["l"], name="my_log"),
             helper.make_node("Frobnicate", ["r"], ["f"], name="custom_node", domain="com.example"),
             helper.make_node("Add", ["l", "f"], ["y"], name="final_add")]
    m = _model_with(nodes, [vi("x", TensorProto.FLOAT, [2, 3])], [vi("y", TensorProto.FLOAT, [2, 3])],
                    [numpy_helper.from_array(np.int64(1), "axis")])
    with pytest.raises(FrontendError) as info:
        from_onnx(m)
    msg = str(info.value)
    for expected in ("CumSum", "my_cumsum", "Log", "my_log", "com.example.Frobnicate", "custom_node"):
        assert expected in msg
    assert "final_add" not in msg  # a supported op fed by an unsupported one is not blamed


def test_constant_nodes_and_folding_of_non_catalog_ops():
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Constant", [], ["n"], value_int=4),
             helper.make_node("Range", ["zero", "n", "one"], ["r"]),   # folded, not in the IR
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "rf"], ["y"])]
    inits = [numpy_helper.from_array(np.int64(0), "zero"), numpy_helper.from_array(np.int64(1), "one")]
    m = _model_with(nodes, [vi("x", TensorProto.FLOAT, [2, 4])], [vi("y", TensorProto.FLOAT, [2, 4])], inits)
    g = from_onnx(m)
    assert g.op_counts() == {"mul": 1}
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(run(g, [x])[0], x * np.arange(4))


def test_missing_input_shape_is_a_clear_error():
    vi = helper.make_tensor_value_info
    m = _model_with([helper.make_node("Relu", ["x"], ["y"])],
                    [vi("x", TensorProto.FLOAT, None)], [vi("y", TensorProto.FLOAT, None)])
    with pytest.raises(FrontendError, match=r"input x has no shape.*input_shapes"):
        from_onnx(m)
    g = from_onnx(m, input_shapes={"x": (2, 2)})
    assert g.inputs[0].shape == (2, 2)


def test_corrupt_truncated_and_missing_files(tmp_path, flatten_net):
    _, _, path = flatten_net
    data = open(path, "rb").read()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot an onnx model" * 20)
    for bad in (truncated, junk):
        with pytest.raises(FrontendError, match="not a readable ONNX model") as info:
            from_onnx(bad)
        assert bad.name in str(info.value)
        assert info.value.__cause__ is not None
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(FrontendError, match="holds no graph"):
        from_onnx(empty)
    with pytest.raises(FrontendError, match="no such ONNX file"):
        from_onnx(tmp_path / "absent.onnx")


def _reference(m, feeds: dict) -> list:
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(m).run(None, feeds)


@pytest.mark.parametrize("axis", [-3, -2, -1, 0, 1, 2, 3])
def test_flatten_every_legal_axis_matches_reference(axis):
    """ONNX Flatten takes axis in [-r, r]; axis == r gives (prod(shape), 1), not (1, prod)."""
    vi = helper.make_tensor_value_info
    m = _model_with([helper.make_node("Flatten", ["x"], ["y"], axis=axis)],
                    [vi("x", TensorProto.FLOAT, [2, 3, 4])], [vi("y", TensorProto.FLOAT, None)])
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    g = from_onnx(m)
    g.verify()
    (ref,) = _reference(m, {"x": x})
    (out,) = run(g, [x])
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)


def test_flatten_to_column_then_gather_with_computed_indices():
    """The legacy exporter's attention-mask indexing `mask[:, None, None, :]`: Flatten(axis=rank)
    of a run-time (B, S) mask into a (B*S, 1) column, then Gather with (B, 1, 1, S) indices
    computed at import time from `b * S + s`."""
    vi = helper.make_tensor_value_info
    b, s = 3, 5
    nodes = [helper.make_node("Flatten", ["m"], ["flat"], axis=2),
             helper.make_node("Mul", ["rows", "seq"], ["base"]),
             helper.make_node("Add", ["base", "cols"], ["idx"]),        # folded to (B, 1, 1, S)
             helper.make_node("Gather", ["flat", "idx"], ["picked"], axis=0),
             helper.make_node("Reshape", ["picked", "out_shape"], ["y"])]
    inits = [numpy_helper.from_array(np.arange(b, dtype=np.int64).reshape(b, 1, 1, 1), "rows"),
             numpy_helper.from_array(np.int64(s), "seq"),
             numpy_helper.from_array(np.arange(s, dtype=np.int64).reshape(1, 1, 1, s), "cols"),
             numpy_helper.from_array(np.array([b, 1, 1, s], np.int64), "out_shape")]
    m = _model_with(nodes, [vi("m", TensorProto.FLOAT, [b, s])], [vi("y", TensorProto.FLOAT, None)],
                    inits)
    mask = np.random.default_rng(0).integers(0, 2, (b, s)).astype(np.float32)
    g = from_onnx(m)
    g.verify()
    (ref,) = _reference(m, {"m": mask})
    (out,) = run(g, [mask])
    assert out.shape == ref.shape == (b, 1, 1, s)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(out[:, 0, 0, :], mask)


def test_gather_multidim_negative_indices_on_runtime_tensor():
    vi = helper.make_tensor_value_info
    idx = np.array([[[-1, 0]], [[2, -3]]], np.int64)  # (2, 1, 2), negatives count from the end
    m = _model_with([helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)],
                    [vi("x", TensorProto.FLOAT, [2, 4, 3])], [vi("y", TensorProto.FLOAT, None)],
                    [numpy_helper.from_array(idx, "idx")])
    x = np.random.default_rng(1).standard_normal((2, 4, 3)).astype(np.float32)
    g = from_onnx(m)
    (ref,) = _reference(m, {"x": x})
    (out,) = run(g, [x])
    assert out.shape == ref.shape == (2, 2, 1, 2, 3)
    np.testing.assert_array_equal(out, ref)


def test_gather_with_out_of_range_constant_indices_names_the_node():
    vi = helper.make_tensor_value_info
    m = _model_with([helper.make_node("Gather", ["x", "idx"], ["y"], axis=0, name="bad_gather")],
                    [vi("x", TensorProto.FLOAT, [4, 3])], [vi("y", TensorProto.FLOAT, None)],
                    [numpy_helper.from_array(np.array([[0, 4]], np.int64), "idx")])
    with pytest.raises(FrontendError, match=r"bad_gather.*\[0, 4\].*\[-4, 4\)"):
        from_onnx(m)
