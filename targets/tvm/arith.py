"""The integer arithmetic of `qcompile.quant.intmath` as TIR expressions.

Each function here builds, from TIR expressions, exactly the integer formula of its intmath
twin (same operations, same tie rules, int64 intermediates), so a TVM kernel and the
interpreter agree bit for bit. intmath raises where a value would leave its declared width;
compiled code cannot raise, so these formulas assume the graph ran clean in the interpreter
(the tests compare both on the same inputs).

Constants may be Python ints (one value for the whole tensor, folded at build time) or int64
TIR expressions (a per-channel table read at the element's channel).
"""
from __future__ import annotations

from typing import Union

from tvm import tirx as tir

Expr = Union[int, "tir.PrimExpr"]

I64 = "int64"
INLINE = True


def expr(e):
    """A TIR expression from `e` (a te tensor element `t[i, j]` is a TensorSlice until used)."""
    return e.asobject() if hasattr(e, "asobject") else e


def dtype_of(e) -> str:
    """The dtype of a TIR expression ("int64", "float32", ...)."""
    return str(expr(e).ty)


def i64(v: Expr):
    """`v` as an int64 TIR expression."""
    if isinstance(v, int):
        return tir.const(v, I64)
    v = expr(v)
    return v if dtype_of(v) == I64 else v.astype(I64)


def let(value, body, name: str = "t"):
    """`body(v)` with `v` bound once to `value`: without it, formulas that use a value several
    times (srdhm, rdbpot, nested rescalings) grow exponentially as expression trees."""
    value = expr(value)
    if INLINE or isinstance(value, (tir.IntImm, tir.Var)):
        return body(value)
    var = tir.Var(name, dtype_of(value))
    return tir.Let(var, value, body(var))


def _pow2(e: Expr):
    if isinstance(e, int):
        return tir.const(1 << e, I64)
    return tir.const(1, I64) << e


def srdhm(a, m0: Expr):
    """SaturatingRoundingDoublingHighMul of int32 values held in int64 (intmath.srdhm).

    The INT32_MIN * INT32_MIN saturation cannot occur: Q31 multipliers are never negative."""
    def on_product(ab):
        nudge = tir.Select(ab >= 0, tir.const(1 << 30, I64), tir.const(1 - (1 << 30), I64))
        # truncating division by 2**31 (C semantics), not a floor shift
        return let(ab + nudge, lambda s: tir.Select(s >= 0, s >> tir.const(31, I64),
                                                   -((-s) >> tir.const(31, I64))), "s")
    return let(a * i64(m0), on_product, "ab")


def rdbpot(x, e: Expr):
    """RoundingDivideByPOT (intmath.rdbpot): x / 2**e, ties away from zero."""
    if isinstance(e, int) and e == 0:
        return x

    def on_x(x):
        mask = _pow2(e) - tir.const(1, I64)
        rem = x & mask
        thr = (mask >> tir.const(1, I64)) + tir.Select(x < 0, tir.const(1, I64),
                                                       tir.const(0, I64))
        return (x >> i64(e)) + tir.Select(rem > thr, tir.const(1, I64), tir.const(0, I64))
    return let(x, on_x, "q")


def _left_right(shift: Expr):
    if isinstance(shift, int):
        return max(shift, 0), max(-shift, 0)
    zero = tir.const(0, I64)
    return tir.max(shift, zero), tir.max(-shift, zero)


def requantize(x, m0: Expr, shift: Expr, rounding: str):
    """x * m0 * 2**(shift - 31) rounded per `rounding` (intmath.requantize / shift_requantize).

    `x` is an int64 expression holding an int32 value; the result is int64."""
    return let(i64(x), lambda x: _requantize(x, m0, shift, rounding), "x")


def _requantize(x, m0: Expr, shift: Expr, rounding: str):
    if rounding == "shift_only":
        left, right = _left_right(shift)
        if isinstance(shift, int):
            return x * _pow2(left) if shift >= 0 else rdbpot(x, right)
        return tir.Select(shift >= 0, x << left, rdbpot(x, right))
    if rounding == "gemmlowp_double":
        left, right = _left_right(shift)
        xs = x if isinstance(left, int) and left == 0 else x * _pow2(left)
        return rdbpot(srdhm(xs, m0), right)
    if rounding in ("single_half_up", "single_half_away"):
        n = (31 - shift) if isinstance(shift, int) else tir.const(31, I64) - shift
        half = _pow2(n - 1)

        def on_product(prod):
            if rounding == "single_half_away":
                offset = tir.Select(prod >= 0, half, half - tir.const(1, I64))
            else:
                offset = half
            return (prod + offset) >> i64(n)
        return let(x * i64(m0), on_product, "prod")
    raise ValueError(f"unknown requantization rounding {rounding!r}")


def wrap(acc, bits: int):
    """acc modulo 2**bits, sign-extended (the integer ops' `_wrap`), on an int64 expression."""
    half = tir.const(1 << (bits - 1), I64)
    return ((i64(acc) + half) & tir.const((1 << bits) - 1, I64)) - half


def clamp_cast(y, lo: int, hi: int, dtype: str):
    """clip(y, lo, hi) stored as `dtype`."""
    dt = dtype_of(y)
    return let(y, lambda y: tir.min(tir.max(y, tir.const(lo, dt)), tir.const(hi, dt)).astype(dtype),
               "y")


def div_round_away(num, den):
    """num / den rounded half away from zero, exactly, for den > 0 (int64 expressions)."""
    two = tir.const(2, I64)

    def on_num(num):
        return let(tir.floordiv(two * tir.abs(num) + den, two * den),
                   lambda mag: tir.Select(num < 0, -mag, mag), "mag")
    return let(num, on_num, "num")
