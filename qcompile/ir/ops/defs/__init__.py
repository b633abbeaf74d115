"""Built-in op declarations, one module per family (the catalog is docs/ops.md)."""
from . import elementwise, nn, pool, quant, reduce, shape  # noqa: F401
