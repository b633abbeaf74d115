"""TVM lowerings of the integer transformer ops (I-BERT style) and the small integer helpers a
BERT encoder's integer graph keeps: qsoftmax (with an optional mask), qlayer_norm, qgelu,
qreduce_sum, qdiv, qcast, gather, cast and `add` of i32 accumulators.

Each lowering computes exactly the op's "int" kernel in qcompile/ir/ops/defs/
integer_transformer.py (or integer.py / shape.py): the same values (int64 intermediates, or
int32 / float64 ones where a comment proves them exact, as in qsoftmax), the same
roundings (intmath's requantization through arith.py, floor shifts, division rounded half away
from zero), the same treatment of masked positions and fully masked rows, so the module's
outputs equal the interpreter's bit for bit.

Multi-step recipes (the row max and sum of softmax, the i-exp, the LayerNorm sums, every
Newton step of the integer square root, the GELU polynomial) are separate te.compute stages:
a stage reads the previous one from a buffer, so no expression tree repeats a subterm and
TVM's simplifier stays fast. Row reductions are their own reduction stages, which the CPU
scheduler runs in parallel over rows; the element-wise stages are vectorised.

Compiled code cannot raise: where the interpreter raises (an index out of range, a value
leaving int32), the module computes something else, and the tests compare the two only on
inputs the interpreter accepts. Gather clamps its indices so that a bad index cannot read
outside the table.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tvm import te
from tvm import tirx as tir

from qcompile.ir.graph import Node, Value
from qcompile.ir.types import int_bits, int_range, is_signed

from . import arith
from .arith import F64, I32, I64, i32, i64
from .lower import Kernel, Lowering, TVMBackendError, tvm_dtype, tvm_op
from .ops import _broadcast_index, _zero_point_at, lower_float_binary

IndexFn = Callable[[tuple], object]


# ---------------------------------------------------------------------------------- helpers

def _dtype_range(dtype: str) -> tuple[int, int]:
    return int_range(int_bits(dtype), is_signed(dtype))


def _quant(v: Value, node: Node, what: str):
    if v.quant is None:
        raise TVMBackendError(f"node %{node.name} ({node.op}): {what} %{v.name} has no "
                              f"QuantParams")
    return v.quant


def centred_input(k: Kernel, v: Value, node: Node, what: str) -> tuple[te.Tensor, IndexFn]:
    """(placeholder of v, fn(index of v) -> int64 q - zero point)."""
    t = k.value(v, what)
    zp = _zero_point_at(k, v, node, len(t.shape), f"{what}.zp")
    return t, lambda idx: i64(t(*idx)) - zp(idx)


def finish_output(k: Kernel, node: Node, clamp_min: int, clamp_max: int,
                  dtype: str) -> Callable:
    """fn(y int64, output index) -> stored code: + output zero point, clamp, cast (`_finish`)."""
    zy = _zero_point_at(k, node.output, node, len(k.lowering.shape(node.output)), "zy")
    dt = tvm_dtype(dtype)
    return lambda y, idx: arith.clamp_cast(y + zy(idx), clamp_min, clamp_max, dt)


def finish_output32(k: Kernel, node: Node, clamp_min: int, clamp_max: int,
                    dtype: str) -> Callable:
    """finish_output for an int32 y: with one zero point zy the clamp runs in int32 as
    clip(y, lo - zy, hi - zy) + zy (equal to clip(y + zy, lo, hi), and nothing overflows
    while both shifted bounds fit int32); per-channel zero points take the int64 path."""
    zp = node.output.quant.zero_point if node.output.quant is not None else ()
    zy = int(zp[0]) if len(set(zp)) == 1 else None
    if zy is None or not (arith.INT32_LO <= clamp_min - zy and clamp_max - zy <= arith.INT32_HI):
        wide = finish_output(k, node, clamp_min, clamp_max, dtype)
        return lambda y, idx: wide(i64(y), idx)
    dt = tvm_dtype(dtype)
    lo, hi = tir.const(clamp_min - zy, I32), tir.const(clamp_max - zy, I32)
    return lambda y, idx: (tir.min(tir.max(y, lo), hi) + tir.const(zy, I32)).astype(dt)


def _norm_axes(node: Node, axes: Sequence[int], rank: int) -> tuple[int, ...]:
    out = tuple(sorted({a % rank for a in axes})) if axes else tuple(range(rank))
    if any(not -rank <= a < rank for a in axes):
        raise TVMBackendError(f"node %{node.name} ({node.op}): axes {tuple(axes)} out of range "
                              f"for rank {rank}")
    return out


def _row_reduce(shape: tuple, axes: tuple[int, ...], name: str):
    """(reduce axes, fn(kept index) -> full index): the kept index has size 1 on `axes`."""
    rv = {a: te.reduce_axis((0, shape[a]), f"r{name}{a}") for a in axes}

    def full(idx):
        return tuple(rv[a] if a in rv else idx[a] for a in range(len(shape)))
    return [rv[a] for a in axes], full


def _kept(shape: tuple, axes: tuple[int, ...]) -> tuple:
    return tuple(1 if a in axes else d for a, d in enumerate(shape))


def _row(idx, axes: tuple[int, ...]):
    """The kept (size-1 on `axes`) index of an element's row."""
    return tuple(0 if a in axes else i for a, i in enumerate(idx))


def _div_round_away(num, den):
    """num / den rounded half away from zero for a nonzero den of either sign:
    sign(num) sign(den) ((2|num| + |den|) // (2|den|)), as integer_transformer.div_round_away.
    `num` and `den` should be buffer loads: each appears up to three times."""
    two = tir.const(2, I64)
    ad = tir.abs(den)
    q = tir.truncdiv(two * tir.abs(num) + ad, two * ad)
    # the sign by nested Selects: LLVM's vectoriser miscompiles `!=` of two bool vectors
    neg = -q
    return tir.Select(num < 0, tir.Select(den < 0, q, neg), tir.Select(den < 0, neg, q))


def _rescale(x, m0, shift, rounding: str):
    """integer.py's `_rescale`: requantize, or a shift for rounding "shift_only"."""
    return arith.requantize(x, m0, shift, rounding)


# ---------------------------------------------------------------------------------- qsoftmax

def _softmax_out_bits(node: Node) -> int:
    q = _quant(node.output, node, "output")
    k = -np.log2(q.scale[0]) if len(q.scale) == 1 and q.scale[0] > 0 else 0.5
    if k != round(k) or not 1 <= k <= 16:
        raise TVMBackendError(f"node %{node.name} (qsoftmax): the output scale must be one "
                              f"2**-k with k in 1..16, got {q.scale}")
    return int(round(k))


#: Rows up to this length take the float64 quotient of arith.softmax_quotient_f64: with e < 2**31 and
#: k <= 16 every value it forms stays below 2**53 (see there). Longer rows divide in int64.
SOFTMAX_F64_MAX_ROW = 1 << 20


@tvm_op("qsoftmax")
def lower_qsoftmax(low: Lowering, node: Node, _rq=None):
    """Stages: row max, e (int32: d, t, i-exp in one), row sum (int64), the row's float64
    sum and half reciprocal, out (the quotient, + zy, clamp).

    Everything per element stays in int32 (AVX2 has no 64-bit multiply, arithmetic shift,
    min or max, so int64 element-wise code is scalar):
      d = q - max fits int32 (codes have at most 16 bits);
      t = requantize(d) fits int32 (intmath raises otherwise), arith.requantize32 computes it;
      u = -t >= 0 (d <= 0, Q31 multipliers are >= 0). t = -2**31 would overflow -t, so t is
        first raised to -(2**31 - 1): both give p = 31, and with p = 31 e = z >> 31 = 0
        whatever r is, because z < 2**31;
      rb = r + exp_b is in (0, exp_b] (r in (-2**K, 0], exp_b > 2**K: the op's checks), so
        z = rb**2 + exp_c <= exp_b**2 + exp_c < 2**31 (checked too) and e = z >> p fit int32.
    Only the row sum needs int64 (up to n * (2**31 - 1)).

    A fully masked row is uniform. The max stage reads a masked position as -2**24, below
    every code (<= 16 bits), so a row max of -2**24 marks such a row; there every position
    is live with d = 0. Masked positions read q as the row max, so d = 0 there too and no
    subtraction can overflow; their e is then zeroed. (The sentinel is not INT32_MIN: TVM's
    simplifier dropped the test `max == INT32_MIN`, and fully masked rows came out 0.)"""
    x, mask = node.inputs[0], node.input(1)
    a = node.attrs
    shape = low.shape(x)
    rank = len(shape)
    ax = a["axis"] % rank
    kbits = _softmax_out_bits(node)
    frac = a["frac_bits"]
    k = low.kernel(node)
    xt = k.value(x)
    row_shape = _kept(shape, (ax,))
    row = lambda idx: _row(idx, (ax,))  # noqa: E731
    q = lambda idx: xt(*idx).astype(I32)  # noqa: E731  (<= 16-bit codes)
    # the max of a fully masked row: below every code (<= 16 bits), so d = 0 cannot overflow
    empty = tir.const(-(1 << 24), I32)

    m = None
    if mask is not None:
        mt = k.value(mask, "mask")
        mi = _broadcast_index(low.shape(mask), rank)
        m = lambda idx: mt(*mi(idx)).astype("bool")  # noqa: E731
    rs, full = _row_reduce(shape, (ax,), "m")
    if m is None:
        mx = te.compute(row_shape, lambda *r: te.max(q(full(r)), axis=rs), name="max")
    else:
        mx = te.compute(row_shape, lambda *r: te.max(
            tir.Select(m(full(r)), q(full(r)), empty), axis=rs), name="max")

    def e_fn(*idx):
        top = mx(*row(idx))
        d = q(idx) - top if m is None else tir.Select(m(idx), q(idx), top) - top
        t = tir.max(arith.requantize32(d, a["in_multiplier"], a["in_shift"], a["rounding"]),
                    tir.const(arith.INT32_LO + 1, I32))
        return arith.iexp32(-t, frac, a["exp_b"], a["exp_c"],
                            None if m is None else tir.Or(m(idx), top <= empty))
    e = te.compute(shape, e_fn, name="e")
    rs, full = _row_reduce(shape, (ax,), "s")
    total = te.compute(row_shape, lambda *r: te.sum(i64(e(*full(r))), axis=rs), name="sum")
    fin = finish_output32(k, node, *_dtype_range(a["dtype"]), a["dtype"])

    if shape[ax] <= SOFTMAX_F64_MAX_ROW:
        sf = te.compute(row_shape, lambda *r: total(*r).astype(F64), name="sumf")
        inv = te.compute(row_shape, lambda *r: tir.const(0.5, F64) / sf(*r), name="inv")
        out = lambda *idx: fin(arith.softmax_quotient_f64(  # noqa: E731
            e(*idx), sf(*row(idx)), inv(*row(idx)), kbits), idx)
    else:
        def out(*idx):
            s = total(*row(idx))  # > 0: the row's maximum has e = exp_b**2 + exp_c
            y = tir.floordiv(i64(e(*idx)) * tir.const(1 << (kbits + 1), I64) + s,
                             s * tir.const(2, I64))
            return fin(i32(y), idx)
    kind = "rows" if ax == rank - 1 else "elementwise"
    return k.finish(te.compute(shape, out, name="out"), kind)


# ---------------------------------------------------------------------------------- qlayer_norm

def _centred_constant(node: Node, v: Value, what: str, norm_shape: tuple) -> np.ndarray:
    """A constant gamma/beta minus its zero point(s), broadcast to the normalised shape."""
    if not v.is_constant or v.data is None:
        raise TVMBackendError(f"node %{node.name} (qlayer_norm): {what} %{v.name} must be a "
                              f"constant with data")
    q = _quant(v, node, what)
    data = np.asarray(v.data).astype(np.int64)
    c = data - q.zero_point_array(data.ndim)
    return np.ascontiguousarray(np.broadcast_to(c, norm_shape))


def _isqrt_stages(n: te.Tensor, shape: tuple) -> te.Tensor:
    """floor(sqrt(n)) of an int64 tensor with values in [0, 2**62), exactly as
    integer_transformer.isqrt, from one float64 square root and two integer corrections
    (instead of its Newton steps, whose 64-bit divisions are scalar code).

    Why it is exact: fl(n) = n (1 + e), |e| <= 2**-53, and sqrt is correctly rounded, so
    s = fl(sqrt(fl(n))) is within sqrt(n) (2**-54 + 2**-53 + 2**-105) < 2**31 2**-52.4 < 2**-21
    of sqrt(n) < 2**31. Two reals less than 1 apart have floors at most 1 apart, so
    x0 = floor(s) is t - 1, t or t + 1 for t = floor(sqrt(n)) (x0 >= 0: s >= 0). Then
    x1 = x0 - [x0**2 > n] is t or t - 1 (it lowers only t + 1, and t**2 <= n), and
    x1 + [(x1 + 1)**2 <= n] is t ((t + 1)**2 > n). Every square is below (2**31 + 2)**2 < 2**63,
    so none overflows int64. (A closer look shows s >= t always, so the last step never fires
    in practice; it costs one operation per row and keeps the proof short.)"""
    one, zero = tir.const(1, I64), tir.const(0, I64)
    x0 = te.compute(shape, lambda *i: tir.floor(tir.sqrt(n(*i).astype(F64))).astype(I64),
                    name="sqrt_f64")
    x1 = te.compute(shape, lambda *i: x0(*i) - tir.Select(
        x0(*i) * x0(*i) > n(*i), one, zero), name="sqrt_down")
    return te.compute(shape, lambda *i: x1(*i) + tir.Select(
        (x1(*i) + one) * (x1(*i) + one) <= n(*i), one, zero), name="isqrt")


def _code_bounds(node: Node, x: Value, n: int) -> dict:
    """Build-time bounds of qlayer_norm's per-element values, from the input's code range and
    zero points, N and frac_bits: which stages may run in int32 or in float64 exactly.

    d = q - zx lies in [dlo, dhi]; |sum d| <= N max|d|; c = N d - sum d = sum_j (d - d_j), so
    |c| <= (N - 1) (dhi - dlo). Since sum c = 0, v = sum c**2 >= c_i**2 N / (N - 1) (Cauchy-
    Schwarz on the other N - 1 terms), so r >= floor(|c_i| N / sqrt(N - 1)) >= |c_i| N /
    (2 sqrt(N - 1)) when c_i != 0 (that value is >= 2), and |z| <= 2 sqrt(N - 1) 2**F + 1/2."""
    lo, hi = _dtype_range(x.dtype)
    zps = [int(z) for z in _quant(x, node, "input").zero_point]
    dlo, dhi = lo - max(zps), hi - min(zps)
    dabs = max(abs(dlo), abs(dhi))
    frac = node.attrs["frac_bits"]
    cmax = (n - 1) * (dhi - dlo)
    d32 = arith.fits32(dlo, dhi) and arith.fits32(min(zps), max(zps))
    # the sum and N d each within N max|d|, and c itself, fit int32
    c32 = d32 and n * dabs <= arith.INT32_HI and cmax <= arith.INT32_HI
    # 2 sqrt(N - 1) 2**F <= 2**31 - 2, in integers: then |z| < 2**31 - 1
    z32 = 4 ** (frac + 1) * (n - 1) <= ((1 << 31) - 2) ** 2
    f64 = c32 and z32 and cmax * (n << frac) <= arith.F64_DIV_MAX_NUM \
        and (n << frac) <= 1 << 53
    return {"d32": d32, "c32": c32, "f64": f64}


def _centred_x32(k: Kernel, x: Value, rank: int) -> IndexFn:
    """fn(index of x) -> int32 q - zx (the caller checked that every value and zero point fits
    int32)."""
    t = k.value(x, "x")
    zp = k.table("x.zp", x.quant.zero_point, I32)
    axis = (x.quant.axis or 0) % max(rank, 1)
    if isinstance(zp, int):
        return lambda idx: t(*idx).astype(I32) - tir.const(zp, I32)
    return lambda idx: t(*idx).astype(I32) - k.read(zp, idx[axis], I32)


def _table32(k: Kernel, low: Lowering, name: str, data: np.ndarray, what: str):
    """A constant table as int32 when every entry fits, else int64: (placeholder, is int32)."""
    fits = bool(data.size == 0 or arith.fits32(int(data.min()), int(data.max())))
    dt = I32 if fits else I64
    return k.input(low.param(name, data.astype(np.int32 if fits else np.int64)), data.shape,
                   dt, what), fits


@tvm_op("qlayer_norm")
def lower_qlayer_norm(low: Lowering, node: Node, _rq=None):
    """Stages: sum d, c = N d - sum, sum c**2, n = N (v + eps), isqrt (3 stages), the divisor
    r (at least 1) and its row constants, out (z, z g + b, requantize, clamp).

    Per element the kernel stays in int32 and float64 wherever `_code_bounds` proves that
    exact (AVX2 has no 64-bit multiply, arithmetic shift, min, max or division, so int64
    element-wise code is scalar): d and c in int32; z = div_round_away(c N 2**F, r) by one
    float64 multiply-add per element (arith.round_away_quotient_f64, exact while
    |c| N 2**F <= 2**49 and |z| < 2**31), computed inside the output stage; acc = z g + b as
    a product whose low 32 bits are kept (the interpreter checks that acc fits int32, so they
    are acc), then requantize32 and an int32 clamp. Where a bound fails (wide codes, huge N or
    frac_bits, gamma/beta tables beyond int32) that step keeps the int64 formula, z the int64
    division in a stage of its own. r = 0 only when v = 0, i.e. every c of the row is 0:
    the divisor 1 then gives z = 0, as the interpreter's Select does."""
    x, gamma, beta = node.inputs
    a = node.attrs
    shape = low.shape(x)
    rank = len(shape)
    ax = a["axis"] % rank
    axes = tuple(range(ax, rank))
    norm_shape = shape[ax:]
    n = int(np.prod(norm_shape, dtype=np.int64))
    g = _centred_constant(node, gamma, "gamma", norm_shape)
    b = _centred_constant(node, beta, "beta", norm_shape)
    bounds = _code_bounds(node, x, n)
    k = low.kernel(node)
    if bounds["c32"]:
        dfn, cdt = _centred_x32(k, x, rank), I32
    else:
        dfn, cdt = centred_input(k, x, node, "x")[1], I64
    gt, g32 = _table32(k, low, f"{node.name}.gamma_c", g, "gamma")
    bt, b32 = _table32(k, low, f"{node.name}.beta_c", b, "beta")
    row_shape = _kept(shape, axes)
    row = lambda idx: _row(idx, axes)  # noqa: E731

    rs, full = _row_reduce(shape, axes, "d")
    total = te.compute(row_shape, lambda *r: te.sum(dfn(full(r)), axis=rs), name="sum")
    c = te.compute(shape, lambda *i: tir.const(n, cdt) * dfn(i) - total(*row(i)), name="c")
    c_at = lambda i: c(*i)  # noqa: E731
    rs, full = _row_reduce(shape, axes, "v")
    var = te.compute(row_shape, lambda *r: te.sum(i64(c_at(full(r))) * i64(c_at(full(r))),
                                                  axis=rs), name="var")
    nv = te.compute(row_shape, lambda *r: tir.const(n, I64) * (
        var(*r) + tir.const(a["eps_int"], I64)), name="n")
    root = _isqrt_stages(nv, row_shape)
    scale = n << a["frac_bits"]
    # Both Select branches run (vector code), so the divisor is a stage of its own: inside
    # Select(r > 0, ...) the simplifier would rewrite max(r, 1) to r, and r = 0 would trap.
    divisor = te.compute(row_shape, lambda *r: tir.max(root(*r), tir.const(1, I64)), name="den")
    if bounds["f64"]:
        # r < 2**31 (N (v + eps) < 2**62), so its float64 value is exact
        den_f = te.compute(row_shape, lambda *r: divisor(*r).astype(F64), name="denf")
        consts = lambda *r: arith.round_away_row_constants(den_f(*r), scale)  # noqa: E731
        kq = te.compute(row_shape, lambda *r: consts(*r)[0], name="kq")
        bias = te.compute(row_shape, lambda *r: consts(*r)[1], name="bias")
        # computed inside the output stage: no int32 z buffer to write and read back
        z_at = lambda i: arith.round_away_quotient_f64(  # noqa: E731
            c_at(i), kq(*row(i)), bias(*row(i)))
    else:
        z = te.compute(shape, lambda *i: tir.Select(
            root(*row(i)) > tir.const(0, I64),
            arith.div_round_away(i64(c_at(i)) * tir.const(scale, I64), divisor(*row(i))),
            tir.const(0, I64)), name="z")
        z_at = lambda i: z(*i)  # noqa: E731

    if bounds["f64"] and g32 and b32:
        fin32 = finish_output32(k, node, a["clamp_min"], a["clamp_max"], a["dtype"])

        def out_fn(*i):
            acc = i32(i64(z_at(i)) * i64(gt(*i[ax:])) + i64(bt(*i[ax:])))
            return fin32(arith.requantize32(acc, a["multiplier"], a["shift"], a["rounding"]), i)
    else:
        fin = finish_output(k, node, a["clamp_min"], a["clamp_max"], a["dtype"])

        def out_fn(*i):
            acc = i64(z_at(i)) * i64(gt(*i[ax:])) + i64(bt(*i[ax:]))
            return fin(_rescale(acc, a["multiplier"], a["shift"], a["rounding"]), i)
    kind = "rows" if ax == rank - 1 else "elementwise"
    return k.finish(te.compute(shape, out_fn, name="out"), kind)


# ---------------------------------------------------------------------------------- qgelu

@tvm_op("qgelu")
def lower_qgelu(low: Lowering, node: Node, _rq=None):
    """Stages: t (onto the internal grid), the i-GELU product, out (requantize)."""
    x = node.inputs[0]
    a = node.attrs
    shape = low.shape(x)
    k = low.kernel(node)
    _, dfn = centred_input(k, x, node, "x")
    sh = a["in_shift"]
    t = te.compute(shape, lambda *i: dfn(i) * tir.const(1 << sh, I64) if sh >= 0
                   else arith.rdbpot(dfn(i), -sh), name="t")
    erf_b, erf_c = tir.const(a["erf_b"], I64), tir.const(a["erf_c"], I64)
    zero = tir.const(0, I64)

    def product(*i):
        tv = t(*i)
        am = tir.min(tir.abs(tv), erf_b) - erf_b
        sign = tir.Select(tv > zero, tir.const(1, I64),
                          tir.Select(tv < zero, tir.const(-1, I64), zero))
        return tv * (erf_c + sign * (erf_c - am * am))
    prod = te.compute(shape, product, name="gelu")
    fin = finish_output(k, node, a["clamp_min"], a["clamp_max"], a["dtype"])
    out = te.compute(shape, lambda *i: fin(
        _rescale(prod(*i), a["multiplier"], a["shift"], a["rounding"]), i), name="out")
    return k.finish(out)


# ---------------------------------------------------------------------------------- pooling heads

@tvm_op("qreduce_sum")
def lower_qreduce_sum(low: Lowering, node: Node, _rq=None):
    x = node.inputs[0]
    a = node.attrs
    shape = low.shape(x)
    rank = len(shape)
    axes = _norm_axes(node, a["axes"], rank)
    out_shape = low.shape(node.output)
    k = low.kernel(node)
    _, dfn = centred_input(k, x, node, "x")
    rs, full = _row_reduce(shape, axes, "s")

    def expand(idx):  # output index -> kept index (size 1 on the summed axes)
        if a["keepdims"]:
            return tuple(idx)
        it = iter(idx)
        return tuple(0 if i in axes else next(it) for i in range(rank))
    acc = te.compute(_kept(shape, axes), lambda *r: te.sum(dfn(full(r)), axis=rs), name="acc")
    fin = finish_output(k, node, a["clamp_min"], a["clamp_max"], a["dtype"])
    out = te.compute(out_shape, lambda *i: fin(_rescale(
        acc(*expand(i)), a["multiplier"], a["shift"], a["rounding"]), i), name="out")
    return k.finish(out)


@tvm_op("qdiv")
def lower_qdiv(low: Lowering, node: Node, _rq=None):
    """Stages: numerator, denominator (each broadcast to the output), a nonzero divisor, the
    rounded quotient, out."""
    a_v, b_v = node.inputs
    a = node.attrs
    out_shape = low.shape(node.output)
    rank = len(out_shape)
    k = low.kernel(node)
    _, an = centred_input(k, a_v, node, "a")
    _, bn = centred_input(k, b_v, node, "b")
    ai = _broadcast_index(low.shape(a_v), rank)
    bi = _broadcast_index(low.shape(b_v), rank)
    zero = tir.const(0, I64)
    num = te.compute(out_shape, lambda *i: an(ai(i)) * tir.const(a["multiplier"], I64),
                     name="num")
    den = te.compute(out_shape, lambda *i: bn(bi(i)) << tir.const(31 - a["shift"], I64),
                     name="den")
    # Both Select branches run, so the quotient is taken in a stage of its own with a divisor
    # that is never 0 (inside Select(den != 0, ...) the simplifier would drop such a guard).
    safe = te.compute(out_shape, lambda *i: tir.Select(den(*i) != zero, den(*i),
                                                       tir.const(1, I64)), name="divisor")
    quot = te.compute(out_shape, lambda *i: _div_round_away(num(*i), safe(*i)), name="quot")
    lo, hi = _dtype_range(a["dtype"])
    fin = finish_output(k, node, a["clamp_min"], a["clamp_max"], a["dtype"])

    def out_fn(*i):
        nv = num(*i)
        # b - zb = 0: the largest step of the output range, signed as the numerator
        saturated = tir.Select(nv > zero, tir.const(hi - lo, I64),
                               tir.Select(nv < zero, tir.const(lo - hi, I64), zero))
        return fin(tir.Select(den(*i) != zero, quot(*i), saturated), i)
    return k.finish(te.compute(out_shape, out_fn, name="out"))


@tvm_op("qcast")
def lower_qcast(low: Lowering, node: Node, _rq=None):
    """A plain integer or bool tensor onto the output grid (integer_transformer._qcast)."""
    x = node.inputs[0]
    a = node.attrs
    k = low.kernel(node)
    xt = k.value(x)
    fin = finish_output(k, node, a["clamp_min"], a["clamp_max"], a["dtype"])
    out = te.compute(low.shape(x), lambda *i: fin(_rescale(
        i64(xt(*i)), a["multiplier"], a["shift"], a["rounding"]), i), name="out")
    return k.finish(out)


# ---------------------------------------------------------------------------------- data movement

@tvm_op("gather")
def lower_gather(low: Lowering, node: Node, _rq=None):
    """np.take(data, indices, axis); a negative index counts from the end. The interpreter
    rejects indices outside [-n, n); the kernel clamps them so none reads outside `data`."""
    data, indices = node.inputs
    dshape, ishape = low.shape(data), low.shape(indices)
    ax = node.attrs["axis"] % len(dshape)
    n = dshape[ax]
    k = low.kernel(node)
    dt = k.value(data, "data")
    it = k.value(indices, "indices")
    ni = len(ishape)

    def fn(*o):
        j = i64(it(*o[ax:ax + ni]))
        j = tir.Select(j < tir.const(0, I64), j + tir.const(n, I64), j)
        j = tir.min(tir.max(j, tir.const(0, I64)), tir.const(n - 1, I64)).astype("int32")
        return dt(*o[:ax], j, *o[ax + ni:])
    return k.finish(te.compute(low.shape(node.output), fn, name="out"))


@tvm_op("cast")
def lower_cast(low: Lowering, node: Node, _rq=None):
    """x.astype(dtype): to bool is x != 0; integers wrap and floats truncate as numpy's astype
    does (an out-of-range float is undefined in both)."""
    x = node.inputs[0]
    dtype = node.attrs["dtype"]
    if dtype == "f16" or x.dtype == "f16":
        raise TVMBackendError(f"node %{node.name} (cast): f16 is not a TVM backend dtype")
    k = low.kernel(node)
    xt = k.value(x)
    dt = tvm_dtype(dtype)
    if dt == "bool":
        fn = lambda *i: xt(*i) != tir.const(0, xt.dtype)  # noqa: E731
    else:
        fn = lambda *i: xt(*i).astype(dt)  # noqa: E731
    return k.finish(te.compute(low.shape(x), fn, name="out"))


# ---------------------------------------------------------------------------------- add

@tvm_op("add")
def lower_add(low: Lowering, node: Node, _rq=None):
    """Float `add` (a float island) stays a Relax add; in an integer graph `add` sums i32
    accumulators (integer._add_accumulators), which the interpreter keeps inside int32."""
    if all(v.dtype.startswith("f") for v in list(node.inputs) + list(node.outputs)):
        return lower_float_binary(low, node, _rq)
    a_v, b_v = node.inputs
    if a_v.dtype != "i32" or b_v.dtype != "i32":
        raise TVMBackendError(f"node %{node.name} (add): integer add takes two i32 "
                              f"accumulators, got {a_v.dtype} %{a_v.name} and {b_v.dtype} "
                              f"%{b_v.name}; quantized tensors are added with qadd")
    out_shape = low.shape(node.output)
    rank = len(out_shape)
    k = low.kernel(node)
    at_, bt = k.value(a_v, "a"), k.value(b_v, "b")
    ai, bi = _broadcast_index(low.shape(a_v), rank), _broadcast_index(low.shape(b_v), rank)
    out = te.compute(out_shape, lambda *i: at_(*ai(i)) + bt(*bi(i)), name="out")
    return k.finish(out)
