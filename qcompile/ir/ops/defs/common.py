"""Helpers shared by op declarations: broadcasting, dimension arithmetic, type checks.

Inference functions report problems with `OpError`s whose message starts with the op name and
shows the offending shapes, so a graph builder sees "conv2d: input (1, 3, 8, 8) has 3 channels
but ..." rather than a numpy traceback.
"""
from __future__ import annotations

from typing import NoReturn, Optional, Sequence

import numpy as np

from ....errors import OpError
from ...types import TensorType, is_float, is_int, is_narrow_float, numpy_dtype


def fail(op: str, message: str) -> NoReturn:
    raise OpError(f"{op}: {message}")


def fmt(shape: Sequence) -> str:
    """A shape as it reads in messages: `(1, ?, 8)` for a dynamic second dimension."""
    inner = ", ".join("?" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def broadcast_shapes(a: tuple, b: tuple, where: str = "") -> tuple:
    """numpy broadcasting of two shapes (None = dynamic dimension)."""
    out = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == 1:
            out.append(db)
        elif db == 1 or da == db:
            out.append(da)
        elif da is None or db is None:
            out.append(da if db is None else db)
        else:
            raise OpError(f"{where}: shapes {fmt(a)} and {fmt(b)} do not broadcast")
    return tuple(reversed(out))


def require(t: Optional[TensorType], what: str) -> TensorType:
    if t is None:
        raise OpError(f"missing input {what}")
    return t


def require_rank(t: TensorType, rank: int, what: str) -> None:
    if t.rank != rank:
        raise OpError(f"{what} must have rank {rank}, got shape {fmt(t.shape)}")


def require_float(op: str, t: TensorType, what: str = "input") -> None:
    if not is_float(t.dtype):
        fail(op, f"{what} must be a float tensor (f32 or f16), got {t.dtype} {fmt(t.shape)}")


def require_numeric(op: str, t: TensorType, what: str = "input") -> None:
    if t.dtype == "bool":
        fail(op, f"{what} must be numeric, got bool {fmt(t.shape)}")
    if is_narrow_float(t.dtype):  # a storage format: dequantize_linear reads it
        fail(op, f"{what} is {t.dtype} {fmt(t.shape)}, a float8/float4 storage type; "
                 f"dequantize_linear it to f32 first")


def same_dtype(op: str, *types: TensorType) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        fail(op, "input dtypes differ: " + ", ".join(f"{t.dtype} {fmt(t.shape)}" for t in types))
    return types[0].dtype


def norm_axis(op: str, axis: int, rank: int, what: str = "axis", allow_end: bool = False) -> int:
    """`axis` in [-rank, rank) (or [-rank, rank] with `allow_end`) made non-negative."""
    hi = rank + 1 if allow_end else rank
    if not -rank <= axis < hi:
        fail(op, f"{what} {axis} is out of range for a rank-{rank} input")
    return axis + rank if axis < 0 else axis


def norm_axes(op: str, axes: Sequence[int], rank: int, what: str = "axes") -> tuple:
    out = tuple(norm_axis(op, a, rank, what) for a in axes)
    if len(set(out)) != len(out):
        fail(op, f"{what} {tuple(axes)} name an axis twice")
    return out


def prod(dims: Sequence) -> Optional[int]:
    """Product of dimensions, None if any is dynamic."""
    if any(d is None for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64))


def as_dtype(arr: np.ndarray, dtype: str) -> np.ndarray:
    """`arr` in the numpy type that holds IR dtype `dtype` (no copy when it already is)."""
    return arr.astype(numpy_dtype(dtype), copy=False)


__all__ = ["fail", "fmt", "broadcast_shapes", "require", "require_rank", "require_float",
           "require_numeric", "same_dtype", "norm_axis", "norm_axes", "prod", "as_dtype", "is_int"]
