"""Latency of qcompile's CPU engines (the TVM backend's modules and the C backend built for the
host) against onnxruntime (int8 QDQ and float32) and torch eager, at batch 1 and 8.

    python benchmarks/tvm_speed.py                       # digits CNN and RNet
    python benchmarks/tvm_speed.py --models minilm       # all-MiniLM-L6-v2, 128 tokens
    python benchmarks/tvm_speed.py --models all --runs 20
    python benchmarks/tvm_speed.py --models digits,rnet,resnet18,mobilenetv2 --runs 20
    python benchmarks/tvm_speed.py --unscheduled         # also TVM's default (unscheduled) loops

Every engine runs the same float model: torch eager in float32; onnxruntime on the ONNX
export (all graph optimisations) in float32 and after `quantize_static` (QDQ, int8 per-channel
weights, uint8 activations); qcompile's integer graph (fold-bn, calibrate, quantize,
lower-integer) compiled by the TVM backend for this CPU ("tvm") and by the C backend, our own
int8 kernels, with gcc -O3 -march=native into a shared library ("c-host"). torch, onnxruntime
and TVM use 2 threads; the C code is single-threaded. Times are medians in milliseconds, float
input to float output for every engine (c-host includes quantizing the input and dequantizing
the output in numpy). The C backend has no float ops, so for RNet it runs the graph with an
integer softmax (`quantize{transformer=true}`) where TVM keeps that 2-class softmax in float.

MiniLM (`--models minilm`) takes input_ids and attention_mask of 128 tokens; our pipeline is
fold-bn, fold-attention-mask, calibrate, quantize{transformer=true}, lower-integer. It imports
with a static batch, so it is lowered once per batch size. When a backend cannot take a graph,
the table says so and names the ops it lacks.

The last lines compare, per model and batch, our fastest engine with the faster of ORT int8 and
ORT f32, and give only measured reasons: MAC throughput of both, the time the C program itself
takes inside c-host, and onnxruntime timed again on one thread.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

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
from qcompile.errors import QCompileError  # noqa: E402
from qcompile.passmanager import PassContext, run_pipeline  # noqa: E402
from qcompile.targets import tvm as qtvm  # noqa: E402
from qcompile.targets.c import supported_ops as c_supported_ops  # noqa: E402
from qcompile.targets.c.emitter import static_shapes  # noqa: E402
from qcompile.targets.c.host import build_host  # noqa: E402

torch.set_num_threads(THREADS)

ALL_MODELS = ("digits", "rnet", "resnet18", "mobilenetv2", "minilm")
MINILM_TOKENS = 128
CNN_PIPELINE = "fold-bn,calibrate,quantize,lower-integer"


@dataclass
class Bench:
    """One model: how to make its inputs, and the integer pipelines of the two backends."""

    name: str
    model: torch.nn.Module
    input_names: list[str]
    calib: list[np.ndarray]        # calibration samples per input, samples along axis 0
    pipeline: str                  # the TVM backend's graph
    c_pipeline: str = ""           # the C backend's graph when it differs ("" = the same)
    static_batch: bool = False     # imported with a fixed batch: one graph per batch size
    graphs: dict = field(default_factory=dict)   # built graphs and C engines, reused

    def inputs(self, batch: int) -> list[np.ndarray]:
        return [np.ascontiguousarray(np.resize(a, (batch, *a.shape[1:]))) for a in self.calib]

    def calibration(self, batch: Optional[int]) -> list[dict]:
        """All calibration samples, in batches of the graph's static batch (None: of 32)."""
        size, n = batch or 32, len(self.calib[0])
        data = self.inputs(max(n // size, 1) * size) if batch else self.calib
        return [{k: a[i:i + size] for k, a in zip(self.input_names, data)}
                for i in range(0, len(data[0]), size)]


def benches(names: list[str]) -> list[Bench]:
    out = []
    for name in names:
        if name == "digits":
            X_tr, _, _, _ = zoo.digits_data()
            out.append(Bench("digits CNN", zoo.digits_cnn(), ["x"], [X_tr[:256]], CNN_PIPELINE))
        elif name == "rnet":
            X, _ = zoo.lfw_face_data(24)
            out.append(Bench("MTCNN RNet", zoo.mtcnn_rnet(), ["x"], [X[:128]],
                             "fold-bn,calibrate,quantize,lower-integer{float_islands=true}",
                             "fold-bn,calibrate,quantize{transformer=true},lower-integer"))
        elif name == "resnet18":
            out.append(Bench("ResNet-18 (224)", zoo.resnet18_like(), ["x"],
                             [zoo.example_input("resnet18_like", 16)], CNN_PIPELINE))
        elif name == "mobilenetv2":
            out.append(Bench("MobileNetV2 (224)", zoo.mobilenetv2_like(), ["x"],
                             [zoo.example_input("mobilenetv2_like", 16)], CNN_PIPELINE))
        elif name == "minilm":
            model, tokenizer = zoo.minilm()
            tok = tokenizer(zoo.english_sentences(8), padding="max_length", truncation=True,
                            max_length=MINILM_TOKENS, return_tensors="np")
            out.append(Bench(f"MiniLM-L6 ({MINILM_TOKENS} tok)", model,
                             ["input_ids", "attention_mask"],
                             [tok["input_ids"].astype(np.int64),
                              tok["attention_mask"].astype(np.int64)],
                             "fold-bn,fold-attention-mask,calibrate,quantize{transformer=true},"
                             "lower-integer", static_batch=True))
        else:
            raise SystemExit(f"unknown model {name!r}: {', '.join(ALL_MODELS)} or all")
    return out


# ---------------------------------------------------------------------------------- engines

def median_ms(fn: Callable, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def integer_graph(b: Bench, pipeline: str, batch: Optional[int]):
    """`b.model` through `pipeline`; batch None imports with a dynamic batch."""
    key = (pipeline, batch)
    if key not in b.graphs:
        example = tuple(torch.from_numpy(a) for a in b.inputs(batch or 2))
        g = qcompile.from_torch(b.model, example, dynamic_batch=batch is None)
        run_pipeline(g, pipeline, PassContext(calibration_data=b.calibration(batch)))
        b.graphs[key] = g
    return b.graphs[key]


@contextlib.contextmanager
def _quiet():
    """The exporter's and quantize_static's advice (warnings, root-logger lines) is not a
    result; keep it out of the table."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def onnx_sessions(b: Bench, folder: Path) -> dict:
    """ORT sessions {(precision, threads): session} on the ONNX export of `b.model`."""
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    ort.set_default_logger_severity(3)
    f32 = folder / "model.onnx"
    example = tuple(torch.from_numpy(a[:1]) for a in b.calib)
    with _quiet():
        torch.onnx.export(b.model, example, str(f32), dynamo=False, opset_version=17,
                          input_names=b.input_names,
                          dynamic_axes={n: {0: "n"} for n in b.input_names})
    names, calib = b.input_names, b.calib

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{n: a[i:i + 1] for n, a in zip(names, calib)}
                                 for i in range(min(len(calib[0]), 64))])

        def get_next(self):
            return next(self.batches, None)

    int8 = folder / "model.int8.onnx"
    with _quiet():
        quantize_static(str(f32), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    sessions = {}
    for threads in (THREADS, 1):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for kind, path in (("f32", f32), ("int8", int8)):
            sessions[kind, threads] = ort.InferenceSession(str(path), opts,
                                                           providers=["CPUExecutionProvider"])
    return sessions


def graph_macs(g, batch: int) -> int:
    """Multiply-accumulates of the graph's convolutions, linears and matmuls at `batch`."""
    shapes, total = static_shapes(g, batch), 0
    for n in g.nodes:
        if n.op not in ("qconv2d", "qlinear", "qmatmul"):
            continue
        out = int(np.prod(shapes[n.output.name], dtype=np.int64))
        if n.op == "qconv2d":  # weight (O, C / groups, kh, kw): each output sums C/groups*kh*kw
            total += out * int(np.prod(shapes[n.inputs[1].name][1:], dtype=np.int64))
        else:
            total += out * int(shapes[n.inputs[0].name][-1])
    return total


def missing_ops(g, supported) -> list[str]:
    return sorted({n.op for n in g.nodes} - set(supported) - {"quantize", "dequantize"})


def _reason(exc: BaseException) -> str:
    """The first line of an error, and the last line of its cause that has words in it when the
    error's own line ends on a bare ':' or a caret line (TVM's messages can)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    worded = [ln.strip() for ln in str(exc.__cause__ or "").splitlines()
              if sum(c.isalpha() for c in ln) > 3]
    if worded and (first.rstrip().endswith(":") or first.rstrip().endswith("^")):
        first = f"{first.rstrip(' ^')} ... {worded[-1]}"
    return first


def tvm_engine(g, batch: int, schedule: bool = True):
    """(callable, None) or (None, why not)."""
    try:
        return qtvm.build(g, None, batch=batch, schedule=schedule), None
    except QCompileError as exc:
        lacking = missing_ops(g, qtvm.supported_ops())
        if lacking:
            return None, f"TVM backend lacks {', '.join(lacking)}"
        return None, f"TVM backend: {_reason(exc)}"


def c_engine(g):
    """(HostModel, None) or (None, why not)."""
    try:
        return build_host(g), None
    except QCompileError as exc:
        lacking = missing_ops(g, c_supported_ops())
        why = _reason(exc)
        if lacking:
            why = f"lacks {', '.join(lacking)}; first error: {why}"
        return None, f"C backend {why}"


# ---------------------------------------------------------------------------------- the run

def measure(b: Bench, batch: int, sessions: dict, runs: int, unscheduled: bool) -> dict:
    x = b.inputs(batch)
    feed = dict(zip(b.input_names, x))
    row: dict = {"model": b.name, "batch": batch, "notes": []}
    xt = [torch.from_numpy(a) for a in x]
    with torch.no_grad():
        row["torch"] = median_ms(lambda: b.model(*xt), runs)
    for kind in ("f32", "int8"):
        row[f"ort_{kind}"] = median_ms(lambda: sessions[kind, THREADS].run(None, feed), runs)
    faster = min(("ort_int8", "ort_f32"), key=lambda k: row[k])
    row["ort_1t"] = median_ms(lambda: sessions[faster[4:], 1].run(None, feed), runs)

    g = integer_graph(b, b.pipeline, batch if b.static_batch else None)
    row["macs"] = graph_macs(g, batch)
    module, why = tvm_engine(g, batch)
    row["tvm"] = median_ms(lambda: module(*x), runs) if module else None
    if why:
        row["notes"].append(why)
    if unscheduled and module:
        plain, _ = tvm_engine(g, batch, schedule=False)
        row["tvm_plain"] = median_ms(lambda: plain(*x), max(3, runs // 5))

    # One C build serves every batch of a dynamic-batch graph (it loops over the samples).
    key = ("c", batch if b.static_batch else None)
    if key not in b.graphs:
        g_c = integer_graph(b, b.c_pipeline, key[1]) if b.c_pipeline else g
        b.graphs[key] = (g_c, *c_engine(g_c))
    g_c, host, why = b.graphs[key]
    row["c_host"] = row["c_kernels"] = None
    if host:
        row["c_host"] = median_ms(lambda: host(*x), runs)
        codes = host.quantize_inputs(*x)
        row["c_kernels"] = median_ms(lambda: host.run_codes(*codes), runs)
    else:
        row["notes"].append(why)
    return row


def _ms(v: Optional[float]) -> str:
    return f"{v:8.3f}" if v is not None else "       -"


def line(r: dict) -> str:
    extra = f"  tvm-unscheduled {r['tvm_plain']:8.3f}" if "tvm_plain" in r else ""
    return (f"{r['model']:22s} b={r['batch']:<2d}  tvm {_ms(r['tvm'])}  c-host {_ms(r['c_host'])}"
            f"  ort-int8 {_ms(r['ort_int8'])}  ort-f32 {_ms(r['ort_f32'])}  torch "
            f"{_ms(r['torch'])}{extra}")


def summary(r: dict) -> str:
    """Our fastest engine against the faster onnxruntime one, with measured facts only."""
    ort = min(("ort_int8", "ort_f32"), key=lambda k: r[k])
    ort_label = ort.replace("_", " ").replace("ort", "ORT")
    head = f"{r['model']} b={r['batch']}:"
    ours = {k: r[k] for k in ("tvm", "c_host") if r.get(k) is not None}
    if not ours:
        return f"{head} no engine of ours runs it ({'; '.join(r['notes'])}); {ort_label} " \
               f"{r[ort]:.3f} ms"
    best = min(ours, key=ours.get)
    label = best.replace("_", "-")
    ratio = ours[best] / r[ort]
    text = (f"{head} ours {label} {ours[best]:.3f} ms vs {ort_label} {r[ort]:.3f} ms "
            f"({THREADS} threads)")
    if ratio <= 1:
        return f"{text}: we are {1 / ratio:.2f}x faster"
    facts = []
    if r.get("macs"):
        gmacs = lambda ms: r["macs"] / ms / 1e6  # noqa: E731  (MACs per ms -> GMAC/s)
        facts.append(f"on the same {r['macs'] / 1e6:.1f} M MACs {label} reaches "
                     f"{gmacs(ours[best]):.2f} GMAC/s and {ort_label} {gmacs(r[ort]):.2f}")
    if best == "c_host":
        conv = r["c_host"] - r["c_kernels"]
        facts.append(f"the C program alone takes {r['c_kernels']:.3f} ms (float conversion "
                     f"{max(conv, 0):.3f} ms)")
        than = "faster" if r["ort_1t"] < r["c_host"] else "slower"
        facts.append(f"c-host runs on 1 thread; {ort_label} on 1 thread takes "
                     f"{r['ort_1t']:.3f} ms, {than} than c-host")
    if not facts:
        return f"{text}: we are {ratio:.2f}x slower (no measured cause)"
    return f"{text}: we are {ratio:.2f}x slower because " + "; ".join(facts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,rnet",
                    help=f"comma-separated from {', '.join(ALL_MODELS)}, or all")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--unscheduled", action="store_true",
                    help="also time TVM without the backend's CPU schedules")
    args = ap.parse_args()
    names = list(ALL_MODELS) if args.models == "all" else args.models.split(",")
    print(f"python benchmarks/tvm_speed.py --models {args.models} --batches {args.batches} "
          f"--runs {args.runs}{' --unscheduled' if args.unscheduled else ''}", flush=True)
    rows = []
    for b in benches(names):
        b.model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            sessions = onnx_sessions(b, Path(tmp))
            for batch in (int(s) for s in args.batches.split(",")):
                row = measure(b, batch, sessions, args.runs, args.unscheduled)
                rows.append(row)
                print(line(row), flush=True)
                for note in dict.fromkeys(row["notes"]):
                    print(f"    {note}", flush=True)
    print()
    print(f"median of {args.runs} runs, milliseconds; torch, onnxruntime and TVM on {THREADS} "
          f"threads, c-host (gcc -O3 -march=native) on 1")
    for row in rows:
        print(line(row))
    print()
    for row in rows:
        print(summary(row))


if __name__ == "__main__":
    main()
