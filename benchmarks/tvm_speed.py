"""Latency of the TVM backend's CPU modules against onnxruntime (int8 QDQ and float32) and
torch eager, at batch 1 and 8 with 2 threads.

    python benchmarks/tvm_speed.py                       # digits CNN and RNet
    python benchmarks/tvm_speed.py --models digits,rnet,resnet18,mobilenetv2 --runs 20
    python benchmarks/tvm_speed.py --unscheduled         # also TVM's default (unscheduled) loops

Every engine runs the same float model: torch eager in float32; onnxruntime on the ONNX
export (all graph optimisations) in float32 and after `quantize_static` (QDQ, int8 per-channel
weights, uint8 activations); qcompile's integer graph (fold-bn, calibrate, quantize,
lower-integer) compiled by the TVM backend for this CPU. Times are medians in milliseconds;
the ratios are TVM's time over the other engine's (above 1: TVM is slower).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
# Thread pools read these when they start: set them before torch, onnxruntime and TVM load.
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import zoo  # noqa: E402

import qcompile  # noqa: E402
from qcompile.passmanager import PassContext, run_pipeline  # noqa: E402
from qcompile.targets import tvm as qtvm  # noqa: E402

torch.set_num_threads(THREADS)


def models(names: list[str]) -> list[tuple[str, torch.nn.Module, np.ndarray, str]]:
    """(name, model, calibration inputs, lower-integer options) per requested model."""
    out = []
    for name in names:
        if name == "digits":
            X_tr, _, _, _ = zoo.digits_data()
            out.append(("digits CNN", zoo.digits_cnn(), X_tr[:256], ""))
        elif name == "rnet":
            X, _ = zoo.lfw_face_data(24)
            out.append(("MTCNN RNet", zoo.mtcnn_rnet(), X[:128], "{float_islands=true}"))
        elif name == "resnet18":
            out.append(("ResNet-18 (224)", zoo.resnet18_like(),
                        zoo.example_input("resnet18_like", 16), ""))
        elif name == "mobilenetv2":
            out.append(("MobileNetV2 (224)", zoo.mobilenetv2_like(),
                        zoo.example_input("mobilenetv2_like", 16), ""))
        else:
            raise SystemExit(f"unknown model {name!r}: digits, rnet, resnet18, mobilenetv2")
    return out


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def onnx_sessions(model, calib: np.ndarray, folder: Path):
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    f32 = folder / "model.onnx"
    torch.onnx.export(model, (torch.from_numpy(calib[:1]),), str(f32), dynamo=False,
                      opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "n"}})

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": calib[i:i + 1]} for i in range(min(len(calib), 64))])

        def get_next(self):
            return next(self.batches, None)

    int8 = folder / "model.int8.onnx"
    quantize_static(str(f32), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return (ort.InferenceSession(str(f32), opts, providers=["CPUExecutionProvider"]),
            ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"]))


def integer_graph(model, calib: np.ndarray, islands: str):
    g = qcompile.from_torch(model, (torch.from_numpy(calib[:2]),), dynamic_batch=True)
    batches = [calib[i:i + 32] for i in range(0, len(calib), 32)]
    run_pipeline(g, f"fold-bn,calibrate,quantize,lower-integer{islands}",
                 PassContext(calibration_data=batches))
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,rnet")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--unscheduled", action="store_true",
                    help="also time TVM without the backend's CPU schedules")
    args = ap.parse_args()
    rows = []
    for name, model, calib, islands in models(args.models.split(",")):
        model.eval()
        g = integer_graph(model, calib, islands)
        with tempfile.TemporaryDirectory() as tmp:
            s_f32, s_int8 = onnx_sessions(model, calib, Path(tmp))
            for batch in (int(b) for b in args.batches.split(",")):
                x = np.ascontiguousarray(np.resize(calib, (batch, *calib.shape[1:])))
                xt = torch.from_numpy(x)
                row = {"model": name, "batch": batch}
                with torch.no_grad():
                    row["torch"] = median_ms(lambda: model(xt), args.runs)
                row["ort_f32"] = median_ms(lambda: s_f32.run(None, {"x": x}), args.runs)
                row["ort_int8"] = median_ms(lambda: s_int8.run(None, {"x": x}), args.runs)
                module = qtvm.build(g, None, batch=batch)
                row["tvm"] = median_ms(lambda: module(x), args.runs)
                if args.unscheduled:
                    plain = qtvm.build(g, None, batch=batch, schedule=False)
                    row["tvm_plain"] = median_ms(lambda: plain(x), max(3, args.runs // 5))
                rows.append(row)
                print(_line(row), flush=True)
    print()
    print(f"{THREADS} threads, median of {args.runs} runs, milliseconds; ratios = TVM / other")
    for row in rows:
        print(_line(row))


def _line(r: dict) -> str:
    extra = f"  tvm-unscheduled {r['tvm_plain']:8.3f}" if "tvm_plain" in r else ""
    return (f"{r['model']:18s} b={r['batch']:<2d}  tvm {r['tvm']:8.3f}  ort-int8 "
            f"{r['ort_int8']:8.3f}  ort-f32 {r['ort_f32']:8.3f}  torch {r['torch']:8.3f}  |  "
            f"x ort-int8 {r['tvm'] / r['ort_int8']:5.2f}  x ort-f32 {r['tvm'] / r['ort_f32']:5.2f}"
            f"  x torch {r['tvm'] / r['torch']:5.2f}{extra}")


if __name__ == "__main__":
    main()
