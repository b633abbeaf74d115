"""bias-correct: weight-quantization bias removed from conv/linear biases (empirical, analytic)."""
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

import qcompile
from qcompile import Graph, PassError, QuantParams, TensorType
from qcompile.passmanager import PassContext
from qcompile.passes.bias_correct import clipped_normal_mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import zoo  # noqa: E402

RNG = np.random.default_rng(2)


def coarse_weight_quant(w: np.ndarray, bits: int = 4) -> QuantParams:
    """Per-tensor symmetric params, coarse enough to leave a visible bias."""
    scale = float(np.abs(w).max()) / (2 ** (bits - 1) - 1)
    return QuantParams((scale,), (0,), bits=bits, signed=True)


def layer_graph(op: str, groups: int = 1, bias: bool = True) -> Graph:
    g = Graph()
    if op == "linear":
        x = g.add_input("x", TensorType((None, 16)))
        w = RNG.normal(size=(6, 16)).astype(np.float32)
    else:
        x = g.add_input("x", TensorType((None, 4, 5, 5)))
        w = RNG.normal(size=(4 if groups > 1 else 6, 4 // groups, 3, 3)).astype(np.float32)
    wv = g.add_constant("w", w, quant=coarse_weight_quant(w))
    bv = g.add_constant("b", RNG.normal(size=w.shape[0]).astype(np.float32)) if bias else None
    attrs = {"groups": groups} if op == "conv2d" else {}
    g.outputs = [g.add_node(op, [x, wv, bv], attrs, name="y").output]
    return g


def data(g: Graph, n: int = 512) -> np.ndarray:
    """Positive-mean inputs (so eps E[x] is a real bias); for images, constant over each plane,
    so every kernel tap sees the channel mean and the per-channel correction is exact."""
    shape = (n,) + g.inputs[0].type.shape[1:]
    sample = shape if len(shape) == 2 else shape[:2] + (1, 1)
    return np.ascontiguousarray(np.broadcast_to(RNG.random(sample) * 2 + 0.5, shape),
                                dtype=np.float32)


@pytest.mark.parametrize("op,groups", [("linear", 1), ("conv2d", 1), ("conv2d", 4)])
def test_empirical_removes_the_mean_error_exactly(op, groups):
    # Without padding, eps E[x] is the exact mean output error per channel (over samples and
    # positions) on the data it was measured on.
    g = layer_graph(op, groups)
    x = data(g)
    axes = (0,) if op == "linear" else (0, 2, 3)
    ref = qcompile.run(g, [x])[0]
    err_before = (qcompile.run(g, [x], mode="fakequant")[0] - ref).mean(axis=axes)
    ctx = qcompile.run_pipeline(g, "bias-correct", PassContext(calibration_data=[x[:256], x[256:]]))
    err_after = (qcompile.run(g, [x], mode="fakequant")[0] - ref).mean(axis=axes)
    assert np.abs(err_before).max() > 0.05
    np.testing.assert_allclose(err_after, 0, atol=1e-4)
    assert any("bias corrected" in d.message for d in ctx.diagnostics)


def test_missing_bias_is_created_with_quant_params():
    g = layer_graph("linear", bias=False)
    g.inputs[0].quant = QuantParams((0.02,), (0,), bits=8, signed=False)
    x = data(g)
    qcompile.run_pipeline(g, "bias-correct", PassContext(calibration_data=x))
    node = g.value("y").producer
    b = node.input(2)
    assert b is not None and b.quant.bits == 32 and b.quant.zero_point == (0,)
    assert b.quant.scale[0] == pytest.approx(0.02 * node.inputs[1].quant.scale[0])


def test_bias_keeps_its_quant_params():
    g = layer_graph("linear")
    q = QuantParams((1e-4,), (0,), bits=32)
    g.value("b").quant = q
    qcompile.run_pipeline(g, "bias-correct", PassContext(calibration_data=data(g)))
    assert g.value("y").producer.inputs[2].quant == q


def test_clipped_normal_mean_matches_sampling():
    mu, sigma = np.array([-1.0, 0.0, 0.5, 3.0]), np.array([1.0, 2.0, 0.5, 1.5])
    relu = clipped_normal_mean(mu, sigma, 0.0, np.inf)
    expected = mu * sps.norm.cdf(mu / sigma) + sigma * sps.norm.pdf(mu / sigma)
    np.testing.assert_allclose(relu, expected, rtol=1e-12)
    samples = RNG.normal(mu, sigma, size=(400_000, 4))
    np.testing.assert_allclose(clipped_normal_mean(mu, sigma, 0.0, 6.0),
                               np.clip(samples, 0, 6).mean(axis=0), atol=0.01)
    np.testing.assert_allclose(clipped_normal_mean(mu, sigma, -np.inf, np.inf), mu)


def test_errors_are_clear():
    g = layer_graph("linear")
    g.value("w").quant = None
    with pytest.raises(PassError, match="after quantize"):
        qcompile.run_pipeline(g, "bias-correct")
    g = layer_graph("linear")
    with pytest.raises(PassError, match="method=analytic"):
        qcompile.run_pipeline(g, "bias-correct")


# ---- the digits CNN, W8A8 per tensor ----------------------------------------------------------

QUANT = "calibrate,quantize{w=8,a=8,per_channel=false}"


def _digits(pipeline: str, extra: str = ""):
    import torch
    X_train, X_test, _, _ = zoo.digits_data()
    g = qcompile.from_torch(zoo.digits_cnn(), (torch.from_numpy(X_test[:8]),), dynamic_batch=True)
    ref = qcompile.run(g, [X_test])[0]
    ctx = PassContext(calibration_data=zoo.calibration_batches(X_train, 256))
    qcompile.run_pipeline(g, pipeline + extra, ctx)
    out = qcompile.run(g, [X_test], mode="fakequant")[0]
    # the mean error per logit over held-out data: what bias correction targets
    return float(np.abs((out - ref).mean(axis=0)).mean()), g, ctx


def test_empirical_reduces_mean_output_error_of_digits_cnn():
    before, _, _ = _digits(f"fold-bn,{QUANT}")
    after, g, _ = _digits(f"fold-bn,{QUANT}", ",bias-correct")
    assert after < 0.8 * before
    for node in g.find("conv2d") + g.find("linear"):
        assert node.inputs[2].quant is not None and node.inputs[2].quant.bits == 32


def test_analytic_agrees_with_empirical_on_bn_fed_layers():
    _, g_emp, _ = _digits(f"fold-bn,{QUANT}", ",bias-correct")
    _, g_ana, ctx = _digits(f"fold-bn,{QUANT}", ",bias-correct{method=analytic}")
    _, g_none, _ = _digits(f"fold-bn,{QUANT}")
    corrected = [d.node_name for d in ctx.diagnostics if "bias corrected" in d.message]
    skipped = {d.node_name for d in ctx.diagnostics if "not corrected analytically" in d.message}
    # conv2 (after BN1 + relu) and conv3 (after BN2 + relu + max pool) have statistics to use;
    # conv1 reads the image and the classifier reads a conv without BN.
    assert len(corrected) == 2 and len(skipped) == 2
    for name in corrected:
        base = g_none.value(name).producer.inputs[2].data
        d_emp = g_emp.value(name).producer.inputs[2].data - base
        d_ana = g_ana.value(name).producer.inputs[2].data - base
        assert np.corrcoef(d_emp, d_ana)[0, 1] > 0.9
        assert np.linalg.norm(d_ana - d_emp) < 0.5 * np.linalg.norm(d_emp)
