"""The TVM backend: CPU (LLVM) and GPU (CUDA) modules from the integer graph.

    from qcompile.targets import tvm as qtvm
    mod = qtvm.build(graph, {"kind": "llvm"}, batch=1)    # compile; mod(x) -> [outputs]
    qtvm.export(mod, "out/")                              # model.so, model.params, model.json
    run = qtvm.load("out/")                               # run(x) -> [outputs]

Every integer op becomes one TIR kernel computing exactly the op's documented arithmetic, so
the CPU module is bit-exact with `qcompile.run(graph, x, mode="int")`. `qcompile compile
--target x86-64-avx2` (or aarch64, cuda-sm80, cuda-sm90) calls the registered `emit` below.
docs/tvm-backend.md describes the files and how a deployment loads them with TVM alone.

Importing this module does not import TVM (about 3 s); the first build does, and a missing
TVM is one error line naming the package to install.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from qcompile.targets.backend import BackendResult, BackendUnavailable, register_backend

__all__ = ["build", "export", "load", "emit", "supported_ops", "require_tvm"]


def require_tvm() -> None:
    if importlib.util.find_spec("tvm") is None:
        raise BackendUnavailable("the TVM backend needs Apache TVM: pip install 'qcompile[tvm]'")


def build(graph, target: Any = None, batch: int = 1, schedule: bool = True, tune: int = 0,
          database=None):
    """Compile `graph` for `target` (a TVM target dict or string, a catalog Target, or None
    for this machine's CPU); returns a callable `TVMModule`. `tune=N` tunes the MAC kernels
    with MetaSchedule (N trials in total); `database` is a tuning database folder to apply
    (and to extend, when tuning)."""
    require_tvm()
    from .compiler import build as _build
    return _build(graph, target, batch, schedule, tune, database)


def export(module, out_dir) -> list[str]:
    require_tvm()
    from .compiler import export as _export
    return _export(module, out_dir)


def load(path, device: str | None = None):
    """The exported model in folder `path` as a callable: model(*inputs) -> [outputs]."""
    require_tvm()
    from .compiler import load as _load
    return _load(path, device)


def supported_ops() -> list[str]:
    require_tvm()
    from .lower import supported_ops as _ops
    return _ops()


@register_backend("tvm", options=("target", "batch", "tune", "tuning"))
def emit(graph, target, out_dir: Path, ctx) -> BackendResult:
    """Build for the target's `backend_options.target` and write model.so (or model.o for a
    CPU this machine cannot link for), model.params and model.json. The batch size is
    `backend_options.batch` (default 1). `backend_options.tune = N` tunes with N trials and
    `backend_options.tuning = DIR` applies a tuning database; without the latter, the records
    a previous compile left in the output folder (tuning/) are reused, so a re-run with
    --force does not tune again. The records are written to tuning/."""
    require_tvm()
    opts = getattr(target, "backend_options", None) or {}
    tune = int(opts.get("tune", 0))
    database = _tuning_database(opts.get("tuning"), tune, ctx)
    module = build(graph, target, batch=int(opts.get("batch", 1)), tune=tune, database=database)
    files = export(module, out_dir)
    params = module.params
    metrics = {
        "tvm_target": module.meta["target"],
        "constant_bytes": int(sum(a.nbytes for a in params.values())),
        "batch": module.meta["batch"],
    }
    if module.tuning is not None:
        recs = module.tuning.records.values()
        metrics["tuned_kernels"] = sum(r["winner"] == "tuned" for r in recs)
        metrics["hand_kernels"] = sum(r["winner"] == "hand" for r in recs)
    return BackendResult(files, metrics)


def _tuning_database(given, tune: int, ctx):
    """The database a compile applies: the one given, else the records a previous compile
    left in the output folder (read only: the output is replaced), else none."""
    from .tune import TUNING_DIR, TuningDatabase
    if given is not None:
        return TuningDatabase.open(given, create=tune > 0)
    out = (getattr(ctx, "options", None) or {}).get("output_dir")
    previous = Path(out) / TUNING_DIR if out else None
    if previous is not None and (previous / "records.json").is_file():
        db = TuningDatabase.open(previous)
        db.folder = None
        return db
    return None
