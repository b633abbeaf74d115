"""Per-layer SQNR and float-vs-simulated comparison."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from qcompile.interp.interpreter import fake_quantize
from qcompile.ir import Graph, QuantParams, TensorType
from qcompile.passmanager import PassContext, run_pipeline
from qcompile.quant.calibration import CalibrationError
from qcompile.quant.sqnr import (compare_outputs, per_layer_sqnr, print_sqnr_table,
                                 sqnr_report)


def relu_graph() -> Graph:
    g = Graph("r")
    x = g.add_input("x", TensorType((None, 6)))
    g.outputs = [g.add_node("relu", [x], name="y").output]
    return g


DATA = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6),
        np.linspace(-0.3, 2.0, 12, dtype=np.float32).reshape(2, 6)]


def test_unquantized_graph_is_exact():
    rows = per_layer_sqnr(relu_graph(), DATA)
    assert [(r.name, r.op, r.kind, r.bits) for r in rows] == [("y", "relu", "fused", None)]
    assert rows[0].sqnr_db == math.inf and rows[0].max_abs_error == 0.0


def test_sqnr_matches_a_hand_computation():
    g = relu_graph()
    q = QuantParams((0.25,), (0,), bits=4, signed=False)
    g.value("y").quant = q
    rows = per_layer_sqnr(g, DATA)
    ref = np.concatenate([np.maximum(d, 0) for d in DATA]).astype(np.float64)
    sim = np.concatenate([fake_quantize(np.maximum(d, 0), q) for d in DATA]).astype(np.float64)
    expected = 10 * math.log10(np.sum(ref ** 2) / np.sum((ref - sim) ** 2))
    assert rows[0].sqnr_db == pytest.approx(expected)
    assert rows[0].max_abs_error == pytest.approx(np.abs(ref - sim).max())
    assert rows[0].bits == 4 and rows[0].kind == "quantized"


def test_report_is_json_and_table_prints():
    from rich.console import Console
    g = relu_graph()
    rows = per_layer_sqnr(g, DATA)
    g.value("y").quant = QuantParams((0.5,), (0,), bits=2, signed=False)
    rows += per_layer_sqnr(g, DATA)
    report = sqnr_report(rows)
    json.dumps(report, allow_nan=False)
    assert report[0]["exact"] and report[0]["sqnr_db"] is None
    assert not report[1]["exact"] and report[1]["sqnr_db"] < 20
    buf = io.StringIO()
    print_sqnr_table(rows, console=Console(file=buf, width=120))
    text = buf.getvalue()
    assert "exact" in text and "relu" in text and f"{rows[1].sqnr_db:.1f}" in text


def classifier() -> Graph:
    rng = np.random.default_rng(0)
    g = Graph("clf")
    x = g.add_input("x", TensorType((None, 8)))
    w1 = g.add_constant("w1", rng.standard_normal((16, 8)).astype(np.float32))
    h = g.add_node("relu", [g.add_node("linear", [x, w1, None], name="fc1").output], name="h")
    w2 = g.add_constant("w2", rng.standard_normal((4, 16)).astype(np.float32))
    g.outputs = [g.add_node("linear", [h.output, w2, None], name="logits").output]
    return g


def test_compare_outputs_and_per_layer_on_a_quantized_classifier():
    g = classifier()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    run_pipeline(g, "calibrate,quantize", PassContext(calibration_data=x, verify=True))
    rows = per_layer_sqnr(g, x)
    assert [r.name for r in rows] == ["fc1", "h", "logits"]
    assert rows[0].kind == "fused" and rows[0].weight_bits == 8 and rows[1].bits == 8
    assert all(25 < r.sqnr_db < 80 for r in rows)
    labels = np.argmax(np.concatenate([_float_logits(g, x)]), axis=1)
    result = compare_outputs(g, x, labels)
    assert result["samples"] == 64 and result["float_accuracy"] == 1.0
    assert result["quant_accuracy"] == result["top1_agreement"] >= 0.9
    assert result["output_sqnr_db"] == pytest.approx(rows[-1].sqnr_db)
    g_fp = classifier()  # nothing quantized: simulation equals float exactly
    assert compare_outputs(g_fp, x)["output_sqnr_db"] == math.inf
    with pytest.raises(CalibrationError, match="3 labels for 64"):
        compare_outputs(g, x, labels[:3])


def _float_logits(g: Graph, x: np.ndarray) -> np.ndarray:
    import qcompile
    return qcompile.run(g, [x])[0]
