"""Data movement: reshaping, reordering, slicing, padding, gathering, concatenation, casts.

Ops with the "shape" trait only move data (no arithmetic), so quantization parameters pass
through them unchanged; `pad`, `concat` and `gather` are not marked, since padding invents
values and concat/gather may mix differently-quantized sources.
"""
from __future__ import annotations

import math

import numpy as np

from ...types import DTYPES, TensorType, numpy_dtype
from ..registry import AttrSpec, register_op
from .common import fail, fmt, is_int, norm_axes, norm_axis, prod

_SHAPE = ("shape",)


@register_op("identity", traits=("shape", "positively_homogeneous"))
def identity(x):
    """x unchanged"""
    return x


@identity.kernel("float")
def _identity(x):
    return x


@register_op("concat", inputs=("xs*",), attrs={"axis": AttrSpec("int")})
def concat(*xs, axis):
    """np.concatenate(xs, axis): all inputs share dtype, rank and every dim but `axis`."""
    if not xs:
        fail("concat", "needs at least one input")
    first = xs[0]
    ax = norm_axis("concat", axis, first.rank)
    shapes = ", ".join(fmt(t.shape) for t in xs)
    for t in xs[1:]:
        if t.dtype != first.dtype or t.rank != first.rank:
            fail("concat", f"inputs differ in dtype or rank: {shapes}")
        for d, (a, b) in enumerate(zip(first.shape, t.shape)):
            if d != ax and a is not None and b is not None and a != b:
                fail("concat", f"inputs {shapes} differ in dimension {d} (only axis {axis} may)")
    shape = list(first.shape)
    for d in range(first.rank):
        if d != ax:
            shape[d] = next((t.shape[d] for t in xs if t.shape[d] is not None), None)
    sizes = [t.shape[ax] for t in xs]
    shape[ax] = None if None in sizes else sum(sizes)
    return TensorType(tuple(shape), first.dtype)


@concat.kernel("float")
def _concat(*xs, axis):
    return np.concatenate(xs, axis=axis)


def _resolve_shape(op: str, in_shape: tuple, shape: tuple) -> tuple:
    """`shape` with its one -1 filled in from `in_shape` (None when that cannot be known)."""
    if shape.count(-1) > 1 or any(d < -1 for d in shape):
        fail(op, f"shape {shape} may hold one -1 and otherwise dims >= 0")
    total = prod(in_shape)
    known = prod([d for d in shape if d != -1])
    if -1 not in shape:
        if total is not None and total != known:
            fail(op, f"cannot reshape {fmt(in_shape)} ({total} elements) to {shape} ({known})")
        return shape
    if total is None:
        return tuple(None if d == -1 else d for d in shape)
    if known == 0 or total % known:
        fail(op, f"cannot reshape {fmt(in_shape)} ({total} elements) to {shape}")
    return tuple(total // known if d == -1 else d for d in shape)


@register_op("reshape", attrs={"shape": AttrSpec("ints", doc="target shape; one -1 is inferred")},
             traits=_SHAPE)
def reshape(x, *, shape):
    """x with a new shape of the same size (one -1 inferred; 0 is a real zero-size dim)."""
    return TensorType(_resolve_shape("reshape", x.shape, tuple(shape)), x.dtype)


@reshape.kernel("float")
def _reshape(x, *, shape):
    return x.reshape(shape)


@register_op("flatten", attrs={"axis": AttrSpec("int", 1)}, traits=_SHAPE)
def flatten(x, *, axis):
    """ONNX Flatten: (prod(shape[:axis]), prod(shape[axis:])), always rank 2."""
    ax = norm_axis("flatten", axis, x.rank, allow_end=True)
    return TensorType((prod(x.shape[:ax]), prod(x.shape[ax:])), x.dtype)


@flatten.kernel("float")
def _flatten(x, *, axis):
    ax = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:ax]), math.prod(x.shape[ax:]))


@register_op("transpose", attrs={"perm": AttrSpec("ints", doc="output dim i is input dim perm[i]")},
             traits=_SHAPE)
def transpose(x, *, perm):
    """np.transpose(x, perm)"""
    if sorted(perm) != list(range(x.rank)):
        fail("transpose", f"perm {tuple(perm)} is not a permutation of the {x.rank} axes of "
                          f"{fmt(x.shape)}")
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


@transpose.kernel("float")
def _transpose(x, *, perm):
    return np.transpose(x, perm)


@register_op("squeeze", attrs={"axes": AttrSpec("ints", doc="axes of size 1 to drop")}, traits=_SHAPE)
def squeeze(x, *, axes):
    """x without the listed size-1 axes"""
    axes = norm_axes("squeeze", axes, x.rank)
    for a in axes:
        if x.shape[a] not in (1, None):
            fail("squeeze", f"axis {a} of {fmt(x.shape)} has size {x.shape[a]}, not 1")
    return TensorType(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)


@squeeze.kernel("float")
def _squeeze(x, *, axes):
    return np.squeeze(x, axis=tuple(axes))


@register_op("unsqueeze", attrs={"axes": AttrSpec("ints", doc="positions in the output")},
             traits=_SHAPE)
def unsqueeze(x, *, axes):
    """x with size-1 axes inserted at the listed positions of the output (ONNX Unsqueeze)"""
    out_rank = x.rank + len(axes)
    axes = norm_axes("unsqueeze", axes, out_rank)
    rest = iter(x.shape)
    return TensorType(tuple(1 if i in axes else next(rest) for i in range(out_rank)), x.dtype)


@unsqueeze.kernel("float")
def _unsqueeze(x, *, axes):
    return np.expand_dims(x, tuple(axes))


@register_op("expand", attrs={"shape": AttrSpec("ints", doc="target shape")}, traits=_SHAPE)
def expand(x, *, shape):
    """np.broadcast_to(x, shape): x's dims (right-aligned) must be 1 or equal the target's"""
    shape = tuple(shape)
    if len(shape) < x.rank or any(d < 0 for d in shape):
        fail("expand", f"cannot broadcast {fmt(x.shape)} to {shape}")
    for d, t in zip(x.shape[::-1], shape[::-1]):
        if d not in (1, t, None):
            fail("expand", f"cannot broadcast {fmt(x.shape)} to {shape}")
    return TensorType(shape, x.dtype)


@expand.kernel("float")
def _expand(x, *, shape):
    return np.array(np.broadcast_to(x, shape))  # a writable copy, not a read-only view


def _slices(op, rank, axes, starts, ends, steps):
    axes = tuple(axes) if axes else tuple(range(len(starts)))
    steps = tuple(steps) if steps else (1,) * len(starts)
    if not len(axes) == len(starts) == len(ends) == len(steps):
        fail(op, f"axes {axes}, starts {tuple(starts)}, ends {tuple(ends)} and steps {steps} "
                 f"differ in length")
    if any(s == 0 for s in steps):
        fail(op, f"steps {steps} contain 0")
    axes = norm_axes(op, axes, rank)
    return dict(zip(axes, (slice(b, e, s) for b, e, s in zip(starts, ends, steps))))


@register_op("slice",
             attrs={"axes": AttrSpec("ints", (), doc="empty: the first len(starts) axes"),
                    "starts": AttrSpec("ints"),
                    "ends": AttrSpec("ints", doc="clamped; a huge value means 'to the end'"),
                    "steps": AttrSpec("ints", (), doc="empty: all 1")},
             traits=_SHAPE)
def slice_(x, *, axes, starts, ends, steps):
    """x[starts:ends:steps] per listed axis, Python slicing (negative indices, ends clamped)

    Exactly Python's slice(start, end, step) on each listed axis: negative starts and ends count
    from the end, out-of-range values clamp, and a negative step walks backwards (an end of
    -huge means "through index 0"). Unlisted axes are kept whole.
    """
    per_axis = _slices("slice", x.rank, axes, starts, ends, steps)
    shape = list(x.shape)
    for ax, s in per_axis.items():
        if shape[ax] is not None:
            shape[ax] = len(range(*s.indices(shape[ax])))
    return TensorType(tuple(shape), x.dtype)


@slice_.kernel("float")
def _slice(x, *, axes, starts, ends, steps):
    per_axis = _slices("slice", x.ndim, axes, starts, ends, steps)
    return x[tuple(per_axis.get(i, slice(None)) for i in range(x.ndim))]


@register_op("pad",
             attrs={"pads": AttrSpec("ints", doc="ONNX order: all begins, then all ends"),
                    "mode": AttrSpec("str", "constant", choices=("constant", "reflect", "edge")),
                    "value": AttrSpec("float", 0.0, doc="fill for mode=constant")})
def pad(x, *, pads, mode, value):
    """np.pad: constant fill, reflect (mirror without the edge) or edge (repeat the edge)."""
    if len(pads) != 2 * x.rank or any(p < 0 for p in pads):
        fail("pad", f"pads {tuple(pads)} must be {2 * x.rank} ints >= 0 for input {fmt(x.shape)}")
    shape = []
    for i, d in enumerate(x.shape):
        lo, hi = pads[i], pads[i + x.rank]
        if d is not None and mode != "constant" and (lo or hi):
            limit = d - 1 if mode == "reflect" else d
            if d == 0 or max(lo, hi) > max(limit, 0) or (mode == "reflect" and d < 2):
                fail("pad", f"{mode} padding {(lo, hi)} does not fit axis {i} of {fmt(x.shape)}")
        shape.append(None if d is None else d + lo + hi)
    return TensorType(tuple(shape), x.dtype)


@pad.kernel("float")
def _pad(x, *, pads, mode, value):
    r = x.ndim
    widths = [(pads[i], pads[i + r]) for i in range(r)]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(value).astype(x.dtype))
    return np.pad(x, widths, mode=mode)


@register_op("gather", inputs=("data", "indices"), attrs={"axis": AttrSpec("int", 0)})
def gather(data, indices, *, axis):
    """np.take(data, indices, axis): negative indices count from the end; out of range is an error"""
    if not is_int(indices.dtype):
        fail("gather", f"indices must be integers, got {indices.dtype} {fmt(indices.shape)}")
    ax = norm_axis("gather", axis, data.rank)
    return TensorType(data.shape[:ax] + indices.shape + data.shape[ax + 1:], data.dtype)


@gather.kernel("float")
def _gather(data, indices, *, axis):
    n = data.shape[axis]
    if indices.size and (indices.min() < -n or indices.max() >= n):
        raise IndexError(f"gather: index out of range [{-n}, {n}) along axis {axis} of "
                         f"data {data.shape}")
    return np.take(data, indices, axis=axis)


@register_op("cast", attrs={"dtype": AttrSpec("str", doc="an IR dtype: f32, i8, u4, bool, ...")})
def cast(x, *, dtype):
    """x.astype(dtype): float to int truncates toward zero; narrow ints are not range-checked"""
    if dtype not in DTYPES:
        fail("cast", f"dtype {dtype!r} is not an IR dtype (one of {', '.join(DTYPES)})")
    return x.with_dtype(dtype)


@cast.kernel("float")
def _cast(x, *, dtype):
    with np.errstate(invalid="ignore"):
        return x.astype(numpy_dtype(dtype))
