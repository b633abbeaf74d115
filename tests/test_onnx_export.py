"""ONNX export: float graphs run in onnxruntime like in the interpreter; quantized values become
QDQ pairs whose onnxruntime output matches the interpreter's fake-quant mode."""
from __future__ import annotations

import logging

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from qcompile.errors import FrontendError  # noqa: E402
from qcompile.frontend import from_onnx, from_torch, to_onnx  # noqa: E402
from qcompile.interp import run  # noqa: E402
from qcompile.ir.graph import Graph  # noqa: E402
from qcompile.ir.types import QuantParams, TensorType  # noqa: E402

logging.getLogger("torch").setLevel(logging.ERROR)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, groups=8, padding=1)
        self.prelu = nn.PReLU(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        x = F.max_pool2d(self.prelu(self.conv2(x)), 2)
        x = F.avg_pool2d(x, 2, ceil_mode=True, padding=1) + 0.5
        return torch.softmax(self.fc(torch.flatten(x[:, :, :4, :4], 1)), dim=-1)


@pytest.fixture(scope="module")
def cnn_graph():
    torch.manual_seed(0)
    model = CNN().eval()
    x = torch.randn(2, 3, 16, 16)
    return model, x, from_torch(model, (x,))


def ort_run(model: "onnx.ModelProto", feeds: dict) -> list:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_float_graph_runs_in_onnxruntime(cnn_graph, tmp_path):
    model, x, g = cnn_graph
    path = tmp_path / "cnn.onnx"
    proto = to_onnx(g, path)
    assert path.exists()
    onnx.checker.check_model(proto)
    ref = run(g, [x.numpy()])[0]
    out = ort_run(proto, {g.inputs[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    # and back: the re-imported graph has the same ops
    again = from_onnx(path)
    assert again.op_counts() == g.op_counts()


def random_quant(g: Graph, seed: int, act_bits: int = 8) -> Graph:
    """Random per-channel int8 weights, int32 biases and per-tensor activations of `act_bits`,
    scaled from the float ranges the graph really produces."""
    from qcompile.interp import Interpreter
    rng = np.random.default_rng(seed)
    g = g.copy()
    interp = Interpreter(g, keep_all=True)
    x = rng.standard_normal(g.inputs[0].shape).astype(np.float32)
    interp.run([x])
    for v in g.constants.values():
        if v.data.ndim >= 2:  # weights: per output channel, symmetric
            amax = np.abs(v.data.reshape(v.data.shape[0], -1)).max(axis=1) + 1e-6
            v.quant = QuantParams(tuple(amax / 127 * rng.uniform(0.8, 1.2, amax.size)),
                                  (0,) * amax.size, 8, True, axis=0)
        elif v.data.ndim == 1 and v.data.size > 1:  # biases: 32-bit, fine scale
            v.quant = QuantParams((1e-5,), (0,), 32, True)
    values = [g.inputs[0]] + [n.output for n in g.nodes]
    signed = True
    for v in values:
        data = x if v is g.inputs[0] else interp.values[v.name]
        lo, hi = float(data.min()), float(data.max())
        signed = not signed  # alternate int and uint storage
        qmin, qmax = (-(1 << (act_bits - 1)), (1 << (act_bits - 1)) - 1) if signed else (0, (1 << act_bits) - 1)
        scale = max(hi - lo, 1e-3) / (qmax - qmin) * rng.uniform(0.7, 1.0)  # some clipping too
        zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
        v.quant = QuantParams((scale,), (zp,), act_bits, signed)
    return g


@pytest.mark.parametrize("act_bits,seed", [(8, 0), (8, 1), (4, 2), (6, 3), (16, 4)])
def test_qdq_export_matches_fakequant(cnn_graph, act_bits, seed):
    _, x, g = cnn_graph
    qg = random_quant(g, seed, act_bits)
    proto = to_onnx(qg)
    op_types = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in op_types and "DequantizeLinear" in op_types
    per_axis = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
                and any(a.name == "axis" for a in n.attribute)]
    assert per_axis  # the per-channel weights
    xin = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    ref = run(qg, [xin], mode="fakequant")[0]
    out = ort_run(proto, {qg.inputs[0].name: xin})[0]
    step = qg.outputs[0].quant.scale[0]
    assert np.abs(out - ref).max() <= step * 1.001
    # The float result is not what QDQ computes: the comparison above is not trivially true.
    assert np.abs(run(qg, [xin])[0] - ref).max() > 0 or act_bits == 16


def test_qdq_export_roundtrips_quant_params(cnn_graph):
    _, _, g = cnn_graph
    qg = random_quant(g, 7)
    back = from_onnx(to_onnx(qg))
    assert back.op_counts() == qg.op_counts()
    w = qg.value("conv1.weight")
    w_back = back.value("conv1.weight::quantized")
    assert w_back.quant.axis == 0 and np.allclose(w_back.quant.scale, w.quant.scale, rtol=1e-6)
    for a, b in zip(qg.nodes, back.nodes):
        assert (a.output.quant is None) == (b.output.quant is None)
        if a.output.quant is not None:
            assert b.output.quant.zero_point == a.output.quant.zero_point
            assert np.allclose(b.output.quant.scale, a.output.quant.scale, rtol=1e-6)


def test_unexportable_graph_lists_ops():
    from qcompile.ir.ops import registry
    g = Graph("g")
    x = g.add_input("x", TensorType((2, 3)))
    y = g.add_node("relu", [x]).output
    node = g.make_node("relu", [y], name="z")
    node.op = "definitely_not_an_onnx_op"
    g.append(node)
    g.outputs = [node.output]
    with pytest.raises(FrontendError, match="definitely_not_an_onnx_op"):
        to_onnx(g)
    assert not registry.exists("definitely_not_an_onnx_op")
