"""Accumulator-width analysis and repair: the bound is sound and reached, a layer the analysis
calls unsafe really wraps in a narrow accumulator, and both repairs make it provably safe."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from qcompile.errors import PassError, PipelineError
from qcompile.interp.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.ir.types import QuantParams, TensorType
from qcompile.passmanager import PassContext, run_pipeline
from qcompile.quant.accumulator import (AccumulatorError, analyze, mac_layer, mac_layers,
                                        project_rows, signed_bits, split_chunks, wrap)

SX = 2.0 ** -4  # a power-of-two input scale: codes * SX are exact float32 inputs


# ---- hand-built integer graphs ------------------------------------------------------------------

def _acc_params(sw: np.ndarray, axis: int) -> QuantParams:
    return QuantParams(SX * sw, np.zeros(sw.size, np.int64), bits=32, signed=True, axis=axis)


def _quantized_input(g: Graph, shape: tuple, unsigned: bool, zx: int):
    x = g.add_input("x", TensorType(shape, "f32"))
    xq = QuantParams(SX, zx, bits=8, signed=not unsigned)
    q = g.add_node("quantize", [x], {"dtype": xq.storage_dtype}, name="xq")
    q.output.quant = xq
    return q.output


def linear_graph(w_codes: np.ndarray, bias: np.ndarray | None, unsigned: bool = True,
                 zx: int = 0, acc_bits: int = 32) -> Graph:
    """float x -> quantize -> qlinear(w, bias): the graph output is the i32 accumulator."""
    o, k = w_codes.shape
    g = Graph("lin")
    xq = _quantized_input(g, (None, k), unsigned, zx)
    sw = np.full(o, 0.01)
    w = g.add_constant("w", w_codes, dtype="i8",
                       quant=QuantParams(sw, np.zeros(o, np.int64), bits=8, axis=0))
    inputs = [xq, w]
    if bias is not None:
        inputs.append(g.add_constant("b", bias.astype(np.int32), dtype="i32",
                                     quant=QuantParams(SX * sw, np.zeros(o, np.int64), bits=32,
                                                       axis=0)))
    n = g.add_node("qlinear", inputs, {"acc_bits": acc_bits}, name="fc")
    n.output.quant = _acc_params(sw, 1)
    g.outputs = [n.output]
    return g


def conv_graph(w_codes: np.ndarray, bias: np.ndarray | None, hw: int = 6, groups: int = 1,
               padding=(1, 1, 1, 1), stride=(1, 1), unsigned: bool = True, zx: int = 0,
               acc_bits: int = 32) -> Graph:
    o, cg = w_codes.shape[:2]
    g = Graph("conv")
    xq = _quantized_input(g, (None, cg * groups, hw, hw), unsigned, zx)
    sw = np.linspace(0.01, 0.02, o)
    w = g.add_constant("w", w_codes, dtype="i8",
                       quant=QuantParams(sw, np.zeros(o, np.int64), bits=8, axis=0))
    inputs = [xq, w]
    if bias is not None:
        inputs.append(g.add_constant("b", bias.astype(np.int32), dtype="i32",
                                     quant=QuantParams(SX * sw, np.zeros(o, np.int64), bits=32,
                                                       axis=0)))
    n = g.add_node("qconv2d", inputs, {"acc_bits": acc_bits, "groups": groups,
                                       "padding": padding, "stride": stride}, name="conv")
    n.output.quant = _acc_params(sw, 1)
    g.outputs = [n.output]
    return g


def as_float(codes: np.ndarray, zx: int = 0) -> np.ndarray:
    """The float input whose quantization is exactly `codes`."""
    return ((np.asarray(codes, np.float64) - zx) * SX).astype(np.float32)


def run_int(g: Graph, codes: np.ndarray, zx: int = 0) -> np.ndarray:
    return Interpreter(g, "int").run([as_float(codes, zx)])[0].astype(np.int64)


def with_acc_bits(g: Graph, bits: int) -> Graph:
    c = g.copy()
    for n in c.nodes:
        if "acc_bits" in n.attrs:
            n.attrs["acc_bits"] = bits
    return c


def adversarial(w_codes: np.ndarray, channel: int, qmin: int, qmax: int, zx: int = 0) -> np.ndarray:
    """x at qmax where w - z_w > 0 and qmin where it is < 0, for one output channel."""
    w = w_codes[channel]
    return np.where(w > 0, qmax, np.where(w < 0, qmin, zx))


def unsafe_weights(rng, o: int = 4, k: int = 64) -> np.ndarray:
    """Dense 8-bit weights: ||w||_1 * 255 is far beyond 2**15."""
    return rng.integers(-127, 128, size=(o, k)).astype(np.int8)


# ---- basics -------------------------------------------------------------------------------------

def test_signed_bits_and_wrap():
    assert signed_bits([0, -1, 0, -128, 0, 0], [0, 0, 127, 127, 128, 32767]).tolist() == \
        [1, 1, 8, 8, 9, 16]
    assert signed_bits(-32769, 0).item() == 17
    assert signed_bits(-(1 << 70), 1 << 70).item() == 72  # exact beyond int64
    assert wrap(np.array([32767, 32768, -32769, 65536 + 5]), 16).tolist() == \
        [32767, -32768, 32767, 5]


def test_report_is_json_and_renders():
    rng = np.random.default_rng(0)
    g = linear_graph(unsafe_weights(rng), np.arange(4) * 1000 - 1500)
    x = rng.integers(0, 256, size=(8, 64))
    rep = analyze(g, as_float(x), bits=16)
    d = json.loads(json.dumps(rep.to_dict()))
    layer = d["layers"][0]
    assert layer["name"] == "fc" and layer["op"] == "qlinear" and layer["reduction"] == 64
    assert layer["x_range"] == [0, 255] and d["unsafe"]["fc"] == [0, 1, 2, 3]
    assert layer["observed"]["count"] == 8 * 4
    from rich.console import Console
    console = Console(width=200, record=True)
    console.print(rep.table())
    assert "qlinear" in console.export_text()


# ---- soundness: the bound holds on random layers and inputs, and is reached ---------------------

def _random_layer(rng, kind: str):
    unsigned = bool(rng.integers(0, 2))
    zx = 0 if unsigned else int(rng.integers(-20, 21))
    if kind == "linear":
        o, k = int(rng.integers(1, 6)), int(rng.integers(1, 40))
        w = rng.integers(-128, 128, size=(o, k)).astype(np.int8)
        g = linear_graph(w, rng.integers(-5000, 5000, size=o), unsigned, zx)
        shape = (int(rng.integers(1, 5)), k)
    else:
        groups = int(rng.choice([1, 2]))
        cg, o = int(rng.integers(1, 4)), 2 * int(rng.integers(1, 3))
        kh = int(rng.integers(1, 4))
        w = rng.integers(-128, 128, size=(o, cg, kh, kh)).astype(np.int8)
        pad = tuple(int(v) for v in rng.integers(0, 2, size=4))
        g = conv_graph(w, rng.integers(-5000, 5000, size=o), hw=5, groups=groups, padding=pad,
                       stride=(int(rng.integers(1, 3)),) * 2, unsigned=unsigned, zx=zx)
        shape = (int(rng.integers(1, 3)), cg * groups, 5, 5)
    return g, shape, unsigned, zx


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_bound_is_sound_on_random_layers_and_inputs(kind):
    rng = np.random.default_rng(1 if kind == "linear" else 2)
    for _ in range(40):
        g, shape, unsigned, zx = _random_layer(rng, kind)
        layer = mac_layers(g)[0]
        rep = analyze(g).layers[0]
        qmin, qmax = (0, 255) if unsigned else (-128, 127)
        assert rep.x_range == (qmin - zx, qmax - zx)
        assert np.all(rep.l1_bound >= rep.bound)  # the A2Q bound contains the exact interval
        for trial in range(6):
            # uniform, and extreme codes only (where the bound bites)
            codes = rng.integers(qmin, qmax + 1, size=shape) if trial % 2 else \
                rng.choice([qmin, qmax], size=shape)
            acc = run_int(g, codes, zx)
            assert np.array_equal(acc, layer.exact(codes - zx))
            per_ch = np.moveaxis(acc, layer.channel_axis, 0).reshape(layer.channels, -1)
            assert np.all(per_ch.min(axis=1) >= rep.lo) and np.all(per_ch.max(axis=1) <= rep.hi)
            assert np.all(np.abs(per_ch).max(axis=1) <= rep.l1_bound)


def test_matmul_of_two_activations_product_bound():
    rng = np.random.default_rng(3)
    g = Graph("mm")
    a = g.add_input("a", TensorType((2, 3, 5), "f32"))
    b = g.add_input("b", TensorType((2, 5, 4), "f32"))
    qa, qb = QuantParams(SX, 3, bits=8), QuantParams(SX, 0, bits=8, signed=False)
    na = g.add_node("quantize", [a], {"dtype": "i8"}, name="aq")
    nb = g.add_node("quantize", [b], {"dtype": "u8"}, name="bq")
    na.output.quant, nb.output.quant = qa, qb
    mm = g.add_node("qmatmul", [na.output, nb.output], {"acc_bits": 32}, name="mm")
    mm.output.quant = QuantParams(SX * SX, 0, bits=32)
    g.outputs = [mm.output]
    rep = analyze(g).layers[0]
    corners = [(-128 - 3) * 0, (-128 - 3) * 255, (127 - 3) * 0, (127 - 3) * 255]
    assert rep.lo[0] == 5 * min(corners) and rep.hi[0] == 5 * max(corners)
    for _ in range(10):
        ca = rng.choice([-128, 127], size=(2, 3, 5))
        cb = rng.choice([0, 255], size=(2, 5, 4))
        out = Interpreter(g, "int").run([as_float(ca, 3), as_float(cb)])[0]
        assert out.min() >= rep.lo[0] and out.max() <= rep.hi[0]
    worst = Interpreter(g, "int").run([as_float(np.full((2, 3, 5), -128), 3),
                                       as_float(np.full((2, 5, 4), 255))])[0]
    assert worst.min() == rep.lo[0]  # reached
    # a product-bound layer can only be split, not projected
    with pytest.raises(AccumulatorError, match="two activations"):
        project_rows(mac_layer(mm), 16)


# ---- the proof at P = 16 ------------------------------------------------------------------------

def _unsafe_linear(seed: int = 4):
    rng = np.random.default_rng(seed)
    w = unsafe_weights(rng)
    return rng, w, linear_graph(w, np.array([300, -200, 0, 1000]))


def test_adversarial_input_reaches_the_bound_and_wraps_at_16_bits():
    rng, w, g = _unsafe_linear()
    rep = analyze(g).layers[0]
    assert rep.unsafe_channels(16).tolist() == [0, 1, 2, 3]
    for c in range(4):
        codes = adversarial(w, c, 0, 255)[None, :]
        exact = run_int(g, codes)[0, c]
        assert exact == rep.hi[c]  # the bound is reached, not just approached
        narrow = run_int(with_acc_bits(g, 16), codes)[0, c]
        assert narrow != exact and narrow == wrap(exact, 16)  # int16 really overflows


def test_adversarial_conv_input_reaches_the_bound():
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, size=(3, 4, 3, 3)).astype(np.int8)
    g = conv_graph(w, np.array([7, -7, 0]))
    rep = analyze(g).layers[0]
    c = 1
    pattern = np.where(w[c] > 0, 255, 0)  # (4, 3, 3): the window at output (2, 2) of a 6x6 map
    codes = np.zeros((1, 4, 6, 6), np.int64)
    codes[0, :, 1:4, 1:4] = pattern
    acc = run_int(g, codes)
    assert acc[0, c, 2, 2] == rep.hi[c] and rep.bits_needed[c] > 16
    assert run_int(with_acc_bits(g, 16), codes)[0, c, 2, 2] != rep.hi[c]


def _check_repaired_is_safe(g: Graph, codes_list, reference=None):
    """Every accumulator of the repaired graph (at acc_bits=16) equals its exact value (the
    same graph at 32 bits), and the analysis proves it safe; with `reference` (the unrepaired
    graph), also equal to the original exact sum."""
    assert analyze(g).unsafe(16) == []
    assert all(n.attrs["acc_bits"] == 16 for n in g.nodes if "acc_bits" in n.attrs)
    wide = with_acc_bits(g, 32)
    for codes in codes_list:
        out = run_int(g, codes)
        assert np.array_equal(out, run_int(wide, codes))
        if reference is not None:
            assert np.array_equal(out, run_int(reference, codes))


@pytest.mark.parametrize("method", ["project", "split"])
def test_repair_linear_at_16_bits(method):
    rng, w, g = _unsafe_linear()
    original = g.copy()
    calib = as_float(rng.integers(0, 256, size=(64, 64)))
    ctx = run_pipeline(g, f"check-accumulator{{bits=16,policy=repair,method={method}}}",
                       PassContext(calibration_data=calib, verify=True))
    adv = [adversarial(w, c, 0, 255)[None, :] for c in range(4)]
    if method == "project":  # also the worst case of the repaired weights, which it reaches
        w_new = g.find("qlinear")[0].inputs[1].data
        adv += [adversarial(w_new, c, 0, 255)[None, :] for c in range(4)]
        rep = analyze(g).layers[0]
        assert [run_int(g, adv[4 + c])[0, c] for c in range(4)] == rep.hi.tolist()
    rand = [rng.integers(0, 256, size=(16, 64)) for _ in range(5)]
    _check_repaired_is_safe(g, adv + rand, reference=original if method == "split" else None)
    report = g.meta["accumulator"]
    repair = report["layers"][0]["repair"]
    assert repair["method"] == method and repair["channels"] == [0, 1, 2, 3]
    if method == "split":
        assert g.op_counts()["qlinear"] == len(repair["chunks"]) >= 2
        assert "add" in g.op_counts() and g.outputs[0].name == "fc"
    else:
        assert g.op_counts()["qlinear"] == 1
        assert all(a < b for a, b in zip(repair["l1_after"], repair["l1_before"]))
        # a finite accuracy cost, better than letting it wrap
        assert math.isfinite(repair["sqnr_db"]) and repair["sqnr_db"] > repair["wrapped_sqnr_db"]
        assert any("SQNR" in d.message for d in ctx.diagnostics)


@pytest.mark.parametrize("method", ["project", "split"])
def test_repair_conv_at_16_bits(method):
    rng = np.random.default_rng(6)
    w = rng.integers(-127, 128, size=(4, 8, 3, 3)).astype(np.int8)
    g = conv_graph(w, np.array([100, -100, 5000, 0]))
    original = g.copy()
    calib = as_float(rng.integers(0, 256, size=(16, 8, 6, 6)))
    run_pipeline(g, f"check-accumulator{{bits=16,policy=repair,method={method}}}",
                 PassContext(calibration_data=calib, verify=True))
    codes = []
    for c in range(4):
        x = np.zeros((1, 8, 6, 6), np.int64)
        x[0, :, 1:4, 1:4] = np.where(w[c] > 0, 255, 0)
        codes.append(x)
    codes += [rng.integers(0, 256, size=(4, 8, 6, 6)) for _ in range(3)]
    _check_repaired_is_safe(g, codes, reference=original if method == "split" else None)


def test_projection_keeps_safe_channels_and_corrects_the_mean():
    rng = np.random.default_rng(7)
    # Positive weights and sparse inputs (as after a relu): the worst case is far beyond 16
    # bits while the mean accumulator fits, and shrinking the weights shifts that mean.
    w = rng.integers(20, 40, size=(3, 64)).astype(np.int8)
    w[1] = 1  # a channel that fits 16 bits
    g = linear_graph(w, np.zeros(3, np.int64))
    layer = mac_layers(g)[0]
    x = 255 * (rng.random((256, 64)) < 0.05)
    sums = np.broadcast_to(x.sum(axis=0), layer.rows.shape)
    before = layer.exact(x)
    for refit in (False, True):
        proj = project_rows(layer, 16, sums, x.shape[0], refit=refit)
        assert proj.changed.tolist() == [0, 2] and proj.gamma[1] == 1.0
        assert np.array_equal(proj.rows[1], layer.rows[1])
        assert (proj.gamma[[0, 2]] > 1.0).all() if refit else (proj.gamma == 1.0).all()
        # in real units (the rescaled weight scale), the mean accumulator is kept
        after = layer.exact(x, rows=proj.rows, bias=proj.bias) * proj.gamma
        no_corr = layer.exact(x, rows=proj.rows, bias=np.zeros(3, np.int64)) * proj.gamma
        for c in (0, 2):  # bias correction removes the mean error the repair causes
            assert abs((after - before)[:, c].mean()) <= proj.gamma[c]
            assert abs((no_corr - before)[:, c].mean()) > 100.0
        lo, hi = layer.sum_interval(proj.rows)
        assert (hi + proj.bias <= 32767).all() and (lo + proj.bias >= -32768).all()


# ---- policies and options -----------------------------------------------------------------------

def test_error_policy_names_layer_channels_and_bits():
    _, _, g = _unsafe_linear()
    with pytest.raises(PassError, match=r"qlinear %fc: 4 of 4 output channels can overflow a "
                                        r"16-bit accumulator \(channel 0: \[-?\d+, \d+\] needs"):
        run_pipeline(g, "check-accumulator{bits=16}", PassContext())
    ctx = run_pipeline(g, "check-accumulator", PassContext())  # 32 bits: safe, sets acc_bits
    assert not ctx.errors and g.find("qlinear")[0].attrs["acc_bits"] == 32


def test_warn_policy_keeps_weights_and_sets_the_width():
    _, w, g = _unsafe_linear()
    ctx = run_pipeline(g, "check-accumulator{bits=16,policy=warn}", PassContext())
    assert len(ctx.warnings) == 1 and "needs" in ctx.warnings[0].message
    node = g.find("qlinear")[0]
    assert node.attrs["acc_bits"] == 16 and np.array_equal(node.inputs[1].data, w)


def test_width_defaults_to_the_target():
    _, _, g = _unsafe_linear()
    with pytest.raises(PassError, match="16-bit"):
        run_pipeline(g, "check-accumulator", PassContext(target=SimpleNamespace(accumulator_bits=16)))
    with pytest.raises(PipelineError, match="bits"):
        run_pipeline(g, "check-accumulator{bits=40}", PassContext())


def test_split_refuses_a_single_overflowing_product():
    w = np.full((1, 1, 3, 3), 127, np.int8)  # 127 * 255 alone needs 16 bits
    g = conv_graph(w, None)
    assert split_chunks(mac_layers(g)[0], 16) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5),
                                                  (5, 6), (6, 7), (7, 8), (8, 9)]
    with pytest.raises(AccumulatorError, match="single product"):
        split_chunks(mac_layers(g)[0], 12)
    with pytest.raises(PassError, match="cannot repair"):
        run_pipeline(g, "check-accumulator{bits=12,policy=repair,method=split}", PassContext())


def test_split_depthwise_conv_masks_taps():
    rng = np.random.default_rng(9)
    w = rng.integers(-127, 128, size=(4, 1, 3, 3)).astype(np.int8)  # 4 groups of one channel
    g = conv_graph(w, np.array([1, 2, 3, 4]), groups=4, stride=(2, 2))
    original = g.copy()
    run_pipeline(g, "check-accumulator{bits=16,policy=repair,method=split}",
                 PassContext(verify=True))
    assert g.op_counts()["qconv2d"] >= 2 and "slice" not in g.op_counts()
    codes = [rng.choice([0, 255], size=(2, 4, 6, 6)) for _ in range(4)]
    _check_repaired_is_safe(g, codes, reference=original)


# ---- before lowering: the quantized float graph -------------------------------------------------

def _quantized_float_linear(rng):
    g = Graph("flin")
    x = g.add_input("x", TensorType((None, 48), "f32"))
    w = rng.normal(0, 0.1, size=(6, 48)).astype(np.float32)
    sw = np.abs(w).max(axis=1) / 127
    wv = g.add_constant("w", w, quant=QuantParams(sw, np.zeros(6, np.int64), bits=8, axis=0))
    b = g.add_constant("b", rng.normal(0, 0.1, size=6).astype(np.float32),
                       quant=QuantParams(SX * sw, np.zeros(6, np.int64), bits=32, axis=0))
    x.quant = QuantParams(SX, 0, bits=8, signed=False)
    n = g.add_node("linear", [x, wv, b], name="fc")
    n.output.quant = QuantParams(0.05, 0, bits=8)
    g.outputs = [n.output]
    return g


def test_float_graph_projection_before_lowering():
    rng = np.random.default_rng(8)
    g = _quantized_float_linear(rng)
    before = analyze(g).layers[0]
    assert before.unsafe_channels(16).size == 6
    calib = rng.uniform(0, 255 * SX, size=(64, 48)).astype(np.float32)
    run_pipeline(g, "check-accumulator{bits=16,policy=repair}",
                 PassContext(calibration_data=calib, verify=True))
    after = analyze(g, calib, bits=16)
    assert after.unsafe() == [] and after.layers[0].observed.overflow[16] == 0
    assert g.meta["accumulator_bits"] == 16
    # the weights sit on their quantization grid: fake-quant and analysis agree on the codes
    w = g.find("linear")[0].inputs[1]
    codes = w.data / w.quant.scale_array(2)
    assert np.allclose(codes, np.rint(codes), atol=1e-3)
    with pytest.raises(PassError, match="after lower-integer"):
        run_pipeline(_quantized_float_linear(rng), "check-accumulator{bits=16,policy=repair,"
                     "method=split}", PassContext())


def test_after_lowering_projection_rescales_requantize():
    """quantized float graph -> lower-integer -> check-accumulator: the coarser weight grid of a
    repaired channel moves into its requantize multiplier, so outputs stay close."""
    rng = np.random.default_rng(10)
    g = _quantized_float_linear(rng)
    run_pipeline(g, "lower-integer", PassContext(verify=True))
    wide = g.copy()
    requant = g.find("requantize")[0]
    before = (requant.attrs["multiplier"], requant.attrs["shift"])
    calib = rng.uniform(0, 255 * SX, size=(128, 48)).astype(np.float32)
    ctx = run_pipeline(g, "check-accumulator{bits=16,policy=repair}",
                       PassContext(calibration_data=calib, verify=True))
    assert not ctx.errors and analyze(g).unsafe(16) == []
    assert (requant.attrs["multiplier"], requant.attrs["shift"]) != before
    x = rng.uniform(0, 255 * SX, size=(64, 48)).astype(np.float32)
    ref = Interpreter(wide, "int").run([x])[0].astype(np.float64)
    out = Interpreter(g, "int").run([x])[0].astype(np.float64)
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((out - ref) ** 2))
    assert sqnr > 15.0  # a coarser grid, not a different function
    rep = g.meta["accumulator"]["layers"][0]["repair"]
    assert rep["sqnr_db"] > 15.0 > rep["wrapped_sqnr_db"]
