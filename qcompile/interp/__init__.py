"""The reference interpreter: runs a graph on numpy inputs.

Modes:
- "float": every op's float kernel.
- "fakequant": float kernels, but every value that carries `QuantParams` (weights included) is
  quantized and dequantized on the way, simulating the quantized model in floating point.
- "int": exact integer semantics; the golden reference all backends are checked against.

One kernel table: `OpDef.kernels[mode]`. A mode without its own kernel for an op falls back
along FALLBACK (fakequant uses the float kernel; int has no fallback, so a float op left in an
integer graph is an error, not a silent float computation).
"""
from .interpreter import FALLBACK, Interpreter, run

__all__ = ["FALLBACK", "Interpreter", "run"]
