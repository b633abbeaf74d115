"""Accuracy against accumulator width, with and without `check-accumulator` repairs.

    python benchmarks/accumulator_width.py [--models digits,mnist] [--widths 32,24,16,12]

For the digits and MNIST CNNs quantized W8A8 with per-channel weights
(`fold-bn,calibrate,quantize,lower-integer`, calibrated on the committed calibration sets), and
for each accumulator width P (32 down to 12 by default):

  wrap      top-1 accuracy of the integer interpreter with every MAC's acc_bits = P (sums wrap
            as two's complement hardware would), and how many accumulator values of the test
            set leave P bits (counted exactly, from the recomputed int64 sums);
  project   the same after `check-accumulator{bits=P,policy=repair,method=project}` (A2Q-style
            L1 projection / coarsening of the offending channels, re-quantized, bias-corrected);
  split     the same after `...,method=split` (reduction chunks with P-bit partial sums, summed
            in 32 bits; bit-exact, so it matches the 32-bit accuracy whenever it applies).
"n/a" means the repair is impossible at that width (split: a single 8x8-bit product already
needs more than P bits). The overflow count of a repaired graph is 0 by construction; it is
measured anyway.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

import torch  # noqa: E402

import zoo  # noqa: E402
from qcompile.errors import QCompileError  # noqa: E402
from qcompile.frontend import from_torch  # noqa: E402
from qcompile.ir.graph import Graph  # noqa: E402
from qcompile.passmanager import PassContext, run_pipeline  # noqa: E402
from qcompile.quant.accumulator import AccumulatorObserver  # noqa: E402

PIPELINE = "fold-bn,calibrate,quantize,lower-integer"
MAC_OPS = ("qconv2d", "qlinear", "qmatmul")


def load(name: str):
    """(torch model, example input, calibration array, test inputs, test labels)."""
    models = REPO / "examples" / "models"
    if name == "digits":
        test = np.load(models / "digits_test.npz")
        return (zoo.digits_cnn(), torch.zeros(2, 1, 8, 8), np.load(models / "digits_calib.npz")["x"],
                test["x"], test["y"])
    if name == "mnist":
        _, x_ho, _, y_ho = zoo.mnist_data()
        return (zoo.mnist_cnn(), torch.zeros(2, 1, 28, 28),
                np.load(models / "mnist_calib.npz")["x"], x_ho, y_ho)
    raise SystemExit(f"unknown model {name!r}; choose from digits, mnist")


def integer_graph(model, example, calib: np.ndarray) -> Graph:
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        g = from_torch(model, (example,), dynamic_batch=True)
    run_pipeline(g, PIPELINE, PassContext(calibration_data=calib))
    return g


def with_width(g: Graph, bits: int) -> Graph:
    out = g.copy()
    for n in out.nodes:
        if n.op in MAC_OPS:
            n.attrs["acc_bits"] = bits
    return out


def measure(g: Graph, x: np.ndarray, y: np.ndarray, widths) -> tuple[float, dict, int]:
    """(top-1 accuracy, {width: accumulator values of the test set outside it}, number of
    accumulator values) from one run of the integer interpreter that also recomputes every
    accumulator exactly in int64."""
    obs = AccumulatorObserver(g, widths=tuple(widths), keep_outputs=True).run([x])
    pred = np.concatenate([outs[0] for outs in obs.outputs]).argmax(axis=1)
    over = {p: sum(s.overflow[p] for s in obs.stats.values()) for p in widths}
    return float(np.mean(pred == y)), over, sum(s.count for s in obs.stats.values())


def repaired(g: Graph, bits: int, method: str, calib: np.ndarray) -> tuple[Graph, bool]:
    """The graph after check-accumulator{policy=repair}, and whether anything was unsafe."""
    out = g.copy()
    run_pipeline(out, f"check-accumulator{{bits={bits},policy=repair,method={method}}}",
                 PassContext(calibration_data=calib))
    unsafe = any(layer.get("repair") for layer in out.meta["accumulator"]["layers"])
    return out, unsafe


def bench(name: str, widths: list[int]) -> list[tuple]:
    model, example, calib, x, y = load(name)
    g = integer_graph(model, example, calib)
    # Wrapping changes exactly the accumulators that leave P bits: where none does, the
    # narrow graph computes what the 32-bit one does, so it is run only where some do.
    base_acc, base_over, total = measure(g, x, y, widths)
    rows = []
    for p in widths:
        acc = base_acc if base_over[p] == 0 else measure(with_width(g, p), x, y, [p])[0]
        row = [name, p, acc, base_over[p]]
        for method in ("project", "split"):
            try:
                h, changed = repaired(g, p, method, calib)
            except QCompileError:
                row += [None, None]
                continue
            # nothing unsafe: the repair left the weights alone and set acc_bits = P, under
            # which (provably) nothing wraps, so the result is the 32-bit one
            if changed:
                acc_r, over_r, _ = measure(h, x, y, [p])
                row += [acc_r, over_r[p]]
            else:
                row += [base_acc, 0]
        rows.append(tuple(row))
        print(_fmt_row(rows[-1], total), flush=True)
    return rows


def _fmt_row(r: tuple, total: int) -> str:
    def acc(v):
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    def cnt(v):
        return "       n/a" if v is None else f"{v:>10d}"
    name, p, a, o, pa, po, sa, so = r
    return (f"| {name:<6} | {p:>2} | {acc(a)} | {cnt(o)} of {total} | {acc(pa)} | {cnt(po)} | "
            f"{acc(sa)} | {cnt(so)} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="digits,mnist")
    ap.add_argument("--widths", default=",".join(str(p) for p in range(32, 11, -1)))
    args = ap.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    print("command: python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]))
    print(f"pipeline: {PIPELINE} (W8A8, per-channel weights), then acc_bits = P or "
          f"check-accumulator{{bits=P,policy=repair,method=project|split}}")
    print("accuracy: top-1 % of the integer interpreter; overflow: accumulator values of the "
          "test set outside P bits\n")
    print("| model  |  P | wrap % | overflow (of all accumulators) | project % | overflow | "
          "split % | overflow |")
    print("|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for name in args.models.split(","):
        bench(name.strip(), widths)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
