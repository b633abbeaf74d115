"""Property tests: random valid graphs verify, print/parse round-trips exactly, and a random
single mutation (wrong output type, use before definition, bad attribute) makes verify fail.

The graphs are chains over whichever catalog ops are registered (each builder checks
`registry.exists`), so coverage grows as ops land without this file changing.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompile.errors import OpError, VerifyError
from qcompile.ir.compare import structural_diff
from qcompile.ir.graph import Graph, Value
from qcompile.ir.ops import registry
from qcompile.ir.parser import parse
from qcompile.ir.printer import print_graph
from qcompile.ir.types import QuantParams, TensorType, is_float
from qcompile.ir.verifier import verify

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Mostly ordinary names, some with anything at all (quoted on print), some colliding.
names = st.one_of(st.from_regex(r"[a-z][a-z0-9_.:/-]{0,5}", fullmatch=True), st.sampled_from(["x", "w"]),
                  st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6))
locs = st.one_of(st.just(""), st.text(max_size=12))
any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
UNARY = ("relu", "sigmoid", "tanh", "exp", "abs", "neg", "hardswish", "hardsigmoid", "erf",
         "identity", "sqrt", "rsqrt")
BINARY = ("add", "sub", "mul", "div", "maximum", "minimum", "pow")


def constant(draw, g: Graph, shape: tuple) -> Value:
    """A float constant; sizes straddle the inline limit so both summary and inline print."""
    data = np.random.default_rng(draw(st.integers(0, 2 ** 16))).normal(size=shape).astype(np.float32)
    return g.add_constant(draw(names) or "c", data)


def floats_of(pool: list[Value], pred=lambda t: True) -> list[Value]:
    return [v for v in pool if is_float(v.dtype) and pred(v.type)]


# ---- one builder per op family: (draw, graph, pool) -> the node's attrs and inputs, or None ----
def b_unary(draw, g, pool):
    ops = [o for o in UNARY if registry.exists(o)]
    cands = floats_of(pool)
    return (draw(st.sampled_from(ops)), [draw(st.sampled_from(cands))], {}) if ops and cands else None


def b_float_attr(draw, g, pool):
    """Ops whose float attributes give inf/nan something to round-trip through."""
    opts = [o for o in ("leaky_relu", "clip", "gelu") if registry.exists(o)]
    cands = floats_of(pool)
    if not opts or not cands:
        return None
    op = draw(st.sampled_from(opts))
    attrs = {"alpha": draw(any_float)} if op == "leaky_relu" else \
        {"approximate": draw(st.sampled_from(["none", "tanh"]))} if op == "gelu" else \
        {"min": draw(any_float), "max": draw(any_float)}
    return op, [draw(st.sampled_from(cands))], attrs


def b_binary(draw, g, pool):
    ops = [o for o in BINARY if registry.exists(o)]
    cands = floats_of(pool, lambda t: t.rank >= 1)
    if not ops or not cands:
        return None
    a = draw(st.sampled_from(cands))
    same = [v for v in cands if v.type == a.type]
    last = a.shape[-1]
    kind = draw(st.sampled_from(["same", "row", "scalar"] if last is not None else ["same", "scalar"]))
    if kind == "same":
        b = draw(st.sampled_from(same))
    else:
        b = constant(draw, g, (last,) if kind == "row" else (1,))
    return draw(st.sampled_from(ops)), [a, b], {}


def b_conv(draw, g, pool):
    cands = floats_of(pool, lambda t: t.rank == 4 and t.shape[1] is not None)
    if not registry.exists("conv2d") or not cands:
        return None
    x = draw(st.sampled_from(cands))
    c = x.shape[1]
    groups = draw(st.sampled_from([1, c]))
    o = groups * draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    w = constant(draw, g, (o, c // groups, k, k))
    bias = constant(draw, g, (o,)) if draw(st.booleans()) else None
    attrs = {"stride": [draw(st.integers(1, 2))] * 2, "padding": [draw(st.integers(0, 1))] * 4,
             "dilation": [1, draw(st.integers(1, 2))], "groups": groups}
    return "conv2d", [x, w, bias], attrs


def b_linear(draw, g, pool):
    cands = floats_of(pool, lambda t: t.rank >= 2 and t.shape[-1] is not None)
    if not registry.exists("linear") or not cands:
        return None
    x = draw(st.sampled_from(cands))
    o = draw(st.integers(1, 6))
    w = constant(draw, g, (o, x.shape[-1]))
    bias = constant(draw, g, (o,)) if draw(st.booleans()) else None
    return "linear", [x, w, bias] if bias is not None or draw(st.booleans()) else [x, w], {}


def b_shape(draw, g, pool):
    opts = [o for o in ("concat", "flatten", "transpose", "softmax", "reshape") if registry.exists(o)]
    cands = floats_of(pool, lambda t: t.rank >= 2)
    if not opts or not cands:
        return None
    op, x = draw(st.sampled_from(opts)), draw(st.sampled_from(cands))
    if op == "concat":  # the same value twice: duplicate uses must keep use lists right
        return op, [x, x], {"axis": draw(st.integers(-x.type.rank, x.type.rank - 1))}
    if op == "flatten":
        return op, [x], {"axis": draw(st.integers(1, x.type.rank - 1))}
    if op == "transpose":
        return op, [x], {"perm": draw(st.permutations(range(x.type.rank)))}
    if op == "softmax":
        return op, [x], {"axis": draw(st.integers(-x.type.rank, x.type.rank - 1))}
    if any(d is None for d in x.shape[1:]):
        return None
    return op, [x], {"shape": [-1, int(np.prod(x.shape[1:]))]}


BUILDERS = [b_unary, b_float_attr, b_binary, b_conv, b_linear, b_shape]


def quant_for(draw, t: TensorType):
    """Random valid quant params for a float value: per-tensor, or per-channel along dim 1."""
    bits, signed = draw(st.sampled_from([8, 4, 16])), draw(st.booleans())
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    scale = st.floats(1e-6, 10.0)
    if t.rank >= 2 and t.shape[1] is not None and draw(st.booleans()):
        n = t.shape[1]
        return QuantParams(draw(st.lists(scale, min_size=n, max_size=n)),
                           draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)),
                           bits=bits, signed=signed, axis=draw(st.sampled_from([1, 1 - t.rank])))
    pow2 = draw(st.booleans())
    s = 2.0 ** draw(st.integers(-12, 3)) if pow2 else draw(scale)
    return QuantParams(s, draw(st.integers(lo, hi)), bits=bits, signed=signed, pow2=pow2)


@st.composite
def graphs(draw) -> Graph:
    g = Graph(draw(names))
    dyn = st.one_of(st.none(), st.integers(1, 3))
    pool: list[Value] = []
    for _ in range(draw(st.integers(1, 2))):
        shape = draw(st.sampled_from([
            (draw(dyn), draw(st.integers(1, 4)), draw(st.integers(3, 6)), draw(st.integers(3, 6))),
            (draw(dyn), draw(st.integers(1, 8))),
        ]))
        quant = quant_for(draw, TensorType(shape)) if draw(st.booleans()) else None
        pool.append(g.add_input(draw(names) or "x", TensorType(shape), quant))
    for _ in range(draw(st.integers(1, 8))):
        built = draw(st.sampled_from(BUILDERS))(draw, g, pool)
        if built is None:
            continue
        op, inputs, attrs = built
        try:
            node = g.add_node(op, inputs, attrs, name=draw(names), loc=draw(locs))
        except OpError:
            continue  # an op still being written may reject an odd corner; not what we test
        for out in node.outputs:
            if is_float(out.dtype) and draw(st.booleans()):
                out.quant = quant_for(draw, out.type)
        pool.extend(node.outputs)
    last = pool[-1]
    extra = draw(st.lists(st.sampled_from(pool), max_size=2))
    g.outputs = [last] + extra
    return g


@SETTINGS
@given(graphs())
def test_random_graphs_verify_and_round_trip(g):
    verify(g)
    text = print_graph(g)
    g2 = parse(text)
    assert structural_diff(g, g2) is None, (structural_diff(g, g2), text)
    assert print_graph(g2) == text
    verify(g2)


def mutate_type(draw, g: Graph) -> None:
    node = draw(st.sampled_from(g.nodes))
    out = draw(st.sampled_from(node.outputs))
    if draw(st.booleans()):
        out.type = out.type.with_shape(out.type.shape + (1,))
    else:
        other = [d for d in ("f16", "i32", "bool") if d != out.dtype]
        out.type = out.type.with_dtype(draw(st.sampled_from(other)))


def mutate_order(draw, g: Graph) -> None:
    movable = [n for n in g.nodes if any(v is not None and v.producer is not None for v in n.inputs)]
    if not movable:  # every node reads only graph inputs and constants: feed one a stray value
        node = draw(st.sampled_from(g.nodes))
        stray = Value("stray", node.inputs[0].type)
        node.inputs[0].users.remove(node)
        node.inputs[0] = stray
        stray.users.append(node)
        return
    node = draw(st.sampled_from(movable))
    producer = draw(st.sampled_from([v.producer for v in node.inputs
                                     if v is not None and v.producer is not None]))
    g.nodes.remove(node)
    g.nodes.insert(g.nodes.index(producer), node)


def mutate_attr(draw, g: Graph) -> None:
    node = draw(st.sampled_from(g.nodes))
    spec = registry.get(node.op).attrs
    if not spec or draw(st.booleans()):
        node.attrs[draw(st.sampled_from(["bogus", "strides", "pads"]))] = 1
        return
    key = draw(st.sampled_from(sorted(spec)))
    node.attrs[key] = 1 if spec[key].kind == "str" else "wrong kind"


@SETTINGS
@given(graphs(), st.sampled_from([mutate_type, mutate_order, mutate_attr]), st.data())
def test_single_mutations_fail_verification(g, mutate, data):
    if not g.nodes:
        return
    mutate(data.draw, g)
    with pytest.raises(VerifyError):
        verify(g)
    if mutate is mutate_type:
        # Types come from the text, so the parsed graph carries the same fault.
        with pytest.raises(VerifyError):
            verify(parse(print_graph(g)))


def test_generator_reaches_every_builder():
    """Guard against a property test that quietly stops building anything."""
    seen: set[str] = set()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(graphs())
    def collect(g):
        seen.update(n.op for n in g.nodes)

    collect()
    assert {"conv2d", "linear"} <= seen
    assert seen & set(UNARY) and seen & set(BINARY), seen
