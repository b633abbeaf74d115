"""Built-in op declarations, one module per family."""
from . import elementwise, nn  # noqa: F401
