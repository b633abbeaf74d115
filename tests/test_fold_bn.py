"""fold-bn: batch norm folded into conv2d (dense, grouped, depthwise) and linear, float-exact."""
import sys
from pathlib import Path

import numpy as np
import pytest

import qcompile
from qcompile import Graph, TensorType

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import zoo  # noqa: E402

RNG = np.random.default_rng(0)


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def bn_params(g: Graph, c: int, name: str):
    return [g.add_constant(f"{name}.{k}", v.astype(np.float32)) for k, v in (
        ("gamma", 0.5 + RNG.random(c)), ("beta", RNG.normal(0, 0.5, c)),
        ("mean", RNG.normal(0, 0.5, c)), ("var", 0.2 + RNG.random(c)))]


def conv_bn_graph(groups: int = 1, bias: bool = True, cin: int = 4, cout: int = 8) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((2, cin, 6, 6)))
    w = g.add_constant("w", RNG.normal(0, 0.3, (cout, cin // groups, 3, 3)).astype(np.float32))
    b = g.add_constant("b", RNG.normal(0, 0.1, cout).astype(np.float32)) if bias else None
    conv = g.add_node("conv2d", [x, w, b], {"padding": (1, 1, 1, 1), "groups": groups}, name="conv")
    bn = g.add_node("batch_norm", [conv.output, *bn_params(g, cout, "bn")], name="bn")
    g.outputs = [g.add_node("relu", [bn.output], name="y").output]
    return g


def check_exact(g: Graph, x: np.ndarray, pipeline: str = "fold-bn"):
    before = qcompile.run(g, [x])
    ctx = qcompile.run_pipeline(g, pipeline)
    after = qcompile.run(g, [x])
    for a, b in zip(after, before):
        assert rel_err(a, b) < 1e-5
    return ctx


@pytest.mark.parametrize("groups,bias", [(1, True), (1, False), (2, True), (4, True)])
def test_conv_bn_folds_exactly(groups, bias):
    g = conv_bn_graph(groups=groups, bias=bias, cin=4, cout=8)
    check_exact(g, RNG.normal(size=(2, 4, 6, 6)).astype(np.float32))
    assert g.op_counts() == {"conv2d": 1, "relu": 1}
    conv = g.find("conv2d")[0]
    assert conv.output.name == "bn"  # the folded layer took over the BN output's name
    assert conv.input(2) is not None  # a bias was created when there was none
    stats = g.meta["bn_stats"]["bn"]
    assert set(stats) == {"gamma", "beta", "mean", "var", "eps"}
    assert stats["gamma"].dtype == np.float64 and stats["gamma"].shape == (8,)
    # Old weights and BN parameters are gone; only the folded ones remain.
    assert sorted(v.shape for v in g.constants.values()) == [(8,), (8, 4 // groups, 3, 3)]


def test_depthwise_conv_bn_folds_exactly():
    g = conv_bn_graph(groups=4, cin=4, cout=4)
    check_exact(g, RNG.normal(size=(2, 4, 6, 6)).astype(np.float32))
    assert "batch_norm" not in g.op_counts()


def test_linear_bn_folds_exactly():
    g = Graph()
    x = g.add_input("x", TensorType((3, 5)))
    w = g.add_constant("w", RNG.normal(size=(7, 5)).astype(np.float32))
    lin = g.add_node("linear", [x, w], name="fc")
    bn = g.add_node("batch_norm", [lin.output, *bn_params(g, 7, "bn")], name="bn")
    g.outputs = [bn.output]
    check_exact(g, RNG.normal(size=(3, 5)).astype(np.float32))
    assert g.op_counts() == {"linear": 1}
    assert g.outputs[0].name == "bn"


def test_original_arrays_are_not_mutated():
    g = conv_bn_graph()
    w_before = g.value("w").data.copy()
    h = g.copy()  # shares the constant arrays
    qcompile.run_pipeline(h, "fold-bn")
    np.testing.assert_array_equal(g.value("w").data, w_before)
    assert "bn_stats" not in g.meta


def test_shared_weight_keeps_other_user_intact():
    g = Graph()
    x = g.add_input("x", TensorType((1, 3, 5, 5)))
    w = g.add_constant("w", RNG.normal(size=(3, 3, 1, 1)).astype(np.float32))
    a = g.add_node("conv2d", [x, w], name="a")
    bn = g.add_node("batch_norm", [a.output, *bn_params(g, 3, "bn")], name="bn")
    b = g.add_node("conv2d", [x, w], name="b")  # same weight, no BN
    g.outputs = [g.add_node("add", [bn.output, b.output], name="y").output]
    check_exact(g, RNG.normal(size=(1, 3, 5, 5)).astype(np.float32))
    assert g.value("b").producer.inputs[1] is w  # untouched and still there


def test_unfoldable_batch_norms_stay_with_a_note():
    g = Graph()
    x = g.add_input("x", TensorType((1, 3, 4, 4)))
    w = g.add_constant("w", RNG.normal(size=(3, 3, 1, 1)).astype(np.float32))
    conv = g.add_node("conv2d", [x, w], name="conv")
    s = g.add_node("add", [conv.output, x], name="sum")
    bn_after_add = g.add_node("batch_norm", [s.output, *bn_params(g, 3, "bn1")], name="bn1")
    bn_shared = g.add_node("batch_norm", [conv.output, *bn_params(g, 3, "bn2")], name="bn2")
    g.outputs = [g.add_node("add", [bn_after_add.output, bn_shared.output], name="y").output]
    ctx = check_exact(g, RNG.normal(size=(1, 3, 4, 4)).astype(np.float32))
    assert g.op_counts()["batch_norm"] == 2
    notes = {d.node_name: d.message for d in ctx.diagnostics if d.level == "note"}
    assert "add %sum" in notes["bn1"]
    assert "other users" in notes["bn2"]


@pytest.mark.parametrize("name", ["digits_cnn", "mobilenetv2_stack", "resnet_basic_stack"])
def test_zoo_models_fold_exactly(name):
    import torch
    model = getattr(zoo, name)()
    x = zoo.example_input(name, batch=2)
    g = qcompile.from_torch(model, (torch.from_numpy(x),))
    n_bn = g.op_counts()["batch_norm"]
    check_exact(g, x)
    assert "batch_norm" not in g.op_counts()
    assert len(g.meta["bn_stats"]) == n_bn
    for name_ in g.meta["bn_stats"]:
        assert g.value(name_).producer.op == "conv2d"
