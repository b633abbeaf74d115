"""The integer arithmetic of `qcompile.quant.intmath` as TIR expressions.

Each function here builds, from TIR expressions, exactly the integer formula of its intmath
twin (same operations, same tie rules, int64 intermediates), so a TVM kernel and the
interpreter agree bit for bit. intmath raises where a value would leave its declared width;
compiled code cannot raise, so these formulas assume the graph ran clean in the interpreter
(the tests compare both on the same inputs).

Constants may be Python ints (one value for the whole tensor, folded at build time) or int64
TIR expressions (a per-channel table read at the element's channel). Values may be scalars
or whole vectors (the pixel-lanes MAC kernels hand their epilogue 8 or 16 pixels of one
channel, with that channel's constants as scalars); the casts and selects here keep the
lanes, and `srdhm` has a vector form shaped for x86's vpmuldq.
"""
from __future__ import annotations

from typing import Union

from tvm import tirx as tir

Expr = Union[int, "tir.PrimExpr"]

I64 = "int64"
I32 = "int32"
INT32_LO, INT32_HI = -(1 << 31), (1 << 31) - 1


def expr(e):
    """A TIR expression from `e` (a te tensor element `t[i, j]` is a TensorSlice until used)."""
    return e.asobject() if hasattr(e, "asobject") else e


def dtype_of(e) -> str:
    """The dtype of a TIR expression ("int64", "float32", ...)."""
    return str(expr(e).ty)


def lanes_of(e) -> int:
    """How many lanes a TIR expression has (1 for a scalar)."""
    dt = dtype_of(e)
    return int(dt.split("x")[1]) if "x" in dt else 1


def as_type(v, dtype: str):
    """`v` converted to the scalar type `dtype`, keeping its lanes: the formulas here build
    both scalar expressions and whole vectors (the pixel-lanes kernels' epilogues)."""
    v = expr(v)
    n = lanes_of(v)
    dt = dtype if n == 1 else f"{dtype}x{n}"
    return v if dtype_of(v) == dt else v.astype(dt)


def i64(v: Expr):
    """`v` as an int64 TIR expression (scalar or vector)."""
    if isinstance(v, int):
        return tir.const(v, I64)
    return as_type(v, I64)


def i32(v: Expr):
    """`v` as an int32 TIR expression (scalar or vector). Narrowing an int64 expression is a
    plain truncation: callers only pass values the interpreter proved to fit int32."""
    if isinstance(v, int):
        return tir.const(v, I32)
    return as_type(v, I32)


def select(cond, a, b):
    """tir.Select with scalar branches broadcast to a vector condition's lanes."""
    n = lanes_of(cond)
    if n > 1:
        a, b = (x if lanes_of(x) == n else tir.Broadcast(expr(x), n) for x in (a, b))
    return tir.Select(cond, a, b)


def _pow2(e: Expr, dtype: str = I64):
    if isinstance(e, int):
        return tir.const(1 << e, dtype)
    return tir.const(1, dtype) << as_type(e, dtype)


#: SRDHM of a whole vector two lanes per int64 word (_srdhm_pairs); False: lane by lane, as
#: LLVM lowers the scalar form (benchmarks/tvm_kernels.py compares the two)
PAIRED_SRDHM = True


def srdhm(a, m0: Expr):
    """SaturatingRoundingDoublingHighMul of int32 values (intmath.srdhm), as int64:
    trunc((a*m0 + nudge) / 2**31), nudge = 2**30 if a*m0 >= 0 else 1 - 2**30.

    For a*m0 >= 0 that is floor((a*m0 + 2**30) / 2**31); for a*m0 < 0 the sum is negative and
    trunc(s / 2**31) = floor((s + 2**31 - 1) / 2**31), which is the same floor. So the result
    is `(a*m0 + 2**30) >> 31` (arithmetic shift) in both cases: no select, no division, and
    the product of two sign-extended int32 values is one vpmuldq on x86. The
    INT32_MIN * INT32_MIN saturation cannot occur: Q31 multipliers are never negative."""
    if PAIRED_SRDHM and lanes_of(a) > 1 and lanes_of(a) % 2 == 0:
        return i64(_srdhm_pairs(i32(a), i32(m0)))
    ab = i64(i32(a)) * i64(i32(m0))
    return (ab + tir.const(1 << 30, I64)) >> tir.const(31, I64)


def _srdhm_pairs(a, m0):
    """srdhm of an int32 vector, computed on its lanes two at a time as int64 words, in the
    shape of x86's vpmuldq (which multiplies the sign-extended low halves of 64-bit lanes):
    the even lanes' products from the words' low halves, the odd lanes' from the high halves.
    The result of (p + 2**30) >> 31 fits int32, so it is bits 31..62 of p + 2**30: for an even
    lane the low half of that sum shifted right by 31, for an odd lane the high half of it
    doubled, which needs no shift into place. Without this, LLVM widens every lane to int64
    and shuffles the halves back together."""
    n = lanes_of(a)
    w64 = f"int64x{n // 2}"
    c32, c31 = tir.const(32, I64), tir.const(31, I64)
    aw = tir.reinterpret(w64, a)
    mv = m0 if lanes_of(m0) == n else tir.Broadcast(m0, n)
    mw = tir.reinterpret(w64, mv)
    nudge = tir.const(1 << 30, I64)
    even = ((aw << c32) >> c32) * ((mw << c32) >> c32)
    odd = (aw >> c32) * (mw >> c32)
    low = tir.const(0xFFFFFFFF, I64)
    words = (((even + nudge) >> c31) & low) | (((odd + nudge) << tir.const(1, I64)) & ~low)
    return tir.reinterpret(f"int32x{n}", words)


def _rdbpot32(x, e: Expr):
    """intmath.rdbpot in int32: (x >> e) + (rem > thr), rem = x & (2**e - 1),
    thr = ((2**e - 1) >> 1) + (x < 0) (x appears three times, mask twice). Every step stays in int32 (AVX2 has variable 32-bit
    shifts, not 64-bit arithmetic ones), and nothing overflows for any int32 x, e in [0, 31]."""
    if isinstance(e, int) and e == 0:
        return i32(x)
    xv, e32 = i32(x), i32(e)
    one, zero = tir.const(1, I32), tir.const(0, I32)
    mask = tir.const((1 << e) - 1, I32) if isinstance(e, int) else _pow2(e, I32) - one
    thr = (mask >> one) + select(xv < zero, one, zero)
    return (xv >> e32) + select((xv & mask) > thr, one, zero)


def rdbpot(x, e: Expr):
    """RoundingDivideByPOT (intmath.rdbpot) of an int32 value: x / 2**e rounded half away
    from zero, returned as int64."""
    return i64(_rdbpot32(x, e))


def _left_right(shift: Expr, shift_range: tuple = None):
    """(left, right) = (max(shift, 0), max(-shift, 0)); a side that `shift_range` (the static
    (min, max) of a per-channel table) rules out is the int 0, so no shift is emitted."""
    if isinstance(shift, int):
        return max(shift, 0), max(-shift, 0)
    lo, hi = shift_range or (-31, 31)
    zero = tir.const(0, I32)
    s = i32(shift)
    left = 0 if hi <= 0 else s if lo >= 0 else tir.max(s, zero)
    right = 0 if lo >= 0 else -s if hi <= 0 else tir.max(-s, zero)
    return left, right


#: RDBPOT by a right shift known to be at least 1 in its shorter form (_rdbpot_from_1)
SHORT_RDBPOT = True


def _rdbpot_from_1(x, e: Expr):
    """intmath.rdbpot(x, e) for e >= 1 and INT32_MIN < x < INT32_MAX (every srdhm result:
    |srdhm| <= 2**31 - 2): with y = x - [x < 0], (floor(y / 2**(e-1)) + 1) >> 1. For x >= 0
    that is floor((x + 2**(e-1)) / 2**e), half up; for x < 0 it is
    floor((x - 1 + 2**(e-1)) / 2**e), which rounds a tie down, away from zero. Both steps
    are exact floors of the same quotient (floor((floor(q) + 1) / 2) = floor((q + 1) / 2)),
    and nothing overflows: x - 1 > INT32_MIN - 1 and the +1 meets at most 2**31 - 2. Five
    int32 vector operations against _rdbpot32's six, and no mask or threshold constant."""
    xv = i32(x)
    one = tir.const(1, I32)
    y = xv + (xv >> tir.const(31, I32))
    return ((y >> (i32(e) - one)) + one) >> one


def requantize32(x, m0: Expr, shift: Expr, rounding: str, shift_range: tuple = None):
    """x * m0 * 2**(shift - 31) rounded per `rounding` (intmath.requantize / shift_requantize)
    as an int32 expression.

    `x` is an integer expression holding an int32 value. intmath raises wherever an
    intermediate or the result would leave int32, so here they all fit: everything runs in
    int32 except the one 32x32->64 product, which vectorises (vpmuldq) where int64 chains
    with per-channel 64-bit shifts would not. `shift_range`, the static (min, max) of a
    per-channel shift table, drops the shifts it rules out."""
    if rounding == "shift_only":
        left, right = _left_right(shift)
        if isinstance(shift, int):
            return i32(x) << tir.const(left, I32) if shift >= 0 else _rdbpot32(x, right)
        xv = i32(x)
        return select(i32(shift) >= tir.const(0, I32), xv << left, _rdbpot32(xv, right))
    if rounding == "gemmlowp_double":
        left, right = _left_right(shift, shift_range)
        xs = i32(x) if isinstance(left, int) and left == 0 else \
            i32(x) << (tir.const(left, I32) if isinstance(left, int) else left)
        y = i32(srdhm(xs, m0))
        at_least_1 = right >= 1 if isinstance(right, int) else \
            shift_range is not None and shift_range[1] <= -1
        return _rdbpot_from_1(y, right) if SHORT_RDBPOT and at_least_1 else _rdbpot32(y, right)
    if rounding in ("single_half_up", "single_half_away"):
        # n = 31 - shift in [1, 62]: the shift itself has to be 64-bit
        n = (31 - shift) if isinstance(shift, int) else tir.const(31, I64) - i64(shift)
        half = _pow2(n - 1)
        prod = i64(i32(x)) * i64(i32(m0))
        if rounding == "single_half_away":
            offset = select(prod >= tir.const(0, I64), half, half - tir.const(1, I64))
            return i32((prod + offset) >> i64(n))
        return i32((prod + half) >> i64(n))  # arithmetic shift: floor
    raise ValueError(f"unknown requantization rounding {rounding!r}")


def requantize(x, m0: Expr, shift: Expr, rounding: str, shift_range: tuple = None):
    """requantize32 as an int64 expression (the form the element-wise kernels add to)."""
    return i64(requantize32(x, m0, shift, rounding, shift_range))


def requantize_clamp(x, m0: Expr, shift: Expr, rounding: str, zy: int, lo: int, hi: int,
                     dtype: str, shift_range: tuple = None):
    """clip(requantize(x) + zy, lo, hi) stored as `dtype`, in int32 where that is exact:
    clip(y + zy, lo, hi) == clip(y, lo - zy, hi - zy) + zy, and the right side cannot
    overflow when both bounds fit int32 (AVX2 has no 64-bit min/max)."""
    return offset_clamp(requantize32(x, m0, shift, rounding, shift_range), zy, lo, hi, dtype)


def offset_clamp(y, zy: Expr, lo: int, hi: int, dtype: str, zy_range: tuple = None):
    """clip(y + zy, lo, hi) stored as `dtype`, for an int32 expression `y`, in int32 where that
    is exact: clip(y + zy, lo, hi) == clip(y, lo - zy, hi - zy) + zy, and the right side cannot
    overflow when both bounds fit int32 (AVX2 has no 64-bit min/max). `zy` is an int, or an
    int32 expression (a per-channel table entry) whose values lie in `zy_range` (min, max)."""
    zlo, zhi = (zy, zy) if isinstance(zy, int) else zy_range
    if not (INT32_LO <= lo - zhi and hi - zlo <= INT32_HI):
        return clamp_cast(i64(y) + i64(zy), lo, hi, dtype)
    y = i32(y)
    if isinstance(zy, int):
        y = tir.min(tir.max(y, tir.const(lo - zy, I32)), tir.const(hi - zy, I32))
        return as_type(y + tir.const(zy, I32), dtype) if zy else as_type(y, dtype)
    z = i32(zy)
    y = tir.min(tir.max(y, tir.const(lo, I32) - z), tir.const(hi, I32) - z)
    return as_type(y + z, dtype)


def entry32(table, idx):
    """A per-channel table entry as int32 (the table is an int32 tensor), or the folded
    constant as a Python int."""
    return table if isinstance(table, int) else i32(table(idx))


def fits32(lo: int, hi: int) -> bool:
    """Whether every integer in [lo, hi] fits int32."""
    return INT32_LO <= lo and hi <= INT32_HI


def wrap(acc, bits: int):
    """acc modulo 2**bits, sign-extended (the integer ops' `_wrap`), on an int64 expression."""
    half = tir.const(1 << (bits - 1), I64)
    return ((i64(acc) + half) & tir.const((1 << bits) - 1, I64)) - half


def clamp_cast(y, lo: int, hi: int, dtype: str):
    """clip(y, lo, hi) stored as `dtype`."""
    dt = dtype_of(y).split("x")[0]
    return as_type(tir.min(tir.max(y, tir.const(lo, dt)), tir.const(hi, dt)), dtype)


def div_round_away(num, den):
    """num / den rounded half away from zero, exactly, for den > 0 (int64 expressions):
    trunc((2 num + sign(num) den) / (2 den))."""
    num = i64(num)
    two = tir.const(2, I64)
    return tir.truncdiv(two * num + tir.Select(num < 0, -den, den), two * den)


# ---- integer softmax pieces (int32 i-exp, exact float64 quotient) -------------------------------

F64 = "float64"


def iexp32(u, frac_bits: int, exp_b: int, exp_c: int, live=None):
    """I-BERT's i-exp of -u (qsoftmax's e) in int32: p = min(u >> K, 31),
    rb = exp_b - (u & (2**K - 1)), e = (rb**2 + exp_c) >> p; 0 where `live` is false.

    `u` is an int32 expression holding a value >= 0. With the op's checks
    (exp_b > 2**K, exp_b**2 + exp_c < 2**31) rb is in (0, exp_b], so rb**2 + exp_c fits
    int32; every step is one AVX2 int32 instruction (vpsravd, vpand, vpmulld, vpminsd)."""
    u = i32(u)
    p = tir.min(u >> tir.const(frac_bits, I32), tir.const(31, I32))
    rb = tir.const(exp_b, I32) - (u & tir.const((1 << frac_bits) - 1, I32))
    e = (rb * rb + tir.const(exp_c, I32)) >> p
    return e if live is None else tir.Select(live, e, tir.const(0, I32))


def softmax_quotient_f64(e, s, half_inv, k: int):
    """floor((e * 2**(k+1) + S) / (2 S)) as int32, in float64, exactly: `e` an int32
    expression in [0, S], `s` the row sum S > 0 as float64 and `half_inv` = fl(0.5 / S).

    Why it is exact, for e < 2**31, k <= 16 and S <= 2**51 (rows up to 2**20 long):
    - num = e * 2**(k+1) + S and D = 2 S are integers below 2**53, so float64 holds them
      exactly (the product by a power of two and the sum are exact).
    - The quotient Q = num / D is at most 2**k + 1/2 (e <= S). c = fl(num * fl(1/D)) carries
      two roundings, |c - Q| <= Q 2**-51.9 < 2**-34, so q0 = floor(c) is floor(Q) or one off.
    - q0 D <= num + D <= 2**48 + 3 S < 2**53, so the product is exact, and so is
      rem = num - q0 D (a difference of integers below 2**53; a fused multiply-add is exact
      too). q0 is floor(Q) iff 0 <= rem < D; otherwise one step up or down fixes it.
    The vector code is vcvtdq2pd, vmulpd, vroundpd, vfmadd/vsubpd, two compares and blends:
    no 64-bit integer division."""
    num = i32(e).astype(F64) * tir.const(float(1 << (k + 1)), F64) + s
    den = s * tir.const(2.0, F64)
    q0 = tir.floor(num * half_inv)
    rem = num - q0 * den
    one, zero = tir.const(1.0, F64), tir.const(0.0, F64)
    q = q0 + tir.Select(rem >= den, one, zero) - tir.Select(rem < zero, one, zero)
    return q.astype(I32)


def let(value, body, name: str = "t"):
    """body(v) with v bound to `value` once (a TIR Let). A formula that uses its operand several
    times (rdbpot reads x three times) would otherwise copy the whole operand expression into
    each use, and nesting requantizations multiplies the copies: TVM's simplifier then takes
    seconds and LLVM sees one huge expression."""
    value = expr(value)
    dt = dtype_of(value)
    v = tir.Var(name, dt)
    # TVM's NarrowDataType pass memoises a bound per expression and rejects a Let variable
    # that is bounded by its value in one place and unbounded in another; an opaque
    # same-type reinterpret (no instruction) makes the bound the whole type everywhere
    return tir.Let(v, tir.call_intrin(dt, "tirx.reinterpret", value), body(v))


# ---- integer LayerNorm pieces (exact float64 division rounded half away) ------------------------

#: round_away_quotient_f64 is exact while |c| scale <= F64_DIV_MAX_NUM and den <= F64_DIV_MAX_DEN.
F64_DIV_MAX_NUM = 1 << 49
F64_DIV_MAX_DEN = 1 << 31


def round_away_row_constants(den, scale: int):
    """(k, h) for round_away_quotient_f64 from `den`, a float64 expression holding the row's
    divisor, an integer in [1, 2**31]: k = fl(scale / den), h = fl(1/2 + fl(1/(4 den)))."""
    den = expr(den)
    k = tir.const(float(scale), F64) / den
    h = tir.const(0.5, F64) + tir.const(0.25, F64) / den
    return k, h


def round_away_quotient_f64(c, k, h):
    """div_round_away(c scale, den) as int32, exactly, from an int32 expression `c` and the
    row constants (k, h) of round_away_row_constants: sign(c) trunc(fl(|c| k + h)). One
    multiply-add per element: no division, no integer correction.

    Preconditions: a = |c| scale <= 2**49, den an integer in [1, 2**31], scale <= 2**53, and
    a quotient below 2**31 in magnitude. Why the result is exact (u = 2**-53):
    - The magnitude wanted is m = floor(Q + 1/2), Q = a / den. Write 2a + den = 2 den m + j
      with 0 <= j < 2 den: then Q + 1/2 + 1/(4 den) = m + (2j + 1) / (4 den), which lies in
      [m + 1/(4 den), m + 1 - 1/(4 den)]. So any s within less than 1/(4 den) of
      Q + 1/2 + 1/(4 den) has floor(s) = m: the bias 1/(4 den) turns the exact ties
      (j = 0, rounded up, away from zero) into ordinary points of [m, m + 1).
    - |c| and scale are integers below 2**53, exact in float64; k = (scale / den)(1 + e1), so
      fl(|c| k) = Q (1 + e1)(1 + e2) is within 2.01 Q u of Q. h is within
      2**-54 + 2**-55 < u of 1/2 + 1/(4 den) (1/(4 den) <= 1/4 carries a relative error u,
      the sum h < 1 half an ulp, 2**-54). The last sum (or a fused multiply-add, which is
      closer) adds at most (Q + 1) 1.01 u. In all, s is within (3.02 Q + 2.02) u of the
      biased value, and 4 den (3.02 Q + 2.02) u < 1 since 12.08 a + 8.08 den
      <= 12.08 2**49 + 8.08 2**31 < 2**53.
    - s > 0, so truncation to int32 is the floor, and m < 2**31 fits; so does -m.
    The vector code per four elements is vcvtdq2pd, vandpd, vfmadd, vcvttpd2dq, then one
    int32 negate and blend per eight."""
    cv = i32(c)
    # the magnitude in float64 (vandpd): TVM rewrites an integer abs into a Select on c's sign
    # and hoists the outer Select over it, which would compute the quotient twice
    m = (tir.abs(cv.astype(F64)) * expr(k) + expr(h)).astype(I32)
    return tir.Select(cv < tir.const(0, I32), -m, m)
