"""`smooth` (SmoothQuant): float-exact migration of layer_norm output ranges into the linears
that read them, balanced as the formula says, refused where a residual also reads the LN."""
import sys
from pathlib import Path

import numpy as np
import pytest

import qcompile
from qcompile import PipelineError
from qcompile.interp.interpreter import Interpreter
from qcompile.passmanager import PassContext, run_pipeline
from qcompile.passes.smooth import activation_maxima, find_sites, smoothing_scales

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import zoo  # noqa: E402

RNG = np.random.default_rng(7)
SHAPE = (2, 16, 64)


def block_graph(outlier: float = 1.0):
    """The pre-norm zoo block, its first LN's gamma given one outlier channel (as trained
    transformers have), and calibration/test inputs."""
    model = zoo.transformer_encoder_block()
    with torch.no_grad():
        model.ln1.weight[5] = outlier
        model.ln2.weight[17] = outlier
    g = qcompile.from_torch(model, (torch.zeros(*SHAPE),), dynamic_batch=True)
    calib = [RNG.standard_normal(SHAPE).astype(np.float32) for _ in range(4)]
    test = RNG.standard_normal(SHAPE).astype(np.float32)
    return g, calib, test


def ln_output_maxima(g, calib):
    values = [n.outputs[0] for n in g.nodes if n.op == "layer_norm"]
    return activation_maxima(g, values, calib, batch_size=64)


def test_smooth_is_float_exact_and_balances_each_channel():
    g, calib, x = block_graph(outlier=40.0)
    before = qcompile.run(g, x)[0]
    sites = find_sites(g)
    assert sorted(len(s.linears) for s in sites) == [1, 3]  # fc1; q, k, v
    act = ln_output_maxima(g, calib)
    w_max = {s.value.name: np.max([np.abs(n.input(1).data).max(0) for n in s.linears], axis=0)
             for s in sites}

    ctx = PassContext(calibration_data=calib)
    run_pipeline(g, "smooth{alpha=0.5}", ctx)
    after = qcompile.run(g, x)[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)

    # alpha = 0.5: each channel's activation max and weight-column max both become
    # sqrt(act_max * weight_max)
    act2 = ln_output_maxima(g, calib)
    for s in find_sites(g):
        name = s.value.name
        target = np.sqrt(act[name] * w_max[name])
        w2 = np.max([np.abs(n.input(1).data).max(0) for n in s.linears], axis=0)
        np.testing.assert_allclose(act2[name], target, rtol=1e-4)
        np.testing.assert_allclose(w2, target, rtol=1e-4)
        assert np.allclose(g.meta["smooth_scales"][name], act[name] / target, rtol=1e-4)
    # the outlier channel is what got divided down the most
    assert np.argmax(g.meta["smooth_scales"][sites[0].value.name]) == 5


def test_smoothing_helps_w8a8_on_an_outlier_channel():
    g, calib, x = block_graph(outlier=40.0)
    ref = qcompile.run(g, x)[0].astype(np.float64)

    def sqnr(passes):
        h = g.copy()
        run_pipeline(h, passes, PassContext(calibration_data=calib))
        err = qcompile.run(h, x, mode="fakequant")[0] - ref
        return 10 * np.log10(np.sum(ref ** 2) / np.sum(err ** 2))

    plain, smoothed = sqnr("calibrate,quantize"), sqnr("smooth,calibrate,quantize")
    assert smoothed > plain + 3.0, (plain, smoothed)


def test_alpha_zero_changes_only_what_the_weights_ask_for():
    """alpha = 0 gives s = 1 / max|W_j|: the weight columns all get max 1."""
    g, calib, _ = block_graph()
    run_pipeline(g, "smooth{alpha=0}", PassContext(calibration_data=calib))
    for s in find_sites(g):
        w = np.max([np.abs(n.input(1).data).max(0) for n in s.linears], axis=0)
        np.testing.assert_allclose(w, 1.0, rtol=1e-5)


class PostNorm(torch.nn.Module):
    """BERT's post-norm residual: the LN output feeds a linear and the residual add."""

    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 8)
        self.ln2 = torch.nn.LayerNorm(8)

    def forward(self, x):
        h = self.ln(x)
        return self.ln2(h + self.fc(h))


def test_layer_norm_feeding_a_residual_is_left_alone_with_a_note():
    g = qcompile.from_torch(PostNorm().eval(), (torch.zeros(2, 4, 8),), dynamic_batch=True)
    calib = [RNG.standard_normal((2, 4, 8)).astype(np.float32)]
    consts = {k: v.data.copy() for k, v in g.constants.items()}
    ctx = PassContext(calibration_data=calib)
    run_pipeline(g, "smooth", ctx)
    assert {k: v.data.tobytes() for k, v in g.constants.items()} == \
        {k: v.tobytes() for k, v in consts.items()}
    notes = [d.message for d in ctx.diagnostics if d.level == "note"]
    assert any("also feeds" in m and "add" in m for m in notes), notes
    assert any("graph output" in m for m in notes), notes  # ln2


def test_smooth_after_calibrate_warns_that_ranges_are_stale():
    g, calib, _ = block_graph()
    ctx = PassContext(calibration_data=calib)
    run_pipeline(g, "calibrate,smooth", ctx)
    assert any("stale" in d.message for d in ctx.diagnostics if d.level == "warning")


def test_quantized_weights_are_not_smoothed():
    g, calib, _ = block_graph()
    run_pipeline(g, "calibrate,quantize", PassContext(calibration_data=calib))
    ctx = PassContext(calibration_data=calib)
    run_pipeline(g, "smooth", ctx)
    assert "smooth_scales" not in g.meta
    assert any("already quantized" in d.message for d in ctx.diagnostics)


def test_smoothing_scales_leave_dead_channels_alone():
    s = smoothing_scales(np.array([4.0, 0.0, 9.0]), np.array([1.0, 2.0, 0.0]), 0.5)
    np.testing.assert_allclose(s, [2.0, 1.0, 1.0])
    np.testing.assert_allclose(smoothing_scales([8.0], [2.0], 1.0), [8.0])


@pytest.mark.parametrize("spec", ["smooth{alpha=1.5}", "smooth{alpha=-0.1}", "smooth{batch_size=0}"])
def test_bad_options_name_the_option(spec):
    g, calib, _ = block_graph()
    with pytest.raises(PipelineError, match="smooth"):
        run_pipeline(g, spec, PassContext(calibration_data=calib))


def test_smooth_needs_calibration_data():
    g, _, _ = block_graph()
    with pytest.raises(qcompile.QCompileError, match="calibration data"):
        run_pipeline(g, "smooth", PassContext())
