"""Built-in op declarations, one module per family (the catalog is docs/ops.md)."""
from . import elementwise, nn, pool, quant, reduce, shape  # noqa: F401
from . import integer  # noqa: F401  (integer ops and "int" kernels; needs the modules above)
from . import onnx_quant  # noqa: F401  (ONNX interchange ops: requantize_float, ...)
from . import integer_transformer  # noqa: F401  (I-BERT style softmax, GELU, LayerNorm, ...)
