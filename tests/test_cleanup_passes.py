"""dce, fold-constants and remove-identity: the graph changes as expected, names of graph inputs
and outputs stay, and the float results are bit-identical before and after."""
from __future__ import annotations

import numpy as np
import pytest

import qcompile
from qcompile.ir import Graph
from qcompile.ir.ops import registry
from qcompile.passmanager import PassContext, run_pipeline

CLEANUP = "fixpoint(fold-constants,remove-identity,dce)"


def needs_ops(*ops: str):
    missing = [op for op in ops if not registry.exists(op)]
    return pytest.mark.skipif(bool(missing), reason=f"ops not declared yet: {missing}")


def check(text: str, pipeline: str, inputs: list, **ctx_kw) -> tuple[Graph, PassContext]:
    """Parse, run the pipeline, check the outputs are unchanged bit for bit and names stay."""
    graph = qcompile.parse(text)
    before = qcompile.run(graph, inputs)
    names = ([v.name for v in graph.inputs], [v.name for v in graph.outputs])
    ctx = run_pipeline(graph, pipeline, PassContext(verify=True, **ctx_kw))
    after = qcompile.run(graph, inputs)
    assert_bit_identical(before, after)
    assert ([v.name for v in graph.inputs], [v.name for v in graph.outputs]) == names
    return graph, ctx


def assert_bit_identical(before: list, after: list) -> None:
    # bytes, not values: -0.0 == 0.0 and nan != nan would hide a change
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


X4 = [np.array([-1.5, 0.0, 2.0, 3.25], np.float32)]


# ---- dce ----------------------------------------------------------------------------------------
def test_dce_removes_dead_chains_and_unused_constants():
    graph, ctx = check("""
graph @g(%x: tensor<4xf32>) -> (%y) {
  %c = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 4.0]>
  %unused = const tensor<1xf32> dense<[7.0]>
  %d1 = add(%x, %c) : tensor<4xf32>
  %d2 = relu(%d1) : tensor<4xf32>
  %y = relu(%x) : tensor<4xf32>
  return %y
}""", "dce", X4)
    assert graph.op_counts() == {"relu": 1}
    assert graph.constants == {}
    assert ctx.records[0].changed


def test_dce_keeps_everything_that_reaches_an_output():
    text = """
graph @g(%x: tensor<4xf32>) -> (%y, %a) {
  %c = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 4.0]>
  %a = relu(%x) : tensor<4xf32>
  %y = add(%a, %c) : tensor<4xf32>
  return %y, %a
}"""
    graph, ctx = check(text, "dce", X4)
    assert qcompile.parse(text).dump() == graph.dump()
    assert not ctx.records[0].changed


# ---- fold-constants ----------------------------------------------------------------------------
def test_fold_constants_folds_a_chain_in_one_run():
    graph, _ = check("""
graph @g(%x: tensor<4xf32>) -> (%y) {
  %a = const tensor<4xf32> dense<[1.0, -2.0, 3.0, -4.0]>
  %b = const tensor<4xf32> dense<[0.5, 0.5, 0.5, 0.5]>
  %s = add(%a, %b) : tensor<4xf32>
  %r = relu(%s) : tensor<4xf32>
  %m = mul(%r, %b) : tensor<4xf32>
  %y = add(%x, %m) : tensor<4xf32>
  return %y
}""", "fold-constants,dce", X4)
    assert graph.op_counts() == {"add": 1}
    (m,) = graph.constants.values()
    assert m.name == "m"  # the folded constant keeps the name of the value it replaces
    np.testing.assert_array_equal(m.data, np.float32([0.75, 0, 1.75, 0]))
    assert graph.nodes[0].inputs[1] is m


def test_fold_constants_on_a_graph_output_keeps_its_name():
    graph, _ = check("""
graph @g(%x: tensor<2xf32>) -> (%y, %k) {
  %a = const tensor<2xf32> dense<[1.0, 2.0]>
  %k = neg(%a) : tensor<2xf32>
  %y = relu(%x) : tensor<2xf32>
  return %y, %k
}""", CLEANUP, [np.float32([1, -1])])
    assert graph.outputs[1].name == "k" and graph.outputs[1].is_constant
    assert graph.op_counts() == {"relu": 1}


def test_fold_constants_respects_max_elements():
    text = """
graph @g(%x: tensor<2x3xf32>) -> (%y) {
  %a = const tensor<2x3xf32> dense<[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]>
  %b = relu(%a) : tensor<2x3xf32>
  %y = add(%x, %b) : tensor<2x3xf32>
  return %y
}"""
    x = [np.ones((2, 3), np.float32)]
    graph, _ = check(text, "fold-constants{max_elements=5}", x)
    assert graph.op_counts() == {"add": 1, "relu": 1}
    graph, _ = check(text, "fold-constants{max_elements=6}", x)
    assert graph.op_counts() == {"add": 1}


def test_fold_constants_leaves_quantized_values_and_missing_data_alone():
    q = "quant<scale=0.5, zp=0, i8>"
    graph, _ = check(f"""
graph @g(%x: tensor<2xf32>) -> (%y) {{
  %a = const tensor<2xf32> {q} dense<[1.0, 2.0]>
  %b = relu(%a) : tensor<2xf32>
  %c = const tensor<2xf32> dense<[1.0, 2.0]>
  %d = relu(%c) : tensor<2xf32> {q}
  %e = add(%b, %d) : tensor<2xf32>
  %y = add(%x, %e) : tensor<2xf32>
  return %y
}}""", "fold-constants", [np.float32([1, 2])])
    assert graph.op_counts() == {"add": 2, "relu": 2}
    # a constant parsed from a summary dump has a hash but no data: nothing to compute with
    g = Graph("h")
    x = g.add_input("x", qcompile.TensorType((32,)))
    w = g.add_constant("w", np.arange(32, dtype=np.float32))
    w.data, w.data_hash = None, "sha256:0123456789abcdef"
    r = g.add_node("relu", [w])
    g.outputs = [g.add_node("add", [x, r.output]).output]
    assert not run_pipeline(g, "fold-constants", PassContext(verify=False)).records[0].changed


@needs_ops("quantize", "dequantize")
def test_fold_constants_skips_quant_aware_ops():
    graph, _ = check("""
graph @g(%x: tensor<2xf32>) -> (%y) {
  %a = const tensor<2xf32> dense<[1.0, 2.0]>
  %q = quantize(%a) {rounding="half_even"} : tensor<2xi8> quant<scale=0.5, zp=0, i8>
  %d = dequantize(%q) : tensor<2xf32>
  %y = add(%x, %d) : tensor<2xf32>
  return %y
}""", "fold-constants", [np.float32([1, 2])])
    assert graph.op_counts()["quantize"] == 1


def test_fold_constants_warns_and_skips_when_the_kernel_fails():
    g = Graph("g")
    x = g.add_input("x", qcompile.TensorType((2,)))
    a = g.add_constant("a", np.float32([1, 2]))
    r = g.add_node("relu", [a])
    g.outputs = [g.add_node("add", [x, r.output]).output]
    a.data = np.float32([1, 2, 3])  # kernel result will not match the inferred type
    ctx = run_pipeline(g, "fold-constants", PassContext(verify=False))
    assert g.op_counts() == {"add": 1, "relu": 1}
    assert "not folded: kernel result shape (3,)" in ctx.warnings[0].message
    assert ctx.warnings[0].node_name == r.name and ctx.warnings[0].pass_name == "fold-constants"


# ---- remove-identity ---------------------------------------------------------------------------
def test_remove_identity_drops_neutral_arithmetic():
    graph, _ = check("""
graph @g(%x: tensor<2x2xf32>) -> (%y) {
  %zero = const tensor<2xf32> dense<[0.0, 0.0]>
  %nzero = const tensor<2xf32> dense<[-0.0, -0.0]>
  %one = const tensor<1xf32> dense<[1.0]>
  %a = relu(%x) : tensor<2x2xf32>
  %b = add(%nzero, %a) : tensor<2x2xf32>
  %c = mul(%b, %one) : tensor<2x2xf32>
  %d = sub(%c, %zero) : tensor<2x2xf32>
  %e = div(%d, %one) : tensor<2x2xf32>
  %y = neg(%e) : tensor<2x2xf32>
  return %y
}""", "remove-identity,dce", [np.float32([[-0.0, 1], [np.nan, -2]])])
    assert graph.op_counts() == {"neg": 1, "relu": 1}


def test_adding_positive_zero_is_not_a_no_op():
    # -0.0 + 0.0 is +0.0, so only x + (-0.0) and x - (+0.0) are exact identities for floats
    text = """
graph @g(%x: tensor<2xf32>) -> (%y1, %y2, %y3) {
  %pz = const tensor<2xf32> dense<[0.0, 0.0]>
  %nz = const tensor<2xf32> dense<[-0.0, -0.0]>
  %one = const tensor<2xf32> dense<[1.0, 1.0]>
  %a = add(%x, %pz) : tensor<2xf32>
  %b = sub(%x, %nz) : tensor<2xf32>
  %c = add(%nz, %x) : tensor<2xf32>
  %d = sub(%c, %pz) : tensor<2xf32>
  %y1 = div(%one, %a) : tensor<2xf32>
  %y2 = div(%one, %b) : tensor<2xf32>
  %y3 = div(%one, %d) : tensor<2xf32>
  return %y1, %y2, %y3
}"""
    # 1/x tells -0.0 (-inf) from +0.0 (inf), so removing %a or %b would change the bits
    graph, _ = check(text, "remove-identity,dce", [np.float32([-0.0, 3.0])])
    assert graph.op_counts() == {"add": 1, "div": 3, "sub": 1}
    assert graph.value("y3").producer.inputs[1] is graph.inputs[0]
    g = qcompile.parse(text.replace("f32", "i32").replace(".0", "").replace("-0", "0"))
    run_pipeline(g, "remove-identity,dce")
    assert g.op_counts() == {"div": 3}  # integer zeros are neutral either way


def test_remove_identity_keeps_ops_that_broadcast_or_are_not_neutral():
    text = """
graph @g(%x: tensor<2xf32>) -> (%y) {
  %zero = const tensor<2x2xf32> dense<[0.0, 0.0, 0.0, 0.0]>
  %two = const tensor<1xf32> dense<[2.0]>
  %z = const tensor<1xf32> dense<[0.0]>
  %a = add(%x, %zero) : tensor<2x2xf32>
  %b = mul(%a, %two) : tensor<2x2xf32>
  %c = sub(%z, %b) : tensor<2x2xf32>
  %y = relu(%c) : tensor<2x2xf32>
  return %y
}"""
    graph, ctx = check(text, "remove-identity", [np.float32([1, 2])])
    assert graph.op_counts() == qcompile.parse(text).op_counts()
    assert not ctx.records[0].changed


def test_remove_identity_keeps_a_quantization_point():
    text = """
graph @g(%x: tensor<2xf32>) -> (%y) {
  %one = const tensor<1xf32> dense<[1.0]>
  %a = relu(%x) : tensor<2xf32>
  %b = mul(%a, %one) : tensor<2xf32> quant<scale=0.25, zp=0, i8>
  %y = relu(%b) : tensor<2xf32>
  return %y
}"""
    graph, _ = check(text, "remove-identity", [np.float32([1, 2])])
    assert graph.op_counts() == {"mul": 1, "relu": 2}


def test_remove_identity_renames_the_source_of_a_graph_output():
    graph, _ = check("""
graph @g(%x: tensor<2xf32>) -> (%y) {
  %one = const tensor<2xf32> dense<[1.0, 1.0]>
  %a = relu(%x) : tensor<2xf32>
  %y = mul(%a, %one) : tensor<2xf32>
  return %y
}""", CLEANUP, [np.float32([-1, 2])])
    assert graph.op_counts() == {"relu": 1}
    assert graph.nodes[0].output.name == "y" and graph.outputs[0] is graph.nodes[0].output


def test_remove_identity_keeps_interface_when_it_cannot_rename():
    # the output is an input times one; the input's name cannot move, so the node stays
    text = """
graph @g(%x: tensor<2xf32>) -> (%y, %a) {
  %one = const tensor<2xf32> dense<[1.0, 1.0]>
  %y = mul(%x, %one) : tensor<2xf32>
  %a = relu(%x) : tensor<2xf32>
  %b = mul(%a, %one) : tensor<2xf32>
  return %y, %a
}"""
    graph, _ = check(text, "remove-identity", [np.float32([-1, 2])])
    assert graph.op_counts() == {"mul": 1, "relu": 1}
    assert [v.name for v in graph.outputs] == ["y", "a"]


@needs_ops("identity", "reshape", "transpose")
def test_remove_identity_drops_shape_no_ops():
    graph, _ = check("""
graph @g(%x: tensor<2x3xf32>) -> (%y) {
  %a = identity(%x) : tensor<2x3xf32>
  %b = reshape(%a) {shape=[2, 3]} : tensor<2x3xf32>
  %c = transpose(%b) {perm=[0, 1]} : tensor<2x3xf32>
  %d = reshape(%c) {shape=[3, 2]} : tensor<3x2xf32>
  %e = transpose(%d) {perm=[1, 0]} : tensor<2x3xf32>
  %y = relu(%e) : tensor<2x3xf32>
  return %y
}""", "remove-identity", [np.arange(6, dtype=np.float32).reshape(2, 3)])
    assert graph.op_counts() == {"relu": 1, "reshape": 1, "transpose": 1}


@needs_ops("identity")
def test_identity_between_input_and_output_stays():
    graph, _ = check("""
graph @g(%x: tensor<2xf32>) -> (%y) {
  %y = identity(%x) : tensor<2xf32>
  return %y
}""", CLEANUP, [np.float32([1, 2])])
    assert graph.op_counts() == {"identity": 1}


# ---- together ----------------------------------------------------------------------------------
UNARY = ["relu", "neg", "abs", "exp", "tanh", "sigmoid"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]


def random_graph(seed: int) -> Graph:
    """A random graph of elementwise ops over inputs and constants, including neutral constants
    (0, 1) and constant-only subgraphs, with some dead branches."""
    rng = np.random.default_rng(seed)
    g = Graph(f"rand{seed}")
    shape = (3, 4)
    t = qcompile.TensorType(shape)
    pool = [g.add_input("x", t), g.add_input("z", t)]
    for i in range(rng.integers(8, 20)):
        kind = rng.integers(0, 4)
        if kind == 0:
            choice = rng.integers(0, 3)
            data = (np.zeros(shape), np.ones(shape), rng.normal(size=shape))[choice]
            pool.append(g.add_constant(f"c{i}", data.astype(np.float32)))
        elif kind == 1:
            op = UNARY[rng.integers(len(UNARY))]
            pool.append(g.add_node(op, [pool[rng.integers(len(pool))]], name=f"n{i}").output)
        else:
            op = BINARY[rng.integers(len(BINARY))]
            a, b = (pool[j] for j in rng.integers(len(pool), size=2))
            pool.append(g.add_node(op, [a, b], name=f"n{i}").output)
    produced = [v for v in pool if v.producer is not None]
    g.outputs = [produced[-1]] if produced else [g.add_node("relu", [pool[0]]).output]
    if len(produced) > 3 and rng.integers(2):
        g.outputs.append(produced[len(produced) // 2])
    return g


@pytest.mark.parametrize("seed", range(25))
def test_cleanup_pipeline_keeps_random_graphs_bit_identical(seed):
    graph = random_graph(seed)
    rng = np.random.default_rng(1000 + seed)
    inputs = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2)]
    before = qcompile.run(graph, inputs)
    names = [v.name for v in graph.outputs]
    nodes_before = len(graph.nodes)
    run_pipeline(graph, CLEANUP, PassContext(verify=True))
    after = qcompile.run(graph, inputs)
    assert [v.name for v in graph.outputs] == names
    assert_bit_identical(before, after)
    assert len(graph.nodes) <= nodes_before
    # at the fixpoint nothing is left to do
    for p in ("fold-constants", "remove-identity", "dce"):
        assert not run_pipeline(graph, p, PassContext(verify=True)).records[0].changed
