"""Pass options: declared as typed fields, parsed from pipeline text, printed back canonically.

A pipeline string carries option values as text (`quantize{w=8,method=mse}`); what `8` means
depends on the option's declared type, so the pipeline parser keeps scalars as `Raw` text and
`coerce` turns them into Python values against the annotation. The same `coerce` checks values
given from Python (`FoldConstants(max_elements=10)`), so both paths accept exactly the same things.

Supported annotations: int, float, bool, str, Literal[...] choices, Optional[T] (written `none`),
tuple[T, ...], tuple[T1, T2], list[T] (stored as tuples, since passes are frozen), and Any.
"""
from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from ..errors import PipelineError



class _Required:
    """Default of an option that must be given."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()

# A scalar that prints without quotes: anything free of the pipeline's structural characters.
_BARE = re.compile(r"^[^\s,{}\[\]()=\"']+$")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


@dataclass(frozen=True)
class Raw:
    """A scalar as written in a pipeline string (`quoted` if it was in quotes)."""

    text: str
    quoted: bool = False

    def __str__(self) -> str:
        return repr(self.text) if self.quoted else self.text


@dataclass(frozen=True)
class OptionSpec:
    """One option of a pass: its name, type annotation and default (MISSING if required)."""

    name: str
    annotation: Any = Any
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        text = f"{self.name}: {type_name(self.annotation)}"
        if not self.required:
            text += f" = {format_value(self.default)}"
        return text


class OptionTypeError(Exception):
    """Raised by `coerce`; the caller adds which pass and option it was about."""


def type_name(ann: Any) -> str:
    """A short human spelling of an annotation: `int`, `tuple[int, ...]`, `one of {a, b}`."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is Any:
        return "any"
    if origin is Literal:
        return "one of {" + ", ".join(format_value(a) for a in args) + "}"
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = " | ".join(type_name(a) for a in rest)
        return f"{inner} | none" if len(rest) < len(args) else inner
    if origin in (tuple, list) or origin is typing.Sequence:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return "tuple[" + ", ".join(type_name(a) for a in args) + "]"
        return f"list of {type_name(args[0]) if args else 'any'}"
    return getattr(ann, "__name__", str(ann))


def coerce(value: Any, ann: Any) -> Any:
    """`value` (a `Raw`, a list of them, or a Python value) converted to annotation `ann`.

    Raises OptionTypeError with a message saying what was expected."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is Any or ann is object:
        return _infer(value)
    if origin in (Union, types.UnionType):
        if _is_none(value) and type(None) in args:
            return None
        for alt in args:
            if alt is type(None):
                continue
            try:
                return coerce(value, alt)
            except OptionTypeError:
                pass
        raise OptionTypeError(f"expected {type_name(ann)}, got {_show(value)}")
    if origin is Literal:
        for choice in args:
            try:
                if coerce(value, type(choice)) == choice:
                    return choice
            except OptionTypeError:
                pass
        raise OptionTypeError(f"expected one of {', '.join(format_value(a) for a in args)}; "
                              f"got {_show(value)}")
    if origin in (tuple, list) or origin is typing.Sequence or ann in (tuple, list):
        items = value if isinstance(value, (list, tuple)) else [value]  # `axes=1` means (1,)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise OptionTypeError(f"expected {type_name(ann)} ({len(args)} values), "
                                      f"got {len(items)} values")
            return tuple(coerce(v, a) for v, a in zip(items, args))
        elem = args[0] if args else Any
        return tuple(coerce(v, elem) for v in items)
    if ann is bool:
        return _to_bool(value)
    if ann is int:
        return _to_int(value)
    if ann is float:
        return _to_float(value)
    if ann is str:
        if isinstance(value, Raw):
            return value.text
        if isinstance(value, str):
            return value
        raise OptionTypeError(f"expected str, got {_show(value)}")
    if isinstance(ann, type):
        if isinstance(value, ann):
            return value
        raise OptionTypeError(f"expected {type_name(ann)}, got {_show(value)} "
                              f"(options of this type can only be set from Python)")
    raise OptionTypeError(f"unsupported option annotation {ann!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, Raw) and not value.quoted and value.text.lower() in ("true", "false"):
        return value.text.lower() == "true"
    raise OptionTypeError(f"expected bool (true or false), got {_show(value)}")


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Raw) and not value.quoted and _INT.match(value.text):
        return int(value.text)
    raise OptionTypeError(f"expected int, got {_show(value)}")


def _to_float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Raw) and not value.quoted and _FLOAT.match(value.text):
        return float(value.text)
    raise OptionTypeError(f"expected float, got {_show(value)}")


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, Raw) and not value.quoted and value.text == "none")


def _infer(value: Any) -> Any:
    """For untyped options: the most specific reading of the text (int, float, bool, none, str)."""
    if isinstance(value, (list, tuple)):
        return tuple(_infer(v) for v in value)
    if not isinstance(value, Raw):
        return value
    if value.quoted:
        return value.text
    for conv in (_to_int, _to_float, _to_bool):
        try:
            return conv(value)
        except OptionTypeError:
            pass
    return None if value.text == "none" else value.text


def _show(value: Any) -> str:
    if isinstance(value, Raw):
        return repr(value.text)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def format_value(value: Any) -> str:
    """The canonical pipeline spelling of an option value (parses back to the same value)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    text = str(value)
    # Quote strings that would otherwise read back as something else (a number, bool, none).
    looks_typed = _INT.match(text) or _FLOAT.match(text) or text.lower() in ("true", "false", "none")
    if _BARE.match(text) and not looks_typed:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_options(pass_name: str, specs: dict[str, OptionSpec], given: dict[str, Any]) -> dict:
    """`given` checked against `specs`, converted, with defaults filled in; PipelineError otherwise."""
    for key in given:
        if key not in specs:
            if not specs:
                raise PipelineError(f"pass '{pass_name}' takes no options, got option '{key}'")
            close = difflib.get_close_matches(key, list(specs), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise PipelineError(f"pass '{pass_name}' has no option '{key}'{hint}; its options are: "
                                + "; ".join(s.describe() for s in specs.values()))
    out = {}
    for key, spec in specs.items():
        if key in given:
            try:
                out[key] = coerce(given[key], spec.annotation)
            except OptionTypeError as exc:
                raise PipelineError(f"pass '{pass_name}', option '{key}': {exc}") from None
        elif spec.required:
            raise PipelineError(f"pass '{pass_name}' needs option '{key}' ({spec.describe()})")
        else:
            out[key] = spec.default
    return out
