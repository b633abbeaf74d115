"""The C backend: freestanding C99 for microcontrollers, bit-exact with the integer interpreter.

    from qcompile.targets.c import emit_c
    prog = emit_c(graph, "out/", target=get_target("cortex-m4"))   # writes model.h, model.c, ...

`qcompile compile --target cortex-m4` calls the registered `emit` below. What it writes and how
the generated code works is in docs/c-backend.md; `measure(graph, cpu)` (measure.py) builds the
code for an emulated Cortex-M and reports flash, RAM and instructions per inference.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from qcompile.targets.backend import BackendResult, register_backend

from .emitter import CBackendError, CProgram, supported_ops
from .render import FILES, library_name, write_files

__all__ = ["emit", "emit_c", "CProgram", "CBackendError", "supported_ops", "check_budget",
           "program_metrics", "FILES"]


def _target_dsp(target: Any) -> bool:
    opts = getattr(target, "backend_options", None) or {}
    return bool(opts.get("dsp", False))


def check_budget(prog: CProgram, target: Any) -> None:
    """Refuse a model whose arena or constant data exceeds the target's RAM or flash."""
    memory = getattr(target, "memory", None) or {}
    name = getattr(target, "name", "?")
    ram, flash = memory.get("ram_bytes"), memory.get("flash_bytes")
    if ram is not None and prog.plan.arena_size > ram:
        big = ", ".join(f"{'/'.join('%' + t for t in b.tensors) or b.name} ({b.size} B, "
                        f"steps {b.start}-{b.end})" for b in prog.plan.largest(3))
        raise CBackendError(
            f"graph @{prog.graph.name} needs a {prog.plan.arena_size}-byte arena (lower bound "
            f"{prog.plan.lower_bound} B) but target '{name}' has ram_bytes = {ram}; the largest "
            f"buffers are {big}")
    weights = prog.weight_bytes()
    if flash is not None and weights > flash:
        biggest = sorted(prog.consts.values(), key=lambda c: (-c.values.size, c.cname))[:3]
        big = ", ".join(f"{c.cname} ({c.values.size} x {c.ctype})" for c in biggest)
        raise CBackendError(
            f"graph @{prog.graph.name} has {weights} bytes of constant data but target '{name}' "
            f"has flash_bytes = {flash}; the largest arrays are {big}")


def program_metrics(prog: CProgram) -> dict:
    plan = prog.plan
    return {"arena_bytes": plan.arena_size, "arena_lower_bound_bytes": plan.lower_bound,
            "arena_overhead": round(plan.overhead, 4),
            "constant_bytes": prog.weight_bytes(), "raw_weight_bytes": prog.raw_weight_bytes(),
            "macs": prog.macs(), "kernel_calls": sum(1 for c in prog.calls if c.code),
            "fused_requantize": sum(1 for c in prog.calls if c.op.endswith("+requantize"))}


def emit_c(graph, out_dir, target: Any = None, dsp: Optional[bool] = None,
           batch: int = 1) -> CProgram:
    """Write the C sources for `graph` into `out_dir`; returns the program (plan, metrics).
    A dynamic batch dimension becomes `batch` (one image per model_run by default)."""
    prog = CProgram(graph, batch=batch)
    if target is not None:
        check_budget(prog, target)
    use_dsp = _target_dsp(target) if dsp is None else dsp
    write_files(prog, Path(out_dir), getattr(target, "name", "c99"), use_dsp)
    return prog


@register_backend("c", options=("cpu", "dsp"))
def emit(graph, target, out_dir: Path, ctx) -> BackendResult:
    prog = emit_c(graph, out_dir, target)
    return BackendResult(list(FILES), {**program_metrics(prog),
                                       "library": library_name(prog),
                                       "dsp": _target_dsp(target)})
