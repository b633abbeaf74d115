"""The float interpreter on graphs built with the Graph API, against torch; input checking."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qcompile.errors import InterpError
from qcompile.interp import Interpreter, run
from qcompile.ir import Graph, QuantParams, TensorType


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Hardswish(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(8, 16, 1), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5), nn.Softmax(dim=-1))
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def build_graph(model: nn.Sequential, batch=None) -> Graph:
    """The same network, one Graph API call per layer."""
    g = Graph("cnn")
    x = g.add_input("image", TensorType((batch, 3, 13, 11), "f32"))

    def const(name, p):
        return g.add_constant(name, p.detach().numpy())

    conv1, bn, _, dw, _, _, pw, _, _, _, fc, _ = model
    x = g.add_node("conv2d", [x, const("w1", conv1.weight), const("b1", conv1.bias)],
                   dict(padding=(1, 1, 1, 1)), name="conv1").output
    x = g.add_node("batch_norm", [x, const("gamma", bn.weight), const("beta", bn.bias),
                                  const("mean", bn.running_mean), const("var", bn.running_var)],
                   name="bn").output
    x = g.add_node("clip", [x], dict(min=0.0, max=6.0), name="relu6").output
    x = g.add_node("conv2d", [x, const("w2", dw.weight), const("b2", dw.bias)],
                   dict(stride=(2, 2), padding=(1, 1, 1, 1), groups=8), name="dw").output
    x = g.add_node("hardswish", [x], name="hswish").output
    x = g.add_node("max_pool2d", [x], dict(kernel=(2, 2), ceil_mode=True), name="pool").output
    x = g.add_node("conv2d", [x, const("w3", pw.weight), const("b3", pw.bias)], name="pw").output
    x = g.add_node("gelu", [x], name="gelu").output
    x = g.add_node("global_avg_pool", [x], name="gap").output
    x = g.add_node("flatten", [x], name="flat").output
    x = g.add_node("linear", [x, const("wfc", fc.weight), const("bfc", fc.bias)], name="fc").output
    x = g.add_node("softmax", [x], name="probs").output
    g.outputs = [x]
    return g


@pytest.mark.parametrize("batch", [1, 6])
def test_small_cnn_matches_torch(batch):
    model = small_cnn()
    g = build_graph(model)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 13, 11)).astype(np.float32)
    (ours,) = run(g, {"image": x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert ours.shape == ref.shape == (batch, 5)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_intermediates_and_observer():
    g = build_graph(small_cnn(), batch=2)
    seen = []
    interp = Interpreter(g, "float", observer=lambda node, outs: seen.append((node.op, outs[0].shape)),
                         keep_all=True)
    interp.run([np.zeros((2, 3, 13, 11), np.float32)])
    assert [op for op, _ in seen] == [n.op for n in g.nodes]
    for node, (_, shape) in zip(g.nodes, seen):
        assert shape == node.output.type.shape, node.name
        assert interp.values[node.name].shape == shape


def test_freed_intermediates_do_not_break_reruns():
    # A value read by two nodes must stay alive until its last reader.
    g = Graph("diamond")
    x = g.add_input("x", TensorType((2, 3), "f32"))
    a = g.add_node("relu", [x], name="a").output
    b = g.add_node("neg", [a], name="b").output
    c = g.add_node("add", [a, b], name="c").output
    d = g.add_node("mul", [c, a], name="d").output
    g.outputs = [d, a]
    interp = Interpreter(g)
    v = np.array([[1, -2, 3], [4, 5, -6]], np.float32)
    for _ in range(2):
        d_out, a_out = interp.run([v])
        np.testing.assert_array_equal(a_out, np.maximum(v, 0))
        np.testing.assert_array_equal(d_out, np.zeros_like(v))


def test_quantize_roundtrip_in_graph():
    g = Graph("q")
    x = g.add_input("x", TensorType((4,), "f32"))
    qv = g.add_node("quantize", [x], dict(dtype="u8", rounding="half_away"), name="q").output
    qv.quant = QuantParams((0.5,), (128,), bits=8, signed=False)
    y = g.add_node("dequantize", [qv], name="dq").output
    g.outputs = [qv, y]
    q, deq = run(g, [np.array([0.25, -0.25, 100.0, 1.0], np.float32)])
    assert q.dtype == np.uint8 and q.tolist() == [129, 127, 255, 130]
    np.testing.assert_array_equal(deq, [0.5, -0.5, 63.5, 1.0])


@pytest.fixture
def graph():
    return build_graph(small_cnn())


def test_wrong_input_shape_names_input(graph):
    with pytest.raises(InterpError, match=r"input %image: expected shape \(\?, 3, 13, 11\)"):
        run(graph, [np.zeros((1, 3, 12, 11), np.float32)])
    with pytest.raises(InterpError, match="input %image"):
        run(graph, [np.zeros((3, 13, 11), np.float32)])


def test_wrong_input_dtype_names_input(graph):
    with pytest.raises(InterpError, match="input %image: expected dtype f32"):
        run(graph, [np.zeros((1, 3, 13, 11), bool)])


def test_wrong_input_count_names_inputs(graph):
    x = np.zeros((1, 3, 13, 11), np.float32)
    with pytest.raises(InterpError, match=r"takes 1 inputs \(%image\), got 2"):
        run(graph, [x, x])
    with pytest.raises(InterpError, match=r"missing \['image'\], unexpected \['img'\]"):
        run(graph, {"img": x})


def test_kernel_failure_names_node():
    g = Graph("bad")
    data = g.add_constant("table", np.arange(6, dtype=np.float32).reshape(3, 2))
    ids = g.add_input("ids", TensorType((2,), "i64"))
    g.outputs = [g.add_node("gather", [data, ids], name="lookup").output]
    with pytest.raises(InterpError, match=r"node lookup \(gather\).*out of range"):
        run(g, [np.array([0, 3])])
