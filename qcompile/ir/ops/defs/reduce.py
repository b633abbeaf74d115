"""Reductions over listed axes (an empty list reduces over every axis)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ...types import TensorType
from ..registry import AttrSpec, register_op
from .common import fail, fmt, norm_axes, require_float, require_numeric

_ATTRS = {"axes": AttrSpec("ints", doc="axes to reduce; empty: all"),
          "keepdims": AttrSpec("bool", False, doc="keep reduced axes with size 1")}


def _reduce(name: str, doc: str, fn: Callable, float_only: bool) -> None:
    def infer(x: TensorType, *, axes, keepdims) -> TensorType:
        (require_float if float_only else require_numeric)(name, x)
        axes = norm_axes(name, axes, x.rank) if axes else tuple(range(x.rank))
        if name in ("reduce_max", "reduce_min") and any(x.shape[a] == 0 for a in axes):
            fail(name, f"cannot take the {name[7:]} over an empty axis of {fmt(x.shape)}")
        if keepdims:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return TensorType(shape, x.dtype)
    infer.__doc__ = doc
    infer.__name__ = name
    opdef = register_op(name, attrs=_ATTRS, doc=doc)(infer)

    @opdef.kernel("float")
    def kernel(x, *, axes, keepdims):
        axis = tuple(axes) if axes else None
        return np.asarray(fn(x, axis=axis, keepdims=keepdims)).astype(x.dtype, copy=False)


def _mean(x, axis, keepdims):
    # Accumulate in float64: float32 pairwise sums still drift on large spatial reductions.
    return np.mean(x, axis=axis, keepdims=keepdims, dtype=np.float64)


def _sum(x, axis, keepdims):
    acc = np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=acc)


_reduce("mean", "arithmetic mean over `axes` (accumulated in float64)", _mean, float_only=True)
_reduce("reduce_sum", "sum over `axes` (float64 / int64 accumulation, result in x's dtype)",
        _sum, float_only=False)
_reduce("reduce_max", "maximum over `axes` (nan if any element is nan)", np.max, float_only=False)
_reduce("reduce_min", "minimum over `axes` (nan if any element is nan)", np.min, float_only=False)
