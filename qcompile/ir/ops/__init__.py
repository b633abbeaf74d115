"""Op registry (see registry.py) and the built-in op declarations (defs/)."""
from . import registry
from .registry import AttrSpec, OpDef, REQUIRED, all_ops, exists, get, register_op

__all__ = ["registry", "AttrSpec", "OpDef", "REQUIRED", "all_ops", "exists", "get", "register_op"]
