"""Which TVM target a qcompile target, dict or string means.

TVM 0.27 takes targets as JSON-like dicts (`{"kind": "llvm", "mcpu": "haswell"}`); the old
command-line form ("llvm -mcpu=haswell") is refused by TVM itself, so it is converted here for
catalog files and users that still write it. Anything TVM then rejects is a `TVMBackendError`
naming the target.
"""
from __future__ import annotations

import json
import shlex
from typing import Any, Union

from qcompile.errors import QCompileError

TargetSpec = Union[None, str, dict, Any]

#: Target attributes that TVM expects as lists (comma-separated in the old string form).
_LIST_ATTRS = ("mattr", "keys", "libs", "cl-opt")


class TVMTargetError(QCompileError):
    """A target TVM does not accept."""


def parse_target_string(text: str) -> dict:
    """"llvm -mcpu=haswell -mattr=+avx2,+fma" -> {"kind": "llvm", "mcpu": "haswell", ...}.

    A JSON object string is parsed as JSON."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TVMTargetError(f"TVM target {text!r} is not valid JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise TVMTargetError(f"TVM target {text!r} must be a JSON object")
        return spec
    parts = shlex.split(text)
    if not parts:
        raise TVMTargetError("empty TVM target string")
    spec: dict = {"kind": parts[0]}
    for opt in parts[1:]:
        if not opt.startswith("-") or "=" not in opt:
            raise TVMTargetError(f"TVM target {text!r}: option {opt!r} is not of the form "
                                 f"-key=value")
        key, value = opt.lstrip("-").split("=", 1)
        spec[key] = value.split(",") if key in _LIST_ATTRS else _scalar(value)
    return spec


def _scalar(value: str):
    if value.isdigit():
        return int(value)
    if value in ("true", "false"):
        return value == "true"
    return value


def host_spec() -> dict:
    """The machine running this: LLVM for its own CPU, so the vector units are used."""
    from tvm.target import codegen
    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())}


def target_spec(target: TargetSpec) -> dict:
    """A TVM target dict from None (this host), a dict, a string, or a catalog `Target` whose
    backend_options carry `target` (string or table)."""
    if target is None:
        return host_spec()
    if isinstance(target, dict):
        return dict(target)
    if isinstance(target, str):
        return parse_target_string(target)
    opts = getattr(target, "backend_options", None) or {}
    spec = opts.get("target")
    name = getattr(target, "name", "?")
    if spec is None:
        raise TVMTargetError(f"target '{name}' has no backend_options.target (a TVM target "
                             f"such as {{kind = \"llvm\"}})")
    if not isinstance(spec, (str, dict)):
        raise TVMTargetError(f"target '{name}': backend_options.target must be a string or a "
                             f"table, got {spec!r}")
    try:
        return target_spec(spec)
    except TVMTargetError as exc:
        raise TVMTargetError(f"target '{name}': {exc}") from None


def make_target(target: TargetSpec):
    """The `tvm.target.Target`; TVM's refusal becomes an error naming the target."""
    import tvm
    spec = target_spec(target)
    try:
        return tvm.target.Target(spec)
    except Exception as exc:  # TVM raises ValueError / TVMError with a long backtrace
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        name = getattr(target, "name", None)
        who = f"target '{name}' ({json.dumps(spec)})" if name else f"target {json.dumps(spec)}"
        raise TVMTargetError(f"TVM rejected {who}: {first}") from None


def is_gpu(tvm_target) -> bool:
    return tvm_target.kind.name in ("cuda", "rocm", "vulkan", "metal", "opencl")


def is_cross(tvm_target) -> bool:
    """An LLVM target whose code this machine cannot run (another triple)."""
    if tvm_target.kind.name != "llvm":
        return False
    triple = tvm_target.attrs.get("mtriple")
    if not triple:
        return False
    from tvm.target import codegen
    host = str(codegen.llvm_get_system_triple())
    return str(triple).split("-")[0] != host.split("-")[0]
