"""Post-training quantization accuracy on real models: qcompile's passes against onnxruntime.

    python benchmarks/ptq_accuracy.py [--models digits,mnist,rnet,minilm] [--quick]

Four models with real weights and real data (see examples/zoo.py):

  digits   the digits CNN; calibration examples/models/digits_calib.npz (256 training images),
           scored on digits_test.npz (450 held-out images): top-1 accuracy.
  mnist    the MNIST CNN; calibration examples/models/mnist_calib.npz (256 training images),
           scored on the 1000-image hold-out of zoo.mnist_data(): top-1 accuracy.
  rnet     MTCNN RNet as a face / non-face classifier (prob[:, 1] > 0.5) on the 200 LFW crops of
           zoo.lfw_face_data(); calibrated on 64 grey crops of scikit-image's natural photographs
           (fixed seed), so calibration and scoring never share an image.
  minilm   all-MiniLM-L6-v2 sentence embeddings at a fixed 32 tokens (longer sentences are
           truncated, shorter ones padded; float and int8 see the same tokens): mean cosine of the
           int8-simulated against the float embedding over 256 real sentences, calibrated on 64
           other sentences.

Three tables:

  (a) W8A8, per-channel weights: `fold-bn,calibrate{method=M},quantize` for each calibration
      method M, against float, with the bar each model must meet.
  (b) W8A8, per-tensor weights (the data-free quantization setting): no equalization, cross-layer
      equalization (CLE), CLE + high-bias absorption, and then empirical or analytic bias
      correction. Any equalized variant scoring below "none" is flagged.
  (c) onnxruntime `quantize_static` (QDQ, per-channel QInt8 weights, QUInt8 or QInt8
      activations, MinMax or Entropy calibration on the same calibration samples) run with all
      graph optimizations off and on, next to ours with the same calibration method.

Ours is simulated with the fake-quant interpreter (`qcompile.run(graph, x, mode="fakequant")`).
The float reference is PyTorch on the same inputs.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

import torch  # noqa: E402

import zoo  # noqa: E402
from qcompile.errors import QCompileError  # noqa: E402
from qcompile.frontend import from_torch  # noqa: E402
from qcompile.interp.interpreter import Interpreter  # noqa: E402
from qcompile.ir.graph import Graph  # noqa: E402
from qcompile.passmanager import PassContext, run_pipeline  # noqa: E402

MODELS = ("digits", "mnist", "rnet", "minilm")
#: Calibration methods of table (a); the first is the default pipeline.
METHODS = ("minmax", "entropy", "mse", "percentile")
#: onnxruntime's calibration methods of table (c).
ORT_METHODS = ("MinMax", "Entropy")
MINILM_TOKENS = 32
MINILM_BATCH = 32  # MiniLM imports with a static shape (MINILM_BATCH, MINILM_TOKENS)

# The DFQ variants of table (b): label -> passes (per-tensor weights throughout).
PER_TENSOR = "quantize{per_channel=false}"
DFQ_VARIANTS: dict[str, tuple[str, ...]] = {
    "none": ("fold-bn", "calibrate", PER_TENSOR),
    "CLE": ("fold-bn", "equalize", "calibrate", PER_TENSOR),
    "CLE+abs": ("fold-bn", "equalize", "absorb-bias", "calibrate", PER_TENSOR),
    "CLE+abs+BC emp": ("fold-bn", "equalize", "absorb-bias", "calibrate", PER_TENSOR,
                       "bias-correct"),
    "CLE+abs+BC ana": ("fold-bn", "equalize", "absorb-bias", "calibrate", PER_TENSOR,
                       "bias-correct{method=analytic}"),
}
#: The variants whose only change from "none" is equalization (and absorption, its companion).
EQUALIZED = ("CLE", "CLE+abs")
#: The variants that add bias correction to "CLE+abs".
CORRECTED = ("CLE+abs+BC emp", "CLE+abs+BC ana")


def per_channel_passes(method: str) -> tuple[str, ...]:
    calibrate = "calibrate" if method == "minmax" else f"calibrate{{method={method}}}"
    return ("fold-bn", calibrate, "quantize")


# ---------------------------------------------------------------------------------------------
# The models, their data and their metrics
# ---------------------------------------------------------------------------------------------

@dataclass
class Bench:
    """One model with its calibration and evaluation data, its metric and its bar."""

    name: str
    metric: str                          # "accuracy" or "mean cosine"
    model: torch.nn.Module
    example: tuple                       # torch inputs for tracing (their shape is imported)
    dynamic_batch: bool                  # import/export with a dynamic batch dimension
    calib: dict[str, np.ndarray]         # input name -> calibration samples
    inputs: dict[str, np.ndarray]        # input name -> evaluation samples
    score: Callable[[np.ndarray], float]  # first model output on `inputs` -> metric
    bar_text: str
    bar: Callable[[float, float], bool]  # (ours, float) -> bar met
    float_score: float = math.nan
    reference: Optional[np.ndarray] = None  # float (PyTorch) first output on `inputs`
    notes: list[str] = field(default_factory=list)
    #: calibration methods table (a) runs by default (the observers are slow on large models)
    methods: tuple[str, ...] = METHODS
    #: further rows of table (a): label -> passes, built from the imported float graph
    extra: dict[str, Callable[[Graph], tuple[str, ...]]] = field(default_factory=dict)
    #: passes inserted after fold-bn in the DFQ variants of table (b)
    dfq_prefix: tuple[str, ...] = ()

    @property
    def batch(self) -> Optional[int]:
        """The fixed batch size of a statically shaped model (None: any)."""
        return None if self.dynamic_batch else int(self.example[0].shape[0])

    def batches(self, data: dict[str, np.ndarray], size: int = 256):
        size = self.batch or size
        rows = len(next(iter(data.values())))
        if self.batch and rows % self.batch:
            raise ValueError(f"{self.name}: {rows} samples is not a multiple of the static "
                             f"batch {self.batch}")
        for start in range(0, rows, size):
            yield {k: v[start:start + size] for k, v in data.items()}


def _accuracy(labels: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda out: float(np.mean(np.argmax(out, axis=1) == labels))


def _torch_outputs(bench: Bench) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for batch in bench.batches(bench.inputs):
            out = bench.model(*(torch.from_numpy(batch[k]) for k in batch))
            outs.append((out[0] if isinstance(out, (tuple, list)) else out).numpy())
    return np.concatenate(outs)


def _finish(bench: Bench) -> Bench:
    if bench.reference is None:
        bench.reference = _torch_outputs(bench)
    bench.float_score = bench.score(bench.reference)
    return bench


def digits_bench(quick: bool = False) -> Bench:
    models = REPO / "examples" / "models"
    test = np.load(models / "digits_test.npz")
    return _finish(Bench(
        "digits", "accuracy", zoo.digits_cnn(), (torch.zeros(2, 1, 8, 8),), True,
        {"x": np.load(models / "digits_calib.npz")["x"]}, {"x": test["x"]},
        _accuracy(test["y"]), ">= 99.1 %", lambda ours, ref: ours >= 0.991))


def mnist_bench(quick: bool = False) -> Bench:
    _, x_ho, _, y_ho = zoo.mnist_data()
    return _finish(Bench(
        "mnist", "accuracy", zoo.mnist_cnn(), (torch.zeros(2, 1, 28, 28),), True,
        {"x": np.load(REPO / "examples" / "models" / "mnist_calib.npz")["x"]}, {"x": x_ho},
        _accuracy(y_ho), "float - 0.3 %", lambda ours, ref: ours >= ref - 0.003 - 1e-9))


#: scikit-image's bundled photographs (no download needed); RNet calibrates on crops of these.
NATURAL_IMAGES = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "moon", "clock",
                  "brick", "grass")


def natural_crops(n: int = 64, size: int = 24, seed: int = 0) -> np.ndarray:
    """`n` grey square crops of natural photographs, 24 to 96 pixels wide, area-resized to
    `size` and normalised like `zoo.lfw_face_data` (grey -> 3 channels, (p - 127.5) / 128)."""
    import skimage.color
    import skimage.data
    import torch.nn.functional as F
    rng = np.random.default_rng(seed)
    greys = []
    for name in NATURAL_IMAGES:
        img = getattr(skimage.data, name)()
        grey = skimage.color.rgb2gray(img) if img.ndim == 3 else img / 255.0
        greys.append(np.asarray(grey, np.float32))
    crops = []
    for i in range(n):
        grey = greys[i % len(greys)]
        side = int(rng.integers(24, min(97, min(grey.shape) + 1)))
        top = int(rng.integers(0, grey.shape[0] - side + 1))
        left = int(rng.integers(0, grey.shape[1] - side + 1))
        crop = torch.from_numpy(np.ascontiguousarray(grey[top:top + side, left:left + side]))
        crops.append(F.interpolate(crop[None, None], size=(size, size), mode="area")[0, 0])
    x = torch.stack(crops)[:, None].expand(-1, 3, -1, -1) * 255.0
    return np.ascontiguousarray(((x - 127.5) / 128.0).numpy(), dtype=np.float32)


def rnet_bench(quick: bool = False) -> Bench:
    x, y = zoo.lfw_face_data()
    return _finish(Bench(
        "rnet", "accuracy", zoo.mtcnn_rnet(), (torch.zeros(2, 3, 24, 24),), True,
        {"x": natural_crops()}, {"x": x},
        lambda out: float(np.mean((out[:, 1] > 0.5) == y)), ">= 99 %",
        lambda ours, ref: ours >= 0.99,
        notes=["calibrated on 64 natural-image crops, scored on the 200 LFW crops"]))


def minilm_bench(quick: bool = False) -> Bench:
    model, tokenizer = zoo.minilm()
    n_eval, n_calib = (64, 32) if quick else (256, 64)
    sentences = zoo.english_sentences(n_eval + n_calib)
    tok = tokenizer(sentences, padding="max_length", truncation=True, max_length=MINILM_TOKENS,
                    return_tensors="np")
    ids, mask = tok["input_ids"].astype(np.int64), tok["attention_mask"].astype(np.int64)
    truncated = sum(len(t) > MINILM_TOKENS for t in tokenizer(sentences)["input_ids"])
    example = (torch.from_numpy(ids[:MINILM_BATCH]), torch.from_numpy(mask[:MINILM_BATCH]))
    bench = Bench(
        "minilm", "mean cosine", model, example, False,
        {"input_ids": ids[n_eval:], "attention_mask": mask[n_eval:]},
        {"input_ids": ids[:n_eval], "attention_mask": mask[:n_eval]},
        lambda out: math.nan, ">= 0.99", lambda ours, ref: ours >= 0.99,
        notes=[f"{n_eval} sentences scored, {n_calib} others calibrate; {MINILM_TOKENS} tokens "
               f"({truncated} of {n_eval + n_calib} sentences truncated)"],
        methods=("minmax",), dfq_prefix=("fold-attention-mask",),
        extra={"minmax + fold-attention-mask": lambda g: MINILM_MASKED,
               "  + smooth (SmoothQuant)": lambda g: MINILM_SMOOTHED,
               "  + float adds, FFN out": minilm_mixed_passes,
               "  + per-channel LN/linear inputs": lambda g: MINILM_PER_CHANNEL})
    bench.reference = _torch_outputs(bench)
    bench.score = lambda out: mean_cosine(out, bench.reference)
    return _finish(bench)


#: BERT adds where(mask, 0, -3.4e38) to the attention scores; a per-tensor range that holds
#: -3.4e38 leaves no resolution for scores of size ~10, so the mask is folded into the softmax.
MINILM_MASKED = ("fold-bn", "fold-attention-mask", "calibrate", "quantize")
#: SmoothQuant before calibration. It only smooths a layer_norm whose output feeds nothing but
#: linears; in post-norm BERT every LN output also feeds a residual add, so on MiniLM the pass
#: notes that and changes nothing (the row shows it; the fingerprint cache makes it cheap).
MINILM_SMOOTHED = ("fold-bn", "fold-attention-mask", "smooth{alpha=0.5}", "calibrate", "quantize")

#: All int8, with one scale per hidden channel (the last axis) on the values whose outlier
#: channels one scale per tensor cannot hold: the FFN outputs, the residual sums and the
#: LayerNorm outputs. Every user of those reads the hidden axis channel by channel (a LayerNorm,
#: a residual add, a linear's input columns), so only they get per-channel params.
MINILM_PER_CHANNEL = ("fold-bn", "fold-attention-mask",
                      "calibrate{per_channel=true,per_channel_axis=-1}",
                      "quantize{act_per_channel=[add,linear,layer_norm]}")


def minilm_mixed_passes(graph: Graph) -> tuple[str, ...]:
    """MINILM_MASKED with every add and the second linear of each feed-forward block (the one
    reading the GELU) left float: those outputs, and the residual sums after them, have outlier
    channels up to ~200 while most values are below 1, more than 8 bits per tensor can hold."""
    ffn_out = [n.name for n in graph.nodes if n.op == "linear" and n.inputs[0].producer is not None
               and n.inputs[0].producer.op == "gelu"]
    return MINILM_MASKED[:-1] + (f"quantize{{keep_float=[add,{','.join(ffn_out)}]}}",)


def sqnr_db(out: np.ndarray, reference: np.ndarray) -> float:
    """10 log10(signal / error power) of `out` against `reference`, inf when exact."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((np.asarray(out, np.float64) - ref) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(ref ** 2)) / noise)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.mean(cos))


BENCHES: dict[str, Callable[[bool], Bench]] = {
    "digits": digits_bench, "mnist": mnist_bench, "rnet": rnet_bench, "minilm": minilm_bench}


# ---------------------------------------------------------------------------------------------
# Ours: pipelines with shared prefixes, simulated with the fake-quant interpreter
# ---------------------------------------------------------------------------------------------

def import_graph(bench: Bench) -> Graph:
    with _quiet():
        return from_torch(bench.model, bench.example, dynamic_batch=bench.dynamic_batch)


class Quantizer:
    """Runs pipelines given as tuples of pass specs on copies of one imported graph. A graph is
    kept after every prefix, so variants that share a prefix (the same calibration, say) compute
    it once; simulated results (the metric and the output SQNR against float) are cached by the
    graph's content, so a pass that changes nothing (equalize on a model without chains) costs
    no second evaluation."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.graphs: dict[tuple[str, ...], Graph] = {(): import_graph(bench)}
        self.results: dict[str, tuple[float, float]] = {}
        self.errors: dict[tuple[str, ...], str] = {}

    def graph(self, passes: Sequence[str]) -> Graph:
        passes = tuple(passes)
        done = max((k for k in self.graphs if passes[:len(k)] == k), key=len)
        g = self.graphs[done]
        for i in range(len(done), len(passes)):
            g = g.copy()
            with _quiet():
                run_pipeline(g, passes[i], PassContext(calibration_data=self.bench.calib))
            self.graphs[passes[:i + 1]] = g
        return g

    def result(self, passes: Sequence[str]) -> tuple[float, float]:
        """(metric, output SQNR in dB) of the fake-quant simulation after `passes`; (nan, nan)
        when a pass fails, with the message in `errors`."""
        try:
            g = self.graph(passes)
        except QCompileError as exc:
            self.errors[tuple(passes)] = f"{type(exc).__name__}: {exc}"
            return math.nan, math.nan
        key = fingerprint(g)
        if key not in self.results:
            out = simulate(g, self.bench, "fakequant")
            self.results[key] = (self.bench.score(out), sqnr_db(out, self.bench.reference))
        return self.results[key]

    def score(self, passes: Sequence[str]) -> float:
        return self.result(passes)[0]


def fingerprint(g: Graph) -> str:
    """A hash of everything the fake-quant simulation depends on: nodes, constants, params."""
    h = hashlib.sha1()
    for n in g.nodes:
        h.update(repr((n.op, [v and v.name for v in n.inputs], [o.name for o in n.outputs],
                       sorted((k, repr(v)) for k, v in n.attrs.items()))).encode())
    for name in sorted(g.constants):
        h.update(name.encode())
        h.update(np.ascontiguousarray(g.constants[name].data).tobytes())
    for name in sorted(g.values):
        if g.values[name].quant is not None:
            h.update(repr((name, g.values[name].quant)).encode())
    return h.hexdigest()


def simulate(g: Graph, bench: Bench, mode: str) -> np.ndarray:
    """The graph's first output on the evaluation inputs."""
    interp = Interpreter(g, mode)
    return np.concatenate([interp.run(batch)[0] for batch in bench.batches(bench.inputs)])


# ---------------------------------------------------------------------------------------------
# onnxruntime
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OrtResult:
    activations: str   # "QUInt8" / "QInt8"
    method: str        # "MinMax" / "Entropy"
    disable_all: float  # nan when quantize_static failed (see `error`)
    enable_all: float
    error: str = ""


def export_onnx(bench: Bench, folder: Path) -> Path:
    """torch -> ONNX (dynamo exporter, its optimizer off), then onnxruntime's basic graph
    optimizations (constant folding, Conv+BatchNorm fusion) saved to a file: the pre-processing
    onnxruntime recommends before quantize_static, and the counterpart of our fold-bn."""
    import onnx
    import onnxruntime as ort
    ort.set_default_logger_severity(3)  # errors only: its optimizer's notes are not results
    names = list(bench.inputs)
    dynamic = ({0: torch.export.Dim("batch")},) * len(names) if bench.dynamic_batch else None
    raw = folder / f"{bench.name}.raw.onnx"
    with _quiet():
        torch.onnx.export(bench.model, bench.example, str(raw), dynamo=True, optimize=False,
                          input_names=names, dynamic_shapes=dynamic, verbose=False)
    single = folder / f"{bench.name}.onnx"
    onnx.save(onnx.load(str(raw)), str(single))  # weights inline: the optimizer rewrites the file
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    pre = folder / f"{bench.name}.pre.onnx"
    options.optimized_model_filepath = str(pre)
    ort.InferenceSession(str(single), options, providers=["CPUExecutionProvider"])
    return pre


def ort_quantize(bench: Bench, model: Path, out: Path, activations: str, method: str) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(bench.batches(bench.calib, 64))

        def get_next(self):
            return next(self.batches, None)

    with _quiet():
        quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=getattr(QuantType, activations),
                        weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))


def ort_score(bench: Bench, model: Path, optimize: bool) -> float:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    outs = [session.run(None, batch)[0] for batch in bench.batches(bench.inputs)]
    return bench.score(np.concatenate(outs))


def run_ort(bench: Bench, methods: Sequence[str], folder: Path) -> list[OrtResult]:
    pre = export_onnx(bench, folder)
    results = []
    for activations in ("QUInt8", "QInt8"):
        for method in methods:
            q = folder / f"{bench.name}.{activations}.{method}.onnx"
            try:
                ort_quantize(bench, pre, q, activations, method)
            except Exception as exc:  # onnxruntime's own failure is a result to report
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                results.append(OrtResult(activations, method, math.nan, math.nan, error))
                continue
            results.append(OrtResult(activations, method, ort_score(bench, q, False),
                                     ort_score(bench, q, True)))
    return results


# ---------------------------------------------------------------------------------------------
# Running everything for one model
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelReport:
    bench: Bench
    per_channel: dict[str, float]    # calibration method (or extra label) -> score, table (a)
    pipelines: dict[str, str]        # the same keys -> the passes, comma-joined
    dfq: dict[str, float]            # DFQ variant -> score, table (b)
    dfq_sqnr: dict[str, float]       # DFQ variant -> output SQNR (dB) against float
    ort: list[OrtResult]             # table (c)
    seconds: float

    errors: dict[str, str] = field(default_factory=dict)  # pipeline -> why it failed

    def bar_met(self, method: str = "minmax") -> bool:
        value = self.per_channel[method]
        return not math.isnan(value) and self.bench.bar(value, self.bench.float_score)

    def equalization_hurts(self) -> list[str]:
        """The equalized DFQ variants that score below no equalization (a failure)."""
        return [k for k in EQUALIZED if not self.dfq[k] >= self.dfq["none"]]

    def correction_hurts(self) -> list[str]:
        """The bias-corrected variants that score below the same pipeline without the
        correction (a warning)."""
        return [k for k in CORRECTED if not self.dfq[k] >= self.dfq["CLE+abs"]]

    def sqnr_drops(self, tolerance_db: float = 0.5) -> list[str]:
        """Variants whose output SQNR is more than `tolerance_db` below the variant they build
        on (a finer signal than the metric; a warning, not a failure)."""
        base = {**{k: "none" for k in EQUALIZED}, **{k: "CLE+abs" for k in CORRECTED}}
        return [k for k, b in base.items() if self.dfq_sqnr[k] < self.dfq_sqnr[b] - tolerance_db]

    @property
    def ours(self) -> float:
        """Our default pipeline, `fold-bn,calibrate,quantize`: what table (c) compares."""
        return self.per_channel["minmax"]


def evaluate(name: str, quick: bool = False, methods: Optional[Sequence[str]] = None,
             dfq: bool = True, ort_methods: Optional[Sequence[str]] = None) -> ModelReport:
    """Tables (a)-(c) for one model. `methods` defaults to all calibration methods (only minmax
    with `quick`; minmax is always included), `ort_methods` to MinMax and Entropy (MinMax with
    `quick`; () skips onnxruntime)."""
    start = time.perf_counter()
    bench = BENCHES[name](quick)
    methods = tuple(methods or (METHODS[:1] if quick else bench.methods))
    if "minmax" not in methods:
        methods = ("minmax",) + methods  # the default pipeline is always measured
    if ort_methods is None:
        ort_methods = ORT_METHODS[:1] if quick else ORT_METHODS
    quantizer = Quantizer(bench)
    pipelines = {m: per_channel_passes(m) for m in methods}
    pipelines.update({label: build(quantizer.graph(())) for label, build in bench.extra.items()})
    per_channel = {label: quantizer.score(p) for label, p in pipelines.items()}
    results = {k: quantizer.result(p[:1] + bench.dfq_prefix + p[1:])
               for k, p in DFQ_VARIANTS.items()} if dfq else {}
    ort = []
    if ort_methods:
        with tempfile.TemporaryDirectory() as folder:
            ort = run_ort(bench, ort_methods, Path(folder))
    return ModelReport(bench, per_channel, {k: ",".join(p) for k, p in pipelines.items()},
                       {k: v[0] for k, v in results.items()}, {k: v[1] for k, v in results.items()},
                       ort, time.perf_counter() - start,
                       {",".join(p): e for p, e in quantizer.errors.items()})


@contextlib.contextmanager
def _quiet():
    """Silence exporter/quantizer chatter (prints, warnings, root-logger advice)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    for name in ("torch", "onnxscript", "torch.onnx", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def fmt(bench: Bench, value: float) -> str:
    if math.isnan(value):
        return "[red]error[/red]"
    return f"{100 * value:.2f} %" if bench.metric == "accuracy" else f"{value:.4f}"


def fmt_delta(bench: Bench, value: float) -> str:
    if math.isnan(value):
        return "-"
    if bench.metric == "accuracy":
        text = f"{100 * value:+.2f}"
    else:
        text = f"{value:+.4f}"
    return f"[red]{text}[/red]" if value < 0 else text


def table_a(reports: list[ModelReport]):
    from rich.markup import escape
    from rich.table import Table
    t = Table(title="(a) W8A8, per-channel weights: fold-bn,calibrate{method=M},quantize")
    for col in ("model", "metric", "float", "method", "ours", "ours - float", "bar", "met"):
        t.add_column(col, justify="left" if col in ("model", "metric", "method", "bar")
                     else "right")
    for r in reports:
        b = r.bench
        for i, (method, value) in enumerate(r.per_channel.items()):
            ok = r.bar_met(method)
            t.add_row(b.name if i == 0 else "", b.metric if i == 0 else "",
                      fmt(b, b.float_score) if i == 0 else "", escape(method), fmt(b, value),
                      fmt_delta(b, value - b.float_score), b.bar_text if i == 0 else "",
                      "yes" if ok else "[red]NO[/red]")
    return t


def table_b(reports: list[ModelReport]):
    from rich.table import Table
    t = Table(title="(b) W8A8, per-tensor weights: data-free quantization "
                    "(CLE = equalize, abs = absorb-bias, BC = bias-correct); red: below none, "
                    "yellow: below the variant it builds on")
    for col in ("model", "", "float", *DFQ_VARIANTS, "equalization"):
        t.add_column(col, justify="left" if col in ("model", "") else "right")
    for r in reports:
        if not r.dfq:
            continue
        b = r.bench
        if b.dfq_prefix:
            t.caption = (t.caption or "") + f"{b.name}: {','.join(b.dfq_prefix)} after fold-bn. "
        hurts, worse, drops = r.equalization_hurts(), r.correction_hurts(), r.sqnr_drops()
        cells = [f"[red]{fmt(b, r.dfq[k])}[/red]" if k in hurts else
                 f"[yellow]{fmt(b, r.dfq[k])}[/yellow]" if k in worse else fmt(b, r.dfq[k])
                 for k in DFQ_VARIANTS]
        flag = "never hurts" if not hurts else f"[bold red]HURTS: {', '.join(hurts)}[/bold red]"
        if worse:
            flag += f"; [yellow]BC lowers: {', '.join(k[-7:] for k in worse)}[/yellow]"
        t.add_row(b.name, b.metric, fmt(b, b.float_score), *cells, flag)
        sqnrs = [f"{r.dfq_sqnr[k]:.1f}" if k not in drops else f"[yellow]{r.dfq_sqnr[k]:.1f}[/yellow]"
                 for k in DFQ_VARIANTS]
        note = "" if not drops else f"[yellow]lower SQNR: {', '.join(drops)}[/yellow]"
        t.add_row("", "output SQNR dB", "", *sqnrs, note, end_section=True)
    return t


def table_c(reports: list[ModelReport]):
    from rich.table import Table
    t = Table(title="(c) onnxruntime quantize_static (QDQ, per-channel QInt8 weights; graph "
                    "optimizations off / all) vs ours (fold-bn,calibrate,quantize)")
    for col in ("model", "ORT activations", "ORT calibration", "ORT off", "ORT all", "ours",
                "ours - off", "ours - all"):
        t.add_column(col, justify="left" if col in ("model", "ORT activations",
                                                     "ORT calibration") else "right")
    for r in reports:
        b = r.bench
        for i, o in enumerate(r.ort):
            t.add_row(b.name if i == 0 else "", o.activations, o.method, fmt(b, o.disable_all),
                      fmt(b, o.enable_all), fmt(b, r.ours), fmt_delta(b, r.ours - o.disable_all),
                      fmt_delta(b, r.ours - o.enable_all), end_section=i == len(r.ort) - 1)
    return t


def verdicts(report: ModelReport) -> list[str]:
    """What fails the run: the default pipeline missing the bar, equalization lowering the
    metric, onnxruntime beating the default pipeline (its failures count as ours winning)."""
    b, out = report.bench, []
    if not report.bar_met():
        others = [m for m in report.per_channel if m != "minmax" and report.bar_met(m)]
        out.append(f"{b.name}: fold-bn,calibrate,quantize gives {fmt(b, report.ours)}, bar "
                   f"{b.bar_text}" + (f" (met by: {'; '.join(o.strip() for o in others)})" if others else
                                      " (no row of table (a) meets it)"))
    if report.dfq and report.equalization_hurts():
        out.append(f"{b.name}: equalization lowers the {b.metric} "
                   f"({', '.join(report.equalization_hurts())} below none)")
    for o in report.ort:
        best = np.nanmax([o.disable_all, o.enable_all]) if not o.error else -math.inf
        if not report.ours >= best:
            out.append(f"{b.name}: onnxruntime {o.activations}/{o.method} beats ours "
                       f"({fmt(b, best)} vs {fmt(b, report.ours)})")
    return out


def command_line(argv: Sequence[str]) -> str:
    return " ".join(["python", "benchmarks/ptq_accuracy.py", *argv])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    parser.add_argument("--methods", default=None,
                        help=f"calibration methods of table (a), comma-separated from "
                             f"{','.join(METHODS)} (default: all; minmax only for minilm, whose "
                             f"histogram observers take minutes)")
    parser.add_argument("--quick", action="store_true",
                        help="minmax calibration and ORT MinMax only; MiniLM on 64 sentences "
                             "(its bar is for the full run)")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; expected some of {', '.join(MODELS)}")
    methods = None
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        if any(m not in METHODS for m in methods):
            parser.error(f"--methods: expected some of {', '.join(METHODS)}, got {args.methods}")

    from rich.console import Console
    from rich.markup import escape
    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that the tables do not wrap
        console = Console(width=150)
    console.print(f"reproduce: [bold]{command_line(sys.argv[1:] if argv is None else argv)}"
                  f"[/bold]")
    console.print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
                  f"onnxruntime with 2 intra-op threads")
    reports = []
    for name in names:
        with console.status(f"{name} ..."):
            report = evaluate(name, quick=args.quick, methods=methods)
        reports.append(report)
        notes = "; ".join(report.bench.notes)
        console.print(f"{name}: {report.seconds:.1f} s" + (f" ({notes})" if notes else ""))
    console.print(table_a(reports))
    for r in reports:
        for label, passes in r.pipelines.items():
            if label not in METHODS:
                console.print(escape(f"  {r.bench.name} '{label.strip()}': {passes}"),
                              soft_wrap=True)
    console.print(table_b(reports))
    console.print(table_c(reports))

    for r in reports:
        for passes, error in r.errors.items():
            console.print(f"[red]error[/red] " + escape(f"{r.bench.name}, {passes}: {error}"),
                          soft_wrap=True)
        for o in r.ort:
            if o.error:
                console.print("[red]error[/red] " + escape(
                    f"{r.bench.name}, onnxruntime {o.activations}/{o.method}: {o.error}"),
                    soft_wrap=True)
    if args.quick and "minilm" in names:
        console.print("note: --quick scores MiniLM on 64 sentences; its bar is for the full run")
    failures = [v for r in reports for v in verdicts(r)]
    for f in failures:
        console.print(f"[bold red]FAIL[/bold red] {escape(f)}", soft_wrap=True)
    if not failures:
        console.print("[bold green]all bars met[/bold green]")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
