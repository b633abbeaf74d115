"""The quantize pass: where QuantParams go (fusion, pass-through, concat sharing, weights,
biases, unsigned and power-of-two scales, float islands), its errors, and a real model that
must keep its accuracy under W8A8 simulation."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import qcompile
from qcompile.errors import PassError, PipelineError
from qcompile.ir import Graph, TensorType
from qcompile.passmanager import PassContext, run_pipeline
from qcompile.quant.scheme import QuantScheme

ROOT = Path(__file__).resolve().parents[1]


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def conv(g: Graph, x, cout: int, name: str, rng, bias: bool = True):
    cin = x.type.shape[1]
    w = g.add_constant(f"{name}.w", rand(rng, cout, cin, 3, 3, scale=0.3))
    b = g.add_constant(f"{name}.b", rand(rng, cout, scale=0.1)) if bias else None
    return g.add_node("conv2d", [x, w, b], {"padding": (1, 1, 1, 1)}, name=name).output


def calibrated(g: Graph, pipeline: str = "calibrate,quantize", batches: int = 3,
               seed: int = 1, **ctx_kw) -> PassContext:
    rng = np.random.default_rng(seed)
    shape = (4,) + tuple(g.inputs[0].type.shape[1:])
    data = [rand(rng, *shape) for _ in range(batches)]
    return run_pipeline(g, pipeline, PassContext(calibration_data=data, verify=True, **ctx_kw))


def conv_relu_graph(seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("conv_relu")
    x = g.add_input("x", TensorType((None, 3, 6, 6)))
    c = conv(g, x, 4, "conv", rng)
    g.outputs = [g.add_node("relu", [c], name="act").output]
    return g


# ---- placement rules ------------------------------------------------------------------------
def test_relu_fuses_into_conv_and_is_stored_unsigned():
    g = conv_relu_graph()
    calibrated(g)
    conv_out, act = g.value("conv"), g.value("act")
    assert conv_out.quant is None  # fused: only the activation's output is materialised
    q = act.quant
    assert q is not None and not q.signed and q.zero_point == (0,) and q.bits == 8
    lo, hi = g.meta["ranges"]["act"]
    assert q.scale[0] == pytest.approx(float(hi) / 255)
    x = g.value("x").quant
    assert x is not None and x.signed and x.axis is None  # raw inputs are not known >= 0


def test_weights_per_channel_symmetric_and_bias_scale_is_sx_times_sw():
    g = conv_relu_graph()
    calibrated(g)
    w, b, x = g.value("conv.w"), g.value("conv.b"), g.value("x")
    assert w.quant.axis == 0 and len(w.quant.scale) == 4 and set(w.quant.zero_point) == {0}
    absmax = np.abs(w.data).reshape(4, -1).max(axis=1)
    np.testing.assert_allclose(w.quant.scale, absmax / 127)
    assert b.quant.bits == 32 and b.quant.axis == 0 and set(b.quant.zero_point) == {0}
    np.testing.assert_allclose(b.quant.scale, x.quant.scale[0] * np.asarray(w.quant.scale))


def test_per_tensor_weights_give_per_tensor_bias():
    g = conv_relu_graph()
    calibrated(g, "calibrate,quantize{per_channel=false}")
    w, b = g.value("conv.w"), g.value("conv.b")
    assert w.quant.axis is None and w.quant.scale[0] == pytest.approx(np.abs(w.data).max() / 127)
    assert b.quant.axis is None
    assert b.quant.scale[0] == pytest.approx(g.value("x").quant.scale[0] * w.quant.scale[0])


def test_weights_are_not_changed():
    g = conv_relu_graph()
    before = {n: v.data.copy() for n, v in g.constants.items()}
    calibrated(g)
    for name, data in before.items():
        assert g.constants[name].data.tobytes() == data.tobytes()


def test_output_with_two_users_is_materialised():
    rng = np.random.default_rng(0)
    g = Graph("two_users")
    x = g.add_input("x", TensorType((None, 3, 6, 6)))
    c = conv(g, x, 3, "conv", rng)
    r = g.add_node("relu", [c], name="act").output
    g.outputs = [g.add_node("add", [r, c], name="sum").output]
    calibrated(g)
    assert g.value("conv").quant is not None and g.value("conv").quant.signed
    assert g.value("act").quant is not None
    assert g.value("sum").quant is not None


def test_clip_fuses_and_relu6_output_is_unsigned():
    rng = np.random.default_rng(0)
    g = Graph("relu6")
    x = g.add_input("x", TensorType((None, 8)))
    w = g.add_constant("fc.w", rand(rng, 5, 8))
    lin = g.add_node("linear", [x, w, None], name="fc").output
    g.outputs = [g.add_node("clip", [lin], {"min": 0.0, "max": 6.0}, name="r6").output]
    calibrated(g)
    assert g.value("fc").quant is None
    assert not g.value("r6").quant.signed and g.value("r6").quant.zero_point == (0,)


def test_maxpool_and_reshape_pass_params_through():
    g = conv_relu_graph()
    pool = g.add_node("max_pool2d", [g.value("act")], {"kernel": (2, 2)}, name="pool").output
    flat = g.add_node("flatten", [pool], name="flat").output
    g.outputs = [flat]
    calibrated(g)
    act = g.value("act").quant
    assert act is not None and g.value("pool").quant == act and g.value("flat").quant == act


def test_concat_inputs_share_the_output_params():
    rng = np.random.default_rng(0)
    g = Graph("cat")
    x = g.add_input("x", TensorType((None, 3, 6, 6)))
    a = g.add_node("relu", [conv(g, x, 2, "ca", rng)], name="a").output
    b = conv(g, x, 2, "cb", rng)  # no relu: negative values, so the group is signed
    pooled = g.add_node("max_pool2d", [b], {"kernel": (1, 1)}, name="bp").output
    g.outputs = [g.add_node("concat", [a, pooled], {"axis": 1}, name="cat").output]
    calibrated(g)
    q = g.value("cat").quant
    assert q is not None and q.signed
    for name in ("a", "bp", "cb"):  # through the pass-through max_pool2d too
        assert g.value(name).quant == q
    ranges = g.meta["ranges"]
    lo = min(float(np.min(ranges[n][0])) for n in ("a", "cb", "cat"))
    hi = max(float(np.max(ranges[n][1])) for n in ("a", "cb", "cat"))
    representable = ((q.qmin - q.zero_point[0]) * q.scale[0], (q.qmax - q.zero_point[0]) * q.scale[0])
    # covered up to the half step the integer zero point may shift the grid by
    assert representable[0] <= lo + q.scale[0] / 2 and representable[1] >= hi - q.scale[0] / 2
    assert g.value("ca").quant is None  # fused into relu "a"


def test_unsigned_false_keeps_relu_outputs_signed():
    g = conv_relu_graph()
    calibrated(g, "calibrate,quantize{unsigned=false}")
    q = g.value("act").quant
    assert q.signed and q.zero_point == (-128,)


def test_symmetric_activations_have_zero_point_zero():
    g = conv_relu_graph()
    g.outputs = [g.add_node("neg", [g.value("act")], name="n").output]  # a float island after
    calibrated(g, "calibrate,quantize{symmetric=true}")
    x = g.value("x").quant
    assert x.signed and x.zero_point == (0,)
    assert g.value("act").quant.zero_point == (0,)


def test_pow2_scales_are_powers_of_two():
    g = conv_relu_graph()
    calibrated(g, "calibrate,quantize{pow2=true}")
    for v in g.values.values():
        if v.quant is not None:
            assert v.quant.pow2
            for s in v.quant.scale:
                assert s > 0 and 2.0 ** round(math.log2(s)) == s, (v.name, s)


def test_bit_widths_and_bad_options():
    g = conv_relu_graph()
    calibrated(g, "calibrate,quantize{w=4,a=16}")
    assert g.value("conv.w").quant.bits == 4 and g.value("act").quant.bits == 16
    for bad in ("quantize{w=9}", "quantize{a=1}", "quantize{w=32}"):
        with pytest.raises(PipelineError, match=r"option '(w|a)'"):
            run_pipeline(conv_relu_graph(), bad)


def test_batch_norm_is_quantized_as_an_affine_op():
    rng = np.random.default_rng(0)
    g = Graph("bn")
    x = g.add_input("x", TensorType((None, 3, 6, 6)))
    c = conv(g, x, 4, "conv", rng)
    params = [g.add_constant(f"bn.{k}", v) for k, v in
              (("gamma", np.ones(4, np.float32)), ("beta", np.zeros(4, np.float32)),
               ("mean", rand(rng, 4)), ("var", np.full(4, 2.0, np.float32)))]
    bn = g.add_node("batch_norm", [c] + params, name="bn").output
    g.outputs = [g.add_node("relu", [bn], name="act").output]
    calibrated(g)
    assert g.value("conv").quant is not None  # read by batch_norm: materialised
    assert g.value("bn").quant is None  # fused into the relu
    assert g.value("act").quant is not None
    assert all(p.quant is None for p in params)  # bn statistics stay float
    assert "bn" not in g.meta["float_ops"]


def test_float_islands_are_recorded_and_boundaries_quantized():
    rng = np.random.default_rng(0)
    g = Graph("island")
    x = g.add_input("x", TensorType((None, 8)))
    lin = g.add_node("linear", [x, g.add_constant("w1", rand(rng, 6, 8)), None], name="fc1").output
    sm = g.add_node("softmax", [lin], name="sm").output
    g.outputs = [g.add_node("linear", [sm, g.add_constant("w2", rand(rng, 3, 6)), None],
                            name="fc2").output]
    ctx = calibrated(g)
    assert g.meta["float_ops"] == {"sm": "softmax"}
    assert any(d.level == "note" and d.node_name == "sm" for d in ctx.diagnostics)
    assert g.value("fc1").quant is not None  # a quantized op's output, read by the island
    sm_q = g.value("sm").quant  # the island's output is quantized where fc2 reads it
    assert sm_q is not None and not sm_q.signed  # softmax >= 0 by construction


def test_keep_float_option_and_rerun_clears_old_params():
    g = conv_relu_graph()
    calibrated(g)
    assert g.value("act").quant is not None
    run_pipeline(g, "quantize{keep_float=[relu]}", PassContext(verify=True))
    assert g.meta["float_ops"] == {"act": "relu"}
    assert g.value("act").quant is None
    assert g.value("conv").quant is not None  # no longer fused: its user is a float op


def test_prelu_slope_is_quantized_per_channel():
    rng = np.random.default_rng(0)
    g = Graph("prelu")
    x = g.add_input("x", TensorType((None, 3, 6, 6)))
    c = conv(g, x, 4, "conv", rng)
    slope = g.add_constant("slope", np.array([0.25, -0.1, 0.0, 0.5], np.float32))
    g.outputs = [g.add_node("prelu", [c, slope], name="p").output]
    calibrated(g)
    assert g.value("slope").quant.axis == 0 and all(s > 0 for s in g.value("slope").quant.scale)
    assert g.value("conv").quant is not None  # prelu does not fuse


def test_elementwise_constant_operand_gets_params():
    g = Graph("addc")
    x = g.add_input("x", TensorType((None, 4)))
    c = g.add_constant("c", np.array([1.0, -2.0, 0.5, 3.0], np.float32))
    g.outputs = [g.add_node("add", [x, c], name="y").output]
    calibrated(g)
    q = g.value("c").quant
    assert q is not None and q.axis is None and q.bits == 8


def test_degenerate_ranges_never_give_zero_scales():
    g = Graph("zeros")
    x = g.add_input("x", TensorType((None, 4)))
    w = np.zeros((3, 4), np.float32)
    w[1] = [0.5, -0.25, 0.0, 1.0]  # one live channel, two all-zero ones
    lin = g.add_node("linear", [x, g.add_constant("w", w), g.add_constant("b", np.zeros(3, np.float32))],
                     name="fc").output
    g.outputs = [g.add_node("relu", [lin], name="act").output]
    zeros = [np.zeros((2, 4), np.float32)] * 2
    run_pipeline(g, "calibrate,quantize", PassContext(calibration_data=zeros, verify=True))
    for v in g.values.values():
        if v.quant is not None:
            assert all(np.isfinite(s) and s > 0 for s in v.quant.scale), v.name
    out = qcompile.run(g, [np.ones((1, 4), np.float32)], mode="fakequant")[0]
    assert np.all(np.isfinite(out))


def test_quantize_without_calibration_is_an_error():
    with pytest.raises(PassError, match="calibrate"):
        run_pipeline(conv_relu_graph(), "quantize")


def test_graph_changed_after_calibration_reports_missing_range():
    g = conv_relu_graph()
    calibrated(g, "calibrate")
    g.outputs = [g.add_node("sigmoid", [g.value("act")], name="late").output]
    with pytest.raises(PassError, match="late"):
        run_pipeline(g, "quantize")


def test_target_scheme_is_the_base_and_options_override():
    target = SimpleNamespace(quant_scheme=QuantScheme(weight_bits=4, per_channel=False))
    g = conv_relu_graph()
    calibrated(g, target=target)
    assert g.value("conv.w").quant.bits == 4 and g.value("conv.w").quant.axis is None
    g = conv_relu_graph()
    calibrated(g, "calibrate,quantize{w=8}", target=target)
    assert g.value("conv.w").quant.bits == 8 and g.value("conv.w").quant.axis is None


def test_fakequant_simulation_tracks_float():
    g = conv_relu_graph()
    calibrated(g, batches=6)
    x = rand(np.random.default_rng(9), 4, 3, 6, 6)
    ref = qcompile.run(g, [x])[0]
    sim = qcompile.run(g, [x], mode="fakequant")[0]
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - sim) ** 2))
    assert sqnr > 30


# ---- a real model ---------------------------------------------------------------------------
@pytest.mark.slow
def test_digits_cnn_w8a8_per_channel_keeps_accuracy():
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(ROOT / "examples"))
    import zoo
    from qcompile.quant.sqnr import compare_outputs, per_layer_sqnr

    graph = qcompile.from_torch(zoo.digits_cnn(), (torch.zeros(2, 1, 8, 8),), dynamic_batch=True)
    ctx = PassContext(calibration_data=str(ROOT / "examples/models/digits_calib.npz"), verify=True)
    run_pipeline(graph, "calibrate,quantize{w=8,a=8,per_channel=true}", ctx)
    assert "batch_norm" in graph.op_counts()  # unfolded: quantized as an affine op
    test = np.load(ROOT / "examples/models/digits_test.npz")
    result = compare_outputs(graph, test["x"], test["y"])
    assert result["quant_accuracy"] >= 0.991, result
    rows = per_layer_sqnr(graph, test["x"])
    assert len(rows) == len(graph.nodes)
    assert all(r.sqnr_db > 20 for r in rows), [(r.name, r.sqnr_db) for r in rows]


# ---- per-channel activations (LayerNorm inputs) ---------------------------------------------
def outlier_residual_graph(seed: int = 0) -> Graph:
    """linear -> residual add -> layer_norm, where hidden channel 2 of the linear is ~100x
    larger than the others (BERT's outlier channels)."""
    rng = np.random.default_rng(seed)
    g = Graph("residual")
    x = g.add_input("x", TensorType((None, 5, 8)))
    w = rand(rng, 8, 8, scale=0.3)
    w[2] *= 100.0
    y = g.add_node("linear", [x, g.add_constant("fc.w", w), g.add_constant("fc.b", rand(rng, 8))],
                   name="fc").output
    s = g.add_node("add", [y, x], name="res").output
    g.outputs = [g.add_node("layer_norm", [s], name="ln").output]
    return g


def residual_data(batches: int = 3, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [rand(rng, 4, 5, 8) for _ in range(batches)]


PER_CHANNEL_CALIB = "calibrate{per_channel=true,per_channel_axis=-1}"


def test_act_per_channel_gives_last_axis_params_to_layer_norm_inputs():
    g = outlier_residual_graph()
    run_pipeline(g, f"{PER_CHANNEL_CALIB},quantize{{act_per_channel=[fc,add]}}",
                 PassContext(calibration_data=residual_data(), verify=True))
    for name in ("fc", "res"):
        q = g.value(name).quant
        assert q.axis == 2 and len(q.scale) == 8 and q.bits == 8
        scale = np.asarray(q.scale)
        # the outlier channel has its own, much coarser scale; the ordinary ones share a range
        assert scale[2] > 10 * np.median(scale)
        assert np.allclose(np.delete(scale, 2), np.delete(scale, 2)[0])
    assert g.value("x").quant.axis is None  # not named: per tensor
    # the simulation is far closer to float than with one scale per tensor
    x = residual_data(1, seed=7)[0]
    ref = qcompile.run(g, x, mode="float")[0]
    err_pc = np.abs(qcompile.run(g, x, mode="fakequant")[0] - ref).mean()
    run_pipeline(g, f"{PER_CHANNEL_CALIB},quantize", PassContext(calibration_data=residual_data()))
    assert g.value("res").quant.axis is None
    err_pt = np.abs(qcompile.run(g, x, mode="fakequant")[0] - ref).mean()
    assert err_pc < 0.5 * err_pt


def test_act_per_channel_needs_last_axis_ranges_and_layer_norm_users():
    g = outlier_residual_graph()
    with pytest.raises(PassError, match=r"%fc .*per_channel_axis=-1"):
        run_pipeline(g, "calibrate,quantize{act_per_channel=[fc]}",
                     PassContext(calibration_data=residual_data()))
    # the layer_norm's output is a graph output, not a LayerNorm input: kept per tensor
    run_pipeline(g, f"{PER_CHANNEL_CALIB},quantize{{act_per_channel=[fc,layer_norm]}}",
                 PassContext(calibration_data=residual_data()))
    assert g.value("fc").quant.axis == 2
    assert g.value("ln").quant is None or g.value("ln").quant.axis is None


def test_per_channel_activations_lower_to_integer_ops():
    """The per-channel values reach the integer graph (tests/test_lower_integer.py pins how):
    the outlier channel keeps its own scale there too, so integer stays close to the
    simulation."""
    g = outlier_residual_graph()
    run_pipeline(g, f"{PER_CHANNEL_CALIB},quantize{{transformer=true,act_per_channel=[add]}}",
                 PassContext(calibration_data=residual_data()))
    fq = g.copy()
    run_pipeline(g, "lower-integer", PassContext())
    assert "qlayer_norm" in g.op_counts()
    x = residual_data(1, seed=7)[0]
    got, ref = qcompile.run(g, x, mode="int")[0], qcompile.run(fq, x, mode="fakequant")[0]
    assert np.abs(got - ref).mean() < 0.05 * np.abs(ref).mean()


def test_calibrate_method_overrides_per_op():
    g = outlier_residual_graph()
    run_pipeline(g, "calibrate{method_overrides=[add:percentile],percentile=90}",
                 PassContext(calibration_data=residual_data()))
    stats = g.meta["calib_stats"]["res"]
    lo, hi = g.meta["ranges"]["res"]
    assert hi < stats["max"] and lo > stats["min"]  # clipped by the percentile observer
    assert g.meta["ranges"]["fc"][1] == g.meta["calib_stats"]["fc"]["max"]  # still minmax
    with pytest.raises(PipelineError, match="method_overrides"):
        run_pipeline(g, "calibrate{method_overrides=[add:median]}",
                     PassContext(calibration_data=residual_data()))
