"""The pass registry: what a pass is, how it is registered, and how it is created from options.

Two ways to write a pass, both registered with `register_pass`:

    @register_pass("drop-identity")
    def drop_identity(graph: Graph, ctx: PassContext) -> bool | None: ...

    @register_pass("fold-constants")
    @dataclass(frozen=True)
    class FoldConstants(Pass):
        max_elements: int = 1 << 20          # an option: typed, with a default
        def run(self, graph, ctx) -> bool | None: ...

A function pass takes options as keyword-only parameters (`*, limit: int = 4`). The first line of
the docstring is the pass's one-line description (`qcompile passes` lists it). Built-in passes
live in `qcompile.passes`, imported the first time the registry is consulted.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

from ..errors import PipelineError
from .options import REQUIRED, OptionSpec, OptionTypeError, check_options, coerce, format_value

RESERVED = ("fixpoint",)  # words the pipeline grammar owns


class Pass:
    """Base class of class passes: subclass as a frozen dataclass whose fields are the options.

    `run(graph, ctx)` returns True if it changed the graph, False if not, or None to let the
    pass manager tell from `graph.version` (which every Graph mutation method bumps)."""

    name: ClassVar[str] = ""

    def run(self, graph, ctx) -> Optional[bool]:
        raise NotImplementedError(f"pass {type(self).__name__} does not define run()")

    def __post_init__(self) -> None:
        # Values given from Python are checked and normalised exactly like pipeline text.
        info = getattr(type(self), "__qcompile_pass__", None)
        if info is None or not dataclasses.is_dataclass(self):
            return
        for spec in info.options.values():
            value = getattr(self, spec.name)
            try:
                object.__setattr__(self, spec.name, coerce(value, spec.annotation))
            except OptionTypeError as exc:
                raise PipelineError(f"pass '{info.name}', option '{spec.name}': {exc}") from None

    def __str__(self) -> str:
        return pass_info(self).format(self)


@dataclass(frozen=True, eq=True)
class FunctionPass(Pass):
    """A registered function together with the option values it will be called with."""

    fn: Callable = dataclasses.field(compare=True)
    options: tuple = ()  # ((name, value), ...) in declaration order

    def __post_init__(self) -> None:  # options were checked when the instance was made
        pass

    def run(self, graph, ctx) -> Optional[bool]:
        return self.fn(graph, ctx, **dict(self.options))


@dataclass(frozen=True)
class PassInfo:
    """A registry entry: the pass's name, one-line doc, options, and how to make an instance."""

    name: str
    doc: str
    options: dict  # name -> OptionSpec, in declaration order
    target: Any    # the registered class or function

    @property
    def is_class(self) -> bool:
        return isinstance(self.target, type)

    def create(self, **options: Any) -> Pass:
        """An instance with `options` (Raw text or Python values) checked and converted."""
        values = check_options(self.name, self.options, options)
        if self.is_class:
            return self.target(**values)
        return FunctionPass(self.target, tuple(values.items()))

    def option_values(self, instance: Pass) -> dict:
        if isinstance(instance, FunctionPass):
            given = dict(instance.options)
            return {k: given.get(k, spec.default) for k, spec in self.options.items()}
        return {k: getattr(instance, k) for k in self.options}

    def format(self, instance: Pass, full: bool = False) -> str:
        """`name{k=v,...}`: options that differ from their default (all of them if `full`)."""
        parts = [f"{k}={format_value(v)}" for k, v in self.option_values(instance).items()
                 if full or self.options[k].required or v != self.options[k].default]
        return self.name + ("{" + ",".join(parts) + "}" if parts else "")


_PASSES: dict[str, PassInfo] = {}
_builtins_loaded = False


def register_pass(name_or_target: Any = None, *, replace: bool = False):
    """Register a pass function or class. Use as `@register_pass("name")` or bare `@register_pass`
    (the name is then derived: `fold_bn` / `FoldBn` -> "fold-bn"). Returns the target unchanged
    (a non-dataclass class is made a frozen dataclass first)."""
    if isinstance(name_or_target, str) or name_or_target is None:
        return lambda target: _register(target, name_or_target, replace)
    return _register(name_or_target, None, replace)


def _register(target: Any, name: Optional[str], replace: bool) -> Any:
    if isinstance(target, type):
        if not issubclass(target, Pass):
            raise TypeError(f"pass class {target.__name__} must subclass qcompile.Pass")
        if "__dataclass_fields__" not in target.__dict__:
            target = dataclass(frozen=True)(target)
        elif not target.__dataclass_params__.frozen:
            raise TypeError(f"pass class {target.__name__} must be a frozen dataclass "
                            f"(@dataclass(frozen=True)): pipelines share pass instances")
        name = name or target.__dict__.get("name") or _kebab(target.__name__)
        target.name = name
        options = _class_options(target)
    elif callable(target):
        name = name or _kebab(target.__name__)
        options = _function_options(target, name)
    else:
        raise TypeError(f"cannot register {target!r} as a pass")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_.\-]*$", name) or name in RESERVED:
        raise ValueError(f"invalid pass name {name!r}: use letters, digits, '-', '_', '.' "
                         f"and not {', '.join(RESERVED)}")
    if name in _PASSES and not replace:
        raise ValueError(f"pass '{name}' is already registered (by {_PASSES[name].target!r}); "
                         f"pass replace=True to override it")
    doc = (inspect.getdoc(target) or "").strip().split("\n")[0]
    if isinstance(target, type) and doc.startswith(target.__name__ + "("):
        doc = ""  # the docstring dataclass() invents is not documentation
    info = PassInfo(name, doc, options, target)
    target.__qcompile_pass__ = info
    _PASSES[name] = info
    return target


def unregister_pass(name: str) -> None:
    """Remove a pass from the registry (for plugins and tests that register temporary passes)."""
    _PASSES.pop(name, None)


def _kebab(identifier: str) -> str:
    spaced = re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", identifier)
    return spaced.replace("_", "-").strip("-").lower()


def _hints(obj: Any) -> dict:
    try:
        return typing.get_type_hints(obj)
    except Exception:  # e.g. a class defined in exec'd code: fall back to raw annotations
        return dict(getattr(obj, "__annotations__", {}))


def _class_options(cls: type) -> dict:
    hints = _hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = REQUIRED
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out[f.name] = OptionSpec(f.name, hints.get(f.name, Any), default)
    return out


def _function_options(fn: Callable, name: str) -> dict:
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 2:
        raise TypeError(f"pass function {fn.__name__} must take (graph, ctx) positionally and any "
                        f"options as keyword-only parameters")
    hints = _hints(fn)
    return {p.name: OptionSpec(p.name, hints.get(p.name, Any),
                               REQUIRED if p.default is p.empty else p.default)
            for p in params if p.kind is p.KEYWORD_ONLY}


def _ensure_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        import importlib
        importlib.import_module("qcompile.passes")


def get_pass(name: str) -> PassInfo:
    """The registry entry for `name`; PipelineError naming the closest registered names."""
    _ensure_builtins()
    try:
        return _PASSES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_PASSES), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise PipelineError(f"unknown pass '{name}'{hint} (`qcompile passes` lists them all)") \
            from None


def all_passes() -> dict[str, PassInfo]:
    _ensure_builtins()
    return dict(sorted(_PASSES.items()))


def pass_info(p: Any) -> PassInfo:
    """The registry entry of a pass instance, pass class or registered function."""
    target = p.fn if isinstance(p, FunctionPass) else p
    info = getattr(target, "__qcompile_pass__", None)
    if info is None:
        raise TypeError(f"{p!r} is not a registered pass; decorate it with @register_pass")
    return info
