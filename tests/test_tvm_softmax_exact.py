"""The TVM qsoftmax kernel at its exactness boundaries: the float64 quotient with an integer
correction (arith.softmax_quotient_f64) against Python integers, and whole qsoftmax graphs
against the interpreter on adversarial inputs (the largest e the op allows, quotients that
land exactly on integers, rows of length 1, fully masked rows, k = 16 outputs, t = -2**31)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tvm  # noqa: E402
from tvm import te  # noqa: E402

import qcompile  # noqa: E402
from qcompile.ir.graph import Graph  # noqa: E402
from qcompile.ir.types import QuantParams, TensorType, int_range, numpy_dtype  # noqa: E402
from qcompile.passes.lower_integer_transformer import softmax_attrs  # noqa: E402
from qcompile.targets import tvm as qtvm  # noqa: E402
from qcompile.targets.tvm import arith  # noqa: E402
from qcompile.targets.tvm.ops_transformer import SOFTMAX_F64_MAX_ROW  # noqa: E402
from qcompile.targets.tvm.testing import list_kernel  # noqa: E402

#: The largest row sum the float64 quotient takes: a row of SOFTMAX_F64_MAX_ROW positions
#: that all have e = 2**31 - 1.
MAX_SUM = SOFTMAX_F64_MAX_ROW * (2 ** 31 - 1)
E_MAX = 2 ** 31 - 1


# ---- the quotient on its own ----------------------------------------------------------------------

def run_quotient(e: list[int], s: list[int], k: int) -> np.ndarray:
    """y[i] = softmax_quotient_f64(e[i], S[i]) (S as int64, as the sum stage gives it), with
    the float sum and half reciprocal as stages of their own, as in the kernel."""
    def stages(ev, sv):
        sf = te.compute(sv.shape, lambda i: sv[i].astype("float64"), name="sf")
        inv = te.compute(sv.shape, lambda i: tvm.tirx.const(0.5, "float64") / sf[i], name="inv")
        return te.compute(sv.shape, lambda i: arith.softmax_quotient_f64(ev[i], sf[i], inv[i], k),
                          name="y")
    return list_kernel(("softmax", k), stages, ("int32", "int64"))(e, s)


def exact(e: list[int], s: list[int], k: int) -> list[int]:
    return [(ei * 2 ** (k + 1) + si) // (2 * si) for ei, si in zip(e, s)]


def boundary_pairs(k: int) -> tuple[list[int], list[int]]:
    """(e, S) pairs where a float quotient is most likely to be off by one."""
    es, ss = [], []

    def add(e: int, s: int):
        if 0 <= e <= min(s, E_MAX) and 1 <= s <= MAX_SUM:
            es.append(e)
            ss.append(s)
    for s in (1, 2, 3, 7, E_MAX, 2 ** 31, MAX_SUM, MAX_SUM - 1, 2 ** 50 + 1, 3 ** 31):
        for e in (0, 1, 2, E_MAX, E_MAX - 1, s, s - 1, s // 2, s // 3):
            add(e, s)             # e = S: a row of length 1 (quotient 2**k + 1/2)
    # the quotient lands exactly on an integer y - 1/2 + 1/2: e 2**(k+1) = (2y - 1) S, and
    # one unit of e either side of it (quotients just below and above an integer + 1/2)
    for c in (1, 3, 1 << 10, (1 << 17) + 1, 12345677, MAX_SUM >> (k + 1)):
        s = c << (k + 1)
        for odd in (1, 3, 2 ** (k + 1) - 1, 2 ** (k + 1) + 1, 2 * 1000 + 1):
            e = odd * c
            for de in (-1, 0, 1):
                add(e + de, s)
    # many random landings: fl(num * fl(1 / 2S)) falls just below the integer for about one
    # in ten of them, which only the correction step repairs
    rng = np.random.default_rng(k)
    odd = 2 * rng.integers(0, 2 ** k, 3000) + 1
    cs = rng.integers(1, E_MAX // odd + 1)
    for o, c in zip(odd.tolist(), cs.tolist()):
        add(o * c, c << (k + 1))
    return es, ss


@pytest.mark.parametrize("k", [1, 7, 8, 15, 16])
def test_quotient_is_exact_at_the_boundaries(k):
    es, ss = boundary_pairs(k)
    assert len(es) > 3000
    np.testing.assert_array_equal(run_quotient(es, ss, k), exact(es, ss, k))


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 16), data=st.data())
def test_quotient_is_exact_for_random_sums(k, data):
    ss = data.draw(st.lists(st.integers(1, MAX_SUM), min_size=1, max_size=40))
    es = [data.draw(st.integers(0, min(s, E_MAX))) for s in ss]
    np.testing.assert_array_equal(run_quotient(es, ss, k), exact(es, ss, k))


# ---- whole qsoftmax graphs ------------------------------------------------------------------------

def qp(scale: float, zp: int, dtype: str) -> QuantParams:
    return QuantParams(scale, zp, int(dtype[1:]), dtype[0] == "i")


def softmax_graph(shape: tuple, q_in: QuantParams, q_out: QuantParams, attrs: dict,
                  mask_shape=None) -> Graph:
    """qsoftmax over the last axis of x; the mask (if any) is an i64 input cast to bool."""
    g = Graph("softmax")
    x = g.add_input("x", TensorType((None, *shape[1:]), q_in.storage_dtype), q_in)
    inputs = [x]
    if mask_shape is not None:
        m = g.add_input("m", TensorType((None, *mask_shape[1:]), "i64"))
        inputs.append(g.add_node("cast", [m], {"dtype": "bool"}, name="m_bool").output)
    n = g.add_node("qsoftmax", inputs, {"axis": -1, **attrs, "dtype": q_out.storage_dtype},
                   name="probs")
    n.output.quant = q_out
    g.outputs = [n.output]
    return g


def assert_bit_exact(g: Graph, inputs: list, batch: int) -> np.ndarray:
    ref = qcompile.run(g, inputs, mode="int")[0]
    out = qtvm.build(g, {"kind": "llvm"}, batch=batch)(*inputs)[0]
    assert out.dtype == ref.dtype and out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)
    return ref


#: (output dtype, k, zero point): k = 16 on i32 shows the whole quotient, unclamped
OUTPUTS = [("u8", 8, 0), ("i8", 8, -128), ("i16", 16, -32768), ("i32", 16, 0), ("i8", 7, 0),
           ("u16", 16, 0), ("i16", 1, 5)]


def test_largest_e_and_length_one_rows():
    """exp_b**2 + exp_c = 2**31 - 1, the most the op allows: the row max has e = 2**31 - 1.
    Rows of length 1 (S = e, quotient 2**k + 1/2) and rows of equal codes."""
    attrs = {"in_multiplier": 1 << 30, "in_shift": 3, "frac_bits": 15, "exp_b": 46340,
             "exp_c": 2 ** 31 - 1 - 46340 ** 2, "rounding": "gemmlowp_double"}
    rng = np.random.default_rng(0)
    for length in (1, 2, 33):
        for dtype, k, zp in OUTPUTS:
            x = rng.integers(-128, 128, (3, 4, length)).astype(np.int8)
            x[0, 1] = 100                                   # equal codes: a uniform row
            m = rng.random((3, 1, length)) < 0.7
            m[1, 0] = False                                 # fully masked
            m[2, 0] = True
            g = softmax_graph((3, 4, length), qp(0.05, 0, "i8"), qp(2.0 ** -k, zp, dtype),
                              attrs, (3, 1, length))
            y = assert_bit_exact(g, [x, m.astype(np.int64)], 3)
            if length == 1 and dtype == "i32":
                assert (y == 2 ** k).all()


def test_t_at_int32_min():
    """shift_only by 31: d = -1 gives t = -2**31, whose negation leaves int32 (e = 0)."""
    attrs = {"in_multiplier": 0, "in_shift": 31, "frac_bits": 14, "rounding": "shift_only",
             **{k: v for k, v in softmax_attrs(qp(0.1, 0, "i8")).items()
                if k in ("exp_b", "exp_c")}}
    x = np.array([[[5, 4, 5, 4], [-128, -128, -128, -127], [0, 0, 0, 0]]], np.int8)
    g = softmax_graph((1, 3, 4), qp(0.1, 0, "i8"), qp(2.0 ** -16, 0, "i32"), attrs)
    y = assert_bit_exact(g, [x], 1)
    assert (y[0, 0] == [2 ** 15, 0, 2 ** 15, 0]).all()


def test_sixteen_bit_codes_and_minimal_frac_bits():
    rng = np.random.default_rng(3)
    q_in = qp(0.0004, 17, "i16")
    for frac in (4, 14):
        attrs = {**softmax_attrs(q_in, frac), "rounding": "single_half_away"}
        x = rng.integers(-32768, 32768, (2, 3, 50)).astype(np.int16)
        x[0, 0, :3] = [32767, -32768, 32767]
        m = rng.random((2, 3, 50)) < 0.5
        m[1, 2] = False
        g = softmax_graph((2, 3, 50), q_in, qp(2.0 ** -16, 0, "i32"), attrs, (2, 3, 50))
        assert_bit_exact(g, [x, m.astype(np.int64)], 2)


@st.composite
def softmax_cases(draw):
    in_dtype = draw(st.sampled_from(["i8", "u8", "i16"]))
    lo, hi = int_range(int(in_dtype[1:]), in_dtype[0] == "i")
    scale = draw(st.sampled_from([0.002, 0.03, 0.2, 1.5, 9.0])) / (256 if in_dtype == "i16" else 1)
    q_in = qp(scale, draw(st.integers(lo // 4, hi // 4)), in_dtype)
    frac = draw(st.integers(4, 14))   # 15 makes exp_b**2 + exp_c too large
    try:
        attrs = softmax_attrs(q_in, frac)
    except Exception:                 # a scale too large for this grid: lower-integer refuses
        attrs = softmax_attrs(q_in, 4)
    attrs["rounding"] = draw(st.sampled_from(["gemmlowp_double", "single_half_up",
                                              "single_half_away"]))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 40)))
    mask_kind = draw(st.sampled_from(["none", "keys", "full"]))
    mask_shape = {"none": None, "keys": (shape[0], 1, shape[2]), "full": shape}[mask_kind]
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return q_in, attrs, shape, mask_shape, draw(st.sampled_from(OUTPUTS)), seed


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(softmax_cases())
def test_random_softmax_graphs_are_bit_exact(case):
    q_in, attrs, shape, mask_shape, (dtype, k, zp), seed = case
    rng = np.random.default_rng(seed)
    lo, hi = q_in.qmin, q_in.qmax
    x = rng.integers(lo, hi + 1, shape)
    x.reshape(-1, shape[-1])[0] = hi                  # a uniform row
    x = x.astype(numpy_dtype(q_in.storage_dtype))
    g = softmax_graph(shape, q_in, qp(2.0 ** -k, zp, dtype), attrs, mask_shape)
    inputs = [x]
    if mask_shape is not None:
        m = rng.random(mask_shape) < rng.uniform(0.1, 0.9)
        m.reshape(-1, mask_shape[-1])[-1] = False     # a fully masked row
        inputs.append(m.astype(np.int64))
    assert_bit_exact(g, inputs, shape[0])
