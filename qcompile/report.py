"""What `qcompile compile` reports: `report.json` (schema in docs/report-schema.md), a
self-contained `report.html` with inline SVG plots, and the summary table on the console.

Everything here is deterministic: the same graphs and data give the same bytes. Wall-clock
timings never enter the report; the compile driver writes them to `timings.json`.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .ir.graph import Graph, Value
from .ir.types import is_float, is_int, numpy_dtype

SCHEMA = "qcompile-report/1"
#: Per-channel scales are summarised (min, max, count) beyond this many channels.
MAX_LISTED_SCALES = 8


# =========================================================================== memory

def storage_bytes(v: Value) -> int:
    """Bytes `v` occupies once compiled: its integer storage type when it has QuantParams (a
    weight still float in the simulated graph counts as its quantized size), dynamic dims as 1."""
    n = 1
    for d in v.type.shape:
        n *= 1 if d is None else d
    dtype = v.type.dtype
    if is_float(dtype) and v.quant is not None:
        dtype = v.quant.storage_dtype
    if dtype == "bool":
        return n
    return n * numpy_dtype(dtype).itemsize


def memory_plan(graph: Graph) -> dict:
    """Weight bytes, and the activation bytes alive at each step of the node order (a value is
    alive from its producer to its last user; graph outputs to the end), with the peak."""
    last_use: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            if v is not None and not v.is_constant:
                last_use[id(v)] = i
    end = len(graph.nodes)
    for v in graph.outputs:
        last_use[id(v)] = end
    live: dict[int, int] = {id(v): storage_bytes(v) for v in graph.inputs}
    schedule = []
    for i, n in enumerate(graph.nodes):
        for o in n.outputs:
            live[id(o)] = storage_bytes(o)
        schedule.append({"step": i, "node": n.name, "op": n.op, "live_bytes": sum(live.values())})
        live = {k: b for k, b in live.items() if last_use.get(k, -1) > i}
    weights = sum(storage_bytes(v) for v in graph.constants.values())
    peak = max((s["live_bytes"] for s in schedule), default=0)
    peak_step = next((s for s in schedule if s["live_bytes"] == peak), None)
    return {"weight_bytes": weights, "peak_activation_bytes": peak,
            "peak_at": peak_step["node"] if peak_step else None, "schedule": schedule}


# =========================================================================== measurements

def analyse(original: Graph, quantized: Graph, final: Graph, sqnr_data: Any, eval_data: Any,
            batches: int = 16, console: Any = None) -> dict:
    """Per-layer SQNR of the simulated graph, its output error, and (with labelled evaluation
    data) float, simulated and integer accuracy. Keys are absent when there is nothing to
    measure (no data, or no quantized values)."""
    from .quant.sqnr import compare_outputs, per_layer_sqnr
    out: dict = {}
    has_quant = any(v.quant is not None for v in quantized.values.values())
    if sqnr_data is not None and has_quant:
        with _status(console, "measuring per-layer SQNR"):
            out["layers"] = per_layer_sqnr(quantized, sqnr_data, batches=batches)
            cmp = compare_outputs(quantized, sqnr_data, batches=batches)
        out["output"] = {"samples": cmp["samples"], "top1_agreement": cmp["top1_agreement"],
                         "output_sqnr_db": _finite(cmp["output_sqnr_db"])}
    if eval_data is not None:
        with _status(console, "evaluating float, simulated and integer models"):
            out["evaluation"] = _evaluate(original, quantized, final, eval_data)
    return out


class _status:
    """A spinner on a terminal console, nothing otherwise (pipes, logs, tests)."""

    def __init__(self, console, text: str):
        self.cm = console.status(text) if console is not None and console.is_terminal else None

    def __enter__(self):
        if self.cm is not None:
            self.cm.__enter__()

    def __exit__(self, *exc):
        if self.cm is not None:
            return self.cm.__exit__(*exc)


def _labels(path: str) -> np.ndarray:
    from .quant.calibration import CalibrationError
    with np.load(path) as npz:
        if "y" not in npz.files:
            raise CalibrationError(f"evaluation file {path}: needs labels 'y' next to the inputs")
        return np.asarray(npz["y"]).reshape(-1)


def _evaluate(original: Graph, quantized: Graph, final: Graph, path: str) -> dict:
    from .errors import QCompileError
    from .quant.calibration import CalibrationError
    from .quant.sqnr import compare_outputs
    labels = _labels(path)
    res = {"samples": int(labels.size),
           "float_accuracy": compare_outputs(original, path, labels)["float_accuracy"]}
    if any(v.quant is not None for v in quantized.values.values()):
        res["simulated_accuracy"] = compare_outputs(quantized, path, labels)["quant_accuracy"]
    if final is not quantized:
        try:
            preds = _integer_predictions(final, path)
        except QCompileError as exc:  # e.g. a float island the integer interpreter cannot run
            res["integer_accuracy"] = None
            res["integer_error"] = str(exc)
        else:
            if preds.size != labels.size:
                raise CalibrationError(f"evaluation file {path}: {labels.size} labels for "
                                       f"{preds.size} predictions")
            res["integer_accuracy"] = float(np.mean(preds == labels))
    return res


def _integer_batches(graph: Graph, path: str) -> Iterator[list[np.ndarray]]:
    """The evaluation data in batches, one array per input of `graph` in order, as the
    integer graph takes it: float data for an integer input is quantized with its parameters."""
    from .quant.calibration import iter_calibration
    from .quant.intmath import quantize_float
    for batch in iter_calibration(path, _float_view(graph)):
        feed = []
        for v in graph.inputs:
            a = batch[v.name]
            if is_int(v.type.dtype) and v.quant is not None and np.issubdtype(a.dtype, np.floating):
                q = v.quant
                a = quantize_float(a, q.scale_array(a.ndim).astype(np.float32),
                                   q.zero_point_array(a.ndim), q.qmin, q.qmax, "half_even")
                a = a.astype(numpy_dtype(v.type.dtype))
            feed.append(a)
        yield feed


def _integer_predictions(graph: Graph, path: str) -> np.ndarray:
    """Top-1 of the integer interpreter on `path` (argmax is the same on a dequantized output,
    since scales are positive)."""
    from .interp.interpreter import Interpreter
    interp = Interpreter(graph, "int")
    preds = []
    for feed in _integer_batches(graph, path):
        out = np.asarray(interp.run(feed)[0])
        preds.append(np.argmax(out, axis=-1).reshape(-1))
    return np.concatenate(preds)


# ---- the compiled C model ------------------------------------------------------------------------
#: How the emitted C is run, as report.json names it.
HOST_RUNNER = "host gcc"


def evaluate_compiled(graph: Graph, target: Any, backend: str, emitted: Path,
                      files: Sequence[str], path: str, console: Any = None) -> dict:
    """`evaluation.compiled` of report.json: the C the backend wrote into `emitted` (the
    `files` it listed), built with the host gcc and the dataset driver in a temporary folder
    of its own (nothing is added to `emitted`), run on every sample of `path`, and compared
    with the integer interpreter at the C boundary: the integer tensors model_run_io reads and
    writes. `skipped` says why it did not run (no C backend, no gcc, a failed build)."""
    if backend != "c":
        return _not_compiled(f"the backend is '{backend}', not 'c'")
    from .targets.c import toolchain as tc
    if not tc.have_host_cc():
        return _not_compiled("no host C compiler (gcc) on PATH")
    import tempfile
    from .errors import QCompileError
    from .targets.c.emitter import CProgram
    from .targets.c.testing import boundary_arrays
    labels = _labels(path)
    dsp = bool((getattr(target, "backend_options", None) or {}).get("dsp", False))
    # the program the backend emitted: the same graph gives the same ports (one batch item
    # per call for a dynamic batch); the driver checks the record sizes it reads
    prog = CProgram(graph)
    with _status(console, "building and running the compiled C model"), \
            tempfile.TemporaryDirectory(prefix="qcompile-evaluate-") as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        for f in files:  # a copy: gcc and the driver never touch the output being staged
            if f.endswith((".c", ".h")):
                (src / f).parent.mkdir(parents=True, exist_ok=True)
                (src / f).write_bytes((Path(emitted) / f).read_bytes())
        try:
            exe = tc.host_build(src, work / "model_eval", dsp=dsp, driver="dataset_driver.c")
            ins, refs = [], []
            for feed in _integer_batches(graph, path):
                i, r = boundary_arrays(graph, feed, prog)
                ins.append(i)
                refs.append(r)
            c_in = [np.concatenate(parts) for parts in zip(*ins)]
            ref = [np.concatenate(parts) for parts in zip(*refs)]
            got = tc.run_host_dataset(exe, prog, c_in, work)
        except QCompileError as exc:  # keep the report free of the random build folder
            reason = str(exc).replace(str(work), "<build>").strip().splitlines()[0]
            return _not_compiled(f"building or running the C model failed: {reason}")
    mismatches = sum(int(np.count_nonzero(g != r)) if g.shape == r.shape else int(r.size)
                     for g, r in zip(got, ref))
    preds = np.argmax(_dequantized(got[0], prog.outputs[0].value), axis=-1).reshape(-1)
    if preds.size != labels.size:
        from .quant.calibration import CalibrationError
        raise CalibrationError(f"evaluation file {path}: {labels.size} labels for "
                               f"{preds.size} predictions of the compiled C model")
    return {"runner": HOST_RUNNER, "accuracy": float(np.mean(preds == labels)),
            "bit_exact": mismatches == 0, "mismatches": mismatches,
            "compared": int(sum(r.size for r in ref))}


def _not_compiled(reason: str) -> dict:
    return {"runner": None, "accuracy": None, "bit_exact": None, "mismatches": None,
            "compared": None, "skipped": reason}


def _dequantized(codes: np.ndarray, v: Value) -> np.ndarray:
    """The real values of C output codes (argmax over integer codes would be wrong for
    per-channel output scales)."""
    q = v.quant
    if q is None:
        return codes
    return (codes.astype(np.float64) - q.zero_point_array(codes.ndim)) * \
        q.scale_array(codes.ndim)


def _float_view(graph: Graph) -> Graph:
    """A shell graph with `graph`'s inputs as float, so the data reader accepts float data for
    integer inputs (quantized above)."""
    from .ir.types import TensorType
    g = Graph(graph.name)
    for v in graph.inputs:
        g.add_input(v.name, TensorType(v.type.shape, "f32"))
    return g


def _finite(x: Optional[float]) -> Optional[float]:
    """JSON has no inf/nan: an exact result is null (with an `exact` flag where it matters)."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), 4)


# =========================================================================== report.json

def _scales(q) -> Any:
    if q is None:
        return None
    if len(q.scale) <= MAX_LISTED_SCALES:
        return [float(s) for s in q.scale]
    return {"count": len(q.scale), "min": min(q.scale), "max": max(q.scale)}


def _quant(q) -> Optional[dict]:
    if q is None:
        return None
    zps = list(q.zero_point)
    return {"bits": q.bits, "signed": q.signed, "axis": q.axis, "pow2": q.pow2,
            "scale": _scales(q),
            "zero_point": zps if len(zps) <= MAX_LISTED_SCALES else
            {"count": len(zps), "min": min(zps), "max": max(zps)}}


def accumulators(graph: Graph) -> dict[str, dict]:
    """What check-accumulator left in `graph.meta["accumulator"]`, one row per MAC layer (by
    node name): the width checked, the bits the worst case needs (max over channels), the
    margin between them, and the extreme bounds. Empty when the analysis did not run."""
    raw = graph.meta.get("accumulator")
    if not isinstance(raw, dict):
        return {}
    out = {}
    for layer in raw.get("layers", []):
        acc = raw.get("bits") or layer.get("acc_bits")
        need = layer.get("max_bits_needed")
        row = {"op": layer.get("op"), "channels": layer.get("channels"),
               "acc_bits": acc, "required_bits": need,
               "margin_bits": acc - need if acc is not None and need is not None else None,
               "lo": min(layer["lo"]) if layer.get("lo") else None,
               "hi": max(layer["hi"]) if layer.get("hi") else None,
               "unsafe_channels": len(raw.get("unsafe", {}).get(layer.get("name"), []))}
        observed = layer.get("observed")
        if observed:
            row["observed_bits"] = observed.get("max_bits")
        out[str(layer.get("name"))] = row
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return [_jsonable(i) for i in x.tolist()]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return _finite(float(x)) if not float(x).is_integer() else float(x)
    if isinstance(x, (list, tuple)):
        return [_jsonable(i) for i in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    return x


def _layers(quantized: Graph, analysis: dict, accs: dict) -> list[dict]:
    sqnr = {r.name: r for r in analysis.get("layers", [])}
    rows = []
    for node in quantized.nodes:
        out = node.outputs[0] if node.outputs else None
        if out is None:
            continue
        weights = [v for v in node.inputs if v is not None and v.is_constant]
        w = node.inputs[1] if node.op in ("conv2d", "linear", "matmul") and len(node.inputs) > 1 \
            else None
        r = sqnr.get(out.name)
        # lower-integer names a MAC's accumulator after the float output it replaces + ".acc"
        acc = accs.get(node.name) or accs.get(node.name + ".acc")
        rows.append({
            "name": node.name, "op": node.op,
            "kind": r.kind if r is not None else ("quantized" if out.quant else "float"),
            "bits": out.quant.bits if out.quant is not None else None,
            "weight_bits": w.quant.bits if w is not None and w.is_constant and w.quant else None,
            "output": _quant(out.quant),
            "weight": _quant(w.quant) if w is not None and w.is_constant else None,
            "sqnr_db": _finite(r.sqnr_db) if r is not None else None,
            "exact": bool(r is not None and r.sqnr_db == math.inf),
            "max_abs_error": _finite(r.max_abs_error) if r is not None else None,
            "weight_bytes": sum(storage_bytes(v) for v in weights),
            "output_bytes": storage_bytes(out),
            "accumulator": acc,
        })
    return rows


def build_report(*, target, backend: str, pipeline: str, model_path: Path, graph: Graph,
                 quantized: Graph, analysis: dict, memory: dict, backend_metrics: dict,
                 diagnostics: Sequence, passes: Sequence) -> dict:
    accs = accumulators(graph)
    return {
        "schema": SCHEMA,
        "model": {"file": Path(model_path).name, "graph": graph.name,
                  "inputs": [_io(v) for v in graph.inputs],
                  "outputs": [_io(v) for v in graph.outputs],
                  "ops": graph.op_counts()},
        "target": {"name": target.name, "kind": target.kind, "backend": backend,
                   "weight_bits": list(target.weight_bits), "act_bits": list(target.act_bits),
                   "accumulator_bits": target.accumulator_bits,
                   "requantization": target.requantization, "rounding": target.rounding,
                   "memory": dict(target.memory)},
        "pipeline": pipeline,
        "passes": [{"name": r.name, "changed": bool(r.changed)} for r in passes],
        "layers": _layers(quantized, analysis, accs),
        "accumulators": accs,
        "output": analysis.get("output"),
        "evaluation": analysis.get("evaluation"),
        "memory": {"weight_bytes": memory["weight_bytes"],
                   "peak_activation_bytes": memory["peak_activation_bytes"],
                   "peak_at": memory["peak_at"],
                   "budget": {k: target.memory[k] for k in ("flash_bytes", "ram_bytes")
                              if k in target.memory},
                   "backend": _jsonable(dict(backend_metrics)),
                   "schedule": memory["schedule"]},
        "diagnostics": [{"level": d.level, "pass": d.pass_name, "node": d.node_name,
                         "message": d.message} for d in diagnostics],
    }


def _io(v: Value) -> dict:
    return {"name": v.name, "shape": ["?" if d is None else d for d in v.type.shape],
            "dtype": v.type.dtype, "quant": _quant(v.quant)}


def write_json(path: Path, doc: dict) -> None:
    """Stable JSON: fixed key order (as built), no NaN, a final newline."""
    Path(path).write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")


# =========================================================================== console summary

def print_summary(report: dict, timings: dict, output: Path, console) -> None:
    from rich.table import Table
    table = Table(title=f"{report['model']['file']} for {report['target']['name']}",
                  title_justify="left")
    for col, just in (("layer", "left"), ("op", "left"), ("bits a/w", "right"),
                      ("SQNR dB", "right"), ("acc margin", "right"), ("weights B", "right"),
                      ("output B", "right")):
        table.add_column(col, justify=just, overflow="fold", no_wrap=col != "layer")
    for r in report["layers"]:
        if r["bits"] is None and r["weight_bits"] is None and r["sqnr_db"] is None \
                and not r["exact"]:
            continue  # a fused value: its layer shows on the activation that follows
        bits = f"{r['bits'] or '-'}/{r['weight_bits'] or '-'}"
        sqnr = "exact" if r["exact"] else ("-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}")
        acc = r["accumulator"]
        margin = "-" if not acc or acc.get("margin_bits") is None else f"{acc['margin_bits']} b"
        table.add_row(r["name"], r["op"], bits, sqnr, margin, str(r["weight_bytes"] or "-"),
                      str(r["output_bytes"]))
    console.print(table)
    passes = Table(title="time per pass", title_justify="left")
    passes.add_column("pass")
    passes.add_column("seconds", justify="right")
    for name, secs in timings.get("passes", {}).items():
        passes.add_row(name, f"{secs:.3f}")
    for stage in ("load", "analysis", "emit", "compiled"):
        if stage in timings:
            passes.add_row(f"({stage})", f"{timings[stage]:.3f}")
    console.print(passes)
    mem = report["memory"]
    line = (f"weights {_kib(mem['weight_bytes'])}, peak activations "
            f"{_kib(mem['peak_activation_bytes'])}")
    backend = mem.get("backend") or {}
    if isinstance(backend.get("arena_bytes"), int):
        line += f" (estimate; the backend's arena: {_kib(backend['arena_bytes'])})"
    budget = mem["budget"]
    if budget:
        line += " (budget: " + ", ".join(f"{k} {_kib(v)}" for k, v in budget.items()) + ")"
    if report.get("output"):
        o = report["output"]
        sq = "exact" if o["output_sqnr_db"] is None else f"{o['output_sqnr_db']:.1f} dB"
        line += f"; output SQNR {sq}, top-1 agreement {100 * o['top1_agreement']:.1f} %"
    console.print(line)
    ev = report.get("evaluation")
    if ev:
        parts = [f"float {100 * ev['float_accuracy']:.2f} %"]
        if "simulated_accuracy" in ev:
            parts.append(f"simulated {100 * ev['simulated_accuracy']:.2f} %")
        if "integer_accuracy" in ev:
            parts.append("integer " + ("n/a (" + ev.get("integer_error", "") + ")"
                                       if ev["integer_accuracy"] is None
                                       else f"{100 * ev['integer_accuracy']:.2f} %"))
        if ev.get("compiled"):
            parts += _compiled_summary(ev["compiled"])
        console.print(f"accuracy on {ev['samples']} samples: " + ", ".join(parts))
    console.print(f"wrote {output}")


def _compiled_summary(c: dict) -> list[str]:
    if c.get("runner") is None:
        return [f"compiled C not run ({c.get('skipped')})"]
    agree = ("bit-exact with the interpreter" if c["bit_exact"] else
             f"{c['mismatches']} of {c['compared']} output values differ from the interpreter")
    return [f"compiled C ({c['runner']}) {100 * c['accuracy']:.2f} %", agree]


def _kib(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


# =========================================================================== report.html

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>qcompile report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }}
code {{ background: #f3f3f3; padding: 0 .2em; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; min-width: 10em; }}
.card b {{ display: block; font-size: 1.3em; }}
table {{ border-collapse: collapse; font-size: .85em; }}
td, th {{ border-bottom: 1px solid #eee; padding: .2em .6em; text-align: right; }}
td:first-child, th:first-child, td.l, th.l {{ text-align: left; }}
svg.plot {{ display: block; margin: 1em 0; }}
svg.plot text {{ font-size: 11px; }}
.warning {{ color: #a60; }} .error {{ color: #b00; }}
</style>
</head>
<body>
<h1>qcompile report: <code>{title}</code> for <code>{target}</code></h1>
<p>Pipeline: <code>{pipeline}</code></p>
<div class="cards">{cards}</div>
<h2>Per-layer SQNR</h2>
{plot_sqnr}
<h2>Bit widths</h2>
{plot_bits}
<h2>Accumulator margins</h2>
{plot_acc}
<h2>Memory over the schedule</h2>
{plot_memory}
<h2>Layers</h2>
{layer_table}
<h2>Diagnostics</h2>
{diagnostics}
</body>
</html>
"""

_W = 900          # plot width in px
_LABEL_W = 260    # room for layer names at the left of horizontal bars
_ROW = 18


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _hbar_plot(pid: str, title: str, rows: list[tuple[str, Optional[float], str]], unit: str,
               empty: str, ref: Optional[tuple[float, str]] = None,
               lo: Optional[float] = None) -> str:
    """Horizontal bars, one per (label, value, note) row; a None value shows its note."""
    if not rows:
        return f'<p id="{pid}-empty">{_e(empty)}</p>'
    values = [v for _, v, _ in rows if v is not None]
    vmax = max(values + [ref[0] if ref else 0.0, 1e-9])
    vmin = min(values + [0.0]) if lo is None else lo
    span = vmax - vmin or 1.0
    plot_w = _W - _LABEL_W - 80
    h = 30 + len(rows) * _ROW + 20
    x0 = _LABEL_W + plot_w * (0 - vmin) / span if vmin < 0 else _LABEL_W
    parts = [f'<svg class="plot" id="{pid}" xmlns="http://www.w3.org/2000/svg" width="{_W}" '
             f'height="{h}" viewBox="0 0 {_W} {h}" role="img" aria-label="{_e(title)}">',
             f'<text x="0" y="14" font-weight="bold">{_e(title)}</text>']
    for i, (label, value, note) in enumerate(rows):
        y = 24 + i * _ROW
        short = label if len(label) <= 40 else "…" + label[-39:]
        parts.append(f'<text x="{_LABEL_W - 6}" y="{y + 12}" text-anchor="end">'
                     f'<title>{_e(label)}</title>{_e(short)}</text>')
        if value is None:
            parts.append(f'<text class="note" x="{_LABEL_W + 4}" y="{y + 12}" fill="#666">'
                         f'{_e(note)}</text>')
            continue
        xa = _LABEL_W + plot_w * (min(value, 0) - vmin) / span if vmin < 0 else _LABEL_W
        w = max(plot_w * abs(value) / span, 1.0)
        color = "#c0392b" if (ref is not None and value < ref[0]) else "#2e86c1"
        parts.append(f'<rect class="bar" x="{xa:.1f}" y="{y + 2}" width="{w:.1f}" '
                     f'height="{_ROW - 5}" fill="{color}"><title>{_e(label)}: {_fmt(value)} '
                     f'{_e(unit)}</title></rect>')
        parts.append(f'<text x="{xa + w + 4:.1f}" y="{y + 12}">{_fmt(value)} {_e(note)}</text>')
    if ref is not None:
        xr = _LABEL_W + plot_w * (ref[0] - vmin) / span
        parts.append(f'<line class="ref" x1="{xr:.1f}" y1="22" x2="{xr:.1f}" y2="{h - 16}" '
                     f'stroke="#888" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{xr + 3:.1f}" y="{h - 4}" fill="#666">{_e(ref[1])}</text>')
    parts.append(f'<line x1="{x0:.1f}" y1="22" x2="{x0:.1f}" y2="{h - 16}" stroke="#444"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def _bits_plot(layers: list[dict]) -> str:
    rows = [r for r in layers if r["bits"] is not None or r["weight_bits"] is not None]
    if not rows:
        return '<p id="plot-bits-empty">No quantized values.</p>'
    plot_w = _W - _LABEL_W - 80
    h = 44 + len(rows) * _ROW + 10
    scale = plot_w / 32.0
    parts = [f'<svg class="plot" id="plot-bits" xmlns="http://www.w3.org/2000/svg" width="{_W}" '
             f'height="{h}" viewBox="0 0 {_W} {h}" role="img" aria-label="bit widths">',
             '<text x="0" y="14" font-weight="bold">bits per layer: activation (blue), weight '
             '(orange)</text>']
    for i, r in enumerate(rows):
        y = 24 + i * _ROW
        short = r["name"] if len(r["name"]) <= 40 else "…" + r["name"][-39:]
        parts.append(f'<text x="{_LABEL_W - 6}" y="{y + 12}" text-anchor="end">{_e(short)}</text>')
        for j, (key, color) in enumerate((("bits", "#2e86c1"), ("weight_bits", "#e67e22"))):
            b = r[key]
            if b is None:
                continue
            parts.append(f'<rect class="bar" x="{_LABEL_W}" y="{y + 1 + j * 7}" '
                         f'width="{b * scale:.1f}" height="6" fill="{color}"><title>'
                         f'{_e(r["name"])} {key}: {b}</title></rect>')
            parts.append(f'<text x="{_LABEL_W + b * scale + 4:.1f}" y="{y + 7 + j * 7}" '
                         f'font-size="8">{b}</text>')
    for b in (8, 16, 32):
        x = _LABEL_W + b * scale
        parts.append(f'<line x1="{x:.1f}" y1="22" x2="{x:.1f}" y2="{h - 16}" stroke="#ccc"/>'
                     f'<text x="{x:.1f}" y="{h - 4}" text-anchor="middle">{b}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _memory_plot(memory: dict) -> str:
    sched = memory["schedule"]
    if not sched:
        return '<p id="plot-memory-empty">The graph has no nodes.</p>'
    peak = max(1, memory["peak_activation_bytes"])
    budget = memory["budget"].get("ram_bytes")
    show_budget = budget is not None and budget <= 4 * peak
    top = max(peak, budget) if show_budget else peak
    left, bottom, w, h = 70, 30, _W - 90, 220
    n = len(sched)
    step_w = w / n

    def y(b: float) -> float:
        return 20 + h * (1 - b / top)

    pts = []
    for i, s in enumerate(sched):
        pts += [f"{left + i * step_w:.1f},{y(s['live_bytes']):.1f}",
                f"{left + (i + 1) * step_w:.1f},{y(s['live_bytes']):.1f}"]
    area = (f"{left:.1f},{y(0):.1f} " + " ".join(pts) + f" {left + w:.1f},{y(0):.1f}")
    total_h = 20 + h + bottom
    parts = [f'<svg class="plot" id="plot-memory" xmlns="http://www.w3.org/2000/svg" '
             f'width="{_W}" height="{total_h}" viewBox="0 0 {_W} {total_h}" role="img" '
             f'aria-label="live activation bytes per step">',
             f'<polygon class="area" points="{area}" fill="#aed6f1" stroke="#2e86c1"/>',
             f'<line x1="{left}" y1="{y(0):.1f}" x2="{left + w}" y2="{y(0):.1f}" stroke="#444"/>',
             f'<line x1="{left}" y1="20" x2="{left}" y2="{y(0):.1f}" stroke="#444"/>',
             f'<text x="{left - 4}" y="{y(top) + 4:.1f}" text-anchor="end">{_kib(top)}</text>',
             f'<text x="{left - 4}" y="{y(0) + 4:.1f}" text-anchor="end">0</text>',
             f'<text x="{left + w / 2:.1f}" y="{total_h - 4}" text-anchor="middle">step '
             f'(node order), {n} nodes; peak {_kib(peak)} at {_e(memory["peak_at"])}</text>']
    for i, s in enumerate(sched):
        parts.append(f'<rect class="step" x="{left + i * step_w:.1f}" y="20" '
                     f'width="{step_w:.1f}" height="{h}" fill="transparent"><title>'
                     f'{i}: {_e(s["node"])} ({_e(s["op"])}) {s["live_bytes"]} B live</title></rect>')
    if show_budget:
        parts.append(f'<line class="budget" x1="{left}" y1="{y(budget):.1f}" x2="{left + w}" '
                     f'y2="{y(budget):.1f}" stroke="#c0392b" stroke-dasharray="5 3"/>'
                     f'<text x="{left + w}" y="{y(budget) - 3:.1f}" text-anchor="end" '
                     f'fill="#c0392b">RAM budget {_kib(budget)}</text>')
    elif budget is not None:
        parts.append(f'<text x="{left + w}" y="14" text-anchor="end" fill="#666">RAM budget '
                     f'{_kib(budget)} (off scale)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _cards(report: dict) -> str:
    mem = report["memory"]
    cards = [("weights", _kib(mem["weight_bytes"])),
             ("peak activations", _kib(mem["peak_activation_bytes"]))]
    if report.get("output"):
        o = report["output"]
        cards.append(("output SQNR", "exact" if o["output_sqnr_db"] is None
                      else f"{o['output_sqnr_db']:.1f} dB"))
        cards.append(("top-1 agreement", f"{100 * o['top1_agreement']:.1f} %"))
    ev = report.get("evaluation") or {}
    for key, label in (("float_accuracy", "float accuracy"),
                       ("simulated_accuracy", "simulated accuracy"),
                       ("integer_accuracy", "integer accuracy")):
        if ev.get(key) is not None:
            cards.append((label, f"{100 * ev[key]:.2f} %"))
    compiled = ev.get("compiled") or {}
    if compiled.get("accuracy") is not None:
        cards.append((f"compiled C accuracy ({compiled['runner']})",
                      f"{100 * compiled['accuracy']:.2f} %"))
        cards.append(("compiled C vs interpreter", "bit-exact" if compiled["bit_exact"] else
                      f"{compiled['mismatches']} values differ"))
    return "".join(f'<div class="card">{_e(k)}<b>{_e(v)}</b></div>' for k, v in cards)


def _layer_table(layers: list[dict]) -> str:
    head = ('<tr><th>layer</th><th class="l">op</th><th>bits</th><th>w bits</th>'
            '<th>SQNR dB</th><th>acc margin</th><th>weights B</th><th>output B</th></tr>')
    rows = []
    for r in layers:
        sq = "exact" if r["exact"] else ("" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}")
        acc = r["accumulator"] or {}
        rows.append(f'<tr><td>{_e(r["name"])}</td><td class="l">{_e(r["op"])}</td>'
                    f'<td>{_e(r["bits"] or "")}</td><td>{_e(r["weight_bits"] or "")}</td>'
                    f'<td>{sq}</td><td>{_e(acc.get("margin_bits", ""))}</td>'
                    f'<td>{r["weight_bytes"]}</td><td>{r["output_bytes"]}</td></tr>')
    return f'<table id="layers">{head}{"".join(rows)}</table>'


def render_html(report: dict) -> str:
    """The report as one HTML page with inline SVG (no scripts, no external files)."""
    layers = report["layers"]
    sqnr_rows = [(r["name"], r["sqnr_db"], "exact" if r["exact"] else "")
                 for r in layers if r["sqnr_db"] is not None or r["exact"]]
    acc_rows = [(name, a.get("margin_bits"), f"bits ({a.get('required_bits')} of "
                 f"{a.get('acc_bits')} used)") for name, a in report["accumulators"].items()]
    diags = report["diagnostics"]
    diag_html = ("<ul>" + "".join(
        f'<li class="{_e(d["level"])}">{_e(d["level"])}: '
        f'{"[" + _e(d["pass"]) + "] " if d["pass"] else ""}'
        f'{"%" + _e(d["node"]) + ": " if d["node"] else ""}{_e(d["message"])}</li>'
        for d in diags) + "</ul>") if diags else "<p>None.</p>"
    return _TEMPLATE.format(
        title=_e(report["model"]["file"]), target=_e(report["target"]["name"]),
        pipeline=_e(report["pipeline"]), cards=_cards(report),
        plot_sqnr=_hbar_plot("plot-sqnr", "SQNR of each layer's output vs float (dB; red "
                             "below 20 dB)", sqnr_rows, "dB",
                             "No SQNR measured (no calibration or evaluation data, or nothing "
                             "quantized).", ref=(20.0, "20 dB")),
        plot_bits=_bits_plot(layers),
        plot_acc=_hbar_plot("plot-acc", "accumulator headroom (bits left before overflow; "
                            "red below 1)", acc_rows, "bits",
                            "No accumulator analysis (the pipeline has no check-accumulator).",
                            ref=(1.0, "1 bit")),
        plot_memory=_memory_plot(report["memory"]),
        layer_table=_layer_table(layers), diagnostics=diag_html)


# =========================================================================== graph drawings

def _node_label(node) -> str:
    out = node.outputs[0] if node.outputs else None
    typ = ""
    if out is not None:
        shape = "x".join("?" if d is None else str(d) for d in out.type.shape)
        typ = f"{shape} {out.type.dtype}"
        if out.quant is not None:
            typ += f" q{out.quant.bits}"
    return f"{node.op}\n%{node.name}\n{typ}"


def graph_to_dot(graph: Graph) -> str:
    """A Graphviz `dot` description: one box per node, graph inputs and outputs as ellipses;
    constants are folded into their users' labels to keep the drawing readable."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    lines = [f"digraph {q(graph.name)} {{", "  rankdir=TB;",
             '  node [shape=box, fontname="monospace", fontsize=10];']
    for v in graph.inputs:
        lines.append(f"  {q('in:' + v.name)} [shape=ellipse, label={q('%' + v.name)}];")
    for i, n in enumerate(graph.nodes):
        consts = [v.name for v in n.inputs if v is not None and v.is_constant]
        label = _node_label(n) + ("".join(f"\n+ %{c}" for c in consts) if consts else "")
        lines.append(f"  n{i} [label={q(label)}];")
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            if v is None or v.is_constant:
                continue
            src = f"n{index[id(v.producer)]}" if v.producer is not None else q("in:" + v.name)
            lines.append(f"  {src} -> n{i};")
    for v in graph.outputs:
        lines.append(f"  {q('out:' + v.name)} [shape=ellipse, label={q('return %' + v.name)}];")
        src = f"n{index[id(v.producer)]}" if v.producer is not None else q("in:" + v.name)
        lines.append(f"  {src} -> {q('out:' + v.name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_to_svg(graph: Graph) -> str:
    """A standalone SVG of the graph, laid out without Graphviz: nodes in rows by their depth
    (longest path from an input), edges as straight lines."""
    depth: dict[int, int] = {}
    for n in graph.nodes:
        preds = [depth[id(v.producer)] for v in n.inputs
                 if v is not None and v.producer is not None and id(v.producer) in depth]
        depth[id(n)] = 1 + max(preds, default=0)
    rows: dict[int, list] = {}
    for n in graph.nodes:
        rows.setdefault(depth[id(n)], []).append(n)
    box_w, box_h, gap_x, gap_y = 240, 46, 30, 34
    width = max([len(r) for r in rows.values()] + [len(graph.inputs), 1]) * (box_w + gap_x) + gap_x
    n_rows = (max(rows) if rows else 0) + 2
    height = n_rows * (box_h + gap_y) + gap_y
    pos: dict[Any, tuple[float, float]] = {}

    def place(items, r):
        total = len(items) * (box_w + gap_x) - gap_x
        x0 = (width - total) / 2
        for j, item in enumerate(items):
            pos[item] = (x0 + j * (box_w + gap_x), gap_y + r * (box_h + gap_y))

    place([("in", v.name) for v in graph.inputs], 0)
    for r, nodes in rows.items():
        place([id(n) for n in nodes], r)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="11">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
             'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/>'
             '</marker></defs>']
    for n in graph.nodes:
        x2, y2 = pos[id(n)]
        for v in n.inputs:
            if v is None or v.is_constant:
                continue
            key = id(v.producer) if v.producer is not None else ("in", v.name)
            x1, y1 = pos[key]
            parts.append(f'<line x1="{x1 + box_w / 2:.0f}" y1="{y1 + box_h:.0f}" '
                         f'x2="{x2 + box_w / 2:.0f}" y2="{y2:.0f}" stroke="#555" '
                         f'marker-end="url(#arrow)"/>')
    for v in graph.inputs:
        x, y = pos[("in", v.name)]
        parts.append(f'<ellipse cx="{x + box_w / 2:.0f}" cy="{y + box_h / 2:.0f}" '
                     f'rx="{box_w / 2:.0f}" ry="{box_h / 2:.0f}" fill="#eef" stroke="#336"/>'
                     f'<text x="{x + box_w / 2:.0f}" y="{y + box_h / 2 + 4:.0f}" '
                     f'text-anchor="middle">%{_e(v.name)}</text>')
    outputs = {id(v.producer) for v in graph.outputs if v.producer is not None}
    for n in graph.nodes:
        x, y = pos[id(n)]
        fill = "#fde" if id(n) in outputs else ("#efe" if any(
            o.quant is not None for o in n.outputs) else "#fff")
        parts.append(f'<g class="node"><title>{_e(n.name)}</title><rect x="{x:.0f}" '
                     f'y="{y:.0f}" width="{box_w}" height="{box_h}" rx="4" fill="{fill}" '
                     f'stroke="#333"/>')
        for k, line in enumerate(_node_label(n).split("\n")):
            line = line if len(line) <= 34 else line[:33] + "…"
            weight = ' font-weight="bold"' if k == 0 else ""
            parts.append(f'<text x="{x + box_w / 2:.0f}" y="{y + 13 + k * 13:.0f}" '
                         f'text-anchor="middle"{weight}>{_e(line)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
