"""Named hardware targets and their backends (tvm/, c/, hls/).

    from qcompile.targets import get_target, all_targets, load_target_file, get_backend
"""
from .backend import (BackendResult, BackendUnavailable, backend_available, get_backend,
                      register_backend)
from .catalog import (Target, TargetError, all_targets, get_target, load_target_file,
                      resolve_target, target_from_dict)

__all__ = ["BackendResult", "BackendUnavailable", "backend_available", "get_backend",
           "register_backend", "Target", "TargetError", "all_targets", "get_target",
           "load_target_file", "resolve_target", "target_from_dict"]
