"""Running a pipeline over a graph: instruments around each pass, change detection, fixpoint
groups, and errors that say which pass failed, where it sits in the pipeline, and where the
reproducer went."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from ..errors import PassError, QCompileError
from .context import PassContext, PassRecord, PassRun, VerifyInstrument, safe_filename
from .pipeline import Fixpoint, Pipeline
from .registry import Pass, pass_info


class PassCrash(RuntimeError):
    """A pass raised something other than a QCompileError: a bug in the pass, not in the input.
    The original exception is the `__cause__`."""


def run_pipeline(graph, pipeline: Union[str, Pipeline, Iterable[Any]],
                 ctx: Optional[PassContext] = None) -> PassContext:
    """Run `pipeline` (a string, a Pipeline, or a list of passes) over `graph` in place."""
    ctx = ctx if ctx is not None else PassContext()
    pipeline = Pipeline.of(pipeline)
    _Runner(graph, pipeline, ctx).run()
    return ctx


class _Runner:
    def __init__(self, graph, pipeline: Pipeline, ctx: PassContext):
        self.graph, self.pipeline, self.ctx = graph, pipeline, ctx
        self.text = str(pipeline)
        self.instruments = list(ctx.instruments)
        if ctx.verify and ctx.find_instrument(VerifyInstrument) is None:
            self.instruments.insert(0, VerifyInstrument())
        self.repro_dir = ctx.reproducer_dir()
        self.step = 0

    def run(self) -> None:
        entered = []
        try:
            for ins in self.instruments:
                ins.enter_pipeline(self.graph, self.ctx, self.pipeline)
                entered.append(ins)
            for i, item in enumerate(self.pipeline, 1):
                self.run_item(item, str(i), None)
        finally:
            for ins in entered:
                ins.exit_pipeline(self.graph, self.ctx)

    def run_item(self, item, position: str, iteration: Optional[int]) -> bool:
        if isinstance(item, Fixpoint):
            return self.run_fixpoint(item, position)
        return self.run_pass(item, position, iteration)

    def run_fixpoint(self, group: Fixpoint, position: str) -> bool:
        changed_ever = False
        for iteration in range(1, group.max_iterations + 1):
            changed = False
            for j, item in enumerate(group.items, 1):
                # no short-circuit: every pass of the group runs each iteration
                changed = self.run_item(item, f"{position}.{j}", iteration) or changed
            if not changed:
                return changed_ever
            changed_ever = True
        self.ctx.report("warning", f"fixpoint group at position {position} ({group}) still changed "
                                   f"the graph after {group.max_iterations} iterations; stopping")
        return changed_ever

    def run_pass(self, p: Pass, position: str, iteration: Optional[int]) -> bool:
        ctx, graph = self.ctx, self.graph
        info = pass_info(p)
        self.step += 1
        run = PassRun(info.name, str(p), self.step, position, iteration)
        before = graph.copy() if self.repro_dir is not None else None
        errors_before = len(ctx.errors)
        try:
            for ins in self.instruments:
                ins.run_before_pass(graph, ctx, run)
            version = graph.version
            ctx.current = run
            start = time.perf_counter()
            try:
                result = p.run(graph, ctx)
            finally:
                ctx.current = None
                seconds = time.perf_counter() - start
            if result is not None and not isinstance(result, bool):
                raise TypeError(f"run() returned {type(result).__name__}; a pass returns True "
                                f"(changed), False (unchanged) or None (tell from graph.version)")
            changed = result if result is not None else graph.version != version
            ctx.records.append(PassRecord(info.name, seconds, changed))
            if changed or graph.version != version:
                ctx.invalidate(graph)
            new_errors = ctx.errors[errors_before:]
            if new_errors:
                shown = "; ".join(str(d) for d in new_errors[:5])
                more = f" (and {len(new_errors) - 5} more)" if len(new_errors) > 5 else ""
                raise PassError(f"it reported {len(new_errors)} error(s): {shown}{more}")
            for ins in self.instruments:
                ins.run_after_pass(graph, ctx, run, changed)
            return changed
        except QCompileError as exc:
            # Keep the error's class (callers catch VerifyError, OpError...) but say where it was.
            message = f"{run.where(self.text)} failed: {exc}{self.reproducer(before, run)}"
            exc.args = (message,) + exc.args[1:]
            exc.pass_run = run
            raise
        except Exception as exc:
            raise PassCrash(f"{run.where(self.text)} crashed with {type(exc).__name__}: {exc}"
                            f"{self.reproducer(before, run)}") from exc

    def reproducer(self, before, run: PassRun) -> str:
        """Write the graph as it was before the failing pass; returns a sentence for the error."""
        if before is None:
            return ""
        path = Path(self.repro_dir) / f"reproducer_{run.step:03d}_{safe_filename(run.name)}.qir"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            from ..ir.printer import write_file
            # full: weights go to an .npz beside it, so the reproducer runs, not just reads
            text = write_file(before, str(path), full=True)
            path.write_text(f"// reproducer: {run.where(self.text)} failed on this graph\n"
                            + text)
        except Exception as exc:  # the original failure matters more than the reproducer's
            return f" (writing a reproducer failed: {type(exc).__name__}: {exc})"
        return (f". Reproducer (the graph before this pass): {path}; rerun with "
                f"`qcompile inspect {path} --pipeline '{run.spec}' --debug`")
