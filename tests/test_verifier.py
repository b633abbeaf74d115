"""The verifier: accepts well-formed graphs and reports every broken invariant, each with its node."""
from __future__ import annotations

import numpy as np
import pytest

from qcompile.errors import VerifyError
from qcompile.ir.graph import Graph, Node, Value
from qcompile.ir.ops import registry
from qcompile.ir.ops.registry import AttrSpec, register_op
from qcompile.ir.types import QuantParams, TensorType, int_bits, is_int, is_signed
from qcompile.ir.verifier import collect_problems, verify


def net() -> Graph:
    g = Graph("net")
    x = g.add_input("x", TensorType((None, 1, 6, 6)))
    w = g.add_constant("w", np.ones((4, 1, 3, 3), np.float32))
    c = g.add_node("conv2d", [x, w, None], name="conv", loc="net.py:3").output
    r = g.add_node("relu", [c], name="act").output
    s = g.add_node("add", [r, c], name="sum").output
    g.outputs = [s]
    return g


def problems_of(g: Graph) -> list[str]:
    with pytest.raises(VerifyError) as info:
        verify(g)
    found = collect_problems(g)
    assert f"({len(found)} problem" in str(info.value)
    return found


def test_well_formed_graph_passes():
    g = net()
    verify(g)
    g.verify()
    assert collect_problems(g) == []


def test_wrong_output_type_names_node_and_shows_its_line():
    g = net()
    g.value("act").type = TensorType((None, 4, 4, 5))
    (p1, p2) = problems_of(g)  # relu's output is wrong, and so add's inference changes
    assert p1.startswith("node %act (relu): output %act has type tensor<?x4x4x5xf32>, but "
                         "inference gives tensor<?x4x4x4xf32>")
    assert "%act = relu(%conv) : tensor<?x4x4x5xf32>" in p1
    assert p2.startswith("node %sum (add):")


def test_all_problems_reported_not_just_the_first():
    g = net()
    g.nodes[0].attrs["groups"] = "one"
    g.value("sum").quant = QuantParams(0.0, 0)
    g.outputs.append(Value("ghost", TensorType((1,))))
    found = problems_of(g)
    text = "\n".join(found)
    assert "node %conv (conv2d): attribute 'groups' must be int" in text
    assert "node %sum (add): output %sum: scale 0.0 must be finite and > 0" in text
    assert "graph output %ghost is not defined" in text
    assert len(found) == 3


def test_use_before_definition():
    g = net()
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]
    (p,) = problems_of(g)
    assert "node %act (relu): input 0 %conv is used before it is defined" in p


def test_value_from_another_graph_is_undefined():
    g = net()
    stray = Value("stray", TensorType((None, 4, 4, 4)))
    g.nodes[1].inputs[0] = stray
    stray.users.append(g.nodes[1])
    found = problems_of(g)
    assert any("input 0 %stray is not defined in the graph" in p for p in found)
    assert any("users list" in p and "%conv" in p for p in found)  # conv lost a user


def test_duplicate_names_and_double_definitions():
    g = net()
    g.value("act").name = "conv"
    found = problems_of(g)
    assert any("name %conv is already used by node %conv" in p for p in found)
    g = net()
    n = g.nodes[1]
    g.nodes.append(Node("relu", [n.inputs[0]], n.outputs, {}, ""))
    found = problems_of(g)
    assert any("value %act is defined more than once" in p for p in found)


def test_inconsistent_users():
    g = net()
    g.value("conv").users.pop()
    (p,) = problems_of(g)
    assert "value %conv: users list [%act] does not match the nodes that read it [%act, %sum]" in p


def test_unknown_op_and_bad_arity():
    g = net()
    g.nodes[1].op = "relux"
    assert "unknown op 'relux'; did you mean relu" in problems_of(g)[0]
    g = net()
    g.nodes[2].inputs.append(g.value("x"))
    g.value("x").users.append(g.nodes[2])
    assert "3 inputs, but add takes (a, b)" in problems_of(g)[0]


def test_attrs_must_be_complete_and_normalised():
    g = net()
    del g.nodes[0].attrs["stride"]
    assert "attributes stride not filled in" in problems_of(g)[0]
    g = net()
    g.nodes[0].attrs["padding"] = [0, 0, 0, 0]  # a list for a tuple is the same value
    verify(g)
    g.nodes[0].attrs["groups"] = np.int64(1)  # numpy scalars are not attribute values
    assert "attribute 'groups' must be int, got" in problems_of(g)[0]
    g = net()
    g.nodes[0].attrs["bogus"] = 1
    assert "unknown attribute 'bogus' for op conv2d" in problems_of(g)[0]


def test_inference_errors_are_reported():
    g = net()
    g.value("w").type = TensorType((4, 2, 3, 3))
    g.value("w").data = np.ones((4, 2, 3, 3), np.float32)
    assert any("type inference rejects the inputs" in p and "channels" in p for p in problems_of(g))


def test_quant_checks():
    g = net()
    g.value("act").quant = QuantParams([0.1] * 3, [0] * 3, axis=1)
    assert "3 scales for 4 channels along axis 1" in problems_of(g)[0]
    g = net()
    g.value("act").quant = QuantParams([0.1] * 4, [0] * 4, axis=4)
    assert "per-channel axis 4 out of range for rank 4" in problems_of(g)[0]
    g = net()
    g.value("x").quant = QuantParams(0.1, 300, bits=8)
    assert "input %x: zero point 300 outside [-128, 127] of i8" in problems_of(g)[0]
    g = net()
    g.value("x").quant = QuantParams(0.3, 0, pow2=True)
    assert "not a power of two" in problems_of(g)[0]
    # negative axes are fine
    g = net()
    g.value("act").quant = QuantParams([0.1] * 4, [0] * 4, axis=-3)
    verify(g)


def test_integer_values_must_match_their_quant_dtype():
    g = Graph()
    c = g.add_constant("c", np.array([1, 2], np.int8), dtype="i4", quant=QuantParams(0.5, 0, bits=8))
    g.outputs = [c]
    (p,) = problems_of(g)
    assert "constant %c: quant<scale=0.5, zp=0, i8> does not match the value's dtype i4" in p
    c.quant = QuantParams(0.5, 0, bits=4, signed=False)
    assert "does not match the value's dtype i4" in problems_of(g)[0]
    c.quant = QuantParams(0.5, 0, bits=4)
    verify(g)


def test_constant_data_checks():
    g = Graph()
    c = g.add_constant("c", np.array([1, 2], np.int8), dtype="i4")
    g.outputs = [c]
    c.data = np.array([1, 9], np.int8)
    assert "data range [1, 9] does not fit i4 [-8, 7]" in problems_of(g)[0]
    c.data = np.array([1, 2, 3], np.int8)
    assert "data shape (3,) does not match tensor<2xi4>" in problems_of(g)[0]
    c.data = np.array([1, 2], np.int32)
    assert "data dtype int32 does not hold i4" in problems_of(g)[0]


@pytest.fixture
def quantize_like_op():
    """A stand-in quantize with a dtype attr, for when the real one is not registered yet."""
    if registry.exists("quantize"):
        yield "quantize"
        return

    @register_op("quantize", attrs={"dtype": AttrSpec("str", "i8"),
                                    "rounding": AttrSpec("str", "half_even")}, traits=("quant_aware",))
    def _q(x, *, dtype, rounding):
        return x.with_dtype(dtype)

    yield "quantize"
    registry._OPS.pop("quantize", None)


def test_quantize_output_must_carry_matching_quant(quantize_like_op):
    g = Graph()
    x = g.add_input("x", TensorType((2,)))
    node = g.add_node("quantize", [x], name="q")
    out = node.output
    if not is_int(out.dtype):
        pytest.skip(f"quantize infers {out.dtype} without output quant params")
    g.outputs = [out]
    bits, signed = int_bits(out.dtype), is_signed(out.dtype)
    assert "output %q has no quantization parameters" in problems_of(g)[0]
    out.quant = QuantParams(0.5, 0, bits=bits + 1, signed=signed)
    assert any(f"does not match the value's dtype {out.dtype}" in p for p in problems_of(g))
    out.quant = QuantParams(0.5, 0, bits=bits, signed=signed)
    verify(g)
    if "dtype" in node.attrs:
        node.attrs["dtype"] = "u3"
        assert any(f"attribute dtype='u3' but output %q is {out.dtype}" in p for p in problems_of(g))


def test_graph_input_with_producer_and_constant_without_data():
    g = net()
    g.value("w").data = None
    assert "constant %w: has neither data nor a data hash" in problems_of(g)[0]
