"""Calibration: feeding sample inputs through the float interpreter and watching every float
activation with an observer.

`iter_calibration(source, graph)` turns whatever the user gave as calibration data into batches
`{input name: array}` that fit the graph's inputs, with errors that name the input. `Calibrator`
runs those batches and collects, per value, the observer's range and a few plain statistics
(min, max, per-channel mean, sample count) that later passes (bias correction) read.

Accepted sources:
  * a path to an `.npz` (arrays named after the graph inputs, or one array `x` for a
    single-input graph), an array, or a dict `{input name: array}`: a *dataset*, cut into
    batches of `batch_size` along axis 0;
  * any other iterable: each item is one *batch*, an array (single-input graphs), a dict, or a
    tuple/list of arrays in graph-input order.
When an input's batch dimension is fixed (a graph traced with batch 1), batches are cut to
that size, so any data set can calibrate any graph.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.types import is_float, numpy_dtype
from .intmath import QuantError
from .observers import Observer

DEFAULT_BATCH_SIZE = 64

Batch = dict[str, np.ndarray]


class CalibrationError(QuantError):
    """Calibration data that cannot calibrate the graph: missing, empty, the wrong shape or
    dtype, or activations that become NaN/Inf."""


# --------------------------------------------------------------------------- data sources

class CalibrationData:
    """Batches from `source` that fit `graph`'s inputs; `total()` is the batch count when it
    can be known without consuming the source (datasets and sized sequences of batches)."""

    def __init__(self, source: Any, graph: Graph, batch_size: Optional[int] = None):
        if source is None:
            raise CalibrationError("no calibration data: set PassContext.calibration_data to an "
                                   ".npz path, an array, a dict of arrays or an iterable of batches")
        if not graph.inputs:
            raise CalibrationError(f"graph @{graph.name} has no inputs to calibrate")
        if batch_size is not None and batch_size < 1:
            raise CalibrationError(f"calibration batch size must be >= 1, got {batch_size}")
        self.graph = graph
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE
        self.what = "calibration data"
        self.dataset: Optional[Batch] = None
        self.batches: Optional[Iterable] = None
        if isinstance(source, (str, os.PathLike)):
            self.what = f"calibration file {os.fspath(source)}"
            self.dataset = self._from_npz(source)
        elif isinstance(source, np.ndarray):
            self.dataset = self._positional([source], "calibration array")
        elif isinstance(source, Mapping):
            self.dataset = self._named(source, "calibration dict")
        elif isinstance(source, Iterable):
            self.batches = source
        else:
            raise CalibrationError(f"calibration data must be an .npz path, an array, a dict or "
                                   f"an iterable of batches, got {type(source).__name__}")

    # ---- reading the source
    def _from_npz(self, path) -> Batch:
        if not os.path.isfile(path):
            raise CalibrationError(f"{self.what}: no such file")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:
            raise CalibrationError(f"{self.what}: not a readable .npz ({type(exc).__name__}: "
                                   f"{exc})") from None
        inputs = self.graph.inputs
        if len(inputs) == 1 and inputs[0].name not in arrays:
            fallback = "x" if "x" in arrays else (next(iter(arrays)) if len(arrays) == 1 else None)
            if fallback is None:
                raise CalibrationError(f"{self.what}: has arrays {sorted(arrays)}; expected one "
                                       f"named after input %{inputs[0].name} (or 'x')")
            arrays = {inputs[0].name: arrays[fallback]}
        return self._named(arrays, self.what)

    def _named(self, arrays: Mapping, what: str) -> Batch:
        missing = [v.name for v in self.graph.inputs if v.name not in arrays]
        if missing:
            raise CalibrationError(f"{what}: no data for input(s) {', '.join('%' + m for m in missing)}"
                                   f" (got keys {sorted(map(str, arrays))})")
        return {v.name: arrays[v.name] for v in self.graph.inputs}

    def _positional(self, arrays: list, what: str) -> Batch:
        inputs = self.graph.inputs
        if len(arrays) != len(inputs):
            names = ", ".join("%" + v.name for v in inputs)
            raise CalibrationError(f"{what}: graph @{self.graph.name} takes {len(inputs)} inputs "
                                   f"({names}), got {len(arrays)} array(s)")
        return {v.name: a for v, a in zip(inputs, arrays)}

    def _as_batch(self, item: Any, index: int) -> Batch:
        what = f"{self.what}, batch {index}"
        if isinstance(item, Mapping):
            return self._named(item, what)
        if isinstance(item, (tuple, list)):
            return self._positional(list(item), what)
        if isinstance(item, np.ndarray) or hasattr(item, "__array__"):
            return self._positional([item], what)
        raise CalibrationError(f"{what}: expected an array, a dict or a tuple of arrays, got "
                               f"{type(item).__name__}")

    # ---- checking and cutting
    def _check(self, batch: Batch, where: str) -> Batch:
        out = {}
        for v in self.graph.inputs:
            out[v.name] = check_input(v, batch[v.name], where)
        sizes = {a.shape[0] for a in out.values() if a.ndim}
        if len(sizes) > 1:
            raise CalibrationError(f"{where}: inputs have different batch sizes "
                                   f"{ {k: a.shape[0] for k, a in out.items() if a.ndim} }")
        return out

    @property
    def fixed_batch(self) -> Optional[int]:
        """The graph's static batch dimension (a model traced with batch 1), if it has one."""
        fixed = [v.type.shape[0] for v in self.graph.inputs
                 if v.type.rank and v.type.shape[0] is not None]
        return min(fixed) if fixed else None

    def _cut(self, batch: Batch, where: str) -> Iterator[Batch]:
        rows = next((a.shape[0] for a in batch.values() if a.ndim), None)
        if not rows:
            return
        step = self.fixed_batch
        if step is None:
            if self.dataset is None:  # batches from an iterable keep their size
                yield batch
                return
            step = self.batch_size
        elif rows % step:
            raise CalibrationError(f"{where}: {rows} samples, but the graph's inputs have a fixed "
                                   f"batch size of {step}; give a multiple of {step}")
        for start in range(0, rows, step):
            yield {k: (a[start:start + step] if a.ndim else a) for k, a in batch.items()}

    def total(self) -> Optional[int]:
        if self.dataset is not None:
            rows = next((len(a) for a in self.dataset.values() if np.ndim(a)), 0)
            return -(-rows // (self.fixed_batch or self.batch_size))
        if self.fixed_batch is None and hasattr(self.batches, "__len__"):
            return len(self.batches)
        return None

    def __iter__(self) -> Iterator[Batch]:
        produced = 0
        items: Iterable = [self.dataset] if self.dataset is not None else self.batches
        for i, item in enumerate(items):
            if self.dataset is not None:
                where, batch = self.what, self.dataset
            else:
                where, batch = f"{self.what}, batch {i}", self._as_batch(item, i)
            for piece in self._cut(self._check(batch, where), where):
                produced += 1
                yield piece
        if produced == 0:
            raise CalibrationError(f"{self.what} is empty: no samples to calibrate "
                                   f"graph @{self.graph.name} with")


def iter_calibration(source: Any, graph: Graph,
                     batch_size: Optional[int] = None) -> Iterator[Batch]:
    """Batches `{input name: array}` from `source` (see the module docstring), checked against
    `graph`'s inputs. Raises CalibrationError naming the input on a shape or dtype mismatch,
    and when the source yields no samples at all."""
    return iter(CalibrationData(source, graph, batch_size))


def check_input(v: Value, data: Any, where: str) -> np.ndarray:
    """`data` as the numpy dtype of graph input `v`, with its shape checked (batch dim free)."""
    a = np.asarray(data)
    want = v.type
    if is_float(want.dtype):
        if not np.issubdtype(a.dtype, np.floating):
            raise CalibrationError(f"{where}: input %{v.name} expects {want.dtype} data, got dtype "
                                   f"{a.dtype} (convert and scale it as the model expects first)")
    elif want.dtype == "bool":
        if a.dtype != np.bool_:
            raise CalibrationError(f"{where}: input %{v.name} expects bool data, got dtype {a.dtype}")
    elif not np.issubdtype(a.dtype, np.integer):
        raise CalibrationError(f"{where}: input %{v.name} expects {want.dtype} data, got dtype "
                               f"{a.dtype}")
    shape_ok = a.ndim == want.rank and all(
        d is None or d == s or (i == 0 and want.rank > 0) for i, (d, s) in enumerate(zip(want.shape, a.shape)))
    if not shape_ok:
        expected = "(" + ", ".join("?" if d is None else str(d) for d in want.shape) + ")"
        raise CalibrationError(f"{where}: input %{v.name} expects shape {expected} (any batch "
                               f"size), got {a.shape}")
    return a.astype(numpy_dtype(want.dtype), copy=False)


# --------------------------------------------------------------------------- structural facts

#: Ops whose output is >= 0 whatever their input.
_NONNEGATIVE_OPS = frozenset({"relu", "sigmoid", "hardsigmoid", "softmax", "abs", "exp", "sqrt",
                              "rsqrt"})
#: Ops whose output is >= 0 when their (first) input is.
_NONNEG_PRESERVING = frozenset({"max_pool2d", "avg_pool2d", "global_avg_pool", "mean",
                                "reduce_max", "reduce_sum", "reshape", "flatten", "transpose",
                                "squeeze", "unsqueeze", "expand", "slice", "identity", "pad",
                                "prelu", "leaky_relu", "hardswish", "gelu", "tanh"})


def nonnegative_values(graph: Graph) -> set[str]:
    """Names of values that are >= 0 by construction (after relu, relu6, sigmoid, ... and the
    ops that keep that), so they can be stored unsigned. Structural, not observed: a value that
    merely happened to be non-negative on the calibration set is not in it."""
    out: set[str] = set()
    for node in graph.nodes:
        ins = [v for v in node.inputs if v is not None]
        if node.op in _NONNEGATIVE_OPS:
            ok = True
        elif node.op == "clip":
            ok = node.attrs.get("min", -1.0) >= 0
        elif node.op == "pad":
            ok = bool(ins) and ins[0].name in out and node.attrs.get("value", 0.0) >= 0
        elif node.op in _NONNEG_PRESERVING:
            # prelu/leaky_relu/hardswish/gelu/tanh map x >= 0 to itself (or a positive value)
            ok = bool(ins) and ins[0].name in out
        elif node.op == "maximum":
            ok = any(_nonneg(v, out) for v in ins)
        elif node.op in ("concat", "minimum", "add", "mul"):
            ok = bool(ins) and all(_nonneg(v, out) for v in ins)
        else:
            ok = False
        if ok:
            out.update(o.name for o in node.outputs)
    return out


def _nonneg(v: Value, known: set) -> bool:
    if v.data is not None:
        return bool(np.all(np.asarray(v.data) >= 0))
    return v.name in known


# --------------------------------------------------------------------------- the calibrator

def _float_activation(v: Value) -> bool:
    return v.data is None and is_float(v.type.dtype)


class Calibrator:
    """Observes every float activation (graph inputs and node outputs) of `graph` while it runs
    batches in the float interpreter. `make_observer(value, nonnegative)` gives a fresh observer
    for one value."""

    def __init__(self, graph: Graph, make_observer: Callable[[Value, bool], Observer]):
        from ..interp.interpreter import Interpreter  # the interpreter imports the IR, not us
        self.graph = graph
        nonneg = nonnegative_values(graph)
        values = [v for v in graph.inputs if _float_activation(v)]
        values += [o for n in graph.nodes for o in n.outputs if _float_activation(o)]
        self.observers = {v.name: make_observer(v, v.name in nonneg) for v in values}
        self._min: dict[str, float] = {}
        self._max: dict[str, float] = {}
        self._sum: dict[str, np.ndarray] = {}
        self._elems: dict[str, int] = {}
        self._count: dict[str, int] = {}
        self.batches = 0
        self._interp = Interpreter(graph, "float", observer=self._hook)

    def observe_batch(self, batch: Batch) -> None:
        for v in self.graph.inputs:
            if v.name in self.observers:
                self._observe(v.name, batch[v.name], f"graph input %{v.name}")
        self._interp.run(batch)
        self.batches += 1

    def _hook(self, node: Node, outs: list) -> None:
        for v, o in zip(node.outputs, outs):
            if v.name in self.observers:
                self._observe(v.name, o, f"value %{v.name} (output of node {node.name}, "
                                         f"op {node.op}{', ' + node.loc if node.loc else ''})")

    def _observe(self, name: str, data: Any, what: str) -> None:
        a = np.asarray(data)
        if a.size == 0:
            return
        if not np.isfinite(a).all():
            nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
            raise CalibrationError(f"{what} has {nan} NaN and {inf} Inf values in calibration "
                                   f"batch {self.batches}; calibration needs finite activations")
        self.observers[name].observe(a)
        lo, hi = float(a.min()), float(a.max())
        self._min[name] = min(self._min.get(name, lo), lo)
        self._max[name] = max(self._max.get(name, hi), hi)
        if a.ndim >= 2:
            axes = (0,) + tuple(range(2, a.ndim))
            s = a.sum(axis=axes, dtype=np.float64)
            self._sum[name] = self._sum[name] + s if name in self._sum else s
            self._elems[name] = self._elems.get(name, 0) + a.size // a.shape[1]
        else:
            self._sum[name] = self._sum.get(name, 0.0) + a.sum(dtype=np.float64)
            self._elems[name] = self._elems.get(name, 0) + a.size
        self._count[name] = self._count.get(name, 0) + (a.shape[0] if a.ndim else 1)

    def ranges(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """`{value name: (lo, hi)}` from each observer (values never seen are left out)."""
        return {name: obs.range() for name, obs in self.observers.items() if obs.count}

    def stats(self) -> dict[str, dict]:
        """`{value name: {"min", "max", "mean", "count"}}`: exact min and max, the mean per
        channel (axis 1) for rank >= 2 values (else a scalar), and the number of samples."""
        return {name: {"min": np.float64(self._min[name]), "max": np.float64(self._max[name]),
                       "mean": np.asarray(self._sum[name], np.float64) / self._elems[name],
                       "count": self._count[name]}
                for name in self._min}
