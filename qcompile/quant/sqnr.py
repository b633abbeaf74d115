"""How much quantization costs, layer by layer: the float and the fake-quant interpreters run on
the same inputs and every node's output is compared.

    rows = per_layer_sqnr(graph, "calib.npz")
    print_sqnr_table(rows)
    report["sqnr"] = sqnr_report(rows)

The errors are end-to-end (each fake-quant layer reads the fake-quant outputs of the layers
before it), so a row shows how much error has built up by that point of the network, which is
what decides accuracy; a sudden drop points at the layer that causes it.

SQNR is `10 log10(sum x^2 / sum (x - x_q)^2)` in dB over all samples, `inf` when the simulated
value is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..ir.graph import Graph, Value
from ..ir.types import is_float
from .calibration import CalibrationError, iter_calibration


@dataclass(frozen=True)
class LayerError:
    """The simulated error of one node output."""

    name: str                    # the value (for single-output nodes, the node's name)
    op: str
    kind: str                    # "quantized" (stored with QuantParams), "fused" (a MAC/bn
                                 # output folded into its relu/clip) or "float" (a float island)
    bits: Optional[int]          # storage bits of the output; None unless "quantized"
    weight_bits: Optional[int]   # bits of a MAC op's weight; None for other ops
    sqnr_db: float               # math.inf when exact
    max_abs_error: float
    signal_rms: float


class _Accumulator:
    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.count = 0
        self.max_err = 0.0

    def add(self, ref: np.ndarray, sim: np.ndarray) -> None:
        ref = np.asarray(ref, np.float64)
        diff = np.asarray(sim, np.float64) - ref
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum(diff * diff))
        self.count += ref.size
        if diff.size:
            self.max_err = max(self.max_err, float(np.max(np.abs(diff))))

    def sqnr(self) -> float:
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)


def _layer_values(graph: Graph) -> list[tuple[Value, str]]:
    return [(o, n.op) for n in graph.nodes for o in n.outputs if is_float(o.dtype)]


def _weight_bits(value: Value) -> Optional[int]:
    node = value.producer
    if node is None or node.op not in ("conv2d", "linear", "matmul"):
        return None
    w = node.inputs[1]  # a matmul of two activations has no weight
    return w.quant.bits if w is not None and w.is_constant and w.quant is not None else None


def _run_pair(graph: Graph, data: Any, batches: int, keep_all: bool):
    """(float interpreter, fake-quant interpreter, batch) per batch, both already run."""
    from ..interp.interpreter import Interpreter
    ref = Interpreter(graph, "float", keep_all=keep_all)
    sim = Interpreter(graph, "fakequant", keep_all=keep_all)
    for i, batch in enumerate(iter_calibration(data, graph)):
        if batches and i >= batches:
            break
        ref_out = ref.run(batch)
        sim_out = sim.run(batch)
        yield ref, sim, ref_out, sim_out


def per_layer_sqnr(graph: Graph, data: Any, batches: int = 0) -> list[LayerError]:
    """One `LayerError` per float node output, in graph order, measured on `data` (anything
    `iter_calibration` accepts; `batches` > 0 stops after that many)."""
    values = _layer_values(graph)
    acc = {v.name: _Accumulator() for v, _ in values}
    for ref, sim, _, _ in _run_pair(graph, data, batches, keep_all=True):
        for v, _ in values:
            acc[v.name].add(ref.values[v.name], sim.values[v.name])
    islands = graph.meta.get("float_ops", {})
    rows = []
    for v, op in values:
        a = acc[v.name]
        rms = math.sqrt(a.signal / a.count) if a.count else 0.0
        kind = "quantized" if v.quant is not None else (
            "float" if v.producer.name in islands else "fused")
        rows.append(LayerError(v.name, op, kind, v.quant.bits if v.quant is not None else None,
                               _weight_bits(v), a.sqnr(), a.max_err, rms))
    return rows


def sqnr_report(rows: list[LayerError]) -> list[dict]:
    """JSON-able rows: an exact layer has `sqnr_db` None and `exact` true (JSON has no inf)."""
    out = []
    for r in rows:
        finite = math.isfinite(r.sqnr_db)
        out.append({"name": r.name, "op": r.op, "kind": r.kind, "bits": r.bits, "weight_bits": r.weight_bits,
                    "sqnr_db": round(r.sqnr_db, 3) if finite else None,
                    "exact": r.sqnr_db == math.inf, "max_abs_error": r.max_abs_error,
                    "signal_rms": r.signal_rms})
    return out


def print_sqnr_table(rows: list[LayerError], console: Any = None, title: str = "per-layer SQNR",
                     warn_below_db: float = 20.0) -> None:
    """A rich table of `rows`; SQNRs under `warn_below_db` are shown in red."""
    from rich.console import Console
    from rich.table import Table
    table = Table(title=title)
    for col, justify in (("value", "left"), ("op", "left"), ("bits", "right"),
                         ("w bits", "right"), ("SQNR dB", "right"), ("max |err|", "right"),
                         ("rms", "right")):
        # names may be long (traced models); numbers and op names must stay on one line
        table.add_column(col, justify=justify, overflow="fold", no_wrap=col != "value")
    for r in rows:
        if r.sqnr_db == math.inf:
            sqnr = "exact"
        else:
            sqnr = f"{r.sqnr_db:.1f}"
            if r.sqnr_db < warn_below_db:
                sqnr = f"[red]{sqnr}[/red]"
        table.add_row(r.name, r.op, r.kind if r.bits is None else str(r.bits),
                      "-" if r.weight_bits is None else str(r.weight_bits), sqnr,
                      f"{r.max_abs_error:.3g}", f"{r.signal_rms:.3g}")
    (console or Console()).print(table)


def compare_outputs(graph: Graph, data: Any, labels: Any = None, output: int = 0,
                    batches: int = 0) -> dict:
    """Float vs simulated results of one graph output on `data`: top-1 agreement (argmax over
    the last axis) and output SQNR, plus both accuracies when `labels` (in data order) are given."""
    acc = _Accumulator()
    ref_top, sim_top = [], []
    for _, _, ref_out, sim_out in _run_pair(graph, data, batches, keep_all=False):
        r, s = ref_out[output], sim_out[output]
        acc.add(r, s)
        ref_top.append(np.argmax(r, axis=-1).reshape(-1))
        sim_top.append(np.argmax(s, axis=-1).reshape(-1))
    ref_top, sim_top = np.concatenate(ref_top), np.concatenate(sim_top)
    result = {"samples": int(ref_top.size), "top1_agreement": float(np.mean(ref_top == sim_top)),
              "output_sqnr_db": acc.sqnr(), "max_abs_error": acc.max_err}
    if labels is not None:
        y = np.asarray(labels).reshape(-1)
        if y.size != ref_top.size:
            raise CalibrationError(f"compare_outputs: {y.size} labels for {ref_top.size} "
                                   f"predictions")
        result["float_accuracy"] = float(np.mean(ref_top == y))
        result["quant_accuracy"] = float(np.mean(sim_top == y))
    return result
