"""qcompile's graph IR: types, graph structure, op registry, text form and verifier."""
from .graph import Graph, Node, Value
from .types import DTYPES, QuantParams, TensorType

__all__ = ["Graph", "Node", "Value", "QuantParams", "TensorType", "DTYPES"]
