"""The text form of the IR: one line per node, MLIR-like, parseable back by `parser.py`.

    graph @net(%x: tensor<?x3xf32>) -> (%y) {
      %w = const tensor<4x3xf32> dense<sha256:1a2b3c4d5e6f7081, min=-0.5312, max=0.6104>
      %y = linear(%x, %w, _) : tensor<?x4xf32> loc("net.py:12")
      return %y
    }

The grammar is in docs/ir.md. Everything printed here parses back to a structurally equal graph
and prints again to the same text; that is why floats print with `repr` (shortest exact form),
attributes are sorted, and constants too large to show inline carry a content fingerprint.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from typing import Any, Optional

import numpy as np

from .graph import Graph, Node, Value, valid_name
from .types import QuantParams, TensorType, is_float, is_narrow_float, numpy_dtype

INLINE_LIMIT = 16   # constants with at most this many elements print their data inline
HASH_CHARS = 16     # hex digits of the sha256 kept in a summary
INDENT = "  "


# ---- names, strings, scalars ----------------------------------------------------------------
def format_string(s: str) -> str:
    """A double-quoted string literal; the parser's escapes are exactly these."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# `graph.valid_name` plus two rules of the text form: no trailing ':' (it would fuse with the ':'
# after a graph input's name), and a full match (a `$`-anchored regex lets a trailing newline in).
_BARE_NAME = re.compile(r"[A-Za-z0-9_.$:/\-]*[A-Za-z0-9_.$/\-]")


def bare_name_ok(name: str) -> bool:
    return _BARE_NAME.fullmatch(name) is not None and valid_name(name)


def format_name(name: str, sigil: str = "%") -> str:
    return sigil + (name if bare_name_ok(name) else format_string(name))


def format_float(x: float) -> str:
    """`repr` is the shortest text that reads back to the same double (inf, -inf, nan included)."""
    return repr(float(x))


def format_attr_value(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return format_float(v)
    if isinstance(v, str):
        return format_string(v)
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(format_attr_value(x) for x in list(v)) + "]"
    # Not an attribute kind the registry allows; print something readable so a dump (and the
    # verifier's report about this very attribute) never crashes.
    return format_string(str(v))


def format_attrs(attrs: dict) -> str:
    if not attrs:
        return ""
    items = []
    for key in sorted(attrs):
        k = key if key.isidentifier() else format_string(key)
        items.append(f"{k}={format_attr_value(attrs[key])}")
    return " {" + ", ".join(items) + "}"


# ---- types ----------------------------------------------------------------------------------
def print_type(t: TensorType) -> str:
    dims = ["?" if d is None else str(d) for d in t.shape]
    return "tensor<" + "".join(d + "x" for d in dims) + t.dtype + ">"


def print_quant(q: QuantParams) -> str:
    per_tensor = q.axis is None and len(q.scale) == 1 and len(q.zero_point) == 1
    if per_tensor:
        scale, zp = format_float(q.scale[0]), str(q.zero_point[0])
    else:
        scale = "[" + ", ".join(format_float(s) for s in q.scale) + "]"
        zp = "[" + ", ".join(str(z) for z in q.zero_point) + "]"
    parts = [f"scale={scale}", f"zp={zp}", f"{'i' if q.signed else 'u'}{q.bits}"]
    if q.axis is not None:
        parts.append(f"axis={q.axis}")
    if q.pow2:
        parts.append("pow2")
    return "quant<" + ", ".join(parts) + ">"


def print_typed(v: Value) -> str:
    return print_type(v.type) + ("" if v.quant is None else " " + print_quant(v.quant))


# ---- constants ------------------------------------------------------------------------------
def _as_storage(data: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(data).astype(numpy_dtype(dtype), copy=False))


def content_hash(data: np.ndarray, dtype: str) -> str:
    """sha256 over dtype, shape and little-endian bytes, truncated to HASH_CHARS hex digits."""
    arr = _as_storage(data, dtype)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    header = f"{dtype}[{'x'.join(map(str, arr.shape))}]".encode()
    return hashlib.sha256(header + arr.tobytes()).hexdigest()[:HASH_CHARS]


def format_range_bound(x: Any, dtype: str) -> str:
    # Four significant digits: a summary is for reading; the hash is what identifies the data.
    # `%.4g` text reads back to a float that formats to the same text, so summaries round-trip.
    if is_float(dtype) or is_narrow_float(dtype):
        return "%.4g" % float(x)
    return str(int(x))


def fingerprint(data: np.ndarray, dtype: str) -> str:
    """The summary a large constant prints as (and what `Value.data_hash` holds once parsed)."""
    arr = _as_storage(data, dtype)
    text = f"sha256:{content_hash(arr, dtype)}"
    if arr.size:
        lo, hi = (arr.min(), arr.max()) if dtype != "bool" else (arr.min() * 1, arr.max() * 1)
        text += f", min={format_range_bound(lo, dtype)}, max={format_range_bound(hi, dtype)}"
    return text


def summary_of(v: Value) -> Optional[str]:
    """The fingerprint of a constant, from its data or, for a parsed summary, its `data_hash`."""
    if v.data is not None:
        return fingerprint(v.data, v.dtype)
    if v.data_hash is None:
        return None
    return v.data_hash if v.data_hash.startswith("sha256:") else f"sha256:{v.data_hash}"


def format_elements(data: np.ndarray, dtype: str) -> str:
    arr = _as_storage(data, dtype).reshape(-1)
    if dtype == "bool":
        items = ["true" if x else "false" for x in arr.tolist()]
    elif is_float(dtype) or is_narrow_float(dtype):
        # str() of a numpy f32/f16 (or ml_dtypes float8/float4) scalar is the shortest text that
        # reads back to the same value in that precision, so the dump stays readable (0.1, not
        # 0.10000000149011612).
        items = [str(x) for x in arr]
    else:
        items = [str(x) for x in arr.tolist()]
    return "[" + ", ".join(items) + "]"


class _DataSink:
    """Collects constants for a `full` dump's side `.npz` (keys are the value names)."""

    def __init__(self, path: str):
        self.path = path
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, v: Value) -> str:
        self.arrays[v.name] = _as_storage(v.data, v.dtype)
        return (f"dense<file={format_string(os.path.basename(self.path))}, "
                f"key={format_string(v.name)}>")

    def write(self) -> None:
        write_npz(self.path, self.arrays)


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """An `.npz` numpy can `np.load`; written by hand so any value name works as a key (np.savez
    reserves some keyword names) and so the same arrays always give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def print_constant(v: Value, full: bool = False, sink: Optional[_DataSink] = None) -> str:
    head = f"{format_name(v.name)} = const {print_typed(v)} "
    if v.data is None:
        summary = summary_of(v)
        return head + (f"dense<{summary}>" if summary is not None else "dense<?>")
    if v.data.size <= INLINE_LIMIT or (full and sink is None):
        return head + f"dense<{format_elements(v.data, v.dtype)}>"
    if full:
        return head + sink.add(v)
    return head + f"dense<{fingerprint(v.data, v.dtype)}>"


# ---- nodes and graphs -----------------------------------------------------------------------
def print_node(node: Node) -> str:
    """One node as its text line (no indentation); never raises, so errors can quote it."""
    args = ", ".join("_" if v is None else format_name(v.name) for v in node.inputs)
    line = f"{node.op}({args}){format_attrs(node.attrs)}"
    if node.outputs:
        lhs = ", ".join(format_name(v.name) for v in node.outputs)
        line = f"{lhs} = {line} : " + ", ".join(print_typed(v) for v in node.outputs)
    if node.loc:
        line += f" loc({format_string(node.loc)})"
    return line


def print_graph(graph: Graph, full: bool = False, data_path: Optional[str] = None) -> str:
    """The graph as text. Constants of more than INLINE_LIMIT elements print as a fingerprint
    (hash, min, max) unless `full`: then their data goes to the `.npz` at `data_path` (written
    here; the text names it relative to the `.qir` next to it), or inline if no path is given."""
    sink = _DataSink(data_path) if (full and data_path is not None) else None
    params = ", ".join(f"{format_name(v.name)}: {print_typed(v)}" for v in graph.inputs)
    outs = ", ".join(format_name(v.name) for v in graph.outputs)
    lines = [f"graph {format_name(graph.name, '@')}({params}) -> ({outs}) {{"]
    for v in graph.constants.values():
        lines.append(INDENT + print_constant(v, full, sink))
    for node in graph.nodes:
        lines.append(INDENT + print_node(node))
    lines.append(INDENT + ("return " + outs if outs else "return"))
    lines.append("}")
    if sink is not None:
        sink.write()
    return "\n".join(lines) + "\n"


def write_file(graph: Graph, path: str, full: bool = True) -> str:
    """Write `graph` to `path` (a `.qir`); with `full`, large constants go to the `.npz` beside
    it so `parse_file(path)` gives back a graph that runs. Returns the text written."""
    path = os.fspath(path)
    data_path = os.path.splitext(path)[0] + ".npz" if full else None
    text = print_graph(graph, full=full, data_path=data_path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def structurally_equal(a: Graph, b: Graph, names: bool = True) -> bool:
    """See `compare.structural_diff`."""
    from .compare import structural_diff
    return structural_diff(a, b, names=names) is None


__all__ = ["print_graph", "print_node", "print_type", "print_quant", "print_constant",
           "format_name", "format_string", "format_attr_value", "content_hash", "fingerprint",
           "summary_of", "write_file", "write_npz", "structurally_equal", "INLINE_LIMIT"]
