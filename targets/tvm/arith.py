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


def _pow2(e: Expr):
    if isinstance(e, int):
        return tir.const(1 << e, I64)
    return tir.const(1, I64) << e


def srdhm(a, m0: Expr):
    """SaturatingRoundingDoublingHighMul of int32 values held in int64 (intmath.srdhm):
    trunc((a*m0 + nudge) / 2**31), nudge = 2**30 if a*m0 >= 0 else 1 - 2**30.

    The INT32_MIN * INT32_MIN saturation cannot occur: Q31 multipliers are never negative.
    Each formula here uses its operand at most twice: TVM's simplifier is slow on expression
    trees that repeat subterms, and nesting multiplies the repeats."""
    ab = a * i64(m0)
    nudge = tir.Select(ab >= 0, tir.const(1 << 30, I64), tir.const(1 - (1 << 30), I64))
    return tir.truncdiv(ab + nudge, tir.const(1 << 31, I64))


def rdbpot(x, e: Expr):
    """RoundingDivideByPOT (intmath.rdbpot): x / 2**e rounded half away from zero.

    intmath's `(x >> e) + (rem > thr)` rounds ties away from zero; so does
    trunc((x + sign(x) * 2**(e-1)) / 2**e), which is what this computes (exact in int64)."""
    if isinstance(e, int):
        if e == 0:
            return x
        half = tir.const(1 << (e - 1), I64)
    else:
        half = _pow2(e) >> tir.const(1, I64)  # e = 0: half 0, division by 1
    return tir.truncdiv(x + tir.Select(x < 0, -half, half), _pow2(e))


def _left_right(shift: Expr):
    if isinstance(shift, int):
        return max(shift, 0), max(-shift, 0)
    zero = tir.const(0, I64)
    return tir.max(shift, zero), tir.max(-shift, zero)


def requantize(x, m0: Expr, shift: Expr, rounding: str):
    """x * m0 * 2**(shift - 31) rounded per `rounding` (intmath.requantize / shift_requantize).

    `x` is an int64 expression holding an int32 value; the result is int64."""
    x = i64(x)
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
        prod = x * i64(m0)
        if rounding == "single_half_away":
            offset = tir.Select(prod >= 0, half, half - tir.const(1, I64))
        else:
            offset = half
        return (prod + offset) >> i64(n)  # arithmetic shift: floor
    raise ValueError(f"unknown requantization rounding {rounding!r}")


def wrap(acc, bits: int):
    """acc modulo 2**bits, sign-extended (the integer ops' `_wrap`), on an int64 expression."""
    half = tir.const(1 << (bits - 1), I64)
    return ((i64(acc) + half) & tir.const((1 << bits) - 1, I64)) - half


def clamp_cast(y, lo: int, hi: int, dtype: str):
    """clip(y, lo, hi) stored as `dtype`."""
    dt = dtype_of(y)
    return tir.min(tir.max(y, tir.const(lo, dt)), tir.const(hi, dt)).astype(dtype)


def div_round_away(num, den):
    """num / den rounded half away from zero, exactly, for den > 0 (int64 expressions):
    trunc((2 num + sign(num) den) / (2 den))."""
    num = i64(num)
    two = tir.const(2, I64)
    return tir.truncdiv(two * num + tir.Select(num < 0, -den, den), two * den)
