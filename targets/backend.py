"""Backends: the last step of `qcompile compile`, turning the integer graph into files.

    @register_backend("c")
    def emit(graph, target, out_dir: Path, ctx) -> BackendResult: ...

A backend writes into `out_dir` (a fresh temporary folder that the compile driver moves into
place once everything succeeded) and must be deterministic: the same graph gives the same bytes
(no timestamps, absolute paths, or dict/set-order dependence). Backend modules register on
import; `get_backend("c")` imports `qcompile.targets.c` the first time it is asked for.

The "none" backend, defined here, writes the integer IR itself (`model.qir` and the weights in
`model.npz`): an output for any target, and what tools that read qcompile IR consume.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qcompile.errors import QCompileError

Emit = Callable[..., "BackendResult"]


@dataclass
class BackendResult:
    files: list[str]                              # relative to the output folder, stable order
    metrics: dict = field(default_factory=dict)   # JSON-able figures for report.json


class BackendUnavailable(QCompileError):
    """The target's backend is not installed or not implemented yet."""


_BACKENDS: dict[str, Emit] = {}

#: What each backend needs beyond qcompile itself, for the "not available" message.
_NEEDS = {
    "c": "the C backend module qcompile.targets.c",
    "tvm": "the TVM backend module qcompile.targets.tvm and the apache-tvm package "
           "(pip install 'qcompile[tvm]')",
    "hls": "the HLS backend module qcompile.targets.hls",
}


#: The backend_options keys each backend reads (what `--backend-option` may set).
_OPTIONS: dict[str, tuple[str, ...]] = {}


def register_backend(name: str, options: tuple[str, ...] = ()):
    """Register `emit(graph, target, out_dir, ctx) -> BackendResult` as backend `name`;
    `options` are the backend_options keys it reads."""
    def deco(fn: Emit) -> Emit:
        _BACKENDS[name] = fn
        _OPTIONS[name] = tuple(options)
        return fn
    return deco


def backend_option_names(name: str, target: Any = None) -> tuple[str, ...]:
    """The backend_options keys backend `name` reads (importing it on first use)."""
    get_backend(name, target)
    return _OPTIONS.get(name, ())


def get_backend(name: str, target: Any = None) -> Emit:
    """The emit function of backend `name`, importing its module on first use.

    BackendUnavailable (exit code 2) names the target and what is missing when the module or
    one of its dependencies cannot be imported."""
    if name in _BACKENDS:
        return _BACKENDS[name]
    module = f"qcompile.targets.{name}"
    who = f"target '{target.name}' uses backend '{name}'" if target is not None \
        else f"backend '{name}'"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        need = _NEEDS.get(name, f"a module {module} that registers it")
        raise BackendUnavailable(
            f"{who}, which is not available here: it needs {need} (could not import {missing}). "
            f"`--backend none` writes the integer IR for this target instead") from None
    if name not in _BACKENDS:
        raise BackendUnavailable(f"{who}, but {module} did not register a backend named "
                                 f"'{name}' (it must use @register_backend({name!r}))")
    return _BACKENDS[name]


def backend_available(name: str) -> bool:
    try:
        get_backend(name)
    except BackendUnavailable:
        return False
    return True


@register_backend("none")
def emit_ir(graph, target, out_dir: Path, ctx) -> BackendResult:
    """The graph's text form with every weight in an .npz beside it, so `qcompile.parse_file`
    gives back a graph the integer interpreter runs."""
    from qcompile.ir.printer import write_file
    write_file(graph, str(Path(out_dir) / "model.qir"), full=True)
    files = ["model.qir"]
    if (Path(out_dir) / "model.npz").exists():  # a graph with only small constants has none
        files.append("model.npz")
    return BackendResult(files, {})
