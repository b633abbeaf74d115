"""What a pass sees besides the graph: the `PassContext` (target, calibration data, options,
diagnostics, timings, analysis cache) and the instruments that observe a pipeline run."""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TextIO, Union

from ..errors import VerifyError

LEVELS = ("error", "warning", "note")


@dataclass(frozen=True)
class Diagnostic:
    """A message a pass reported about the graph (or one node of it)."""

    level: str
    pass_name: Optional[str]
    node_name: Optional[str]
    message: str

    def __str__(self) -> str:
        where = f"[{self.pass_name}] " if self.pass_name else ""
        node = f"%{self.node_name}: " if self.node_name else ""
        return f"{self.level}: {where}{node}{self.message}"


@dataclass(frozen=True)
class PassRun:
    """Which pass is running, for instruments and error messages."""

    name: str             # registered name, e.g. "fold-constants"
    spec: str             # canonical spelling with options, e.g. "fold-constants{max_elements=10}"
    step: int             # 1-based count of pass executions in this pipeline run
    position: str         # index in the pipeline, "3" or "3.2" inside a fixpoint group
    iteration: Optional[int] = None  # fixpoint iteration, if inside a group

    def where(self, pipeline: str) -> str:
        it = f", fixpoint iteration {self.iteration}" if self.iteration else ""
        return f"pass '{self.spec}' (position {self.position}{it} of pipeline '{pipeline}')"


@dataclass(frozen=True)
class PassRecord:
    name: str
    seconds: float
    changed: bool


def _verify_by_default() -> bool:
    """Verification between passes is on in test runs and when QCOMPILE_VERIFY=1."""
    env = os.environ.get("QCOMPILE_VERIFY")
    if env is not None:
        return env.strip().lower() not in ("", "0", "false", "no", "off")
    return "PYTEST_CURRENT_TEST" in os.environ


@dataclass
class PassContext:
    """State shared by the passes of one pipeline run.

    `verify` checks the graph before the first pass and after every pass that changed it, and
    names the pass that broke it. `dump_dir`, if set, receives a reproducer `.qir` of the graph
    as it was before a pass that failed (a DumpIRInstrument's folder serves too)."""

    target: Any = None
    calibration_data: Any = None
    options: dict = field(default_factory=dict)
    instruments: list = field(default_factory=list)
    verify: bool = field(default_factory=_verify_by_default)
    dump_dir: Optional[Union[str, Path]] = None
    diagnostics: list = field(default_factory=list)
    records: list = field(default_factory=list, init=False)
    current: Optional[PassRun] = field(default=None, init=False, repr=False)
    _analyses: dict = field(default_factory=dict, init=False, repr=False)

    # ---- diagnostics ---------------------------------------------------------------------
    def report(self, level: str, message: str, node: Any = None) -> Diagnostic:
        if level not in LEVELS:
            raise ValueError(f"diagnostic level must be one of {LEVELS}, got {level!r}")
        node_name = node if isinstance(node, str) or node is None else getattr(node, "name", str(node))
        diag = Diagnostic(level, self.current.name if self.current else None, node_name, message)
        self.diagnostics.append(diag)
        return diag

    def error(self, message: str, node: Any = None) -> Diagnostic:
        """Record an error; the pass manager fails the pass once it returns (so a pass can
        report every problem it finds, not just the first)."""
        return self.report("error", message, node)

    def warn(self, message: str, node: Any = None) -> Diagnostic:
        return self.report("warning", message, node)

    def note(self, message: str, node: Any = None) -> Diagnostic:
        return self.report("note", message, node)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.level == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.level == "warning"]

    # ---- timings -------------------------------------------------------------------------
    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent per pass name, summed over repeats (fixpoint groups)."""
        out: dict[str, float] = {}
        for r in self.records:
            out[r.name] = out.get(r.name, 0.0) + r.seconds
        return out

    # ---- analyses ------------------------------------------------------------------------
    def analysis(self, graph, analysis: Callable[[Any], Any]) -> Any:
        """`analysis(graph)` (a class or function), computed once per graph state: the cached
        result is dropped when the graph's version moves or a pass reports a change."""
        entry = self._analyses.get(analysis)
        if entry is not None and entry[0] is graph and entry[1] == graph.version:
            return entry[2]
        result = analysis(graph)
        self._analyses[analysis] = (graph, graph.version, result)
        return result

    def invalidate(self, graph=None) -> None:
        """Forget cached analyses (of `graph` only, if given)."""
        if graph is None:
            self._analyses.clear()
        else:
            self._analyses = {k: v for k, v in self._analyses.items() if v[0] is not graph}

    # ---- instruments ---------------------------------------------------------------------
    def find_instrument(self, kind: type) -> Optional[Any]:
        return next((i for i in self.instruments if isinstance(i, kind)), None)

    def reproducer_dir(self) -> Optional[Path]:
        if self.dump_dir is not None:
            return Path(self.dump_dir)
        dump = self.find_instrument(DumpIRInstrument)
        return dump.folder if dump is not None else None


class Instrument:
    """Hooks around a pipeline run; override the ones you need (all default to doing nothing)."""

    def enter_pipeline(self, graph, ctx: PassContext, pipeline) -> None: ...

    def exit_pipeline(self, graph, ctx: PassContext) -> None: ...

    def run_before_pass(self, graph, ctx: PassContext, run: PassRun) -> None: ...

    def run_after_pass(self, graph, ctx: PassContext, run: PassRun, changed: bool) -> None: ...


class VerifyInstrument(Instrument):
    """Verify the graph before the pipeline and after every pass that changed it (by its own
    account or by the graph's version: a pass that wrongly says "unchanged" is checked too)."""

    def __init__(self) -> None:
        self._version: Optional[int] = None

    def enter_pipeline(self, graph, ctx, pipeline) -> None:
        try:
            graph.verify()
        except VerifyError as exc:
            raise VerifyError(f"the input graph does not verify (before any pass ran): {exc}") \
                from exc

    def run_before_pass(self, graph, ctx, run) -> None:
        self._version = graph.version

    def run_after_pass(self, graph, ctx, run, changed) -> None:
        if not changed and graph.version == self._version:
            return
        try:
            graph.verify()
        except VerifyError as exc:
            raise VerifyError(f"the graph no longer verifies after this pass: {exc}") from exc


class TimingInstrument(Instrument):
    """Time every pass; `summary()` is a table of totals, printed to `stream` at the end if given."""

    def __init__(self, stream: Optional[TextIO] = None):
        self.stream = stream
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._start = 0.0

    def run_before_pass(self, graph, ctx, run) -> None:
        self._start = time.perf_counter()

    def run_after_pass(self, graph, ctx, run, changed) -> None:
        elapsed = time.perf_counter() - self._start
        self.totals[run.name] = self.totals.get(run.name, 0.0) + elapsed
        self.counts[run.name] = self.counts.get(run.name, 0) + 1

    def summary(self) -> str:
        total = sum(self.totals.values()) or 1e-12
        width = max([len(n) for n in self.totals] + [4])
        lines = [f"{'pass':<{width}}  runs  seconds      %"]
        for name, secs in sorted(self.totals.items(), key=lambda kv: -kv[1]):
            lines.append(f"{name:<{width}}  {self.counts[name]:>4}  {secs:>7.4f}  {100 * secs / total:>5.1f}")
        return "\n".join(lines)

    def exit_pipeline(self, graph, ctx) -> None:
        if self.stream is not None and self.totals:
            print(self.summary(), file=self.stream)


class DumpIRInstrument(Instrument):
    """Write the graph's text form to numbered files in `folder`: `000_input.qir`, then
    `NNN_before_<pass>.qir` / `NNN_after_<pass>.qir` for the passes named in `before` / `after`
    ("all" for every pass). NNN counts pass executions, so files sort in pipeline order."""

    def __init__(self, folder: Union[str, Path], before: Union[str, Iterable[str]] = (),
                 after: Union[str, Iterable[str]] = "all", full: bool = False, input: bool = True):
        self.folder = Path(folder)
        self.before = before if before == "all" else frozenset(before)
        self.after = after if after == "all" else frozenset(after)
        self.full, self.input = full, input
        self.files: list[Path] = []
        self._count = 0

    def _write(self, graph, stem: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{stem}.qir"
        path.write_text(graph.dump(full=self.full))
        self.files.append(path)

    def enter_pipeline(self, graph, ctx, pipeline) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.input:
            self._write(graph, "000_input")

    def run_before_pass(self, graph, ctx, run) -> None:
        self._count += 1
        if self.before == "all" or run.name in self.before:
            self._write(graph, f"{self._count:03d}_before_{safe_filename(run.name)}")

    def run_after_pass(self, graph, ctx, run, changed) -> None:
        if self.after == "all" or run.name in self.after:
            self._write(graph, f"{self._count:03d}_after_{safe_filename(run.name)}")


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def print_diagnostics(ctx: PassContext, stream: TextIO = sys.stderr) -> None:
    for d in ctx.diagnostics:
        print(d, file=stream)
