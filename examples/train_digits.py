"""Train the digits CNN and MLP on sklearn's 8x8 digits and write them to examples/models/.

    python examples/train_digits.py

Writes digits_cnn.pt / digits_mlp.pt (state dicts), digits_cnn.onnx / digits_mlp.onnx (input
"input", output "logits", dynamic batch), digits_calib.npz (256 training images for calibration)
and digits_test.npz (the 450 test images and labels). Training is seeded and single-threaded so
that a rerun reproduces the committed weights.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402


def train(model: nn.Module, X: np.ndarray, y: np.ndarray, epochs: int, lr: float,
          batch_size: int = 128, seed: int = 0) -> nn.Module:
    """Plain Adam + cross-entropy training with a seeded shuffle; returns the model in eval mode."""
    torch.manual_seed(seed)
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(X_t), generator=gen).split(batch_size):
            opt.zero_grad()
            loss_fn(model(X_t[idx]), y_t[idx]).backward()
            opt.step()
    return model.eval()


def export_onnx(model: nn.Module, example: np.ndarray, path: Path) -> None:
    """ONNX export, opset 17, input "input" and output "logits" with a dynamic batch dimension.

    The TorchScript exporter with constant folding off keeps BatchNormalization as its own node
    (as in the torch module, so importers see BN and fold it themselves) and emits
    GlobalAveragePool + Flatten; the torch.export-based one folds BN away and lowers the pooling
    to ReduceMean + Reshape."""
    x = torch.from_numpy(example[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter" notice
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamo=False, do_constant_folding=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    check_onnx(model, example, path)


def check_onnx(model: nn.Module, X: np.ndarray, path: Path) -> None:
    """The exported file must reproduce the torch outputs; a silent export bug would poison
    every comparison made against it later."""
    import onnx
    import onnxruntime as ort
    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": X})[0]
    want = zoo.predict(model, X)
    err = float(np.abs(got - want).max())
    if err > 1e-4:
        raise SystemExit(f"{path}: onnxruntime differs from torch by {err}")


def main() -> None:
    torch.set_num_threads(1)  # fixed reduction order -> reproducible weights
    torch.use_deterministic_algorithms(True)
    out = zoo.MODELS_DIR
    out.mkdir(parents=True, exist_ok=True)
    X_tr, X_te, y_tr, y_te = zoo.digits_data()

    for name, build, epochs in (("digits_cnn", zoo.DigitsCNN, 30), ("digits_mlp", zoo.DigitsMLP, 30)):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = train(build(), X_tr, y_tr, epochs=epochs, lr=3e-3)
        secs = time.perf_counter() - t0
        torch.save(model.state_dict(), out / f"{name}.pt")
        export_onnx(model, X_te, out / f"{name}.onnx")
        print(f"{name}: train {zoo.accuracy(model, X_tr, y_tr):.4f}  "
              f"test {zoo.accuracy(model, X_te, y_te):.4f}  ({epochs} epochs, {secs:.1f} s)")

    calib = np.concatenate(zoo.calibration_batches(X_tr, n=256))
    np.savez_compressed(out / "digits_calib.npz", x=calib)
    np.savez_compressed(out / "digits_test.npz", x=X_te, y=y_te)
    for f in sorted(out.glob("digits_*")):
        print(f"  {f.name:18s} {f.stat().st_size:8d} bytes")


if __name__ == "__main__":
    main()
