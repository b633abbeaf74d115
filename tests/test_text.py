"""The IR's text form: printing, parsing, exact round trips and error positions."""
from __future__ import annotations

import math

import numpy as np
import pytest

import qcompile
from qcompile.errors import ParseError
from qcompile.ir.compare import structural_diff
from qcompile.ir.graph import Graph
from qcompile.ir.ops import registry
from qcompile.ir.ops.registry import AttrSpec, register_op
from qcompile.ir.parser import parse, parse_file
from qcompile.ir.printer import (content_hash, fingerprint, format_string, print_graph, write_file,
                                 INLINE_LIMIT)
from qcompile.ir.types import QuantParams, TensorType


def roundtrip(g: Graph) -> Graph:
    """Print, parse, and check both round-trip directions; returns the parsed graph."""
    text = print_graph(g)
    g2 = parse(text)
    assert structural_diff(g, g2) is None, structural_diff(g, g2)
    assert print_graph(g2) == text
    return g2


@pytest.fixture(scope="module")
def split_op():
    """A two-output op for the tests only (none of the built-in ops has several outputs yet);
    removed again so other test modules see the real registry."""
    name = "test_split2"
    registry.exists("relu")  # load the built-ins first

    @register_op(name, inputs=("x",), attrs={"axis": AttrSpec("int", 0)}, num_outputs=2)
    def _split(x, *, axis):
        half = None if x.shape[axis] is None else x.shape[axis] // 2
        shape = list(x.shape)
        shape[axis] = half
        return [x.with_shape(shape), x.with_shape(shape)]

    yield name
    registry._OPS.pop(name, None)


def mlp(rng=np.random.default_rng(0)) -> Graph:
    g = Graph("mlp")
    x = g.add_input("x", TensorType((None, 8)))
    w1 = g.add_constant("fc1.weight", rng.normal(size=(16, 8)).astype(np.float32))
    b1 = g.add_constant("fc1.bias", rng.normal(size=(16,)).astype(np.float32))
    w2 = g.add_constant("fc2.weight", rng.normal(size=(4, 16)).astype(np.float32))
    h = g.add_node("linear", [x, w1, b1], name="fc1", loc="mlp.py:10").output
    h = g.add_node("relu", [h], name="act", loc="mlp.py:11").output
    y = g.add_node("linear", [h, w2, None], name="logits", loc="mlp.py:12").output
    g.outputs = [y]
    return g


# ---- printing -----------------------------------------------------------------------------
def test_print_shape_of_the_text():
    g = Graph("digits_cnn")
    x = g.add_input("input", TensorType((None, 1, 8, 8)))
    w = g.add_constant("conv1.weight", np.linspace(-0.5, 0.6, 144, dtype=np.float32).reshape(16, 1, 3, 3))
    b = g.add_constant("b", np.array([0.5, -1.0, 2.0], np.float32))
    c = g.add_node("conv2d", [x, w, None], {"padding": [1, 1, 1, 1]}, name="conv1", loc="digits.py:31")
    g.outputs = [c.output]
    text = print_graph(g)
    lines = text.splitlines()
    assert lines[0] == "graph @digits_cnn(%input: tensor<?x1x8x8xf32>) -> (%conv1) {"
    assert lines[1].startswith("  %conv1.weight = const tensor<16x1x3x3xf32> dense<sha256:")
    assert lines[1].endswith(", min=-0.5, max=0.6>")
    assert f"sha256:{content_hash(w.data, 'f32')}," in lines[1]
    assert lines[2] == "  %b = const tensor<3xf32> dense<[0.5, -1.0, 2.0]>"
    assert lines[3] == ("  %conv1 = conv2d(%input, %conv1.weight, _) {dilation=[1, 1], groups=1, "
                        "padding=[1, 1, 1, 1], stride=[1, 1]} : tensor<?x16x8x8xf32> loc(\"digits.py:31\")")
    assert lines[4:] == ["  return %conv1", "}"]
    assert b.users == []


def test_rank0_types_quant_and_quoted_names():
    g = Graph("odd names")
    x = g.add_input("in put", TensorType((), "f32"), QuantParams(0.25, 3, bits=4, signed=False))
    y = g.add_node("relu", [x], name='say "hi"\n', loc='a\\b "c"').output
    g.outputs = [y]
    text = print_graph(g)
    assert text.splitlines()[0] == ('graph @"odd names"(%"in put": tensor<f32> '
                                    'quant<scale=0.25, zp=3, u4>) -> (%"say \\"hi\\"\\n") {')
    assert 'loc("a\\\\b \\"c\\"")' in text
    roundtrip(g)


def test_names_that_must_be_quoted():
    g = Graph()
    x = g.add_input("x:", TensorType((2,)))
    y = g.add_node("relu", [x], name="a:b").output
    z = g.add_node("relu", [y], name="z\n").output
    g.outputs = [z]
    text = print_graph(g)
    assert '%"x:": tensor<2xf32>' in text and "%a:b = relu" in text and '%"z\\n" = relu' in text
    roundtrip(g)


def test_float_attrs_round_trip_exactly_including_inf_nan():
    spec = {"lo": AttrSpec("float", 0.0), "hi": AttrSpec("floats", ()), "s": AttrSpec("str", "")}

    @register_op("test_fattr", attrs=spec)
    def _f(x, *, lo, hi, s):
        return x

    try:
        g = Graph()
        x = g.add_input("x", TensorType((2,)))
        vals = (math.inf, -math.inf, math.nan, 0.1, 1e-300, -0.0, 5e-324)
        y = g.add_node("test_fattr", [x], {"lo": math.nan, "hi": vals, "s": "é\t\x01\U0001F600"}).output
        g.outputs = [y]
        text = print_graph(g)
        assert "hi=[inf, -inf, nan, 0.1, 1e-300, -0.0, 5e-324]" in text
        assert 'lo=nan' in text and 's="é\\t\\x01\U0001F600"' in text
        g2 = roundtrip(g)
        hi = g2.nodes[0].attrs["hi"]
        assert math.copysign(1.0, hi[5]) == -1.0 and hi[6] == 5e-324
    finally:
        registry._OPS.pop("test_fattr", None)


def test_multi_output_and_missing_optional(split_op):
    g = Graph("multi")
    x = g.add_input("x", TensorType((None, 6)))
    node = g.add_node(split_op, [x], {"axis": 1}, name="parts")
    a, b = node.outputs
    s = g.add_node("add", [a, b], name="sum").output
    g.outputs = [s, b]
    text = print_graph(g)
    assert "%parts, %parts.1 = test_split2(%x) {axis=1} : tensor<?x3xf32>, tensor<?x3xf32>" in text
    assert text.splitlines()[0].endswith("-> (%sum, %parts.1) {")
    assert "return %sum, %parts.1" in text
    g2 = roundtrip(g)
    assert g2.nodes[1].inputs[1] is g2.nodes[0].outputs[1]


def test_per_channel_quant_and_dynamic_dims():
    g = Graph()
    x = g.add_input("x", TensorType((None, 3, None, 4)))
    w = g.add_constant("w", np.arange(-6, 6, dtype=np.int8).reshape(2, 6), dtype="i4",
                       quant=QuantParams([0.5, 0.25], [0, -1], bits=4, axis=0, pow2=True))
    y = g.add_node("relu", [x], name="y").output
    y.quant = QuantParams([0.1, 0.2, 0.3], [0, 1, 2], bits=8, signed=False, axis=1)
    g.outputs = [y]
    text = print_graph(g)
    assert ("%w = const tensor<2x6xi4> quant<scale=[0.5, 0.25], zp=[0, -1], i4, axis=0, pow2> "
            "dense<[-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5]>") in text
    assert "tensor<?x3x?x4xf32> quant<scale=[0.1, 0.2, 0.3], zp=[0, 1, 2], u8, axis=1>" in text
    g2 = roundtrip(g)
    assert g2.value("w").data.dtype == np.int8


@pytest.mark.parametrize("dtype,data", [
    ("f16", np.array([0.1, -2.5, 65504, np.nan], np.float16)),
    ("bool", np.array([[True, False], [False, True]])),
    ("i64", np.array([-(2 ** 63), 2 ** 63 - 1], np.int64)),
    ("u16", np.array([0, 65535], np.uint16)),
    ("f32", np.array(3.5, np.float32)),
    ("f32", np.zeros((0, 3), np.float32)),
])
def test_inline_constants_of_every_kind(dtype, data):
    g = Graph()
    c = g.add_constant("c", data, dtype=dtype)
    g.outputs = [c]
    g2 = roundtrip(g)
    np.testing.assert_array_equal(g2.value("c").data, data)


def test_float32_inline_data_is_short_and_exact():
    data = np.array([0.1, 1 / 3, -1e-45, 3.4028235e38, -0.0, np.inf], np.float32)
    g = Graph()
    g.outputs = [g.add_constant("c", data)]
    text = print_graph(g)
    assert "dense<[0.1, 0.33333334, -1e-45, 3.4028235e+38, -0.0, inf]>" in text
    assert roundtrip(g).value("c").data.tobytes() == data.tobytes()


def test_summary_constant_parses_without_data_and_prints_back():
    g = mlp()
    text = print_graph(g)
    g2 = parse(text)
    w = g2.value("fc1.weight")
    assert w.data is None and w.is_constant
    assert w.data_hash == fingerprint(g.value("fc1.weight").data, "f32")
    assert print_graph(g2) == text
    assert structural_diff(g, g2) is None
    # A summary does not run: the interpreter says which constant lacks data.
    with pytest.raises(qcompile.InterpError, match="fc1.weight"):
        qcompile.run(g2, [np.zeros((1, 8), np.float32)])
    # and the comparison notices different data behind a summary
    g3 = mlp(np.random.default_rng(1))
    assert "fc1.weight" in structural_diff(g3, g2)


def test_full_dump_reloads_and_runs(tmp_path):
    g = mlp()
    path = tmp_path / "mlp.qir"
    text = write_file(g, str(path))
    assert (tmp_path / "mlp.npz").exists()
    assert 'dense<file="mlp.npz", key="fc1.weight">' in text
    g2 = parse_file(path)
    assert structural_diff(g, g2) is None
    assert print_graph(g2, full=True, data_path=str(tmp_path / "again.npz")) == \
        text.replace("mlp.npz", "again.npz")
    x = np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32)
    (want,) = qcompile.run(g, [x])
    (got,) = qcompile.run(g2, [x])
    assert got.tobytes() == want.tobytes()
    # the package-level entry point finds the data relative to the .qir, wherever we run from
    assert structural_diff(g, qcompile.parse_file(str(path))) is None


def test_full_without_data_path_inlines_everything():
    g = mlp()
    text = g.dump(full=True)
    assert "sha256" not in text and "file=" not in text
    g2 = parse(text)
    assert structural_diff(g, g2) is None
    x = np.ones((2, 8), np.float32)
    assert qcompile.run(g2, [x])[0].tobytes() == qcompile.run(g, [x])[0].tobytes()


def test_full_dump_with_awkward_constant_names(tmp_path):
    g = Graph()
    x = g.add_input("x", TensorType((2, 20)))
    c = g.add_constant("file", np.arange(40, dtype=np.float32).reshape(2, 20))
    d = g.add_constant('a/b "c"', np.ones((2, 20), np.float32))
    s = g.add_node("add", [x, c]).output
    g.outputs = [g.add_node("add", [s, d]).output]
    path = tmp_path / "odd.qir"
    write_file(g, path)
    g2 = parse_file(path)
    assert structural_diff(g, g2) is None
    np.testing.assert_array_equal(g2.value('a/b "c"').data, d.data)


def test_inline_limit_boundary():
    g = Graph()
    small = g.add_constant("small", np.arange(INLINE_LIMIT, dtype=np.float32))
    big = g.add_constant("big", np.arange(INLINE_LIMIT + 1, dtype=np.float32))
    g.outputs = [small, big]
    text = print_graph(g)
    assert "%small = const tensor<16xf32> dense<[0.0, 1.0," in text
    assert "%big = const tensor<17xf32> dense<sha256:" in text and "min=0, max=16>" in text


def test_hand_written_text_with_comments_and_defaults():
    text = """
    // a comment
    graph @g(%x: tensor<2x3xf32>) -> (%y) {
      %w = const tensor<4x3xf32> dense<[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]>
      %y = linear(%x, %w) : tensor<2x4xf32>   // bias omitted entirely
      return %y
    }
    """
    g = parse(text)
    assert g.value("w").data.dtype == np.float32
    (y,) = qcompile.run(g, [np.ones((2, 3), np.float32)])
    np.testing.assert_array_equal(y, [[6, 15, 24, 33]] * 2)
    g.verify()


def test_parsed_types_are_not_reinferred():
    g = parse("graph @g(%x: tensor<2xf32>) -> (%y) {\n  %y = relu(%x) : tensor<3xf32>\n  return %y\n}\n")
    assert g.value("y").type == TensorType((3,))
    with pytest.raises(qcompile.VerifyError, match="inference gives tensor<2xf32>"):
        g.verify()


def test_format_string_escapes_round_trip():
    s = 'q"\\\n\t\r\x00\x7f\u2028é\U0001F600'
    g = parse(f"graph @{format_string(s)}() -> () {{\n  return\n}}\n")
    assert g.name == s


# ---- errors: message, line and column ---------------------------------------------------------
GOOD = """graph @g(%x: tensor<1x1x4x4xf32>) -> (%y) {
  %w = const tensor<2x1x3x3xf32> dense<sha256:00112233aabbccdd>
  %c = conv2d(%x, %w, _) {groups=1} : tensor<1x2x2x2xf32>
  %y = relu(%c) : tensor<1x2x2x2xf32>
  return %y
}
"""


def parse_error(text: str) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse(text, filename="t.qir")
    return info.value


def col_of(line: str, needle: str) -> int:
    return line.index(needle) + 1


@pytest.mark.parametrize("old,new,line_no,needle,message", [
    ("conv2d(", "conv2e(", 3, "conv2e", "unknown op 'conv2e'; did you mean conv2d"),
    ("relu(", "reluu(", 4, "reluu", "did you mean relu"),
    ("{groups=1}", "{groups=1.5}", 3, "1.5", "attribute 'groups' must be int, got 1.5"),
    ("{groups=1}", '{groups="two"}', 3, '"two"', "attribute 'groups' must be int"),
    ("{groups=1}", "{group=1}", 3, "group=", "unknown attribute 'group' for op conv2d (did you mean groups"),
    ("relu(%c)", "relu(%cc)", 4, "%cc", "undefined value %cc (did you mean %c?)"),
    ("%y = relu", "%c = relu", 4, "%c =", "value %c is already defined (line 3)"),
    ("xf32>) -> (%y)", "xf33>) -> (%y)", 1, "f33", "unknown dtype 'f33' (did you mean f32"),
    ("tensor<1x2x2x2xf32>\n  return", "tensor<1x2xyx2xf32>\n  return", 4, "yx2", "bad dimension 'y'"),
    ("relu(%c)", "relu(%c, %c)", 4, "relu", "op relu takes inputs (x), got 2"),
    ("return %y", "return %c", 5, "return", "return lists (%c) but the graph header declares (%y)"),
    ("dense<sha256:00112233aabbccdd>", "dense<[1, 2]>", 2, "[1, 2]", "has 2 elements but its type holds 18"),
])
def test_error_positions(old, new, line_no, needle, message):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    err = parse_error(text)
    line = text.splitlines()[line_no - 1]
    assert message in err.bare_message
    assert (err.line, err.column) == (line_no, col_of(line, needle)), str(err)
    assert err.filename == "t.qir"
    rendered = str(err).splitlines()
    assert rendered[0] == f"t.qir:{line_no}:{err.column}: {err.bare_message.splitlines()[0]}"
    assert rendered[-2] == "  " + line and rendered[-1] == "  " + " " * (err.column - 1) + "^"


def test_unterminated_string_points_at_its_quote():
    bad = '  %z = relu(%y) : tensor<1x2x2x2xf32> loc("never closed'
    err = parse_error(GOOD.replace("  return %y", bad + "\n  return %y"))
    assert "unterminated string" in err.bare_message
    assert (err.line, err.column) == (5, col_of(bad, '"never'))


def test_missing_closing_brace_points_after_the_last_token():
    text = GOOD.rstrip().rstrip("}")
    err = parse_error(text)
    assert "expected '}' to close graph @g, found end of input" in err.bare_message
    assert err.line == 5 and err.column == len("  return %y") + 1


def test_missing_return():
    err = parse_error("graph @g(%x: tensor<f32>) -> () {\n  %y = relu(%x) : tensor<f32>\n}\n")
    assert "expected 'return'" in err.bare_message and (err.line, err.column) == (3, 1)


@pytest.mark.parametrize("text,message", [
    ("graph @g() -> () {\n  return\n}\nextra", "after the end of graph @g"),
    ("graph @g(%x: tensor<2xf32>) -> () {\n  %c = const tensor<?xf32> dense<[1]>\n  return\n}",
     "needs a static shape"),
    ("graph @g() -> () {\n  %c = const tensor<1xi4> dense<[9]>\n  return\n}", "9 does not fit i4 [-8, 7]"),
    ("graph @g() -> () {\n  %c = const tensor<1xi8> dense<[1.5]>\n  return\n}", "expected an integer"),
    ("graph @g(%x: tensor<2xf32> quant<scale=0.1, i8>) -> () {\n  return\n}", "missing its 'zp='"),
    ("graph @g(%x: tensor<2xf32> quant<scale=0.1, zp=0, i8, bogus>) -> () {\n  return\n}",
     "unknown quant field 'bogus'"),
    ("graph @g() -> () {\n  %c = const tensor<1xf32> dense<file=\"nope.npz\", key=\"c\">\n  return\n}",
     "cannot read constant data file"),
    ('graph @g() -> () {\n  return "\\q"\n}', "unknown escape"),
    ("graph @g() -> () {\n  return ^\n}", "unexpected character '^'"),
    ("graph @g(%x: tensor<2xf32) -> () {\n  return\n}", "expected '>' to close tensor<...>"),
])
def test_other_errors(text, message):
    assert message in parse_error(text).bare_message


def test_parse_file_missing(tmp_path):
    with pytest.raises(ParseError, match="cannot read"):
        parse_file(tmp_path / "absent.qir")
