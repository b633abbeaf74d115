"""`qcompile compile`: a model, a target and calibration data in; one output folder out.

    result = compile_model(CompileOptions(model="net.onnx", target=get_target("c99"),
                                          output="build/net", calibration="calib.npz"))

The steps, in the order their failures are reported (every check that needs no model comes
before the model is loaded, and nothing is written until everything succeeded):

  1. the target's backend can be imported; the output folder is free (or --force);
  2. the pipeline (the target's default, a replacement, or `+passes` extending it) parses and
     fits the target (bit widths, rounding, accumulator width, an integer graph for code
     generating backends);
  3. the model loads; the calibration data (.npz, a folder of images, or `module:function`)
     is read;
  4. the pipeline runs; the result fits the target (bit widths, memory budget);
  5. the backend writes its files into a temporary sibling of the output folder; with
     --evaluate, the C backend's files are also built with the host gcc and run on the whole
     evaluation set in a separate temporary folder (the output gets nothing from it but
     the figures in report.json);
  6. `report.json` (and `report.html`), `timings.json` and `manifest.json` are written; the
     temporary folder is renamed into place.

Everything in the folder except `timings.json` is a function of the inputs: compiling twice
gives byte-identical files (the manifest lists their hashes; timings.json is left out of it).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from . import __version__
from .errors import PipelineError, QCompileError
from .passmanager import DumpIRInstrument, Instrument, PassContext, Pipeline, run_pipeline
from .passmanager.pipeline import Fixpoint
from .passmanager.registry import pass_info
from .quant.calibration import CalibrationError

#: Backends whose input must be an integer graph (the pipeline has to run lower-integer).
INTEGER_BACKENDS = ("c", "tvm", "hls")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".gif", ".tif", ".tiff",
                  ".webp")
PREPROCESS_FILE = "preprocess.json"
UNITY_SOURCE = "qcompile_all.c"
#: Batches of data the per-layer SQNR analysis runs (the rest adds time, not information).
SQNR_BATCHES = 16


class OutputExists(QCompileError):
    """The output folder exists and --force was not given."""


class TargetConstraintError(QCompileError):
    """The pipeline, or the graph it produced, does not fit the target."""


# =========================================================================== options, result

@dataclass
class CompileOptions:
    model: str
    target: Any                                  # a targets.catalog.Target
    output: str
    calibration: Optional[str] = None            # .npz, image folder, or module:function
    pipeline: Optional[str] = None               # None: the target's; "+a,b": extend it
    backend: Optional[str] = None                # override the target's backend ("none": IR)
    dump_ir: Optional[str] = None                # "after=PASS[,PASS]", "after=all", "all"
    reports: Sequence[str] = ("json",)           # any of "json", "html"
    depfile: Optional[str] = None
    force: bool = False
    debug: bool = False
    evaluate: Optional[str] = None               # .npz with x (and labels y)
    input_shapes: Optional[dict] = None
    measure: bool = False                        # MCU targets: QEMU flash/RAM/instruction counts
    backend_options: Optional[dict] = None       # override/extend target.backend_options


@dataclass
class CompileResult:
    output: Path
    files: list[str]
    report: dict
    timings: dict
    graph: Any
    diagnostics: list = field(default_factory=list)


# =========================================================================== calibration data

@dataclass
class CalibrationSource:
    """Where calibration data comes from: `make()` gives a fresh source each call (the
    calibrate pass consumes one, the SQNR analysis another); `files` feed the depfile."""

    kind: str                                   # "npz", "images" or "function"
    label: str                                  # as the user wrote it
    files: list[Path]
    make: Callable[[], Any]
    _hasher: Any = None

    def sha256(self) -> str:
        if self._hasher is not None:  # a function's data: hashed as calibrate consumed it
            return self._hasher.hexdigest()
        return _hash_files(self.files)


def _hash_files(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def calibration_source(spec: str, graph) -> CalibrationSource:
    """Resolve `--calibration`: an .npz file, a folder of images, or `module:function`."""
    path = Path(spec)
    if path.is_dir():
        return _image_source(path, graph)
    if path.suffix.lower() == ".npz" or path.is_file():
        if not path.is_file():
            raise CalibrationError(f"calibration file {spec}: no such file")
        if path.suffix.lower() != ".npz":
            raise CalibrationError(f"calibration file {spec}: expected an .npz, a folder of "
                                   f"images or module:function")
        return CalibrationSource("npz", spec, [path.resolve()], lambda: str(path))
    if ":" in spec:
        return _function_source(spec)
    raise CalibrationError(f"calibration {spec!r}: no such file or folder (expected an .npz, a "
                           f"folder of images with {PREPROCESS_FILE}, or module:function)")


def _function_source(spec: str) -> CalibrationSource:
    module_name, _, fn_name = spec.rpartition(":")
    if not module_name or not fn_name.isidentifier():
        raise CalibrationError(f"calibration {spec!r}: expected module:function")
    module = _import_user_module(module_name, spec)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise CalibrationError(f"calibration {spec!r}: module {module_name} has no function "
                               f"{fn_name!r}")
    files = [Path(module.__file__).resolve()] if getattr(module, "__file__", None) else []
    hasher = hashlib.sha256()
    state = {"hasher": hasher, "hashed": False}  # shared: only the very first pass is hashed
    return CalibrationSource("function", spec, files, lambda: _FunctionData(fn, spec, state),
                             hasher)


class _FunctionData:
    """Calls the user's function afresh each time it is iterated: several passes read the
    calibration data (calibrate, bias-correct, check-accumulator), and a generator would be
    empty the second time. The first iteration's batches are hashed for the manifest."""

    def __init__(self, fn: Callable, spec: str, state: dict):
        self.fn, self.spec, self.state = fn, spec, state

    def __iter__(self):
        try:
            data = self.fn()
        except QCompileError:
            raise
        except Exception as exc:
            raise CalibrationError(f"calibration function {self.spec} raised "
                                   f"{type(exc).__name__}: {exc}") from exc
        if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
            raise CalibrationError(f"calibration function {self.spec} returned a "
                                   f"{type(data).__name__}; expected an iterable of batches")
        if self.state["hashed"]:
            return iter(data)
        self.state["hashed"] = True
        return iter(_HashingIterable(data, self.state["hasher"]))


def _import_user_module(name: str, spec: str):
    """`pkg.mod` from the current folder or sys.path, or a `path/to/file.py`."""
    try:
        if name.endswith(".py") or os.sep in name or "/" in name:
            path = Path(name)
            if not path.is_file():
                raise CalibrationError(f"calibration {spec!r}: no such file {name}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(name)
    except QCompileError:
        raise
    except ModuleNotFoundError as exc:
        raise CalibrationError(f"calibration {spec!r}: cannot import {exc.name}") from None
    except Exception as exc:
        raise CalibrationError(f"calibration {spec!r}: importing {name} failed: "
                               f"{type(exc).__name__}: {exc}") from exc


class _HashingIterable:
    """Passes batches through unchanged, hashing their bytes for the manifest."""

    def __init__(self, data: Iterable, hasher):
        self.data, self.hasher = data, hasher

    def __iter__(self):
        for item in self.data:
            arrays = item.values() if isinstance(item, dict) else (
                item if isinstance(item, (list, tuple)) else [item])
            for a in arrays:
                a = np.ascontiguousarray(np.asarray(a))
                self.hasher.update(f"{a.dtype.str}{a.shape}".encode())
                self.hasher.update(a.tobytes())
            yield item


# ---- images -----------------------------------------------------------------------------------
_SPEC_KEYS = ("resize", "mode", "scale", "mean", "std", "layout")


def _image_source(folder: Path, graph) -> CalibrationSource:
    spec_path = next((p for p in (folder / PREPROCESS_FILE, folder.with_suffix(".json"))
                      if p.is_file()), None)
    spec = _read_preprocess(spec_path) if spec_path else {}
    images = sorted(p for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise CalibrationError(f"calibration folder {folder}: no images "
                               f"({', '.join(IMAGE_SUFFIXES)})")
    if len(graph.inputs) != 1:
        raise CalibrationError(f"calibration folder {folder}: graph @{graph.name} has "
                               f"{len(graph.inputs)} inputs; images calibrate single-input "
                               f"models (use an .npz or module:function)")
    data = _read_images(images, spec, graph.inputs[0], folder)
    files = images + ([spec_path] if spec_path else [])
    return CalibrationSource("images", str(folder), [f.resolve() for f in files],
                             lambda: {graph.inputs[0].name: data})


def _read_preprocess(path: Path) -> dict:
    import difflib
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: not a readable JSON preprocessing spec: {exc}") from None
    if not isinstance(spec, dict):
        raise CalibrationError(f"{path}: expected a JSON object with keys {', '.join(_SPEC_KEYS)}")
    for key in spec:
        if key not in _SPEC_KEYS:
            close = difflib.get_close_matches(key, _SPEC_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise CalibrationError(f"{path}: unknown key '{key}'{hint} (allowed: "
                                   f"{', '.join(_SPEC_KEYS)})")
    checks = {
        "resize": lambda v: isinstance(v, list) and len(v) == 2 and all(
            isinstance(d, int) and d > 0 for d in v),
        "mode": lambda v: v in ("L", "RGB"),
        "scale": lambda v: isinstance(v, (int, float)) and v > 0,
        "mean": lambda v: isinstance(v, (int, float)) or (
            isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)),
        "std": lambda v: (isinstance(v, (int, float)) and v > 0) or (
            isinstance(v, list) and all(isinstance(x, (int, float)) and x > 0 for x in v)),
        "layout": lambda v: v in ("NCHW", "NHWC"),
    }
    expected = {"resize": "[height, width]", "mode": "'L' or 'RGB'", "scale": "a number > 0",
                "mean": "a number or one per channel", "std": "numbers > 0",
                "layout": "'NCHW' or 'NHWC'"}
    for key, ok in checks.items():
        if key in spec and not ok(spec[key]):
            raise CalibrationError(f"{path}: key '{key}' must be {expected[key]}, got "
                                   f"{spec[key]!r}")
    return spec


def _read_images(images: list[Path], spec: dict, inp, folder: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise CalibrationError("calibrating from image files needs Pillow (pip install "
                               "pillow)") from None
    layout = spec.get("layout", "NCHW")
    shape = inp.type.shape
    if len(shape) != 4:
        raise CalibrationError(f"calibration folder {folder}: input %{inp.name} has shape "
                               f"{shape}; images need a rank-4 input (N, C, H, W or N, H, W, C)")
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    if "resize" in spec:
        h, w = spec["resize"]
    if h is None or w is None:
        raise CalibrationError(f"calibration folder {folder}: input %{inp.name} has dynamic "
                               f"height/width; give \"resize\": [h, w] in {PREPROCESS_FILE}")
    mode = spec.get("mode", "L" if c == 1 else "RGB")
    out = []
    for path in images:
        try:
            with Image.open(path) as im:
                im = im.convert(mode).resize((w, h), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32)
        except Exception as exc:
            raise CalibrationError(f"calibration image {path}: cannot read it "
                                   f"({type(exc).__name__}: {exc})") from None
        out.append(a[..., None] if a.ndim == 2 else a)          # H, W, C
    x = np.stack(out) * np.float32(spec.get("scale", 1.0 / 255.0))
    x = (x - np.float32(spec.get("mean", 0.0))) / np.float32(spec.get("std", 1.0))
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


# =========================================================================== pipeline vs target

def _passes(items) -> list:
    out = []
    for item in items:
        out.extend(_passes(item.items) if isinstance(item, Fixpoint) else [item])
    return out


def pipeline_options(pipeline: Pipeline) -> list[tuple[str, dict]]:
    """(pass name, option values) for every pass, fixpoint groups flattened."""
    out = []
    for p in _passes(pipeline.items):
        info = pass_info(p)
        out.append((info.name, info.option_values(p)))
    return out


def check_pipeline(target, pipeline: Pipeline, backend: str) -> None:
    """Refuse a pipeline that cannot produce what `target` runs (before any work is done)."""
    problems = []
    names = [n for n, _ in pipeline_options(pipeline)]
    for name, opts in pipeline_options(pipeline):
        if name == "quantize":
            for opt, allowed in (("w", target.weight_bits), ("a", target.act_bits)):
                if opts.get(opt) is not None and opts[opt] not in allowed:
                    problems.append(f"quantize{{{opt}={opts[opt]}}} but the target supports "
                                    f"{'weight' if opt == 'w' else 'activation'} bits "
                                    f"{', '.join(map(str, allowed))}")
            if opts.get("per_channel") and not target.per_channel:
                problems.append("quantize{per_channel=true} but the target has per-tensor "
                                "weight scales only")
            if opts.get("pow2") is False and target.requantization == "shift_only":
                problems.append("quantize{pow2=false} but the target requantizes with shifts "
                                "only (power-of-two scales)")
        if name == "lower-integer":
            if opts.get("rounding") not in (None, target.rounding):
                problems.append(f"lower-integer{{rounding={opts['rounding']}}} but the target "
                                f"rounds {target.rounding}")
            acc = opts.get("acc_bits")
            if acc is not None and acc > target.accumulator_bits:
                problems.append(f"lower-integer{{acc_bits={acc}}} but the target's accumulators "
                                f"are {target.accumulator_bits} bits")
            if opts.get("float_islands") and not target.float_islands:
                problems.append("lower-integer{float_islands=true} but the target runs integer "
                                "code only")
    if backend in INTEGER_BACKENDS and "lower-integer" not in names:
        problems.append(f"backend '{backend}' needs an integer graph, but the pipeline has no "
                        f"lower-integer pass")
    if problems:
        raise TargetConstraintError(
            f"pipeline '{pipeline}' does not fit target '{target.name}': " + "; ".join(problems))


def check_graph(target, graph, memory: dict) -> None:
    """Refuse a compiled graph whose bit widths or memory the target cannot hold."""
    problems = []
    for v in list(graph.constants.values()):
        q = v.quant
        if q is None or q.bits >= 32 or not any(n.op in _WEIGHT_OPS for n in v.users):
            continue
        if q.bits not in target.weight_bits:
            problems.append(f"weight %{v.name} is {q.bits}-bit; the target supports "
                            f"{', '.join(map(str, target.weight_bits))}")
    budgets = (("weight_bytes", "flash_bytes", "weights"),
               ("peak_activation_bytes", "ram_bytes", "activations at their peak"))
    for have, budget, what in budgets:
        limit = target.memory.get(budget)
        if limit is not None and memory.get(have, 0) > limit:
            problems.append(f"{what} need {memory[have]} bytes, the target's {budget} is {limit}")
    if problems:
        raise TargetConstraintError(f"the compiled model does not fit target '{target.name}': "
                                    + "; ".join(problems[:8]))


_WEIGHT_OPS = frozenset({"conv2d", "linear", "matmul", "qconv2d", "qlinear", "qmatmul"})


# =========================================================================== instruments

class _Snapshot(Instrument):
    """Keeps a copy of the graph as it was before the first `lower-integer`: the simulated
    quantized graph the SQNR analysis runs and the report's layers describe."""

    def __init__(self) -> None:
        self.quantized = None

    def run_before_pass(self, graph, ctx, run) -> None:
        if run.name == "lower-integer" and self.quantized is None:
            self.quantized = graph.copy()


def parse_dump_ir(spec: str) -> tuple:
    """`after=PASS[,PASS]`, `before=...`, `all` or `after=all` -> (before, after)."""
    before: Any = ()
    after: Any = ()
    for part in spec.split(";"):
        part = part.strip()
        if part == "all":
            after = "all"
            continue
        key, sep, value = part.partition("=")
        names = [n.strip() for n in value.split(",") if n.strip()]
        if not sep or key not in ("after", "before") or not names:
            raise PipelineError(f"--dump-ir {spec!r}: expected after=PASS[,PASS], "
                                f"before=PASS[,PASS] or all")
        chosen = "all" if names == ["all"] else tuple(names)
        if key == "after":
            after = chosen
        else:
            before = chosen
    return before, after


# =========================================================================== the driver

def _check_backend_options(target, backend: str, given: dict) -> None:
    """A backend option the backend does not read (and the target does not define) is a
    typo, not something to ignore silently."""
    from .targets.backend import backend_option_names
    known = set(backend_option_names(backend, target)) | set(target.backend_options)
    unknown = sorted(k for k in given if k not in known)
    if unknown:
        raise TargetConstraintError(
            f"target '{target.name}' (backend '{backend}') has no backend option "
            f"{', '.join(repr(k) for k in unknown)}; it takes: "
            f"{', '.join(sorted(known)) or 'none'}")



def compile_model(opts: CompileOptions, console=None) -> CompileResult:
    from .api import load
    from .targets.backend import get_backend

    target = opts.target
    if opts.backend_options:
        import dataclasses
        _check_backend_options(target, opts.backend or target.backend, opts.backend_options)
        target = dataclasses.replace(
            target, backend_options={**target.backend_options, **opts.backend_options})
    backend_name = opts.backend or target.backend
    emit = get_backend(backend_name, target)
    out = Path(opts.output)
    _check_output(out, opts.force)
    pipeline = target.pipeline(opts.pipeline)
    check_pipeline(target, pipeline, backend_name)
    dump = parse_dump_ir(opts.dump_ir) if opts.dump_ir else None
    for names in dump or ():
        missing = [] if names == "all" else [n for n in names if n not in pipeline.pass_names()]
        if missing:
            raise PipelineError(f"--dump-ir: pass '{missing[0]}' is not in the pipeline "
                                f"'{pipeline}'")
    if opts.calibration is None and "calibrate" in pipeline.pass_names():
        raise CalibrationError(f"the pipeline runs calibrate, which needs --calibration "
                               f"(an .npz, a folder of images, or module:function)")

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model_path = Path(opts.model)
    graph = load(model_path, input_shapes=opts.input_shapes)
    timings["load"] = time.perf_counter() - t0
    original = graph.copy()
    calib = calibration_source(opts.calibration, graph) if opts.calibration else None

    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output is an ordinary folder
    try:
        result = _build(opts, target, backend_name, emit, pipeline, dump, graph, original,
                        calib, model_path, tmp, timings, console)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.output = out
    if opts.depfile:
        write_depfile(Path(opts.depfile), out / "manifest.json",
                      _inputs(model_path, calib, target))
    return result


def _build(opts, target, backend_name, emit, pipeline, dump, graph, original, calib,
           model_path, tmp: Path, timings: dict, console) -> CompileResult:
    from . import report as reports

    snapshot = _Snapshot()
    ctx = PassContext(target=target, calibration_data=calib.make() if calib else None)
    if opts.debug:  # otherwise the pass manager's default (on in tests, QCOMPILE_VERIFY=1)
        ctx.verify = True
    ctx.instruments.append(snapshot)
    # the final folder (the backend writes into `tmp`): a backend may reuse what a previous
    # compile left there, e.g. the TVM backend's tuning records
    ctx.options["output_dir"] = str(Path(opts.output))
    if dump is not None:
        ctx.instruments.append(DumpIRInstrument(tmp / "ir", before=dump[0], after=dump[1]))
    t0 = time.perf_counter()
    run_pipeline(graph, pipeline, ctx)
    timings["pipeline"] = time.perf_counter() - t0
    pass_times = {}
    for r in ctx.records:
        pass_times[r.name] = pass_times.get(r.name, 0.0) + r.seconds

    quantized = snapshot.quantized if snapshot.quantized is not None else graph
    memory = reports.memory_plan(graph)
    check_graph(target, graph, {})  # bit widths now; memory once the backend has measured it

    t0 = time.perf_counter()
    eval_data = opts.evaluate
    sqnr_data = eval_data if eval_data else (calib.make() if calib else None)
    analysis = reports.analyse(original, quantized, graph, sqnr_data, eval_data,
                               batches=SQNR_BATCHES, console=console)
    timings["analysis"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = emit(graph, target, tmp, ctx)
    timings["emit"] = time.perf_counter() - t0
    files = list(result.files)
    if any(f.endswith(".c") for f in files):
        (tmp / UNITY_SOURCE).write_text(_unity_source(files))
        files.append(UNITY_SOURCE)
    if dump is not None:
        files += sorted(str(p.relative_to(tmp)) for p in (tmp / "ir").glob("*.qir"))
    # the backend's own figures (a real memory plan) beat the estimate when it has them
    check_graph(target, graph, {**memory, **_backend_memory(result.metrics or {})})
    if analysis.get("evaluation") is not None:
        # the emitted files themselves, built and run outside the staged output folder
        t0 = time.perf_counter()
        analysis["evaluation"]["compiled"] = reports.evaluate_compiled(
            graph, target, backend_name, tmp, list(result.files), eval_data, console=console)
        timings["compiled"] = time.perf_counter() - t0
    if opts.measure:
        t0 = time.perf_counter()
        result.metrics = {**(result.metrics or {}),
                          "measured": _measure_on_device(graph, target, backend_name)}
        timings["measure"] = time.perf_counter() - t0

    report = reports.build_report(
        target=target, backend=backend_name, pipeline=str(pipeline), model_path=model_path,
        graph=graph, quantized=quantized, analysis=analysis, memory=memory,
        backend_metrics=result.metrics, diagnostics=ctx.diagnostics, passes=ctx.records)
    written = []
    if "json" in opts.reports:
        reports.write_json(tmp / "report.json", report)
        written.append("report.json")
    if "html" in opts.reports:
        (tmp / "report.html").write_text(reports.render_html(report), encoding="utf-8")
        written.append("report.html")
    timing_doc = {"seconds": {**{k: round(v, 6) for k, v in timings.items()}},
                  "passes": {k: round(v, 6) for k, v in pass_times.items()}}
    reports.write_json(tmp / "timings.json", timing_doc)
    files = sorted(set(files + written))
    manifest = _manifest(target, backend_name, pipeline, model_path, calib, tmp, files)
    reports.write_json(tmp / "manifest.json", manifest)
    return CompileResult(tmp, files + ["manifest.json", "timings.json"], report,
                         {**timings, "passes": pass_times}, graph, list(ctx.diagnostics))


def _measure_on_device(graph, target, backend_name: str) -> dict:
    """Flash, RAM and instructions per inference of the emitted C on the target's emulated
    Cortex-M (QEMU, deterministic instruction counts, not cycles)."""
    cpu = (target.backend_options or {}).get("cpu", "")
    if backend_name != "c" or not str(cpu).startswith("cortex-m"):
        raise TargetConstraintError(f"--measure runs the C backend's output on an emulated "
                                    f"Cortex-M; target '{target.name}' has backend "
                                    f"'{backend_name}' and cpu '{cpu or '-'}'")
    from .targets.c import toolchain
    from .targets.c.measure import measure
    if cpu not in toolchain.BOARDS:
        raise TargetConstraintError(f"--measure: no emulated board for cpu '{cpu}' (have "
                                    f"{', '.join(sorted(toolchain.BOARDS))})")
    if not toolchain.have_arm():
        raise TargetConstraintError("--measure needs arm-none-eabi-gcc, arm-none-eabi-size and "
                                    "qemu-system-arm (Debian: gcc-arm-none-eabi "
                                    "libnewlib-arm-none-eabi qemu-system-arm)")
    return measure(graph, cpu, target=target)


def _backend_memory(metrics: dict) -> dict:
    """A backend's own figures, when it reports them, override the estimate."""
    out = {}
    for key in ("flash_bytes", "constant_bytes"):
        if isinstance(metrics.get(key), int):
            out["weight_bytes"] = metrics[key]
    if isinstance(metrics.get("arena_bytes"), int):
        out["peak_activation_bytes"] = metrics["arena_bytes"]
    return out


def _unity_source(files: list[str]) -> str:
    """One translation unit including every emitted .c file, so a build system can compile
    the model from a file name known before qcompile runs."""
    lines = ["/* Generated by qcompile: includes every C source of this model, so build",
             " * systems can name one file before the model is compiled. */"]
    lines += [f'#include "{f}"' for f in sorted(files) if f.endswith(".c")]
    return "\n".join(lines) + "\n"


# ---- output folder ------------------------------------------------------------------------------
def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExists(f"output {out} exists and is not a folder")
    if not out.exists():
        return
    if not force:
        raise OutputExists(f"output folder {out} already exists; pass --force to replace it")
    if any(out.iterdir()) and not (out / "manifest.json").is_file():
        # --force replaces what qcompile wrote, never an arbitrary folder (`-o .` or `-o ~`)
        raise OutputExists(f"output folder {out} exists and is not a qcompile output (no "
                           f"manifest.json); remove it yourself if it should be replaced")


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- manifest and depfile -----------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_files(model_path: Path) -> list[Path]:
    files = [model_path.resolve()]
    side = model_path.with_suffix(".npz")
    if model_path.suffix == ".qir" and side.is_file():  # the weights of a full .qir dump
        files.append(side.resolve())
    return files


def _target_file(target) -> Optional[Path]:
    return Path(target.source) if target.source is not None else None


def _manifest(target, backend, pipeline, model_path: Path, calib, folder: Path,
              files: list[str]) -> dict:
    tfile = _target_file(target)
    return {
        "qcompile": __version__,
        "target": {"name": target.name, "file": tfile.name if tfile else None,
                   "sha256": _sha256(tfile) if tfile else None},
        "backend": backend,
        "pipeline": str(pipeline),
        "model": {"file": model_path.name, "sha256": _hash_files(_model_files(model_path))
                  if model_path.suffix == ".qir" else _sha256(model_path)},
        "calibration": None if calib is None else {
            "kind": calib.kind, "source": Path(calib.label).name if calib.kind != "function"
            else calib.label, "sha256": calib.sha256()},
        "files": {f: _sha256(folder / f) for f in files if f != "timings.json"},
        "not_hashed": ["timings.json"],
    }


def _inputs(model_path: Path, calib, target) -> list[Path]:
    deps = _model_files(model_path)
    if calib is not None:
        deps += calib.files
    if _target_file(target) is not None:
        deps.append(_target_file(target).resolve())
    return deps


def _make_escape(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace(" ", "\\ ").replace("#", "\\#") \
        .replace("$", "$$")


def write_depfile(path: Path, output: Path, deps: list[Path]) -> None:
    """A Makefile-syntax depfile (what CMake's DEPFILE and Ninja read): `output: deps...`."""
    lines = [_make_escape(output.resolve()) + ":"]
    lines += [" \\\n  " + _make_escape(d) for d in dict.fromkeys(deps)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines) + "\n")
    tmp.replace(path)
