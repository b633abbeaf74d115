"""The lower-integer pass: what each rule emits (MACs with per-channel multipliers and fused
clamps, element-wise recipes, pooling, lookup tables, prelu, data movement), the graph's float
boundary, the options (rounding, acc_bits, float_islands), the errors, the rule registry, and
real models whose integer accuracy must match the fake-quant simulation."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import qcompile
from qcompile.errors import PassError, PipelineError
from qcompile.ir import Graph, QuantParams, TensorType
from qcompile.ir.ops import registry
from qcompile.ir.types import is_float
from qcompile.passes import lower_integer
from qcompile.passes.lower_integer import CannotLower, LoweringState, lowering_rule
from qcompile.passmanager import PassContext, run_pipeline
from qcompile.quant import luts
from qcompile.quant.intmath import multiplier_value

ROOT = Path(__file__).resolve().parents[1]


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def conv(g, x, cout, name, rng, groups=1, k=3):
    cin = x.type.shape[1]
    w = g.add_constant(f"{name}.w", rand(rng, cout, cin // groups, k, k, scale=0.3))
    b = g.add_constant(f"{name}.b", rand(rng, cout, scale=0.1))
    return g.add_node("conv2d", [x, w, b], {"padding": (1, 1, 1, 1), "groups": groups},
                      name=name).output


def quantized(g: Graph, pipeline="calibrate,quantize", seed=1, batches=3):
    rng = np.random.default_rng(seed)
    shape = (4,) + tuple(g.inputs[0].type.shape[1:])
    data = [rand(rng, *shape) for _ in range(batches)]
    run_pipeline(g, pipeline, PassContext(calibration_data=data, verify=True))
    return data


def lower(g: Graph, spec: str = "lower-integer") -> PassContext:
    return run_pipeline(g, spec, PassContext(verify=True))


def compare(g: Graph, x, spec="lower-integer", mode="int"):
    """(fake-quant outputs before lowering, integer outputs after, the lowering's context)."""
    fq = qcompile.run(g, [x], mode="fakequant")
    ctx = lower(g, spec)
    return fq, qcompile.run(g, [x], mode=mode), ctx


def float_ops(g: Graph) -> set:
    return {n.op for n in g.nodes if any(is_float(o.dtype) for o in n.outputs)}


def lsb_close(a, b, scale, lsb=1, frac=1.0):
    """|a - b| within `lsb` output steps on at least `frac` of the elements."""
    ok = np.abs(np.asarray(a, np.float64) - b) <= lsb * scale * (1 + 1e-5)
    assert ok.mean() >= frac, f"{(~ok).sum()} of {ok.size} differ by more than {lsb} LSB"


def cnn(seed=0) -> Graph:
    """conv+relu, depthwise conv+relu6, maxpool, residual add, global pool, linear."""
    rng = np.random.default_rng(seed)
    g = Graph("cnn")
    x = g.add_input("x", TensorType((None, 3, 8, 8)))
    c1 = g.add_node("relu", [conv(g, x, 8, "c1", rng)], name="r1").output
    dw = conv(g, c1, 8, "dw", rng, groups=8)
    r2 = g.add_node("clip", [dw], {"min": 0.0, "max": 6.0}, name="r2").output
    p = g.add_node("max_pool2d", [r2], {"kernel": (2, 2)}, name="pool").output
    c3 = conv(g, p, 8, "c3", rng)
    s = g.add_node("add", [c3, p], name="res").output
    gp = g.add_node("global_avg_pool", [s], name="gap").output
    f = g.add_node("flatten", [gp], name="flat").output
    w = g.add_constant("fc.w", rand(rng, 5, 8, scale=0.4))
    b = g.add_constant("fc.b", rand(rng, 5, scale=0.1))
    g.outputs = [g.add_node("linear", [f, w, b], name="logits").output]
    return g


# ---- structure -------------------------------------------------------------------------------

def test_cnn_becomes_integer_between_quantize_and_dequantize():
    g = cnn()
    data = quantized(g)
    params = {v: g.value(v).quant for v in ("r1", "r2", "logits")}
    fq, out, _ = compare(g, data[0])
    assert float_ops(g) == {"dequantize"}
    counts = g.op_counts()
    assert counts["quantize"] == 1 and counts["dequantize"] == 1
    assert counts["qlinear"] == 1 and counts["qadd"] == 1
    assert counts["qconv2d"] == 4  # three convs, and the global pool's window sum
    assert "relu" not in counts and "clip" not in counts  # folded into requantize clamps
    # names: the output keeps its name (dequantize), activations theirs, the input its own
    assert g.outputs[0].name == "logits" and g.outputs[0].producer.op == "dequantize"
    assert g.inputs[0].name == "x" and g.inputs[0].quant is None
    assert g.value("x.q").producer.op == "quantize" and g.value("x.q").quant is not None
    for name, q in params.items():
        if name != "logits":
            assert g.value(name).quant == q and g.value(name).producer.op == "requantize"
    # weights are integer constants under their own names, biases i32
    assert g.value("c1.w").dtype == "i8" and g.value("c1.b").dtype == "i32"
    assert all(not is_float(c.dtype) for c in g.constants.values())
    lsb_close(out[0], fq[0], params["logits"].scale[0], lsb=2, frac=0.97)


def test_fused_relu_and_relu6_become_clamps_and_multipliers_are_per_channel():
    g = cnn()
    quantized(g)
    q_r1, q_r2, q_x = g.value("r1").quant, g.value("r2").quant, g.value("x").quant
    w = g.value("c1.w").quant
    lower(g)
    rq = g.value("r1").producer
    assert rq.op == "requantize" and rq.attrs["clamp_min"] == q_r1.zero_point[0]
    assert rq.attrs["clamp_max"] == q_r1.qmax and rq.attrs["axis"] == 1
    real = multiplier_value(rq.attrs["multiplier"], rq.attrs["shift"])
    s_w = np.float32(w.scale).astype(np.float64)
    want = np.float32(q_x.scale[0]) * s_w / np.float32(q_r1.scale[0])
    np.testing.assert_allclose(real, want, rtol=2 ** -30)
    rq6 = g.value("r2").producer
    six = round(6.0 / np.float32(q_r2.scale[0])) + q_r2.zero_point[0]
    assert rq6.attrs["clamp_max"] == min(six, q_r2.qmax)
    acc = rq.inputs[0]
    assert acc.dtype == "i32" and acc.quant.bits == 32 and acc.quant.axis == 1
    dw = g.value("dw.acc").producer
    assert dw.op == "qconv2d" and dw.attrs["groups"] == 8


def test_lowered_text_round_trips_and_verifies():
    g = cnn()
    quantized(g)
    lower(g)
    text = g.dump(full=True)
    again = qcompile.parse(text)
    again.verify()
    assert again.dump(full=True) == text
    x = rand(np.random.default_rng(3), 2, 3, 8, 8)
    np.testing.assert_array_equal(qcompile.run(again, [x], mode="int")[0],
                                  qcompile.run(g, [x], mode="int")[0])


# ---- rules -----------------------------------------------------------------------------------

def single_op_graph(op, attrs=None, shape=(None, 4, 6, 6), const=None, pre=None) -> Graph:
    """x -> [pre] -> op(x[, const]) -> y."""
    g = Graph(op)
    x = g.add_input("x", TensorType(shape))
    if pre is not None:
        x = g.add_node(pre, [x], name="pre").output
    ins = [x] + ([g.add_constant("k", const)] if const is not None else [])
    g.outputs = [g.add_node(op, ins, attrs or {}, name="y").output]
    return g


@pytest.mark.parametrize("op,attrs", [("sigmoid", {}), ("tanh", {}), ("hardswish", {}),
                                      ("hardsigmoid", {}), ("leaky_relu", {"alpha": 0.1})])
def test_lookup_tables_are_tflites_and_match_fakequant(op, attrs):
    """The tables are TFLite's (qcompile.quant.luts: the int16 fixed-point recipe for
    hardswish, float32 LUTPopulate with TFLite's float32 formulas otherwise). They equal the
    fake-quant simulation except where TFLite's recipe itself rounds differently: hardswish's
    fixed point is off by one step on a few codes."""
    g = single_op_graph(op, attrs)
    data = quantized(g)
    qx, qy = g.value("x").quant, g.value("y").quant
    fq, out, _ = compare(g, data[0] * 3)
    table = g.outputs[0].producer.inputs[0].producer
    assert table.op == "lut" and len(table.attrs["table"]) == 256
    args = (float(np.float32(qx.scale[0])), qx.zero_point[0], float(np.float32(qy.scale[0])),
            qy.zero_point[0])
    ranges = dict(in_range=(qx.qmin, qx.qmax), out_range=(qy.qmin, qy.qmax))
    if op == "hardswish":
        want = luts.hard_swish_table(*args, **ranges)
    else:
        kernel = registry.get(op).kernels["float"]
        fn = {"sigmoid": luts.sigmoid_f32, "tanh": luts.tanh_f32}.get(
            op, lambda v: kernel(v, **attrs))
        want = luts.float32_lut(fn, *args, **ranges)
    assert list(table.attrs["table"]) == want
    if op == "hardswish":
        lsb_close(out[0], fq[0], qy.scale[0], lsb=1)
        lsb_close(out[0], fq[0], qy.scale[0], lsb=0, frac=0.99)
    else:
        np.testing.assert_array_equal(out[0], fq[0])


def test_hardswish_outside_tflites_domain_uses_a_float32_table():
    """TFLite's fixed-point HARD_SWISH needs s_x / 128 <= s_y; past that the lowering notes it
    and falls back to the float32 table of the float kernel."""
    g = single_op_graph("hardswish")
    quantized(g)
    qx = g.value("x").quant
    g.value("y").quant = QuantParams((float(qx.scale[0]) / 256,), (0,), bits=8, signed=True)
    ctx = lower(g)
    assert any("float32 table" in str(d) for d in ctx.diagnostics)
    table = g.outputs[0].producer.inputs[0].producer
    kernel = registry.get("hardswish").kernels["float"]
    assert list(table.attrs["table"]) == luts.float32_lut(
        kernel, float(np.float32(qx.scale[0])), qx.zero_point[0],
        float(np.float32(qx.scale[0] / 256)), 0, in_range=(qx.qmin, qx.qmax))


def test_prelu_with_per_channel_slopes_lowers_to_qprelu():
    slopes = np.array([0.25, -0.1, 0.02, 0.6], np.float32)
    g = single_op_graph("prelu", const=slopes)
    data = quantized(g)
    assert g.value("k").quant.axis == 0
    q_y = g.value("y").quant
    fq, out, _ = compare(g, data[1])
    node = g.outputs[0].producer.inputs[0].producer
    assert node.op == "qprelu" and len(node.attrs["neg_multiplier"]) == 4
    lsb_close(out[0], fq[0], q_y.scale[0], lsb=1)


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_elementwise_with_fused_relu(op):
    g = Graph(op)
    x = g.add_input("x", TensorType((None, 4, 5, 5)))
    a = g.add_node("tanh", [x], name="a").output
    b = g.add_node("sigmoid", [x], name="b").output
    y = g.add_node(op, [a, b], name="s").output
    g.outputs = [g.add_node("relu", [y], name="y").output]
    data = quantized(g)
    q_y = g.value("y").quant
    fq, out, _ = compare(g, data[0])
    node = g.outputs[0].producer.inputs[0].producer
    assert node.op == {"add": "qadd", "sub": "qsub", "mul": "qmul"}[op]
    assert node.attrs["clamp_min"] == q_y.zero_point[0]
    lsb_close(out[0], fq[0], q_y.scale[0], lsb=1)


def test_matmul_of_two_activations_and_a_constant():
    rng = np.random.default_rng(4)
    g = Graph("mm")
    x = g.add_input("x", TensorType((None, 3, 6)))
    t = g.add_node("transpose", [x], {"perm": (0, 2, 1)}, name="t").output
    att = g.add_node("matmul", [x, t], name="att").output
    w = g.add_constant("w", rand(rng, 3, 5))
    g.outputs = [g.add_node("matmul", [att, w], name="y").output]
    data = quantized(g)
    q_y = g.value("y").quant
    fq, out, _ = compare(g, data[0])
    assert g.op_counts()["qmatmul"] == 2
    assert g.value("y.acc").quant.axis == 2  # the constant is per column
    lsb_close(out[0], fq[0], q_y.scale[0], lsb=2, frac=0.98)


def test_concat_requantizes_inputs_with_other_params():
    g = Graph("cat")
    x = g.add_input("x", TensorType((None, 2, 4, 4)))
    a = g.add_node("sigmoid", [x], name="a").output
    b = g.add_node("tanh", [x], name="b").output
    g.outputs = [g.add_node("concat", [a, b], {"axis": 1}, name="y").output]
    data = quantized(g)
    shared = g.value("y").quant
    assert g.value("a").quant == shared  # quantize ties concat inputs
    g.value("a").quant = QuantParams(1 / 255, 0, signed=False)  # now they differ
    fq, out, _ = compare(g, data[0])
    cat = g.outputs[0].producer.inputs[0].producer
    assert cat.op == "concat"
    assert [v.producer.op for v in cat.inputs] == ["requantize", "lut"]
    lsb_close(out[0], fq[0], shared.scale[0], lsb=1)


@pytest.mark.parametrize("shared_reader", [False, True])
def test_clip_after_average_pool_on_one_grid_is_the_pool_clamp(shared_reader):
    """TFLite's AVERAGE_POOL_2D with a fused activation: a relu6-like clip on the pool's grid
    becomes qavg_pool2d's clamp, no requantize; not when another node also reads the pool."""
    g = Graph("pool_clip")
    x = g.add_input("x", TensorType((None, 2, 4, 4)))
    p = g.add_node("avg_pool2d", [x], {"kernel": (2, 2)}, name="p").output
    y = g.add_node("clip", [p], {"min": 0.0, "max": 0.5}, name="y").output
    g.outputs = [y] + ([g.add_node("max_pool2d", [p], {"kernel": (2, 2)}, name="m").output]
                       if shared_reader else [])
    data = quantized(g)
    q = g.value("x").quant
    for name in ("p", "y"):
        g.value(name).quant = q
    fq, out, _ = compare(g, data[0])
    pool = g.find("qavg_pool2d")[0]
    lo, hi = q.zero_point[0], q.zero_point[0] + round(0.5 / np.float32(q.scale[0]))
    if shared_reader:
        assert (pool.attrs["clamp_min"], pool.attrs["clamp_max"]) == (-2 ** 31, 2 ** 31 - 1)
        rq = g.outputs[0].producer.inputs[0].producer
        assert rq.op == "requantize" and (rq.attrs["clamp_min"], rq.attrs["clamp_max"]) == (lo, hi)
    else:
        assert set(g.op_counts()) == {"quantize", "qavg_pool2d", "dequantize"}
        assert (pool.attrs["clamp_min"], pool.attrs["clamp_max"]) == (lo, hi)
    s = np.float32(q.scale[0])
    assert out[0].min() == 0 and np.isclose(out[0].max(), (hi - lo) * s)  # both bounds reached
    # The simulation averages reals and rounds half to even; qavg_pool2d rounds ties away.
    lsb_close(out[0], fq[0], q.scale[0], lsb=1)


@pytest.mark.parametrize("op,attrs,emits", [
    ("avg_pool2d", {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1),
                    "count_include_pad": False}, "qavg_pool2d"),  # the divisor varies
    ("avg_pool2d", {"kernel": (2, 2), "padding": (1, 1, 1, 1)}, "qconv2d"),
    ("global_avg_pool", {}, "qconv2d"), ("mean", {"axes": (2, 3), "keepdims": False}, "qconv2d")])
def test_average_pooling_onto_another_grid(op, attrs, emits):
    g = single_op_graph(op, attrs, pre="tanh")
    data = quantized(g)
    q_y = g.value("y").quant
    assert q_y != g.value("pre").quant
    fq, out, _ = compare(g, data[0])
    assert emits in g.op_counts()
    # One rounding onto the output grid when the divisor is constant; a varying divisor rounds
    # on the input grid first (up to half an input step, here about two output steps).
    lsb_close(out[0], fq[0], q_y.scale[0], lsb=1 if emits == "qconv2d" else 3)


def test_average_pooling_on_one_grid_is_qavg_pool2d():
    g = single_op_graph("global_avg_pool", pre="tanh")
    data = quantized(g)
    g.value("y").quant = g.value("pre").quant
    fq, out, _ = compare(g, data[0])
    pool = g.outputs[0].producer.inputs[0].producer
    assert pool.op == "qavg_pool2d" and pool.attrs["kernel"] == (6, 6)
    lsb_close(out[0], fq[0], g.value("y.q").quant.scale[0] if "y.q" in g.values else
              pool.output.quant.scale[0], lsb=1)


@pytest.mark.parametrize("op,attrs", [
    ("max_pool2d", {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1),
                    "ceil_mode": True}),
    ("reshape", {"shape": (-1, 144)}), ("transpose", {"perm": (0, 2, 3, 1)}),
    ("slice", {"axes": (1,), "starts": (1,), "ends": (3,)}),
    ("pad", {"pads": (0, 0, 1, 1, 0, 0, 1, 1)}), ("relu", {})])
def test_data_movement_and_unfused_relu_are_exact(op, attrs):
    g = single_op_graph(op, attrs, pre="tanh")
    data = quantized(g)
    fq, out, _ = compare(g, data[0])
    assert float_ops(g) == {"dequantize"}
    np.testing.assert_array_equal(out[0], fq[0])


# ---- options ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rounding", ["single_half_up", "single_half_away", "gemmlowp_double"])
def test_rounding_option_reaches_every_rescaling_node(rounding):
    g = cnn()
    data = quantized(g)
    q = g.outputs[0].quant
    fq, out, _ = compare(g, data[0], f"lower-integer{{rounding={rounding}}}")
    rescaling = [n for n in g.nodes if "rounding" in n.attrs and n.op != "quantize"]
    assert rescaling and {n.attrs["rounding"] for n in rescaling} == {rounding}
    lsb_close(out[0], fq[0], q.scale[0], lsb=2, frac=0.97)


def test_shift_only_needs_power_of_two_scales():
    g = cnn()
    data = quantized(g, "calibrate,quantize{pow2=true}")
    fq, out, _ = compare(g, data[0], "lower-integer{rounding=shift_only}")
    rq = [n for n in g.nodes if n.op == "requantize"]
    assert rq and all(set(n.attrs["multiplier"]) == {0} for n in rq)
    assert np.isfinite(out[0]).all()
    g2 = cnn()
    quantized(g2)
    with pytest.raises(PassError, match=r"node %c1 \(conv2d\): rounding=shift_only needs "
                                        r"power-of-two multipliers in 2\*\*-31..2\*\*31, got "
                                        r"0\.00\d+; quantize with pow2=true"):
        lower(g2, "lower-integer{rounding=shift_only}")


def test_acc_bits_option():
    g = cnn()
    quantized(g)
    lower(g, "lower-integer{acc_bits=24}")
    assert {n.attrs["acc_bits"] for n in g.nodes if n.op in ("qconv2d", "qlinear")} == {24}
    with pytest.raises(PipelineError, match="acc_bits"):
        lower(cnn(), "lower-integer{acc_bits=40}")


# ---- float islands and errors ------------------------------------------------------------------

def softmax_graph() -> Graph:
    rng = np.random.default_rng(5)
    g = Graph("head")
    x = g.add_input("x", TensorType((None, 6)))
    w = g.add_constant("w", rand(rng, 4, 6))
    h = g.add_node("linear", [x, w], name="h").output
    s = g.add_node("softmax", [h], name="s").output
    w2 = g.add_constant("w2", rand(rng, 3, 4))
    g.outputs = [g.add_node("linear", [s, w2], name="y").output]
    return g


def test_float_op_is_an_error_naming_node_and_option():
    g = softmax_graph()
    quantized(g)
    with pytest.raises(PassError, match=r"cannot lower softmax %s to integer ops: .*; "
                                        r"lower-integer\{float_islands=true\} keeps it float"):
        lower(g)
    g = Graph("max")
    x = g.add_input("x", TensorType((None, 4)))
    a, b = (g.add_node(op, [x], name=op).output for op in ("tanh", "sigmoid"))
    g.outputs = [g.add_node("maximum", [a, b], name="y").output]
    quantized(g)
    with pytest.raises(PassError, match=r"cannot lower maximum %y to integer ops: no integer "
                                        r"lowering rule for op maximum"):
        lower(g)


def test_float_islands_keep_an_op_float_between_dequantize_and_quantize():
    g = softmax_graph()
    data = quantized(g)
    q_y = g.value("y").quant
    fq, out, ctx = compare(g, data[0], "lower-integer{float_islands=true}", mode="float")
    s = g.value("s").producer
    assert s.op == "softmax" and s.inputs[0].producer.op == "dequantize"
    assert [u.op for u in g.value("s").users] == ["quantize"]
    assert float_ops(g) == {"dequantize", "softmax"}
    assert any("softmax stays float" in str(d) for d in ctx.diagnostics)
    assert g.meta["integer"]["float_islands"] == ["s"]
    lsb_close(out[0], fq[0], q_y.scale[0], lsb=2, frac=0.95)


def test_unfolded_batch_norm_suggests_fold_bn():
    rng = np.random.default_rng(0)
    g = Graph("bn")
    x = g.add_input("x", TensorType((None, 3, 4, 4)))
    c = conv(g, x, 4, "c", rng)
    params = [g.add_constant(n, np.abs(rand(rng, 4)) + 0.5) for n in ("g", "b", "m", "v")]
    g.outputs = [g.add_node("batch_norm", [c] + params, name="bn").output]
    quantized(g)
    with pytest.raises(PassError, match="batch_norm %bn.*run fold-bn before quantize"):
        lower(g)


def test_bad_quantization_params_name_the_node():
    g = cnn()
    quantized(g)
    q = g.value("pool").quant
    g.value("pool").quant = QuantParams(0.0, q.zero_point, bits=q.bits, signed=q.signed)
    with pytest.raises(PassError, match=r"node %pool: value %pool has invalid quantization "
                                        r"parameters: scale 0.0 must be finite and > 0"):
        run_pipeline(g, "lower-integer", PassContext(verify=False))
    g = cnn()
    quantized(g)
    q = g.value("r1").quant
    g.value("r1").quant = QuantParams(q.scale, 300, bits=8, signed=False)
    with pytest.raises(PassError, match="zero point 300 outside"):
        run_pipeline(g, "lower-integer", PassContext(verify=False))


def test_multiplier_that_does_not_fit_is_an_error():
    g = cnn()
    quantized(g)
    g.value("r1").quant = QuantParams(1e-15, 0, signed=False)  # M ~ 1e12 >= 2**31
    with pytest.raises(PassError, match=r"node %c1 \(conv2d\): requantization multiplier"
                                        r" .* is >= 2\*\*31"):
        lower(g)


def test_value_without_params_is_reported():
    g = cnn()
    quantized(g)
    g.value("pool").quant = None  # the next conv reads %pool
    with pytest.raises(PassError, match=r"%pool has no quantization parameters"):
        run_pipeline(g, "lower-integer", PassContext(verify=False))


# ---- the rule registry ---------------------------------------------------------------------------

def test_rules_are_looked_up_per_op_and_can_be_replaced():
    original = lower_integer.lowering_rules()["tanh"]
    seen = []

    @lowering_rule("tanh")
    def refuse(graph, node, state: LoweringState) -> bool:
        seen.append((node.name, state.rounding, state.acc_bits))
        raise CannotLower("tanh refused for this test")
    try:
        g = single_op_graph("tanh")
        quantized(g)
        with pytest.raises(PassError, match="cannot lower tanh %y to integer ops: tanh refused"):
            lower(g, "lower-integer{acc_bits=20}")
        assert seen == [("y", "gemmlowp_double", 20)]
    finally:
        lowering_rule("tanh")(original)
    assert lower_integer.lowering_rules()["tanh"] is original


def test_a_rule_that_claims_success_without_a_result_is_a_bug_report():
    original = lower_integer.lowering_rules()["tanh"]
    lowering_rule("tanh")(lambda graph, node, state: True)
    try:
        g = single_op_graph("tanh", pre="sigmoid")
        g.outputs = [g.add_node("sigmoid", [g.outputs[0]], name="z").output]
        quantized(g)
        with pytest.raises(PassError, match="returned True but gave no integer version of %y"):
            lower(g)
    finally:
        lowering_rule("tanh")(original)


# ---- per-channel activations (BERT's outlier hidden channels) ----------------------------

def post_norm_block(seed: int = 0, relu: bool = False) -> Graph:
    """Two post-norm residual blocks over an 8-wide hidden axis with an outlier channel (2):
    linear -> add -> layer_norm -> linear -> add -> layer_norm, the shape of a BERT layer
    (`relu`: a relu named "act" after the first residual sum)."""
    rng = np.random.default_rng(seed)
    g = Graph("post_norm")
    x = g.add_input("x", TensorType((None, 5, 8)))
    w1 = rand(rng, 8, 8, scale=0.3)
    w1[2] *= 60.0
    h = g.add_node("linear", [x, g.add_constant("fc1.w", w1), g.add_constant("fc1.b", rand(rng, 8))],
                   name="fc1").output
    s1 = g.add_node("add", [h, x], name="res1").output
    if relu:
        s1 = g.add_node("relu", [s1], name="act").output
    gamma = np.abs(rand(rng, 8)) + 0.5
    gamma[2] = 20.0  # the LayerNorm output keeps the outlier, scaled by gamma (as in BERT)
    n1 = g.add_node("layer_norm", [s1, g.add_constant("ln1.g", gamma),
                                   g.add_constant("ln1.b", rand(rng, 8, scale=0.1))],
                    name="ln1").output
    h2 = g.add_node("linear", [n1, g.add_constant("fc2.w", rand(rng, 8, 8, scale=0.3)),
                               g.add_constant("fc2.b", rand(rng, 8))], name="fc2").output
    s2 = g.add_node("add", [h2, n1], name="res2").output
    g.outputs = [g.add_node("layer_norm", [s2], name="ln2").output]
    return g


def _post_norm_data(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [rand(rng, 4, 5, 8) for _ in range(n)]


PER_CHANNEL_SCHEME = ("calibrate{per_channel=true,per_channel_axis=-1},"
                      "quantize{transformer=true,act_per_channel=[linear,add,layer_norm]}")


def test_per_channel_activations_lower_through_common_grids():
    g = post_norm_block()
    run_pipeline(g, PER_CHANNEL_SCHEME, PassContext(calibration_data=_post_norm_data()))
    for name in ("fc1", "res1", "ln1", "fc2", "res2"):
        assert g.value(name).quant.axis == 2, name  # the scheme really is per channel
    fq = g.copy()
    lower(g)
    assert float_ops(g) == {"dequantize"}
    counts = g.op_counts()
    assert counts["qlayer_norm"] == 2 and counts["qlinear"] == 2 and "qadd" not in counts
    assert counts["add"] == 2  # each residual sum: exact i32 add on a common grid
    # fc2 reads ln1's per-channel codes moved onto one i16 grid
    fc2 = next(n for n in g.nodes if n.op == "qlinear" and n.name.startswith("fc2"))
    wide = fc2.inputs[0]
    assert wide.dtype == "i16" and wide.producer.op == "requantize"
    assert len(wide.producer.attrs["multiplier"]) == 8 and wide.producer.attrs["axis"] == 2
    assert wide.quant.axis is None and wide.quant.zero_point == (0,)
    # per-channel outputs: one multiplier per hidden channel after fc1
    fc1_out = next(n for n in g.nodes if n.op == "requantize" and n.inputs[0].producer.op ==
                   "qlinear" and n.inputs[0].producer.name.startswith("fc1"))
    assert len(fc1_out.attrs["multiplier"]) == 8 and fc1_out.output.quant.axis == 2
    # ln1's output scales are folded into its gamma: per-channel gamma params, one multiplier
    ln1 = next(n for n in g.nodes if n.op == "qlayer_norm" and n.name.startswith("ln1"))
    assert ln1.inputs[1].quant.axis == 0 and ln1.output.quant.axis == 2
    # integer == simulation on almost every output; where an integer LayerNorm rounds one
    # step differently, the step propagates through the next linear and LayerNorm
    step = float(g.outputs[0].producer.inputs[0].quant.scale[0])
    diff = np.concatenate([np.abs(qcompile.run(g, x, mode="int")[0]
                                  - qcompile.run(fq, x, mode="fakequant")[0]).ravel() / step
                           for x in _post_norm_data(3, seed=9)])
    assert diff.max() <= 4 and diff.mean() <= 0.1 and (diff < 1e-3).mean() >= 0.95, \
        (diff.max(), diff.mean())


def _fc2_input_grid(acc_bits: int):
    g = post_norm_block()
    run_pipeline(g, PER_CHANNEL_SCHEME, PassContext(calibration_data=_post_norm_data()))
    lower(g, f"lower-integer{{acc_bits={acc_bits}}}")
    fc2 = next(n for n in g.nodes if n.op == "qlinear" and n.name.startswith("fc2"))
    return g, fc2


def test_common_grid_keeps_the_accumulator_bound():
    """The i16 grid of a linear's per-channel input is the finest on which the worst case over
    all input codes fits acc_bits: a narrower accumulator gets a coarser grid, never a wrap."""
    bounds = {}
    for acc_bits in (32, 20):
        g, fc2 = _fc2_input_grid(acc_bits)
        wide, w, b = fc2.inputs
        rq = wide.producer
        q_in = rq.inputs[0].quant
        reach = np.maximum(q_in.qmax - np.asarray(q_in.zero_point),
                           np.asarray(q_in.zero_point) - q_in.qmin)
        gain = np.array([multiplier_value(m, s) for m, s in zip(rq.attrs["multiplier"],
                                                                rq.attrs["shift"])])
        codes = np.ceil(reach * gain) + 1  # |q'| per input channel, rounding included
        worst = np.abs(w.data.astype(np.int64) - w.quant.zero_point_array(2)) @ codes \
            + np.abs(b.data.astype(np.int64))
        assert worst.max() < 2 ** (acc_bits - 1), acc_bits
        assert codes.max() < 2 ** 15
        bounds[acc_bits] = float(wide.quant.scale[0])
        # extreme inputs saturate every channel; the int run equals itself at 32 bits of
        # accumulator (no wrap happened)
        x = rand(np.random.default_rng(3), 4, 5, 8, scale=50.0)
        assert np.array_equal(qcompile.run(g, x, mode="int")[0],
                              qcompile.run(_with_acc_bits(g, 32), x, mode="int")[0])
    assert bounds[20] > bounds[32]  # coarser grid for the narrow accumulator


def _with_acc_bits(g: Graph, bits: int) -> Graph:
    h = g.copy()
    for n in h.nodes:
        if n.op in ("qlinear", "qconv2d", "qmatmul"):
            n.attrs["acc_bits"] = bits
    return h


def test_accumulator_analysis_sees_the_common_grid_bound():
    """check-accumulator bounds a linear reading a common grid per input feature (each
    feature's own range through its multiplier), so the guarantee lower-integer chose the grid
    by is the one the analysis proves; the naive bound of an i16 input would not fit."""
    from qcompile.quant.accumulator import mac_layer
    g, fc2 = _fc2_input_grid(20)
    layer = mac_layer(fc2)
    assert layer.feature_range is not None
    assert layer.l1_bound().max() < 2 ** 19
    naive = np.abs(layer.rows).sum(axis=1) * 2 ** 15
    assert naive.max() >= 2 ** 19
    run_pipeline(g, "check-accumulator{bits=20,policy=error}", PassContext())
    # the proven interval holds the exact sums on inputs that saturate every channel
    from qcompile.interp.interpreter import Interpreter
    lo, hi = layer.sum_interval()
    rng = np.random.default_rng(5)
    for scale in (1.0, 50.0):
        seen = []
        Interpreter(g, "int", observer=lambda n, outs: seen.append(outs[0]) if n is fc2
                    else None).run([rand(rng, 16, 5, 8, scale=scale)])
        acc = seen[0].reshape(-1, 8).astype(np.int64) - layer.bias_q
        assert (acc >= lo).all() and (acc <= hi).all()


def test_per_channel_activation_with_a_fused_relu_is_refused_by_name():
    g = post_norm_block(relu=True)  # its clamp bounds would differ per channel
    run_pipeline(g, "calibrate{per_channel=true,per_channel_axis=-1},"
                    "quantize{transformer=true,act_per_channel=[linear,add,relu,layer_norm]}",
                 PassContext(calibration_data=_post_norm_data()))
    assert g.value("act").quant.axis == 2 and g.value("res1").quant is None  # fused
    with pytest.raises(PassError, match=r"%act with a fused relu"):
        lower(g)


# ---- real models -----------------------------------------------------------------------------

def _zoo():
    sys.path.insert(0, str(ROOT / "examples"))
    import zoo
    return zoo


def _real_model(name):
    torch = pytest.importorskip("torch")
    zoo = _zoo()
    if name == "digits":
        X_tr, X_te, _, y_te = zoo.digits_data()
        model = zoo.digits_cnn()
    elif name == "mnist":
        X_tr, X_te, _, y_te = zoo.mnist_data()
        model = zoo.mnist_cnn()
    else:
        pytest.importorskip("skimage")
        try:
            model = zoo.mtcnn_rnet()
        except zoo.ZooError as exc:
            pytest.skip(str(exc))
        X, y_te = zoo.lfw_face_data(24)
        X_tr, X_te = X[np.random.default_rng(0).permutation(len(X))[:100]], X
    g = qcompile.from_torch(model, (torch.from_numpy(X_te[:2]),), dynamic_batch=True)
    calib = zoo.calibration_batches(X_tr, n=min(256, len(X_tr)))
    run_pipeline(g, "fold-bn,calibrate,quantize", PassContext(calibration_data=calib))
    return g, X_te, y_te


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits", "mnist", "rnet"])
def test_real_model_integer_accuracy_matches_fakequant(name):
    g, X, y = _real_model(name)
    fq = qcompile.run(g, [X], mode="fakequant")[0]
    # RNet's softmax is not quantized by the default scheme: it stays a float island, and a
    # graph with float ops runs in mode "float" (the integer ops compute the same there).
    islands = name == "rnet"
    ctx = run_pipeline(g, "lower-integer" + ("{float_islands=true}" if islands else ""),
                       PassContext(verify=True))
    assert not ctx.errors
    assert float_ops(g) <= ({"dequantize", "softmax"} if islands else {"dequantize"})
    out = qcompile.run(g, [X], mode="float" if islands else "int")[0]
    acc_fq, acc_int = (fq.argmax(1) == y).mean(), (out.argmax(1) == y).mean()
    mismatch = (fq.argmax(1) != out.argmax(1)).mean()
    assert abs(acc_fq - acc_int) <= 0.001 and mismatch <= 0.005, (acc_fq, acc_int, mismatch)


@pytest.mark.slow
def test_cli_inspect_prints_the_integer_graph(tmp_path):
    import subprocess
    model = ROOT / "examples/models/digits_cnn.onnx"
    calib = ROOT / "examples/models/digits_calib.npz"
    r = subprocess.run([sys.executable, "-m", "qcompile", "inspect", str(model), "-p",
                        "fold-bn,calibrate,quantize,lower-integer{rounding=single_half_up}",
                        "--calibration", str(calib)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    g = qcompile.parse(r.stdout)
    g.verify()
    assert g.dump() == r.stdout
    assert "qconv2d" in r.stdout and 'rounding="single_half_up"' in r.stdout
    assert {n.op for n in g.nodes} >= {"quantize", "qconv2d", "requantize", "qlinear", "dequantize"}
