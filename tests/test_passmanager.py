"""The pass manager: registration, options, pipeline strings, the context, instruments, errors."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompile
from qcompile.errors import OpError, PassError, PipelineError, VerifyError
from qcompile.ir.types import TensorType
from qcompile.passmanager import (Diagnostic, DumpIRInstrument, Fixpoint, Instrument, Pass,
                                  PassContext, PassCrash, Pipeline, TimingInstrument,
                                  VerifyInstrument, all_passes, get_pass, parse_pipeline,
                                  register_pass, run_pipeline, unregister_pass)

NET = """
graph @net(%x: tensor<4xf32>) -> (%y) {
  %a = relu(%x) : tensor<4xf32>
  %b = relu(%a) : tensor<4xf32>
  %y = add(%b, %x) : tensor<4xf32>
  return %y
}
"""


@pytest.fixture
def graph():
    return qcompile.parse(NET)


@pytest.fixture
def registered():
    """Register passes for one test only: `registered(target, name)`."""
    names: list[str] = []

    def register(target, name: Optional[str] = None):
        out = register_pass(name)(target) if name else register_pass(target)
        names.append(out.__qcompile_pass__.name)
        return out
    yield register
    for name in names:
        unregister_pass(name)


# ---- registration and options ------------------------------------------------------------------
@dataclass(frozen=True)
class Tunable(Pass):
    """A pass with one option of each supported kind."""

    count: int = 3
    scale: float = 0.5
    enabled: bool = True
    label: str = "x"
    method: Literal["mse", "minmax"] = "minmax"
    axes: tuple[int, ...] = (1,)
    pair: tuple[int, float] = (1, 2.0)
    limit: Optional[int] = None

    def run(self, graph, ctx):
        ctx.options.setdefault("seen", []).append(self)
        return False


def test_class_pass_options_parse_with_their_types(registered):
    registered(Tunable, "tunable")
    p = parse_pipeline("tunable{count=7,scale=2,enabled=false,label=8,method=mse,axes=[0,2],"
                       "pair=[3,0.25],limit=none}")
    (inst,) = p.items
    assert inst == Tunable(7, 2.0, False, "8", "mse", (0, 2), (3, 0.25), None)
    assert isinstance(inst.scale, float) and inst.label == "8"
    assert parse_pipeline("tunable{axes=5,limit=9}").items[0].axes == (5,)  # one value = a 1-tuple


@pytest.mark.parametrize("text, fragment", [
    ("tunable{count=2.5}", "option 'count': expected int, got '2.5'"),
    ("tunable{enabled=yes}", "option 'enabled': expected bool (true or false), got 'yes'"),
    ("tunable{method=max}", "option 'method': expected one of mse, minmax; got 'max'"),
    ("tunable{axes=[1,a]}", "option 'axes': expected int, got 'a'"),
    ("tunable{pair=[1]}", "option 'pair': expected tuple[int, float] (2 values), got 1 values"),
    ("tunable{cout=1}", "pass 'tunable' has no option 'cout' (did you mean count?)"),
    ("tunable{count=\"3\"}", "option 'count': expected int, got '3'"),
])
def test_bad_option_values_name_the_pass_option_and_expectation(registered, text, fragment):
    registered(Tunable, "tunable")
    with pytest.raises(PipelineError) as err:
        parse_pipeline(text)
    assert fragment in str(err.value)
    assert "^" in str(err.value)


def test_options_given_from_python_are_checked_too(registered):
    registered(Tunable, "tunable")
    assert Tunable(scale=1).scale == 1.0 and isinstance(Tunable(scale=1).scale, float)
    assert Tunable(axes=[1, 2]).axes == (1, 2)
    with pytest.raises(PipelineError, match="option 'method': expected one of mse, minmax"):
        Tunable(method="median")


def test_function_pass_with_keyword_options(registered, graph):
    calls = []

    def scaled(graph, ctx, *, factor: int = 2, mode: Literal["a", "b"] = "a"):
        """Record the options it was called with."""
        calls.append((factor, mode))

    registered(scaled)  # bare: named after the function
    info = get_pass("scaled")
    assert info.doc == "Record the options it was called with."
    assert [s.describe() for s in info.options.values()] == ["factor: int = 2",
                                                             "mode: one of {a, b} = a"]
    run_pipeline(graph, "scaled,scaled{factor=5,mode=b}")
    assert calls == [(2, "a"), (5, "b")]


def test_function_pass_with_a_required_option(registered, graph):
    def needs(graph, ctx, *, level: int):
        """needs a level"""
    registered(needs)
    with pytest.raises(PipelineError, match=r"pass 'needs' needs option 'level' \(level: int\)"):
        parse_pipeline("needs")
    assert str(parse_pipeline("needs{level=3}")) == "needs{level=3}"


def test_register_pass_as_class_decorator_derives_name_and_makes_frozen_dataclass(registered):
    class StripThings(Pass):
        """Strip things."""
        depth: int = 1

        def run(self, graph, ctx):
            return None

    cls = registered(StripThings)
    assert cls.name == "strip-things" and get_pass("strip-things").doc == "Strip things."
    with pytest.raises(Exception):
        cls().depth = 2  # frozen
    assert str(parse_pipeline("strip-things{depth=4}")) == "strip-things{depth=4}"


def test_registration_errors(registered):
    def dce(graph, ctx):
        pass
    with pytest.raises(ValueError, match="'dce' is already registered"):
        register_pass("dce")(dce)

    @dataclass
    class Mutable(Pass):
        x: int = 1
    with pytest.raises(TypeError, match="must be a frozen dataclass"):
        register_pass("mutable")(Mutable)
    with pytest.raises(ValueError, match="invalid pass name"):
        register_pass("fixpoint")(lambda g, c: None)
    with pytest.raises(TypeError, match=r"take \(graph, ctx\)"):
        register_pass("three")(lambda g, c, d: None)


def test_builtin_passes_are_registered_lazily():
    names = all_passes()
    assert {"dce", "fold-constants", "remove-identity"} <= set(names)
    assert all(info.doc for info in names.values())


# ---- pipeline strings ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, canonical", [
    ("", ""),
    ("dce", "dce"),
    (" dce , fold-constants { max_elements = 64 } ", "dce,fold-constants{max_elements=64}"),
    ("fold-constants{max_elements=1048576}", "fold-constants"),  # defaults are not printed
    ("fixpoint(dce,remove-identity)", "fixpoint(dce,remove-identity)"),
    ("fixpoint{max=3}(dce,fixpoint(dce))", "fixpoint{max=3}(dce,fixpoint(dce))"),
    ("fixpoint{max=10}(dce)", "fixpoint(dce)"),
])
def test_pipeline_canonical_form_round_trips(text, canonical):
    p = parse_pipeline(text)
    assert str(p) == canonical
    assert parse_pipeline(str(p)) == p


def test_pipeline_structure():
    p = parse_pipeline("dce,fixpoint{max=4}(fold-constants{max_elements=8},dce)")
    assert isinstance(p.items[1], Fixpoint) and p.items[1].max_iterations == 4
    assert p.items[1].items[0].max_elements == 8
    assert p.pass_names() == ["dce", "fold-constants", "dce"]
    assert Pipeline.of([get_pass("dce").create(), "remove-identity"]) == \
        parse_pipeline("dce,remove-identity")


@pytest.mark.parametrize("text, message, column", [
    ("dce,,dce", "expected a pass name, found ','", 5),
    ("dce,", "expected a pass name, found the end", 5),
    ("dce fold-constants", "expected ',' or the end, found 'f'", 5),
    ("fixpoint(dce", "expected ',' or ')', found the end", 13),
    ("fixpoint dce", "expected '(' after 'fixpoint' to open its group, found 'd'", 10),
    ("fold-constants{max_elements}", "expected '=' after option name 'max_elements'", 28),
    ("fold-constants{max_elements=[1,2}", "expected ',' or ']' in a list, found '}'", 33),
    ("fold-constants{max_elements='8}", "unterminated string", 29),
    ("fixpoint{max=0}(dce)", "fixpoint option max must be a positive int", 14),
])
def test_malformed_pipelines_point_at_the_fault(text, message, column):
    with pytest.raises(PipelineError) as err:
        parse_pipeline(text)
    lines = str(err.value).split("\n")
    assert message in lines[0] and f"at column {column}:" in lines[0]
    assert lines[1] == "  " + text
    assert lines[2].index("^") - 2 == column - 1


def test_unknown_pass_suggests_close_names():
    with pytest.raises(PipelineError) as err:
        parse_pipeline("dce,fold-constant")
    text = str(err.value)
    assert "unknown pass 'fold-constant'; did you mean fold-constants" in text
    assert "at column 5" in text


@dataclass(frozen=True)
class Mixed(Pass):
    """Round-trip subject."""
    s: str = "default"
    f: float = 0.0
    xs: tuple[int, ...] = ()
    flag: bool = False

    def run(self, graph, ctx):
        return False


@settings(max_examples=150, deadline=None)
@given(s=st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
       f=st.floats(allow_nan=False), xs=st.lists(st.integers(-10**12, 10**12), max_size=4),
       flag=st.booleans())
def test_any_option_values_round_trip_through_the_canonical_form(s, f, xs, flag):
    if "mixed" not in all_passes():
        register_pass("mixed")(Mixed)
    p = Pipeline.of([Mixed(s, f, tuple(xs), flag), "dce"])
    again = parse_pipeline(str(p))
    assert again == p and str(again) == str(p)


def teardown_module():
    unregister_pass("mixed")


# ---- running ---------------------------------------------------------------------------------
def test_changed_comes_from_return_value_or_graph_version(registered, graph):
    @dataclass(frozen=True)
    class Claim(Pass):
        answer: Optional[bool] = None
        touch: bool = False

        def run(self, graph, ctx):
            if self.touch:
                out = graph.nodes[0].output
                graph.rename(out, graph.fresh_name(out.name))
            return self.answer
    registered(Claim, "claim")
    ctx = run_pipeline(graph, "claim,claim{touch=true},claim{answer=true},claim{answer=false,touch=true}")
    assert [r.changed for r in ctx.records] == [False, True, True, False]
    assert set(ctx.timings) == {"claim"} and ctx.timings["claim"] >= 0


def test_a_pass_returning_something_else_is_a_crash(registered, graph):
    registered(lambda g, c: g, "returns-graph")
    with pytest.raises(PassCrash, match="run\\(\\) returned Graph"):
        run_pipeline(graph, "returns-graph")


def test_analysis_is_cached_until_the_graph_changes(registered, graph):
    computed = []

    def relu_count(g):
        computed.append(1)
        return sum(n.op == "relu" for n in g.nodes)

    def peek(g, ctx):
        ctx.options.setdefault("counts", []).append(ctx.analysis(g, relu_count))

    def drop_relu(g, ctx):
        b = g.value("b").producer
        g.replace_all_uses(b.output, b.inputs[0])
        g.erase(b)

    def mark_changed(g, ctx):
        return True  # claims a change without touching the version: still invalidates

    for fn, name in ((peek, "peek"), (drop_relu, "drop-relu"), (mark_changed, "mark-changed")):
        registered(fn, name)
    ctx = run_pipeline(graph, "peek,peek,drop-relu,peek,peek,mark-changed,peek")
    assert ctx.options["counts"] == [2, 2, 1, 1, 1]
    assert len(computed) == 3


def test_fixpoint_repeats_until_nothing_changes(registered, graph):
    def shrink(g, ctx):
        """Drop one redundant relu per run."""
        for n in g:
            if n.op == "relu" and n.inputs[0].producer is not None:
                g.replace_all_uses(n.output, n.inputs[0])
                g.erase(n)
                return True
        return False
    registered(shrink)
    ctx = run_pipeline(graph, "fixpoint(shrink,dce)")
    assert graph.op_counts() == {"add": 1, "relu": 1}
    # iteration 1 changes, iteration 2 confirms the fixpoint
    assert [(r.name, r.changed) for r in ctx.records] == \
        [("shrink", True), ("dce", False), ("shrink", False), ("dce", False)]


def test_fixpoint_that_never_converges_stops_with_a_warning(registered, graph):
    registered(lambda g, c: True, "always")
    ctx = run_pipeline(graph, "fixpoint{max=3}(always)")
    assert len(ctx.records) == 3
    assert "after 3 iterations" in ctx.warnings[0].message


def test_diagnostics_and_ctx_error_fail_the_pass_after_it_returns(registered, graph):
    def lint(g, ctx):
        """Complain about every relu."""
        ctx.note("looking", None)
        for n in g.nodes:
            if n.op == "relu":
                ctx.error("relu is not allowed here", n)
        ctx.options["finished"] = True
    registered(lint)
    ctx = PassContext()
    with pytest.raises(PassError) as err:
        run_pipeline(graph, "dce,lint", ctx)
    assert ctx.options["finished"]  # it reported both before failing
    msg = str(err.value)
    assert "pass 'lint' (position 2 of pipeline 'dce,lint') failed" in msg
    assert "reported 2 error(s)" in msg and "%a: relu is not allowed here" in msg
    assert ctx.diagnostics[0] == Diagnostic("note", "lint", None, "looking")
    assert str(ctx.errors[1]) == "error: [lint] %b: relu is not allowed here"


def test_user_errors_keep_their_class_and_gain_the_pass_position(registered, graph):
    def picky(g, ctx):
        raise OpError("node %b: cannot handle this")
    registered(picky)
    with pytest.raises(OpError) as err:
        run_pipeline(graph, "dce,fixpoint(dce,picky)")
    assert str(err.value).startswith("pass 'picky' (position 2.2, fixpoint iteration 1 of "
                                     "pipeline 'dce,fixpoint(dce,picky)') failed: node %b")
    assert err.value.pass_run.step == 3


def test_internal_errors_become_pass_crash_with_reproducer(registered, graph, tmp_path):
    def buggy(g, ctx):
        g.erase(g.value("y").producer.inputs[0].producer)  # also mutates before failing

    def broken(g, ctx):
        return 1 / 0
    registered(buggy)
    registered(broken)
    ctx = PassContext(dump_dir=tmp_path)
    with pytest.raises(PassCrash) as err:
        run_pipeline(graph, "dce,broken", ctx)
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    repro = tmp_path / "reproducer_002_broken.qir"
    assert f"crashed with ZeroDivisionError: division by zero. Reproducer (the graph before " \
           f"this pass): {repro}" in str(err.value)
    # the reproducer is the graph before the failing pass, parseable, and runs like it
    again = qcompile.parse_file(repro)
    assert again.op_counts() == graph.op_counts()
    x = np.array([-1, 2, -3, 4], np.float32)
    assert np.array_equal(qcompile.run(again, [x])[0], qcompile.run(graph, [x])[0])
    with pytest.raises(PassCrash, match="pass 'buggy'"):
        run_pipeline(graph, "buggy", PassContext())  # no dump folder: no reproducer
    assert not (tmp_path / "reproducer_001_buggy.qir").exists()


def test_verify_names_the_pass_that_broke_the_graph(registered, graph):
    def break_types(g, ctx):
        g.value("a").type = TensorType((5,))
        return True
    registered(break_types)
    with pytest.raises(VerifyError) as err:
        run_pipeline(graph, "dce,break-types,dce", PassContext(verify=True))
    msg = str(err.value)
    assert msg.startswith("pass 'break-types' (position 2 of pipeline 'dce,break-types,dce') "
                          "failed: the graph no longer verifies after this pass")
    assert "%a" in msg
    # without verification the same pipeline goes through
    g2 = qcompile.parse(NET)
    run_pipeline(g2, "break-types", PassContext(verify=False))


def test_verify_also_checks_a_pass_that_wrongly_claims_no_change(registered, graph):
    def sneaky(g, ctx):
        g.nodes.reverse()  # breaks topological order...
        g.version += 1
        return False       # ...and says it changed nothing
    registered(sneaky)
    with pytest.raises(VerifyError, match="(?s)pass 'sneaky'.*out of topological order"):
        run_pipeline(graph, "sneaky", PassContext(verify=True))


def test_verify_checks_the_input_graph_first(graph):
    graph.value("b").type = TensorType((7,))
    with pytest.raises(VerifyError, match="the input graph does not verify"):
        run_pipeline(graph, "dce", PassContext(verify=True))


def test_verify_is_on_by_default_under_pytest(monkeypatch):
    assert PassContext().verify
    monkeypatch.setenv("QCOMPILE_VERIFY", "0")
    assert not PassContext().verify
    monkeypatch.delenv("QCOMPILE_VERIFY")
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert not PassContext().verify
    monkeypatch.setenv("QCOMPILE_VERIFY", "1")
    assert PassContext().verify


# ---- instruments --------------------------------------------------------------------------------
def test_instrument_hooks_run_in_order(graph):
    events = []

    class Recorder(Instrument):
        def enter_pipeline(self, g, ctx, pipeline):
            events.append(("enter", str(pipeline)))

        def run_before_pass(self, g, ctx, run):
            events.append(("before", run.name, run.step, run.position, run.iteration))

        def run_after_pass(self, g, ctx, run, changed):
            events.append(("after", run.name, changed))

        def exit_pipeline(self, g, ctx):
            events.append(("exit",))

    run_pipeline(graph, "remove-identity,fixpoint{max=2}(dce)",
                 PassContext(instruments=[Recorder()], verify=False))
    assert events == [("enter", "remove-identity,fixpoint{max=2}(dce)"),
                      ("before", "remove-identity", 1, "1", None), ("after", "remove-identity", False),
                      ("before", "dce", 2, "2.1", 1), ("after", "dce", False),
                      ("exit",)]


def test_dump_ir_writes_numbered_files(graph, tmp_path):
    dump = DumpIRInstrument(tmp_path / "ir", before=["dce"], after="all")
    run_pipeline(graph, "remove-identity,dce", PassContext(instruments=[dump]))
    names = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert names == ["000_input.qir", "001_after_remove-identity.qir", "002_after_dce.qir",
                     "002_before_dce.qir"]
    assert qcompile.parse((tmp_path / "ir" / "002_after_dce.qir").read_text()).op_counts() == \
        graph.op_counts()


def test_dump_folder_also_receives_the_reproducer(registered, graph, tmp_path):
    def fail(g, ctx):
        raise PassError("target cannot take this")
    registered(fail)
    with pytest.raises(PassError, match="Reproducer"):
        run_pipeline(graph, "dce,fail", PassContext(instruments=[DumpIRInstrument(tmp_path)]))
    text = (tmp_path / "reproducer_002_fail.qir").read_text()
    assert text.startswith("// reproducer: pass 'fail' (position 2")
    assert qcompile.parse(text).op_counts() == graph.op_counts()


def test_timing_instrument_summarises(graph):
    stream = io.StringIO()
    timing = TimingInstrument(stream)
    run_pipeline(graph, "fixpoint(dce,remove-identity)", PassContext(instruments=[timing]))
    assert timing.counts == {"dce": 1, "remove-identity": 1}
    lines = stream.getvalue().splitlines()
    assert lines[0].split() == ["pass", "runs", "seconds", "%"]
    assert {line.split()[0] for line in lines[1:]} == {"dce", "remove-identity"}


def test_explicit_verify_instrument_is_not_doubled(graph):
    calls = []

    class Counting(VerifyInstrument):
        def enter_pipeline(self, g, ctx, pipeline):
            calls.append(1)
    run_pipeline(graph, "dce", PassContext(verify=True, instruments=[Counting()]))
    assert calls == [1]
