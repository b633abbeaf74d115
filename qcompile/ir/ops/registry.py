"""The op registry: every op is declared once, with its attribute schema, its type/shape
inference and its reference semantics (one kernel per interpreter mode).

    @register_op("relu", attrs={}, traits={"elementwise", "positively_homogeneous"})
    def relu(t): ...                      # type inference: input TensorTypes -> output TensorTypes

    @relu.kernel("float")
    def _(x): return np.maximum(x, 0)     # numpy arrays in, array (or tuple of arrays) out

Kernels take the input arrays positionally (None for a missing optional input) and the
completed attributes as keyword arguments. Later layers (integer lowering) add ops and modes
through the same calls; backends read the same definitions, so an op's semantics live here only.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ...errors import OpError
from ..types import TensorType

ATTR_KINDS = ("int", "float", "bool", "str", "ints", "floats")
REQUIRED = object()  # sentinel default: the attribute must be given


@dataclass(frozen=True)
class AttrSpec:
    kind: str
    default: Any = REQUIRED
    choices: Optional[tuple] = None
    doc: str = ""

    def check(self, name: str, value: Any, where: str) -> Any:
        """Validate (and normalise: ints->float for float attrs, lists->tuples) one value."""
        ok = True
        if self.kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "str":
            ok = isinstance(value, str)
        elif self.kind == "ints":
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)
            value = tuple(value) if ok else value
        elif self.kind == "floats":
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            value = tuple(float(v) for v in value) if ok else value
        if not ok:
            raise OpError(f"{where}: attribute '{name}' must be {self.kind}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise OpError(f"{where}: attribute '{name}' is {value!r}; expected one of "
                          f"{', '.join(map(repr, self.choices))}")
        return value

    def describe(self) -> str:
        s = self.kind
        if self.choices:
            s += " in {" + ", ".join(map(str, self.choices)) + "}"
        if self.default is not REQUIRED:
            s += f" = {self.default!r}"
        return s


@dataclass
class OpDef:
    name: str
    infer_fn: Callable[..., Any]
    attrs: dict[str, AttrSpec] = field(default_factory=dict)
    inputs: tuple = ()          # input names; a trailing "?" marks an optional input, "*" variadic
    num_outputs: int = 1
    traits: frozenset = frozenset()
    doc: str = ""
    kernels: dict[str, Callable] = field(default_factory=dict)

    # -- attributes --------------------------------------------------------------------------
    def schema(self) -> str:
        if not self.attrs:
            return f"{self.name} takes no attributes"
        return f"{self.name} attributes: " + ", ".join(
            f"{k}: {spec.describe()}" for k, spec in self.attrs.items())

    def complete_attrs(self, given: dict, where: str = "") -> dict:
        """Check `given` against the schema and fill in defaults. Raises OpError naming `where`."""
        where = where or self.name
        out = {}
        for key in given:
            if key not in self.attrs:
                close = difflib.get_close_matches(key, list(self.attrs), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise OpError(f"{where}: unknown attribute '{key}' for op {self.name}{hint}; "
                              f"{self.schema()}")
        for key, spec in self.attrs.items():
            if key in given:
                out[key] = spec.check(key, given[key], where)
            elif spec.default is REQUIRED:
                raise OpError(f"{where}: missing attribute '{key}'; {self.schema()}")
            else:
                out[key] = spec.default
        return out

    # -- inference and semantics ---------------------------------------------------------------
    def infer(self, input_types: Sequence[Optional[TensorType]], attrs: dict) -> list[TensorType]:
        if not self.arity_ok(len(input_types)):
            raise OpError(f"{self.name}: takes inputs ({', '.join(self.inputs)}), "
                          f"got {len(input_types)}")
        for name, t in zip(self.inputs, input_types):
            if t is None and not name.endswith("?"):
                raise OpError(f"{self.name}: required input '{name.rstrip('*')}' is missing")
        result = self.infer_fn(*input_types, **attrs)
        if isinstance(result, TensorType):
            return [result]
        return list(result)

    def kernel(self, mode: str) -> Callable:
        """Decorator registering this op's kernel for interpreter `mode`."""
        def deco(fn: Callable) -> Callable:
            self.kernels[mode] = fn
            return fn
        return deco

    def arity_ok(self, n: int) -> bool:
        if any(i.endswith("*") for i in self.inputs):
            fixed = [i for i in self.inputs if not i.endswith("*")]
            return n >= len([i for i in fixed if not i.endswith("?")])
        required = len([i for i in self.inputs if not i.endswith("?")])
        return required <= n <= len(self.inputs)


_OPS: dict[str, OpDef] = {}


def register_op(name: str, inputs: Sequence[str] = ("x",), attrs: Optional[dict] = None,
                num_outputs: int = 1, traits: Sequence[str] = (), doc: str = ""):
    """Declare an op; decorates its type-inference function and returns the `OpDef`."""
    def deco(infer_fn: Callable) -> OpDef:
        if name in _OPS:
            raise ValueError(f"op {name} is registered twice")
        opdef = OpDef(name, infer_fn, dict(attrs or {}), tuple(inputs), num_outputs,
                      frozenset(traits), doc or (infer_fn.__doc__ or "").strip().split("\n")[0])
        _OPS[name] = opdef
        return opdef
    return deco


def get(name: str) -> OpDef:
    _ensure_loaded()
    try:
        return _OPS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_OPS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise OpError(f"unknown op '{name}'{hint}") from None


def exists(name: str) -> bool:
    _ensure_loaded()
    return name in _OPS


def all_ops() -> dict[str, OpDef]:
    _ensure_loaded()
    return dict(sorted(_OPS.items()))


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import defs  # noqa: F401  (declares the built-in ops)


def markdown_reference() -> str:
    """The op reference (docs/ops.md) generated from the registry: one table row per op, then
    the longer notes of ops whose declaration docstring has more than one line."""
    ops = all_ops()
    lines = ["# Op reference", "",
             "Generated from the op registry by `qcompile.ir.ops.registry.markdown_reference()`; "
             "a test keeps this file equal to its output.", "",
             "Layout is NCHW for images and OIHW for convolution weights. Inputs marked `?` are "
             "optional, `*` variadic. Attributes read `name: kind = default`; those without a "
             "default are required. The semantics column is the float kernel's exact definition.",
             "", "| op | inputs | attributes | traits | float semantics |", "|---|---|---|---|---|"]

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    for name, op in ops.items():
        attrs = "<br>".join(f"`{k}: {spec.describe()}`" + (f" {spec.doc}" if spec.doc else "")
                            for k, spec in op.attrs.items()) or "–"
        traits = ", ".join(sorted(op.traits)) or "–"
        lines.append(f"| `{name}` | {', '.join(op.inputs) or '–'} | {cell(attrs)} | {traits} "
                     f"| {cell(op.doc)} |")
    notes = [(name, _doc_body(op)) for name, op in ops.items() if _doc_body(op)]
    if notes:
        lines += ["", "## Notes", ""]
        for name, body in notes:
            lines += [f"### `{name}`", "", body, ""]
    return "\n".join(lines).rstrip() + "\n"


def _doc_body(op: OpDef) -> str:
    """A declaration docstring past its first line, dedented and joined into one paragraph."""
    import inspect
    doc = inspect.cleandoc(op.infer_fn.__doc__ or "")
    body = doc.split("\n", 1)[1] if "\n" in doc else ""
    return " ".join(line.strip() for line in body.strip().splitlines())
