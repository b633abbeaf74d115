"""MetaSchedule tuning of the MAC kernels, with a tuning database that travels with the model.

    compiler.build(graph, target, tune=64, database="tuning/")   # tune, record, build
    compiler.build(graph, target, database="tuning/")            # apply the records only

How it works:
  1. The graph is lowered once with a collecting scheduler, which keeps every convolution /
     dense / matmul kernel's unscheduled PrimFunc next to its hand schedule (`schedules.py`).
  2. Each kernel without a record gets a share of the trials in proportion to its hand
     schedule's time. A trial replays one of MetaSchedule's LLVM design spaces with fresh
     random decisions, runs MetaSchedule's postprocessors, and compiles and times the result.
  3. The best candidate is timed again beside the hand schedule, in the same way, and the
     faster one wins: a kernel that tuning made slower keeps its hand schedule.
  4. The build lowers again; a kernel whose record won with tuning replays the recorded
     decisions on its design space, every other kernel gets its hand schedule.

The database is `records.json` in a folder, one record per kernel, keyed by a hash of the
target and the kernel's unscheduled TIR: a database holds kernels of several models and
targets, and a changed kernel is simply not found.

Why so little of MetaSchedule's own machinery: with apache-tvm-ffi 0.1.15, `tvm.ir.save_json`
crashes the process on TIR expressions, and MetaSchedule's JSONDatabase, popen builder and
runner, search strategies (which deep-copy modules through JSON) and two mutators all call
it. Replaying a trace's JSON form failed for these kernels too. So the search runs here, in
this process, and records plain decisions.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import tvm
from tvm import s_tir
from tvm import tirx as tir

from .lower import TVMBackendError

#: Kernel kinds worth tuning: the MAC kernels hold nearly all of the time. Element-wise and
#: pooling kernels keep their hand schedules.
TUNED_KINDS = ("conv2d", "depthwise", "dense", "matmul")
FORMAT = "qcompile-tvm-tuning/1"
RECORDS = "records.json"
#: The database's folder in an exported model.
TUNING_DIR = "tuning"
#: Candidates MetaSchedule builds and times before it picks the next task.
TRIALS_PER_ITER = 16


class TVMTuningError(TVMBackendError):
    """A tuning database that cannot be read, or a tuning request that cannot be honoured."""


# ---------------------------------------------------------------------------------- records

@dataclass
class TuningDatabase:
    """The records of one database folder (`folder` is None until it is saved somewhere)."""

    records: dict = field(default_factory=dict)
    folder: Optional[Path] = None

    @classmethod
    def empty(cls) -> "TuningDatabase":
        return cls()

    @classmethod
    def open(cls, folder, create: bool = False) -> "TuningDatabase":
        """The database in `folder`. A missing folder is an error unless `create` (then the
        records start empty and are written there on `save`)."""
        path = Path(folder)
        if path.exists() and not path.is_dir():
            raise TVMTuningError(f"tuning database {path} is not a folder (expected a folder "
                                 f"holding {RECORDS})")
        file = path / RECORDS
        if not file.exists():
            if create:
                return cls({}, path)
            what = "does not exist" if not path.exists() else f"has no {RECORDS}"
            raise TVMTuningError(f"tuning database {path} {what}; tune first (tune=N) or give "
                                 f"the folder a previous tuning run wrote")
        try:
            doc = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise TVMTuningError(f"tuning database {file} is not readable JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT \
                or not isinstance(doc.get("kernels"), dict):
            raise TVMTuningError(f"tuning database {file} is not a {FORMAT} file (expected "
                                 f"{{\"format\": \"{FORMAT}\", \"kernels\": {{...}}}})")
        for key, rec in doc["kernels"].items():
            if not isinstance(rec, dict) or rec.get("winner") not in ("tuned", "hand") \
                    or (rec["winner"] == "tuned" and not _is_schedule(rec.get("schedule"))):
                raise TVMTuningError(f"tuning database {file}: record {key} needs a winner "
                                     f"('tuned' with a schedule, or 'hand')")
        return cls(dict(doc["kernels"]), path)

    def save(self, folder=None) -> list[str]:
        """Write `records.json` into `folder` (default: where it was opened); returns the
        file's name. Sorted keys, so the same records give the same bytes."""
        path = Path(folder) if folder is not None else self.folder
        if path is None:
            raise TVMTuningError("the tuning database has no folder to be saved in")
        path.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "kernels": self.records}
        (path / RECORDS).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return [RECORDS]


def _is_schedule(x) -> bool:
    return isinstance(x, dict) and isinstance(x.get("space"), int) \
        and isinstance(x.get("decisions"), list)


def kernel_key(func: tir.PrimFunc, target_spec: dict) -> str:
    """Target and unscheduled kernel, hashed: equal kernels share one record."""
    text = json.dumps(target_spec, sort_keys=True) + "\n" + func.script()
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------- kernels

@dataclass
class Kernel:
    func: tir.PrimFunc            # unscheduled, as ops.py made it
    hand: tir.PrimFunc            # what the build would use without tuning
    kind: str
    key: str


Scheduler = Callable[[tir.PrimFunc, str, dict], tir.PrimFunc]


def fresh(func: tir.PrimFunc) -> tir.PrimFunc:
    """An unshared copy of `func`. TVM 0.27's Schedule can rewrite the statements of the
    function it was given in place, and a kernel is scheduled many times here."""
    return tvm.script.from_source(func.script())


def _as_is(func: tir.PrimFunc, kind: str, info: dict) -> tir.PrimFunc:
    return func


def collect_kernels(lower: Callable[[Scheduler], object], hand: Optional[Scheduler],
                    target_spec: dict) -> list[Kernel]:
    """Run `lower(scheduler)` with a scheduler that records each kernel; distinct kernels of
    the tuned kinds, in graph order."""
    base = hand or _as_is
    found: dict[str, Kernel] = {}

    def collect(func, kind, info):
        if kind not in TUNED_KINDS:
            return base(func, kind, info)
        key = kernel_key(func, target_spec)
        keep = fresh(func)
        scheduled = base(func, kind, info)
        found.setdefault(key, Kernel(keep, scheduled, kind, key))
        return scheduled
    lower(collect)
    return list(found.values())


def applying_scheduler(db: TuningDatabase, hand: Optional[Scheduler], target,
                       target_spec: dict) -> Scheduler:
    """The build's scheduler: a kernel whose record won with tuning replays its trace."""
    base = hand or _as_is

    def schedule(func, kind, info):
        rec = db.records.get(kernel_key(func, target_spec)) if kind in TUNED_KINDS else None
        if rec is None or rec["winner"] != "tuned":
            return base(func, kind, info)
        return replay(func, rec["schedule"], target)
    return schedule


def replay(func: tir.PrimFunc, record: dict, target) -> tir.PrimFunc:
    """The unscheduled kernel scheduled as a record says: its design space's instructions
    with the recorded random decisions, then MetaSchedule's postprocessors."""
    tgt = _tuning_target(target)
    try:
        ctx, postprocs = _context(func, tgt)
        spaces = list(ctx.generate_design_space())
        sch = _apply(func, spaces[int(record["space"])], list(record["decisions"]))
        if not _postprocess(sch, postprocs):
            raise ValueError("a postprocessor rejected the schedule")
    except Exception as exc:  # a record that does not fit the kernel any more
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise TVMTuningError(f"a tuning record does not apply to its kernel: {first}") from None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _apply(func: tir.PrimFunc, space, decisions: Optional[list], seed: int = 0):
    """Replay a design space's instructions; sampling instructions take the next of
    `decisions`, or (None) sample afresh."""
    sch = s_tir.Schedule(_task_mod(fresh(func)), seed=seed + 1)  # seeds start at 1
    if decisions is None:
        s_tir.Trace(space.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
        return sch
    todo = iter(decisions)

    def provide(inst, inputs, attrs, decision):
        return decision if decision is None else next(todo)
    space.trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=provide)
    return sch


def _decisions(sch) -> list:
    """The schedule's random decisions in instruction order, as plain JSON values. (Not the
    trace's own JSON form: replaying that fails in TVM 0.27 for these kernels.)"""
    trace = sch.trace
    return [_plain(trace.decisions[i]) for i in trace.insts if i in trace.decisions]


def _plain(x):
    if isinstance(x, (int, float, str)) or x is None:
        return x
    if hasattr(x, "value"):
        return int(x.value)
    return [_plain(v) for v in x]


def _args(func: tir.PrimFunc, dev) -> list:
    """Arguments for timing: every element 1. Ones are safe for every kernel (a divisor or
    shift table of random values could trap), and integer kernels take the same time for any
    data."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    return [tvm.runtime.tensor(np.ones([int(d) for d in a.shape], dtype=str(a.dtype)), dev)
            for a in ArgInfo.from_prim_func(func)]


def _compile(func: tir.PrimFunc, target):
    return tir.build(_task_mod(func), target=target)


def time_kernel(rt_mod, args, dev, repeat: int = 5, min_repeat_ms: int = 20) -> float:
    """Median seconds per call of the compiled kernel `main`."""
    ev = rt_mod.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return float(statistics.median(ev(*args).results))


def _timed(func: tir.PrimFunc, target) -> float:
    dev = tvm.cpu(0)
    return time_kernel(_compile(func, target), _args(func, dev), dev)


# ---------------------------------------------------------------------------------- search

def _tuning_target(target):
    """MetaSchedule's schedule rules need the core count in the target."""
    spec = dict(target.export())
    if "num-cores" not in spec:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        spec["num-cores"] = cores
    return tvm.target.Target(spec)


def _context(func: tir.PrimFunc, target):
    """MetaSchedule's tuning context for the kernel, and the postprocessors every candidate
    must pass (parallel / vectorise / unroll annotations become loops, reductions get their
    init blocks)."""
    from tvm.s_tir import meta_schedule as ms
    # mutators are not used by a replay search, and two of them crash on initialisation
    space = ms.space_generator.PostOrderApply(sch_rules="llvm", postprocs="llvm",
                                              mutator_probs={})
    ctx = ms.TuneContext(mod=_task_mod(fresh(func)), target=target, space_generator=space,
                         task_name="kernel", num_threads=int(target.attrs["num-cores"]))
    return ctx, list(ctx.space_generator.postprocs)


def _task_mod(func: tir.PrimFunc):
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def _postprocess(sch, postprocs: list) -> bool:
    sch.enter_postproc()
    return all(post.apply(sch) for post in postprocs)


def sample(func: tir.PrimFunc, space, postprocs: list, seed: int):
    """One candidate: a design space's instructions with fresh random decisions (tile sizes,
    compute locations, unroll depth). Returns the decisions and the postprocessed schedule
    (None if a postprocessor rejects the candidate)."""
    sch = _apply(func, space, None, seed)
    decisions = _decisions(sch)
    return decisions, (sch if _postprocess(sch, postprocs) else None)


def search(kernel: Kernel, target, trials: int, seed: int = 0) -> Optional[tuple[dict, float]]:
    """Random search over MetaSchedule's design spaces of `kernel`: `trials` candidates built
    and timed; the fastest one's schedule ({"space": index, "decisions": [...]}) and seconds,
    or None if no candidate was valid."""
    tgt = _tuning_target(target)
    ctx, postprocs = _context(kernel.func, tgt)
    spaces = list(ctx.generate_design_space())
    best = None
    for i in range(trials):
        try:
            decisions, sch = sample(kernel.func, spaces[i % len(spaces)], postprocs, seed + i)
            if sch is None:
                continue
            seconds = _timed(sch.mod["main"], target)
        except Exception:  # an invalid candidate (MetaSchedule's own search skips them too)
            continue
        if best is None or seconds < best[1]:
            best = ({"space": i % len(spaces), "decisions": decisions}, seconds)
    return best


def tune(kernels: list[Kernel], target, trials: int, db: TuningDatabase,
         seed: int = 0) -> None:
    """Tune the kernels without a record in `db` with `trials` candidates in all, shared in
    proportion to each kernel's hand-scheduled time (at least one each), and record, for each,
    the faster of its best candidate and its hand schedule."""
    todo = [k for k in kernels if k.key not in db.records]
    if not todo:
        return
    hand = {k.key: _timed(k.hand, target) for k in todo}
    total = sum(hand.values()) or 1.0
    for k in todo:
        share = max(1, round(trials * hand[k.key] / total))
        rec = {"kind": k.kind, "hand_us": round(hand[k.key] * 1e6, 3), "trials": share,
               "winner": "hand"}
        found = search(k, target, share, seed)
        if found is not None:
            schedule, _ = found
            # timed again beside the hand schedule, so both come from the same measurement
            tuned = _timed(replay(k.func, schedule, target), target)
            hand_s = _timed(k.hand, target)
            rec.update(hand_us=round(hand_s * 1e6, 3), tuned_us=round(tuned * 1e6, 3),
                       schedule=schedule)
            if tuned < hand_s:
                rec["winner"] = "tuned"
        db.records[k.key] = rec
