"""The command line: subprocess runs for exit codes and streams, in-process runs for the rest."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qcompile
from qcompile import cli
from qcompile.api import load
from qcompile.errors import FrontendError, ParseError
from qcompile.passmanager import register_pass, unregister_pass

NET = """graph @net(%x: tensor<4xf32>) -> (%y) {
  %a = const tensor<4xf32> dense<[1.0, 2.0, 3.0, 4.0]>
  %b = relu(%a) : tensor<4xf32>
  %dead = relu(%x) : tensor<4xf32>
  %y = add(%x, %b) : tensor<4xf32>
  return %y
}
"""


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.qir"
    path.write_text(NET)
    return path


def qc(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qcompile", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


# ---- through a subprocess ------------------------------------------------------------------------
def test_inspect_runs_a_pipeline_and_prints_the_ir(net):
    r = qc("inspect", net, "--pipeline", "fixpoint(fold-constants,remove-identity,dce)")
    assert r.returncode == 0, r.stderr
    graph = qcompile.parse(r.stdout)
    assert graph.op_counts() == {"add": 1}
    assert graph.value("b").is_constant
    x = np.float32([-1, 0, 1, 2])
    assert np.array_equal(qcompile.run(graph, [x])[0], qcompile.run(qcompile.parse(NET), [x])[0])


def test_bad_pipeline_exits_2_with_a_caret(net):
    r = qc("inspect", net, "-p", "dce,fold-constans")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: pipeline at column 5: unknown pass 'fold-constans'; "
                               "did you mean fold-constants")
    assert "  dce,fold-constans\n      ^" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_file_exits_2(tmp_path):
    r = qc("inspect", tmp_path / "nope.qir")
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {tmp_path / 'nope.qir'}: no such file"


def test_malformed_qir_exits_2_naming_line_and_column(tmp_path):
    bad = tmp_path / "bad.qir"
    bad.write_text(NET.replace("relu(%x)", "relu(%x"))
    r = qc("inspect", bad)
    assert r.returncode == 2
    assert f"error: {bad}:4:" in r.stderr and "^" in r.stderr and "Traceback" not in r.stderr


def test_passes_lists_builtin_passes_with_options():
    r = qc("passes")
    assert r.returncode == 0, r.stderr
    for text in ("dce", "fold-constants", "remove-identity", "max_elements: int = 1048576",
                 "Remove nodes whose results are never used"):
        assert text in r.stdout


def test_version_and_usage_errors():
    r = qc("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"qcompile {qcompile.__version__}"
    r = qc("frobnicate")
    assert r.returncode == 2 and "invalid choice: 'frobnicate'" in r.stderr
    r = qc()
    assert r.returncode == 2 and "COMMAND" in r.stderr


# ---- in process ----------------------------------------------------------------------------------
def test_inspect_full_and_dump_ir(net, tmp_path, capsys):
    dump = tmp_path / "dumps"
    assert cli.main(["inspect", str(net), "-p", "fold-constants,dce", "--dump-ir", str(dump),
                     "--full"]) == 0
    out = capsys.readouterr().out
    assert "dense<[1.0, 2.0, 3.0, 4.0]>" in out  # --full: the folded constant's data
    assert sorted(p.name for p in dump.iterdir()) == [
        "000_input.qir", "001_after_fold-constants.qir", "002_after_dce.qir"]
    assert "%dead" in (dump / "001_after_fold-constants.qir").read_text()
    assert "%dead" not in (dump / "002_after_dce.qir").read_text()


def test_inspect_without_pipeline_prints_the_graph_unchanged(net, capsys):
    assert cli.main(["inspect", str(net)]) == 0
    assert capsys.readouterr().out == qcompile.parse(NET).dump()


@pytest.fixture
def failing_passes():
    @register_pass("cli-test-warn")
    def warn(graph, ctx):
        """Warn about the first node."""
        ctx.warn("look at this", graph.nodes[0])

    @register_pass("cli-test-crash")
    def crash(graph, ctx):
        """Crash."""
        raise RuntimeError("boom")
    yield
    unregister_pass("cli-test-warn")
    unregister_pass("cli-test-crash")


def test_pass_diagnostics_go_to_stderr(net, capsys, failing_passes):
    assert cli.main(["inspect", str(net), "-p", "cli-test-warn"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == "warning: [cli-test-warn] %b: look at this"
    assert captured.out.startswith("graph @net")


def test_internal_error_exits_1_and_debug_shows_traceback(net, tmp_path, capsys, failing_passes):
    assert cli.main(["inspect", str(net), "-p", "dce,cli-test-crash"]) == 1
    err = capsys.readouterr().err
    assert "internal error: PassCrash: pass 'cli-test-crash' (position 2 of pipeline " \
           "'dce,cli-test-crash') crashed with RuntimeError: boom" in err
    assert "run with --debug" in err and "Traceback" not in err
    assert cli.main(["--debug", "inspect", str(net), "-p", "cli-test-crash",
                     "--dump-ir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err
    assert (tmp_path / "d" / "reproducer_001_cli-test-crash.qir").exists()


def test_debug_verifies_between_passes(net, capsys, monkeypatch):
    from qcompile.ir.types import TensorType

    @register_pass("cli-test-break")
    def breaks(graph, ctx):
        """Corrupt a type."""
        graph.value("y").type = TensorType((9,))
        return True
    monkeypatch.setenv("QCOMPILE_VERIFY", "0")
    try:
        assert cli.main(["inspect", str(net), "-p", "cli-test-break"]) == 0
        capsys.readouterr()
        assert cli.main(["inspect", "--debug", str(net), "-p", "cli-test-break"]) == 2
    finally:
        unregister_pass("cli-test-break")
    err = capsys.readouterr().err
    assert "pass 'cli-test-break' (position 1 of pipeline 'cli-test-break') failed: the graph " \
           "no longer verifies after this pass" in err


def test_subcommands_are_easy_to_add(capsys):
    @cli.subcommand("echo-test", help="echo", args=[cli.arg("words", nargs="*")])
    def echo(args):
        print(" ".join(args.words))
        return 3
    try:
        assert cli.main(["echo-test", "a", "b"]) == 3
        assert capsys.readouterr().out == "a b\n"
    finally:
        del cli.COMMANDS["echo-test"]


def test_input_shape_argument_parses():
    assert cli._parse_shape("x=1,3,?,224") == ("x", (1, 3, None, 224))
    with pytest.raises(Exception, match="NAME=D1,D2"):
        cli._parse_shape("1,3")


# ---- qcompile.load ---------------------------------------------------------------------------------
def test_load_dispatches_on_suffix_and_type(net, tmp_path):
    g = load(net)
    assert g.op_counts() == {"add": 1, "relu": 2}
    assert load(str(net)).dump() == g.dump()
    assert load(g) is g
    with pytest.raises(FrontendError, match=r"unknown model file type '\.txt'; qcompile reads "
                                            r"\.qir .*\.onnx .*\.pt2"):
        load(tmp_path / "model.txt")
    with pytest.raises(FrontendError, match="no such file"):
        load(tmp_path / "missing.onnx")
    with pytest.raises(FrontendError, match="is a directory"):
        (tmp_path / "dir.onnx").mkdir()
        load(tmp_path / "dir.onnx")
    with pytest.raises(FrontendError, match="cannot load a builtins.int"):
        load(42)
    bad = tmp_path / "bad.qir"
    bad.write_text("graph @g(")
    with pytest.raises(ParseError):
        load(bad)


def tiny_onnx(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.arange(12, dtype=np.float32) / 10)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return model


def test_inspect_an_onnx_model_with_a_pinned_shape(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    r = qc("inspect", tmp_path / "tiny.onnx", "--input-shape", "x=2,4", "-p", "dce")
    assert r.returncode == 0, r.stderr
    graph = qcompile.parse(r.stdout)
    assert graph.inputs[0].type.shape == (2, 4)
    assert graph.op_counts() == {"linear": 1, "relu": 1}
    assert load(model).inputs[0].type.shape == (None, 4)  # a ModelProto loads too


@pytest.mark.slow
def test_load_torch_module_and_pt2(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(2, 4)
    g = load(model, example_inputs=(x,))
    assert g.op_counts() == {"linear": 1, "relu": 1}
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "m.pt2"))
    r = qc("inspect", tmp_path / "m.pt2")
    assert r.returncode == 0, r.stderr
    out = qcompile.run(qcompile.parse(r.stdout), [x.numpy()])[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-6, atol=1e-6)
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(FrontendError, match="not a readable torch.export archive"):
        load(tmp_path / "junk.pt2")


DIGITS = Path(__file__).resolve().parents[1] / "examples" / "models"


@pytest.mark.slow
def test_inspect_quantizes_the_bundled_model_and_prints_sqnr():
    """The README's main job: calibrate and quantize the digits CNN, print IR, SQNR and accuracy."""
    r = qc("inspect", DIGITS / "digits_cnn.onnx", "-p",
           "fold-bn,equalize,calibrate,quantize{w=8,a=8},bias-correct",
           "--calibration", DIGITS / "digits_calib.npz", "--sqnr", DIGITS / "digits_test.npz")
    assert r.returncode == 0, r.stderr
    assert "quant<scale=" in r.stdout and "per-layer SQNR" in r.stdout
    accuracy = float(r.stdout.rsplit("simulated quantized ", 1)[1].split(" %")[0])
    assert accuracy >= 99.1


def test_inspect_with_missing_calibration_file_exits_2(tmp_path):
    r = qc("inspect", DIGITS / "digits_cnn.onnx", "-p", "calibrate",
           "--calibration", tmp_path / "nope.npz")
    assert r.returncode == 2
    assert "nope.npz" in r.stderr and "no such file" in r.stderr
    assert "Traceback" not in r.stderr
