"""Named hardware targets: what a device can run (bit widths, accumulator width, requantization
style, memory) and how qcompile builds for it (backend, default pipeline).

A target is data, one TOML file each, in `targets/catalog/` (shipped with the package) or
anywhere (`--target-file`). Every file is checked when it is read: an unknown key is rejected
with the closest known key, a wrong value names the file, the key and what is allowed.

    t = get_target("cortex-m4")
    t.quant_scheme          # the QuantScheme the quantize pass starts from
    t.accumulator_bits      # what check-accumulator checks against
    load_target_file("my_board.toml")
"""
from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

try:  # Python 3.11+; tomli is the same parser for 3.10
    import tomllib
except ImportError:  # pragma: no cover - depends on the interpreter
    import tomli as tomllib  # type: ignore[no-redef]

from qcompile.errors import QCompileError
from qcompile.quant.intmath import REQUANT_ROUNDINGS
from qcompile.quant.scheme import ALLOWED_BITS, QuantScheme

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"

KINDS = ("cpu", "gpu", "mcu", "fpga")
BACKENDS = ("c", "tvm", "hls", "none")
REQUANTIZATIONS = ("dyadic", "shift_only")
ROUNDINGS = REQUANT_ROUNDINGS + ("shift_only",)
MEMORY_KEYS = ("flash_bytes", "ram_bytes", "dsp", "bram", "lut")


class TargetError(QCompileError):
    """An unknown target name, or a target file that is unreadable or does not fit the schema."""


@dataclass(frozen=True)
class Target:
    """One hardware target. `source` is the TOML file it was read from (None when built in
    Python); the manifest records that file's hash."""

    name: str
    kind: str
    summary: str
    backend: str
    default_pipeline: str
    weight_bits: tuple = (8,)
    act_bits: tuple = (8,)
    per_channel: bool = True
    symmetric_weights: bool = True
    requantization: str = "dyadic"
    rounding: str = "gemmlowp_double"
    accumulator_bits: int = 32
    float_islands: bool = False
    backend_options: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    description: str = ""
    source: Optional[Path] = field(default=None, compare=False)

    @property
    def quant_scheme(self) -> QuantScheme:
        """The scheme `quantize` starts from: 8 bits where the target allows them (the best
        supported width otherwise), the target's granularity, symmetry and scale constraint."""
        return QuantScheme(weight_bits=_preferred(self.weight_bits),
                           act_bits=_preferred(self.act_bits),
                           per_channel=self.per_channel,
                           weight_symmetric=self.symmetric_weights,
                           pow2=self.requantization == "shift_only")

    def pipeline(self, text: Optional[str] = None):
        """`text` (default: this target's default pipeline) parsed; a `+passes` text extends
        the default. A bad default pipeline is reported with the target file it came from."""
        from qcompile.passmanager import parse_pipeline
        if text is None or text.startswith("+"):
            extra = (text or "+")[1:].strip().lstrip(",")
            try:
                base = parse_pipeline(self.default_pipeline)
            except QCompileError as exc:
                raise TargetError(f"target '{self.name}' ({self.source or 'built in'}): key "
                                  f"'default_pipeline': {exc}") from None
            if not extra:
                return base
            from qcompile.passmanager import Pipeline
            return Pipeline(base.items + parse_pipeline(extra).items)
        return parse_pipeline(text)

    @property
    def flash_bytes(self) -> Optional[int]:
        return self.memory.get("flash_bytes")

    @property
    def ram_bytes(self) -> Optional[int]:
        return self.memory.get("ram_bytes")

    def to_dict(self) -> dict:
        """The target as plain JSON-able data, in the TOML's key order (no `source`)."""
        return {"name": self.name, "kind": self.kind, "summary": self.summary,
                "description": self.description, "backend": self.backend,
                "backend_options": dict(self.backend_options),
                "weight_bits": list(self.weight_bits), "act_bits": list(self.act_bits),
                "per_channel": self.per_channel, "symmetric_weights": self.symmetric_weights,
                "requantization": self.requantization, "rounding": self.rounding,
                "accumulator_bits": self.accumulator_bits, "float_islands": self.float_islands,
                "memory": dict(self.memory), "default_pipeline": self.default_pipeline}


def _preferred(bits: tuple) -> int:
    if 8 in bits:
        return 8
    below = [b for b in bits if b < 8]
    return max(below) if below else min(bits)


# --------------------------------------------------------------------------- schema

@dataclass(frozen=True)
class _Field:
    kind: str                       # "str", "bool", "int", "bits", "choice", "table"
    required: bool = False
    choices: tuple = ()
    help: str = ""


_SCHEMA: dict[str, _Field] = {
    "name": _Field("str", True, help="a name of letters, digits, '-', '_', '.'"),
    "kind": _Field("choice", True, KINDS),
    "summary": _Field("str", True, help="one line for `qcompile targets`"),
    "description": _Field("str"),
    "backend": _Field("choice", True, BACKENDS),
    "backend_options": _Field("table", help="backend-specific scalars"),
    "weight_bits": _Field("bits"),
    "act_bits": _Field("bits"),
    "per_channel": _Field("bool"),
    "symmetric_weights": _Field("bool"),
    "requantization": _Field("choice", choices=REQUANTIZATIONS),
    "rounding": _Field("choice", choices=ROUNDINGS),
    "accumulator_bits": _Field("int", help="an integer in 16..64"),
    "float_islands": _Field("bool"),
    "memory": _Field("table", choices=MEMORY_KEYS, help="positive integers"),
    "default_pipeline": _Field("str", True, help="a pipeline string (`qcompile passes`)"),
}


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


def _check_value(where: str, key: str, spec: _Field, value: Any) -> Any:
    def bad(expected: str) -> TargetError:
        return TargetError(f"{where}: key '{key}' must be {expected}, got {value!r} "
                           f"({_type_name(value)})")

    if spec.kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise bad("a non-empty string" + (f" ({spec.help})" if spec.help else ""))
        return value.strip()
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 64:
            raise bad(spec.help)
        return value
    if spec.kind == "choice":
        if value not in spec.choices:
            hint = _suggest(str(value), spec.choices)
            raise TargetError(f"{where}: key '{key}' must be one of "
                              f"{', '.join(spec.choices)}, got {value!r}{hint}")
        return value
    if spec.kind == "bits":
        allowed = ", ".join(map(str, ALLOWED_BITS))
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (not isinstance(value, list) or not value
                or any(isinstance(b, bool) or b not in ALLOWED_BITS for b in value)):
            raise bad(f"a non-empty array of bit widths from {allowed}")
        return tuple(sorted(set(value)))
    if spec.kind == "table":
        if not isinstance(value, dict):
            raise bad("a table")
        return _check_table(where, key, spec, value)
    raise AssertionError(spec.kind)


def _check_table(where: str, key: str, spec: _Field, table: dict) -> dict:
    out = {}
    for k in sorted(table):  # sorted: the same target always gives the same dict order
        v = table[k]
        if spec.choices and k not in spec.choices:
            raise TargetError(f"{where}: unknown key '{key}.{k}'{_suggest(k, spec.choices)} "
                              f"(allowed: {', '.join(spec.choices)})")
        if key == "memory":
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise TargetError(f"{where}: key '{key}.{k}' must be a positive integer, "
                                  f"got {v!r}")
        elif key == "backend_options" and k == "target" and isinstance(v, dict):
            # a TVM target as a table, e.g. {kind = "llvm", mcpu = "haswell"}: one level deep
            for tk, tv in v.items():
                if isinstance(tv, dict) or (isinstance(tv, list)
                                            and any(isinstance(i, (dict, list)) for i in tv)):
                    raise TargetError(f"{where}: key '{key}.{k}.{tk}' must be a string, number, "
                                      f"boolean or an array of them, got {_type_name(tv)}")
            v = {tk: v[tk] for tk in sorted(v)}
        elif isinstance(v, dict) or (isinstance(v, list)
                                     and any(isinstance(i, (dict, list)) for i in v)):
            raise TargetError(f"{where}: key '{key}.{k}' must be a string, number, boolean or "
                              f"an array of them, got {_type_name(v)}")
        out[k] = v
    return out


def target_from_dict(data: dict, where: str = "<target>", source: Optional[Path] = None) -> Target:
    """A validated `Target` from TOML-shaped data; `where` names the file in errors."""
    unknown = [k for k in data if k not in _SCHEMA]
    if unknown:
        k = unknown[0]
        raise TargetError(f"{where}: unknown key '{k}'{_suggest(k, _SCHEMA)} "
                          f"(known keys: {', '.join(_SCHEMA)})")
    missing = [k for k, spec in _SCHEMA.items() if spec.required and k not in data]
    if missing:
        raise TargetError(f"{where}: missing required key(s) {', '.join(repr(m) for m in missing)}")
    values = {k: _check_value(where, k, _SCHEMA[k], v) for k, v in data.items()}
    _check_name(where, values["name"])
    _check_consistency(where, values)
    return Target(**values, source=source)


def _check_name(where: str, name: str) -> None:
    import re
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise TargetError(f"{where}: key 'name' must use letters, digits, '-', '_' and '.', "
                          f"got {name!r}")


def _check_consistency(where: str, v: dict) -> None:
    """Facts that involve two keys."""
    shift_only = v.get("requantization") == "shift_only"
    rounding = v.get("rounding", "gemmlowp_double")
    if shift_only != (rounding == "shift_only"):
        raise TargetError(f"{where}: requantization = {v.get('requantization', 'dyadic')!r} "
                          f"needs rounding = 'shift_only' exactly when requantization is "
                          f"'shift_only', got rounding = {rounding!r}")
    # The pipeline is parsed when it is used (`Target.pipeline()`): its passes may come from
    # plugins that are not imported while the catalog is listed.


# --------------------------------------------------------------------------- loading

def load_target_file(path: os.PathLike | str) -> Target:
    """Read and validate one target file."""
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"{path}: no such target file")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise TargetError(f"{path}: cannot read the target file: {exc.strerror}") from None
    return target_from_dict(data, str(path), source=path.resolve())


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, Target]:
    targets: dict[str, Target] = {}
    for path in sorted(CATALOG_DIR.glob("*.toml")):
        t = load_target_file(path)
        if t.name in targets:
            raise TargetError(f"{path}: target name {t.name!r} is already defined by "
                              f"{targets[t.name].source}")
        targets[t.name] = t
    return targets


def all_targets() -> dict[str, Target]:
    """Every catalog target by name, sorted by kind then name."""
    order = {k: i for i, k in enumerate(KINDS)}
    return dict(sorted(_catalog().items(), key=lambda kv: (order[kv[1].kind], kv[0])))


def get_target(name: str) -> Target:
    """The catalog target `name`; TargetError with the closest names if there is none."""
    catalog = _catalog()
    if name in catalog:
        return catalog[name]
    close = difflib.get_close_matches(name, list(catalog), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise TargetError(f"unknown target '{name}'{hint} (`qcompile targets` lists them; "
                      f"--target-file reads your own)")


def resolve_target(name: Optional[str] = None, file: Optional[os.PathLike | str] = None) -> Target:
    """The target a command asked for: a catalog name or a target file (not both)."""
    if name and file:
        raise TargetError("give either --target NAME or --target-file FILE, not both")
    if file:
        return load_target_file(file)
    if not name:
        raise TargetError("no target: give --target NAME (`qcompile targets` lists them) or "
                          "--target-file FILE")
    return get_target(name)
