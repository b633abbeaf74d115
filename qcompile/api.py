"""The Python entry points: `load` a model from any supported source into a `Graph`, and run
pass pipelines over it (`run_pipeline`, re-exported from the pass manager).

    g = qcompile.load("model.onnx")
    ctx = qcompile.run_pipeline(g, "fixpoint(fold-constants,remove-identity,dce)")

Front ends are imported only when a source needs them, so loading a `.qir` never imports torch.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .errors import FrontendError
from .ir.graph import Graph
from .passmanager import PassContext, run_pipeline

__all__ = ["load", "run_pipeline", "PassContext", "SUFFIXES"]

SUFFIXES = {
    ".qir": "qcompile text IR",
    ".onnx": "ONNX model",
    ".pt2": "torch.export archive (torch.export.save)",
}

Source = Union[str, os.PathLike, Graph, Any]


def load(source: Source, example_inputs: Optional[Sequence[Any]] = None,
         input_shapes: Optional[Mapping[str, Sequence[Optional[int]]]] = None) -> Graph:
    """A `Graph` from `source`: a `.qir`, `.onnx` or `.pt2` path, an `onnx.ModelProto`, a
    `torch.nn.Module`, a `torch.fx.GraphModule` or a `torch.export.ExportedProgram` (a Graph is
    returned as is).

    `example_inputs` are needed to trace a torch module; `input_shapes` ({input name: shape})
    pins dynamic input dimensions of an ONNX model."""
    if isinstance(source, Graph):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source), example_inputs, input_shapes)
    if _is_onnx_model(source):
        from .frontend.onnx_import import from_onnx
        return from_onnx(source, **_given(input_shapes=input_shapes))
    if _is_torch_object(source):
        _no_shapes_for_torch(input_shapes)
        from .frontend.torch_import import from_torch
        return from_torch(source, **_given(example_inputs=example_inputs))
    raise FrontendError(f"cannot load a {type(source).__module__}.{type(source).__qualname__}: "
                        f"expected a path ({', '.join(SUFFIXES)}), an onnx.ModelProto, a "
                        f"torch.nn.Module, a torch.fx.GraphModule or a torch.export.ExportedProgram")


def _load_path(path: Path, example_inputs, input_shapes) -> Graph:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        kinds = ", ".join(f"{s} ({d})" for s, d in SUFFIXES.items())
        raise FrontendError(f"{path}: unknown model file type {suffix or '(no suffix)'!r}; "
                            f"qcompile reads {kinds}")
    if not path.exists():
        raise FrontendError(f"{path}: no such file")
    if path.is_dir():
        raise FrontendError(f"{path}: is a directory, expected a {SUFFIXES[suffix]} file")
    if suffix == ".qir":
        from .ir.parser import parse_file
        return parse_file(path)
    if suffix == ".onnx":
        from .frontend.onnx_import import from_onnx
        return from_onnx(str(path), **_given(input_shapes=input_shapes))
    # .pt2
    try:
        import torch
    except ImportError:
        raise FrontendError(f"{path}: loading a .pt2 needs torch (pip install "
                            f"'qcompile[torch]')") from None
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise FrontendError(f"{path}: not a readable torch.export archive "
                            f"({type(exc).__name__}: {exc})") from exc
    _no_shapes_for_torch(input_shapes)
    from .frontend.torch_import import from_torch
    return from_torch(program, **_given(example_inputs=example_inputs))


def _no_shapes_for_torch(input_shapes) -> None:
    if input_shapes is not None:
        raise FrontendError("input_shapes applies to ONNX models; a torch model takes its shapes "
                            "from example_inputs (or the shapes recorded in the .pt2)")


def _given(**kwargs: Any) -> dict:
    """Only the keyword arguments the caller set, so front ends keep their own defaults."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _is_torch_object(obj: Any) -> bool:
    # Checked without importing torch: if torch is not loaded, obj cannot be a torch object.
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    kinds = [torch.nn.Module]
    export = getattr(torch, "export", None)
    if export is not None and hasattr(export, "ExportedProgram"):
        kinds.append(export.ExportedProgram)
    return isinstance(obj, tuple(kinds))


def _is_onnx_model(obj: Any) -> bool:
    onnx = sys.modules.get("onnx")
    return onnx is not None and isinstance(obj, onnx.ModelProto)
