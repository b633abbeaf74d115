"""The TVM qlayer_norm kernel at its exactness boundaries: the float64 quotient rounded half
away from zero (arith.round_away_quotient_f64) and the float64 integer square root against
Python integers, and whole qlayer_norm graphs against the interpreter on adversarial inputs
(constant rows with eps 0, a lone outlier per row, extreme and 16-bit codes, per-channel zero
points, eps large, the largest frac_bits, and the int64 paths the build-time bounds fall back
to)."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("tvm")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tvm import te  # noqa: E402

import qcompile  # noqa: E402
from qcompile.ir.graph import Graph  # noqa: E402
from qcompile.ir.types import QuantParams, TensorType, int_range, numpy_dtype  # noqa: E402
from qcompile.passes.lower_integer_transformer import layer_norm_attrs  # noqa: E402
from qcompile.targets import tvm as qtvm  # noqa: E402
from qcompile.targets.tvm import arith  # noqa: E402
from qcompile.targets.tvm.ops_transformer import _code_bounds, _isqrt_stages  # noqa: E402
from qcompile.targets.tvm.testing import list_kernel  # noqa: E402

MAX_NUM = arith.F64_DIV_MAX_NUM          # |c| scale
MAX_QUOT = 2 ** 31 - 2                   # |quotient| the kernel may produce


def round_away(num: int, den: int) -> int:
    """num / den rounded half away from zero (den > 0), in Python integers."""
    q = (2 * abs(num) + den) // (2 * den)
    return -q if num < 0 else q


# ---- the quotient on its own ----------------------------------------------------------------------

def run_quotient(cs: list[int], dens: list[int], scale: int) -> np.ndarray:
    """y[i] = round_away_quotient_f64(c[i], row constants of den[i]) (den as int64, as the
    divisor stage gives it), with the row constants as stages of their own, as in the kernel."""
    def stages(c, den):
        df = te.compute(den.shape, lambda i: den[i].astype("float64"), name="df")
        kq = te.compute(den.shape, lambda i: arith.round_away_row_constants(df[i], scale)[0],
                        name="k")
        h = te.compute(den.shape, lambda i: arith.round_away_row_constants(df[i], scale)[1],
                       name="h")
        return te.compute(den.shape, lambda i: arith.round_away_quotient_f64(c[i], kq[i], h[i]),
                          name="y")
    return list_kernel(("layer_norm", scale), stages, ("int32", "int64"))(cs, dens)


def allowed(c: int, den: int, scale: int) -> bool:
    """Inside the helper's preconditions."""
    return (abs(c) < 2 ** 31 and abs(c) * scale <= MAX_NUM and 1 <= den <= 2 ** 31
            and abs(c) * scale <= MAX_QUOT * den)


def check_quotients(pairs: list[tuple[int, int]], scale: int) -> None:
    pairs = [(c, d) for c, d in pairs if allowed(c, d, scale)]
    assert pairs, "no case inside the preconditions"
    got = run_quotient([c for c, _ in pairs], [d for _, d in pairs], scale)
    want = [round_away(c * scale, d) for c, d in pairs]
    bad = [(c, d, int(g), w) for (c, d), g, w in zip(pairs, got, want) if g != w]
    assert not bad, f"scale {scale}: (c, den, got, want) {bad[:8]}"


def _odd_divisors(v: int) -> list[int]:
    while v % 2 == 0:
        v //= 2
    small = [d for d in range(1, math.isqrt(v) + 1, 2) if v % d == 0]
    return sorted(set(small + [v // d for d in small]))


def tie_pairs(scale: int) -> list[tuple[int, int]]:
    """(c, den) with c scale / den exactly o / 2 (o odd), both signs, and one unit of c
    either side: den = 2 c scale / o for the odd divisors o of c scale. Numerators with many
    odd factors give many divisors, k = scale / den = o / (2c) rarely a short binary
    fraction, so the products round both ways."""
    out = []
    for c in (1, 3, 945, 15015, 155925, 3 ** 9, 1001 * 17, 2 ** 10 * 135, 255 * 383, 65535):
        for o in _odd_divisors(c * scale):
            if (2 * c * scale) % o or not 1 <= 2 * c * scale // o <= 2 ** 31:
                continue
            den = 2 * c * scale // o
            for cc in (c, c - 1, c + 1):
                out += [(cc, den), (-cc, den)]
    return out


# (a tie needs den to hold every factor 2 of 2 c scale, so with scale = 384 << 24 = 3 2**31 no
# divisor up to 2**31 gives one)
@pytest.mark.parametrize("scale", [1, 3, 384 << 11, 1 << 20, 12345 << 8])
def test_quotient_ties_round_away_from_zero(scale):
    pairs = tie_pairs(scale)
    assert sum(abs(c) * scale * 2 % d == 0 and abs(c) * scale * 2 // d % 2 for c, d in pairs) > 50
    check_quotients(pairs, scale)


def test_quotient_divisor_one_and_small():
    """Divisor 1 (a constant row's r = 0 becomes 1, c = 0) and small divisors up to the
    largest quotient: every result is an exact integer or a tie."""
    pairs = []
    for den in (1, 2, 3, 4):
        for c in (0, 1, -1, 2, -2, 3, -3, MAX_QUOT, -MAX_QUOT, MAX_QUOT * den, -MAX_QUOT * den,
                  MAX_QUOT * den - 1, 2 ** 30 + 1, -(2 ** 30 + 1)):
            pairs.append((c, den))
    check_quotients(pairs, 1)
    assert run_quotient([0], [1], 384 << 24).tolist() == [0]


@pytest.mark.parametrize("scale", [384 << 24, (1 << 12) << 9, 3 * 5 * 7 << 20])
def test_quotient_largest_numerators(scale):
    """|c| scale at and just below 2**49, with divisors from the smallest the quotient bound
    allows up to 2**31, and quotients at k + 1/2 +- one unit of the numerator."""
    c_max = MAX_NUM // scale
    pairs = []
    for c in (c_max, c_max - 1, c_max // 2 + 1, c_max // 3):
        a = c * scale
        d_min = -(-a // MAX_QUOT)
        for den in (d_min, d_min + 1, 2 * d_min + 1, 2 ** 31 - 1, 2 ** 31, 3 ** 19, 2 ** 25 + 1):
            pairs += [(c, den), (-c, den)]
        # den odd near sqrt-sized divisors; numerators whose quotient is within 1/den of k + 1/2
        for den in (2 ** 24 + 1, 2 ** 27 - 1, 1_000_003):
            k = (2 * a + den) // (2 * den)
            for cc in range(max(1, c - 3), c + 1):
                pairs += [(cc, den), (-cc, den)]
            pairs.append((((2 * k - 1) * den) // (2 * scale), den))
    check_quotients(pairs, scale)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_quotient_random(data):
    scale = data.draw(st.sampled_from([1, 7, 384 << 11, 384 << 24, 96 << 16, (1 << 21) - 1]))
    den = data.draw(st.integers(1, 2 ** 31))
    c_lim = min(MAX_NUM // scale, (MAX_QUOT * den) // scale, 2 ** 31 - 1)
    c = data.draw(st.integers(-c_lim, c_lim))
    # also the numerator nearest a tie for this divisor
    near = round(((2 * abs(c) * scale // den) | 1) * den / (2 * scale))
    check_quotients([(c, den), (near, den), (-near, den), (near + 1, den)], scale)


# ---- the square root on its own -------------------------------------------------------------------

def run_isqrt(values: list[int]) -> list[int]:
    return list_kernel("isqrt", lambda v: _isqrt_stages(v, v.shape), ("int64",))(values).tolist()


def test_isqrt_at_squares_and_the_top_of_the_range():
    top = 2 ** 62 - 1
    roots = [0, 1, 2, 3, 94906265, 94906266, 2 ** 26 + 1, 2 ** 31 - 1, math.isqrt(top),
             3037000499, 2 ** 30, 1 << 29]
    values = {0, 1, 2, 3, top, top - 1, 2 ** 53, 2 ** 53 + 1, 2 ** 53 - 1, 2 ** 61 + 1}
    for k in roots:
        for v in (k * k - 1, k * k, k * k + 1, k * k + 2 * k, (k + 1) ** 2 - 2):
            if 0 <= v <= top:
                values.add(v)
    values = sorted(values)
    assert run_isqrt(values) == [math.isqrt(v) for v in values]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2 ** 62 - 1), min_size=1, max_size=64))
def test_isqrt_random(values):
    # squares and their neighbours where rounding the operand to 53 bits matters most
    more = [min(2 ** 62 - 1, math.isqrt(v) ** 2 + d) for v in values for d in (-1, 0)]
    more = [max(v, 0) for v in more] + values
    assert run_isqrt(more) == [math.isqrt(v) for v in more]


# ---- whole qlayer_norm graphs ----------------------------------------------------------------------

def qp(scale: float, zp, dtype: str = "i8", axis=None) -> QuantParams:
    return QuantParams(scale, zp, int(dtype[1:]), dtype[0] == "i", axis=axis)


def ln_graph(shape, q_in: QuantParams, q_out: QuantParams, eps: float, rounding: str,
             rng, attrs_override: dict | None = None, gamma_codes=None) -> Graph:
    """A single qlayer_norm over the last axis; `attrs_override` replaces attributes (and then
    gamma/beta codes given explicitly keep acc inside int32)."""
    g = Graph("ln")
    x = g.add_input("x", TensorType((None, *shape[1:]), q_in.storage_dtype), q_in)
    n = shape[-1]
    attrs, gc, qg, bc, qb = layer_norm_attrs(q_in, q_out, n, eps, rng.uniform(0.2, 1.6, n),
                                             rng.uniform(-1.2, 1.5, n))
    if attrs_override:
        attrs.update(attrs_override)
    if gamma_codes is not None:
        gc, bc = gamma_codes, np.zeros(n, np.int64)
    gv = g.add_constant("gamma", np.asarray(gc).astype(np.int16), "i16", qg)
    bv = g.add_constant("beta", np.asarray(bc).astype(np.int32), "i32", qb)
    node = g.add_node("qlayer_norm", [x, gv, bv], {"axis": -1, **attrs, "rounding": rounding},
                      name="ln")
    node.output.quant = q_out
    g.outputs = [node.output]
    return g


def adversarial(rng, shape, dtype: str, span: int | None = None) -> np.ndarray:
    """Codes that stress the kernel: constant rows (v = 0) at both ends of the range,
    alternating extremes, one outlier in a constant row (the largest |z|, near
    sqrt(N - 1) 2**F), two outliers, and random rows. `span` narrows the varying rows to
    +-span around the middle, or span below the top / above the bottom for the outliers: with
    16-bit codes the interpreter refuses rows whose N (v + eps) leaves 62 bits."""
    lo, hi = int_range(int(dtype[1:]), dtype[0] == "i")
    mid = (lo + hi) // 2
    s = span if span is not None else (hi - lo) // 2
    x = rng.integers(max(lo, mid - s), min(hi, mid + s) + 1, shape).astype(numpy_dtype(dtype))
    flat = x.reshape(-1, shape[-1])
    n = shape[-1]
    rows = [np.full(n, lo), np.full(n, hi), np.full(n, mid),
            np.where(np.arange(n) % 2, min(hi, mid + s), max(lo, mid - s))]
    for pos, base, val in ((0, lo, lo + 2 * s), (n - 1, hi, hi - 2 * s), (n // 2, mid, mid + s),
                           (1, hi, hi - 1)):
        r = np.full(n, base)
        r[pos] = min(max(val, lo), hi)
        rows.append(r)
    r = np.full(n, lo)
    r[[0, n - 1]] = min(lo + 2 * s, hi)
    rows.append(r)
    for i, r in enumerate(rows[:len(flat)]):
        flat[i] = r
    return x


def assert_exact(g: Graph, x: np.ndarray, targets=(None,)) -> None:
    ref = qcompile.run(g, [x], mode="int")[0]
    for target in targets:
        out = qtvm.build(g, target, batch=x.shape[0])(x)[0]
        assert out.dtype == ref.dtype and out.shape == ref.shape
        bad = np.argwhere(out != ref)
        assert bad.size == 0, f"target {target}: {len(bad)} mismatches, first at " \
                              f"{bad[0].tolist()}: {out[tuple(bad[0])]} != {ref[tuple(bad[0])]}"


def bounds_of(g: Graph) -> dict:
    node = g.nodes[-1]
    return _code_bounds(node, node.inputs[0], g.inputs[0].type.shape[-1])


@pytest.mark.parametrize("rounding", ["gemmlowp_double", "single_half_up", "single_half_away"])
@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-5, 0.5])
def test_layer_norm_i8_adversarial_rows(eps, rounding):
    rng = np.random.default_rng(int(eps * 1e6) % 997 + len(rounding))
    shape = (2, 12, 384)
    g = ln_graph(shape, qp(0.02, 5), qp(0.03, -3), eps, rounding, rng)
    assert bounds_of(g)["f64"], "the float64 quotient should serve 8-bit MiniLM shapes"
    assert_exact(g, adversarial(rng, shape, "i8"), targets=(None, {"kind": "llvm"}))


def test_layer_norm_eps_zero_gives_r_zero_on_constant_rows():
    rng = np.random.default_rng(3)
    shape = (1, 6, 32)
    g = ln_graph(shape, qp(0.05, -7), qp(0.04, 2), 0.0, "gemmlowp_double", rng)
    assert g.nodes[-1].attrs["eps_int"] == 0
    x = np.full(shape, 17, np.int8)
    x[0, 1] = -128
    x[0, 2, 5] = 3                       # one outlier: every other c equal
    assert_exact(g, x)


@pytest.mark.parametrize("frac_bits, f64", [(23, True), (20, True), (24, False)])
def test_layer_norm_largest_frac_bits(frac_bits, f64):
    """8-bit codes over 384 with large frac_bits: at F = 23, |c| N 2**F reaches 2**48.2, near
    the largest numerator the float64 quotient takes; at the op's limit F = 24 it passes 2**49
    and z takes the int64 division. Gamma codes of 1 and beta 0 keep acc = z inside int32
    (|z| up to about sqrt(N - 1) 2**24 ~ 2**28.3)."""
    rng = np.random.default_rng(frac_bits)
    shape = (2, 12, 384)
    g = ln_graph(shape, qp(0.02, 0), qp(0.5, 0), 1e-12, "single_half_away", rng,
                 {"frac_bits": frac_bits, "multiplier": 1 << 30, "shift": -frac_bits + 1},
                 gamma_codes=np.ones(384, np.int64))
    assert bounds_of(g)["f64"] == f64
    assert_exact(g, adversarial(rng, shape, "i8"))


@pytest.mark.parametrize("n, frac_bits, f64", [(384, 11, True), (384, 18, False)])
def test_layer_norm_i16_codes(n, frac_bits, f64):
    """16-bit codes: c still fits int32 over 384 elements; frac_bits 18 takes |c| N 2**F past
    2**49, so z falls back to the int64 division."""
    rng = np.random.default_rng(n + frac_bits)
    shape = (2, 14, n)
    q_in = qp(0.001, 1000, "i16")
    g = ln_graph(shape, q_in, qp(0.5, 0), 1e-12, "gemmlowp_double", rng,
                 {"frac_bits": frac_bits, "multiplier": 1 << 30, "shift": -frac_bits + 1},
                 gamma_codes=np.ones(n, np.int64))
    b = bounds_of(g)
    assert b["c32"] and b["f64"] == f64
    assert_exact(g, adversarial(rng, shape, "i16", span=2000))


def test_layer_norm_i16_long_rows_take_int64_c():
    """16-bit codes over 40000 elements: (N - 1) 65535 leaves int32, so d and c stay int64
    (the rows vary by a few codes only: wider ones leave the interpreter's 62 bits)."""
    rng = np.random.default_rng(5)
    n = 40000
    shape = (1, 10, n)
    g = ln_graph(shape, qp(0.001, 0, "i16"), qp(0.5, 0), 1e-12, "gemmlowp_double", rng,
                 {"frac_bits": 4, "multiplier": 1 << 30, "shift": -3},
                 gamma_codes=np.ones(n, np.int64))
    assert not bounds_of(g)["c32"]
    assert_exact(g, adversarial(rng, shape, "i16", span=1))


def test_layer_norm_per_channel_zero_points_i8_and_i16():
    rng = np.random.default_rng(8)
    for dtype, span in (("i8", None), ("i16", 3000)):
        n = 48
        lo, hi = int_range(int(dtype[1:]), True)
        zps = tuple(int(z) for z in rng.integers(lo // 2, hi // 2 + 1, n))
        q_in = qp(tuple(rng.uniform(0.02, 0.08, n)), zps, dtype, axis=2)
        q_out = qp(tuple(rng.uniform(0.02, 0.06, n)),
                   tuple(int(z) for z in rng.integers(-20, 20, n)), "i8", axis=2)
        shape = (2, 14, n)
        g = ln_graph(shape, q_in, q_out, 1e-12, "gemmlowp_double", rng)
        assert bounds_of(g)["f64"]
        assert_exact(g, adversarial(rng, shape, dtype, span))
