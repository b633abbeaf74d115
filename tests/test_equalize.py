"""Chain discovery, cross-layer equalization (float-exact) and high-bias absorption."""
import sys
from pathlib import Path

import numpy as np
import pytest

import qcompile
from qcompile import Graph, PipelineError, TensorType
from qcompile.quant.chains import find_chains, find_links, in_ranges, input_index, out_ranges

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import zoo  # noqa: E402

RNG = np.random.default_rng(1)


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def const(g, name, shape, scale=0.3):
    return g.add_constant(name, RNG.normal(0, scale, shape).astype(np.float32))


def conv(g, x, cin, cout, name, k=3, groups=1, bias=True, skew=False):
    w = const(g, name + ".w", (cout, cin // groups, k, k))
    if skew:  # wildly different channel ranges, as depthwise convs tend to have
        w.data[...] *= np.geomspace(0.05, 5.0, cout).reshape(-1, 1, 1, 1).astype(np.float32)
    b = const(g, name + ".b", (cout,), 0.1) if bias else None
    return g.add_node("conv2d", [x, w, b], {"padding": (k // 2,) * 4, "groups": groups}, name=name)


def act(g, x, op, name):
    if op == "prelu":
        c = x.type.shape[1]
        slope = g.add_constant(name + ".slope", RNG.uniform(-0.5, 0.5, c).astype(np.float32))
        return g.add_node("prelu", [x, slope], name=name)
    attrs = {"min": 0.0, "max": 6.0} if op == "clip" else {}
    return g.add_node(op, [x], attrs, name=name)


def mbnet_block(activation="relu", residual=False) -> Graph:
    """1x1 expand -> act -> 3x3 depthwise -> act -> 1x1 project (optionally + input)."""
    g = Graph()
    x = g.add_input("x", TensorType((2, 4, 6, 6)))
    a = conv(g, x, 4, 8, "expand", k=1)
    a = act(g, a.output, activation, "act1")
    d = conv(g, a.output, 8, 8, "dw", groups=8, skew=True)
    d = act(g, d.output, activation, "act2")
    p = conv(g, d.output, 8, 4, "project", k=1)
    out = p.output
    if residual:
        out = g.add_node("add", [out, x], name="sum").output
    g.outputs = [out]
    return g


def names(chains):
    return [[n.name for n in c.layers] for c in chains]


# ---- chain discovery -----------------------------------------------------------------------------

def test_two_layer_chain():
    g = Graph()
    x = g.add_input("x", TensorType((1, 3, 5, 5)))
    a = act(g, conv(g, x, 3, 6, "c1").output, "relu", "r")
    g.outputs = [conv(g, a.output, 6, 2, "c2").output]
    (chain,) = find_chains(g)
    assert names([chain]) == [["c1", "c2"]]
    assert [n.op for n in chain.links[0].ops] == ["relu"]
    np.testing.assert_array_equal(chain.links[0].channel_map, np.arange(6))


def test_three_layer_chain_through_depthwise():
    assert names(find_chains(mbnet_block("relu"))) == [["expand", "dw", "project"]]
    assert names(find_chains(mbnet_block("prelu"))) == [["expand", "dw", "project"]]
    assert names(find_chains(mbnet_block("leaky_relu"))) == [["expand", "dw", "project"]]


def test_residual_fork_ends_the_chain():
    g = Graph()
    x = g.add_input("x", TensorType((1, 4, 5, 5)))
    c1 = conv(g, x, 4, 4, "c1")
    r = act(g, c1.output, "relu", "r")
    c2 = conv(g, r.output, 4, 4, "c2")
    s = g.add_node("add", [c2.output, r.output], name="sum")  # r has two users
    g.outputs = [conv(g, act(g, s.output, "relu", "r2").output, 4, 4, "c3").output]
    assert find_chains(g) == []
    # the add itself also ends a chain: c2 -> add -> c3 is not a link
    assert find_links(g) == []


def test_clip_is_skipped_unless_allowed():
    g = mbnet_block("clip")
    assert find_chains(g) == []
    (chain,) = find_chains(g, allow_clip=True)
    assert names([chain]) == [["expand", "dw", "project"]]
    assert all(link.through_clip for link in chain.links)


def test_channel_map_through_transpose_and_reshape():
    # MTCNN flattens in (W, H, C) order: input feature j of the linear reads channel j % C.
    g = Graph()
    x = g.add_input("x", TensorType((2, 3, 6, 6)))
    c = act(g, conv(g, x, 3, 5, "c1").output, "prelu", "p")
    t = g.add_node("transpose", [c.output], {"perm": (0, 3, 2, 1)})
    r = g.add_node("reshape", [t.output], {"shape": (2, 180)})
    g.outputs = [g.add_node("linear", [r.output, const(g, "fc.w", (4, 180))], name="fc").output]
    (link,) = find_links(g)
    np.testing.assert_array_equal(link.channel_map, np.arange(180) % 5)


def test_batch_norm_and_graph_outputs_break_links():
    g = Graph()
    x = g.add_input("x", TensorType((1, 3, 4, 4)))
    c1 = conv(g, x, 3, 3, "c1")
    bn = g.add_node("batch_norm", [c1.output] + [g.add_constant(f"bn{i}", np.ones(3, np.float32))
                                                 for i in range(4)], name="bn")
    c2 = conv(g, bn.output, 3, 3, "c2")
    r = act(g, c2.output, "relu", "r")
    c3 = conv(g, r.output, 3, 3, "c3")
    g.outputs = [c3.output, r.output]  # r is also a graph output
    assert find_links(g) == []


# ---- equalize ----------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["relu", "prelu", "leaky_relu", "identity"])
def test_equalize_is_float_exact_and_balances_ranges(activation):
    g = mbnet_block(activation)
    x = RNG.normal(size=(2, 4, 6, 6)).astype(np.float32)
    before = qcompile.run(g, [x])[0]
    ctx = qcompile.run_pipeline(g, "equalize{iterations=200,tolerance=1e-10}")
    assert rel_err(qcompile.run(g, [x])[0], before) < 1e-5
    assert any("equalized chain %expand -> %dw -> %project" in d.message for d in ctx.diagnostics)
    # Converged: every channel of each pair has the same range on both sides.
    (chain,) = find_chains(g)
    for link in chain.links:
        w1, w2 = link.src.inputs[1].data, link.dst.inputs[1].data
        r1 = out_ranges(w1)
        r2 = in_ranges(w2, input_index(link.dst, w2, link.channel_map), r1.size)
        np.testing.assert_allclose(r1, r2, rtol=1e-4)


def test_equalize_improves_per_tensor_precision():
    # The paper's objective: per output channel, the fraction of the tensor's range it uses.
    g = mbnet_block("relu")

    def precision():
        r = out_ranges(g.value("dw").producer.inputs[1].data)
        return float(np.mean(r / r.max()))

    before = precision()
    qcompile.run_pipeline(g, "equalize")
    assert precision() > 1.5 * before


def test_equalize_leaves_clip_chains_alone_by_default():
    g = mbnet_block("clip")
    assert qcompile.run_pipeline(g, "equalize").records[-1].changed is False


def test_per_channel_clip_keeps_float_function():
    g = mbnet_block("clip")
    x = 3 * RNG.normal(size=(2, 4, 6, 6)).astype(np.float32)  # large enough to hit 6
    before = qcompile.run(g, [x])[0]
    qcompile.run_pipeline(g, "equalize{clip=per-channel}")
    assert rel_err(qcompile.run(g, [x])[0], before) < 1e-5
    counts = g.op_counts()
    assert "clip" not in counts and counts["minimum"] == 2 and counts["relu"] == 2


def test_equalize_does_not_cross_a_residual():
    g = mbnet_block("relu", residual=True)
    x = RNG.normal(size=(2, 4, 6, 6)).astype(np.float32)
    before = qcompile.run(g, [x])[0]
    qcompile.run_pipeline(g, "equalize")
    assert rel_err(qcompile.run(g, [x])[0], before) < 1e-5


def test_equalize_rescales_bn_stats():
    import torch
    X = zoo.digits_data()[1]
    g = qcompile.from_torch(zoo.digits_cnn(), (torch.from_numpy(X[:8]),))
    qcompile.run_pipeline(g, "fold-bn")
    name = list(g.meta["bn_stats"])[0]
    w_before = g.value(name).producer.inputs[1].data[:, 0, 1, 1].astype(np.float64)
    gamma_before = g.meta["bn_stats"][name]["gamma"]
    qcompile.run_pipeline(g, "equalize")
    w_after = g.value(name).producer.inputs[1].data[:, 0, 1, 1]
    s = w_before / w_after
    np.testing.assert_allclose(gamma_before / g.meta["bn_stats"][name]["gamma"], s, rtol=1e-5)
    assert np.ptp(s) > 0.1  # it really rescaled


def test_equalize_errors_and_warnings():
    with pytest.raises(PipelineError, match="iterations"):
        qcompile.run_pipeline(mbnet_block(), "equalize{iterations=0}")
    g = mbnet_block()
    g.value("dw.w").quant = qcompile.QuantParams((0.01,), (0,))
    ctx = qcompile.run_pipeline(g, "equalize")
    assert any(d.level == "warning" and "already quantized" in d.message for d in ctx.diagnostics)


def _zoo_graph(name):
    import torch
    model = getattr(zoo, name)()
    if name == "mtcnn_rnet":
        x = zoo.lfw_face_data(24)[0][:16]
    elif name == "digits_cnn":
        x = zoo.digits_data()[1][:32]
    else:
        x = zoo.example_input(name, batch=2)
    return qcompile.from_torch(model, (torch.from_numpy(x),)), x


@pytest.mark.parametrize("name,clip,chains", [
    # every MobileNetV2 chain passes a ReLU6 or meets a residual fork: nothing to do unless the
    # clips may become per-channel
    ("mobilenetv2_stack", "skip", False), ("mobilenetv2_stack", "per-channel", True),
    ("resnet_basic_stack", "skip", True), ("digits_cnn", "skip", True),
    ("mtcnn_rnet", "skip", True)])
def test_zoo_models_equalize_exactly(name, clip, chains):
    try:
        g, x = _zoo_graph(name)
    except zoo.ZooError as exc:
        pytest.skip(str(exc))
    before = qcompile.run(g, [x])
    ctx = qcompile.run_pipeline(g, f"fold-bn,equalize{{clip={clip}}},absorb-bias")
    assert any("equalized chain" in d.message for d in ctx.diagnostics) == chains
    for a, b in zip(qcompile.run(g, [x]), before):
        assert rel_err(a, b) < 1e-5


# ---- absorb-bias ---------------------------------------------------------------------------------

def _linear_pair(beta, gamma):
    g = Graph()
    x = g.add_input("x", TensorType((64, 3)))
    l1 = g.add_node("linear", [x, const(g, "w1", (4, 3)), const(g, "b1", (4,))], name="l1")
    r = g.add_node("relu", [l1.output], name="r")
    g.outputs = [g.add_node("linear", [r.output, const(g, "w2", (2, 4))], name="l2").output]
    g.meta["bn_stats"] = {"l1": {"gamma": np.asarray(gamma, float), "beta": np.asarray(beta, float),
                                 "mean": np.zeros(4), "var": np.ones(4), "eps": 1e-5}}
    return g


def test_absorb_bias_is_exact_when_inputs_stay_above_c():
    g = _linear_pair(beta=[5.0, 0.1, 4.0, -1.0], gamma=[1.0, 1.0, 0.5, 1.0])
    c = np.array([2.0, 0.0, 2.5, 0.0])
    # inputs with every pre-activation of channels 0 and 2 at least c: the rewrite is exact
    g.value("b1").data[...] = [10.0, 0.0, 10.0, 0.0]
    x = RNG.uniform(-1, 1, (64, 3)).astype(np.float32) * 0.1
    before = qcompile.run(g, [x])[0]
    b1 = g.value("b1").data.copy()
    ctx = qcompile.run_pipeline(g, "absorb-bias")
    np.testing.assert_allclose(qcompile.run(g, [x])[0], before, rtol=1e-5, atol=1e-5)
    l1, l2 = g.value("l1").producer, g.value("l2").producer
    np.testing.assert_allclose(l1.inputs[2].data, b1 - c, rtol=1e-6)
    np.testing.assert_allclose(l2.inputs[2].data, l2.inputs[1].data @ c, rtol=1e-5)  # bias created
    np.testing.assert_allclose(g.meta["bn_stats"]["l1"]["beta"], [3.0, 0.1, 1.5, -1.0])
    assert any("absorbed bias into %l2" in d.message for d in ctx.diagnostics)


def test_absorb_bias_needs_bn_stats_and_relu():
    g = _linear_pair(beta=[5.0] * 4, gamma=[1.0] * 4)
    del g.meta["bn_stats"]
    assert qcompile.run_pipeline(g, "absorb-bias").records[-1].changed is False
    g = mbnet_block("clip")
    g.meta["bn_stats"] = {n: {"gamma": np.ones(8), "beta": np.full(8, 9.0)}
                          for n in ("expand", "dw")}
    assert qcompile.run_pipeline(g, "absorb-bias").records[-1].changed is False


def test_absorb_bias_on_trained_digits_cnn_is_a_no_op():
    # Trained BN layers here have beta < 3 gamma everywhere: nothing is always positive.
    import torch
    X = zoo.digits_data()[1][:16]
    g = qcompile.from_torch(zoo.digits_cnn(), (torch.from_numpy(X),))
    qcompile.run_pipeline(g, "fold-bn,equalize")
    assert qcompile.run_pipeline(g, "absorb-bias").records[-1].changed is False


def test_absorb_bias_approximation_on_real_images(monkeypatch):
    """conv -> relu -> padded conv on real digit images, with bn_stats measured on those images
    and a bias making the first layer's output mostly positive. Away from the borders the
    result is unchanged except where a pre-activation fell below c (rare by construction); on
    the border the zero padding now stands for an input of c: the paper's approximation."""
    # own weights, whatever ran before in this worker (over 12 seeds the interior mean is
    # 7e-7 .. 3e-4 and the border mean 3e-2 .. 9e-2)
    monkeypatch.setattr(sys.modules[__name__], "RNG", np.random.default_rng(3))
    X = zoo.digits_data()[0][:256]
    g = Graph()
    x = g.add_input("x", TensorType((256, 1, 8, 8)))
    c1 = conv(g, x, 1, 6, "c1", bias=True)
    r = act(g, c1.output, "relu", "r")
    c2 = conv(g, r.output, 6, 5, "c2")
    g.outputs = [c2.output]
    inter = qcompile.Interpreter(g, keep_all=True)
    inter.run([X])
    y1 = inter.values["c1"]
    mu, sd = y1.mean(axis=(0, 2, 3)), y1.std(axis=(0, 2, 3))
    g.value("c1.b").data[...] += (4 * sd - mu).astype(np.float32)  # mean now 4 sigma above 0
    sd = sd.astype(np.float64)
    g.meta["bn_stats"] = {"c1": {"gamma": sd, "beta": 4.0 * sd}}
    before = qcompile.run(g, [X])[0]
    qcompile.run_pipeline(g, "absorb-bias")
    after = qcompile.run(g, [X])[0]
    diff = np.abs(after - before) / np.abs(before).max()
    assert diff[:, :, 1:-1, 1:-1].mean() < 1e-3           # interior: all but rare samples exact
    assert np.median(diff[:, :, 1:-1, 1:-1]) < 1e-5
    assert 1e-3 < diff[:, :, 0, :].mean() < 0.2          # border rows: the padding effect
