"""qcompile: a compiler for quantized neural networks.

    import qcompile
    g = qcompile.load("model.onnx")
    qcompile.run_pipeline(g, "fold-bn,calibrate,quantize{w=8,a=8},lower-integer", ctx)
    print(g.dump())

Heavy parts (torch, onnx, tvm) are imported only when used.
"""
from __future__ import annotations

from .errors import (FrontendError, InterpError, OpError, ParseError, PassError, PipelineError,
                     QCompileError, VerifyError)
from .ir import Graph, Node, QuantParams, TensorType, Value

__version__ = "0.1.0"

_LAZY = {
    "parse": ("qcompile.ir.parser", "parse"),
    "parse_file": ("qcompile.ir.parser", "parse_file"),
    "verify": ("qcompile.ir.verifier", "verify"),
    "run": ("qcompile.interp", "run"),
    "Interpreter": ("qcompile.interp", "Interpreter"),
    "register_pass": ("qcompile.passmanager", "register_pass"),
    "run_pipeline": ("qcompile.passmanager", "run_pipeline"),
    "PassContext": ("qcompile.passmanager", "PassContext"),
    "Pass": ("qcompile.passmanager", "Pass"),
    "load": ("qcompile.api", "load"),
    "from_torch": ("qcompile.frontend.torch_import", "from_torch"),
    "from_onnx": ("qcompile.frontend.onnx_import", "from_onnx"),
    "to_onnx": ("qcompile.frontend.onnx_export", "to_onnx"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qcompile' has no attribute {name!r}")


__all__ = ["Graph", "Node", "Value", "QuantParams", "TensorType", "QCompileError", "ParseError",
           "VerifyError", "OpError", "PipelineError", "PassError", "FrontendError", "InterpError",
           *_LAZY]
