"""`calibrate`: run the calibration data through the float graph and record the range of every
float activation in `graph.meta["ranges"]` (what `quantize` turns into scales) and plain
statistics in `graph.meta["calib_stats"]` (what bias correction reads).

The graph itself is not changed, so the pass reports "unchanged".
"""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

from qcompile.errors import PipelineError
from qcompile.ir.graph import Graph, Value
from qcompile.passmanager import Pass, PassContext, register_pass
from qcompile.quant.calibration import Calibrator, CalibrationData
from qcompile.quant.observers import (EntropyObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                                      MSEObserver, Observer, PercentileObserver)

#: Show a progress bar from this many batches on (and only on a terminal).
PROGRESS_MIN_BATCHES = 20


METHODS = ("minmax", "ema", "percentile", "mse", "entropy")


@register_pass("calibrate")
@dataclass(frozen=True)
class Calibrate(Pass):
    """Observe activation ranges on ctx.calibration_data (min/max, EMA, percentile, MSE, entropy)."""

    method: Literal["minmax", "ema", "percentile", "mse", "entropy"] = "minmax"
    percentile: float = 99.99
    bits: int = 8            # the bit width MSE and entropy optimise the range for
    batches: int = 0         # 0: all batches of the calibration data
    per_channel: bool = False  # ranges per channel (along per_channel_axis) instead of per tensor
    per_channel_axis: int = 1  # 1: NCHW channels; -1: the hidden axis of [batch, tokens, hidden]
    batch_size: int = 64     # rows per batch when the data is one big array (or .npz)
    #: "name:method" items: outputs of the nodes (or ops) named use that method instead
    method_overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = {
            "percentile": (50.0 < self.percentile <= 100.0, "must be in (50, 100]"),
            "bits": (2 <= self.bits <= 16, "must be in 2..16"),
            "batches": (self.batches >= 0, "must be >= 0 (0 means all)"),
            "batch_size": (self.batch_size >= 1, "must be >= 1"),
            "per_channel_axis": (self.per_channel_axis in (1, -1), "must be 1 or -1"),
        }
        for option, (ok, expected) in problems.items():
            if not ok:
                raise PipelineError(f"pass 'calibrate', option '{option}': {expected}, got "
                                    f"{getattr(self, option)!r}")
        self._overrides()  # checks the spelling now, before any data runs

    def _overrides(self) -> dict[str, str]:
        """`method_overrides` as {node or op name: method}."""
        out = {}
        for item in self.method_overrides:
            target, sep, method = str(item).rpartition(":")
            if not sep or not target or method not in METHODS:
                raise PipelineError(f"pass 'calibrate', option 'method_overrides': item {item!r} "
                                    f"must be 'node_or_op:method' with method one of "
                                    f"{', '.join(METHODS)}")
            out[target] = method
        return out

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        data = CalibrationData(ctx.calibration_data, graph, self.batch_size)
        calib = Calibrator(graph, self._observer)
        total = data.total()
        if self.batches and (total is None or total > self.batches):
            total = self.batches
        with _progress(total) as advance:
            for batch in data:
                calib.observe_batch(batch)
                advance()
                if self.batches and calib.batches >= self.batches:
                    break
        graph.meta["ranges"] = calib.ranges()
        # which axis each per-channel range runs along (quantize checks it before using one)
        graph.meta["range_axes"] = {name: obs.axis for name, obs in calib.observers.items()
                                    if obs.axis is not None and name in graph.meta["ranges"]}
        graph.meta["calib_stats"] = calib.stats()
        ctx.note(f"{self.method} ranges for {len(graph.meta['ranges'])} values from "
                 f"{calib.batches} batch(es)")
        return False

    def _observer(self, value: Value, nonnegative: bool) -> Observer:
        # -1 is stored as rank - 1 so every range of one value names the same axis
        axis = self.per_channel_axis % value.type.rank \
            if self.per_channel and value.type.rank >= 2 else None
        name = f"%{value.name}"
        method = self.method
        node = value.producer
        if node is not None and self.method_overrides:
            overrides = self._overrides()
            if node.name in overrides or node.op in overrides:
                method = overrides.get(node.name, overrides.get(node.op))
                # a clipping range per channel would be merged back into one by quantize
                # (the max over channels), so an override observes the tensor as a whole
                axis = None
        if method == "minmax":
            return MinMaxObserver(axis=axis, name=name)
        if method == "ema":
            return MovingAverageMinMaxObserver(axis=axis, name=name)
        if method == "percentile":
            return PercentileObserver(self.percentile, axis=axis, name=name)
        if method == "mse":
            # unsigned for non-negative values: the grid quantize will pick for them
            return MSEObserver(self.bits, signed=not nonnegative, axis=axis, name=name)
        return EntropyObserver(self.bits, signed=not nonnegative, axis=axis, name=name)


def _progress(total):
    """A context giving an `advance()` callable: a rich bar on a terminal for long runs, a no-op
    otherwise (pipes, CI logs, tests)."""
    interactive = sys.stderr.isatty() and "PYTEST_CURRENT_TEST" not in os.environ
    if not interactive or (total is not None and total < PROGRESS_MIN_BATCHES):
        return nullcontext(lambda: None)
    return _RichProgress(total)


class _RichProgress:
    def __init__(self, total):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
        self.progress = Progress("calibrating", BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True),
                                 transient=True)
        self.total = total

    def __enter__(self):
        self.progress.__enter__()
        task = self.progress.add_task("calibrate", total=self.total)
        return lambda: self.progress.advance(task)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)
