"""Front ends: PyTorch (torch.export) and ONNX models into the IR, and ONNX (QDQ) export out.

torch and onnx are imported only when the corresponding function is called."""
from __future__ import annotations

from typing import Any


def from_torch(model: Any, example_inputs: Any = None, dynamic_batch: bool = False):
    from .torch_import import from_torch as impl
    return impl(model, example_inputs, dynamic_batch)


def from_onnx(model: Any, input_shapes: Any = None):
    from .onnx_import import from_onnx as impl
    return impl(model, input_shapes)


def to_onnx(graph: Any, path: Any = None, **kwargs: Any):
    from .onnx_export import to_onnx as impl
    return impl(graph, path, **kwargs)


__all__ = ["from_torch", "from_onnx", "to_onnx"]
