"""The TVM backend: bit-exact CPU modules, CUDA code generation, files, errors."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompile  # noqa: E402
from qcompile.ir.graph import Graph  # noqa: E402
from qcompile.ir.types import QuantParams, TensorType  # noqa: E402
from qcompile.targets import tvm as qtvm  # noqa: E402
from qcompile.targets.backend import BackendUnavailable, get_backend  # noqa: E402
from qcompile.targets.c.testing import IntGraphBuilder, random_graph  # noqa: E402
from qcompile.targets.tvm.lower import TVMBackendError  # noqa: E402
from qcompile.targets.tvm.target import TVMTargetError, parse_target_string  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}


def assert_same(ref, out):
    assert len(ref) == len(out)
    for r, o in zip(ref, out):
        assert r.dtype == o.dtype and r.shape == o.shape
        np.testing.assert_array_equal(r, o)


def codes(graph: Graph, seed: int, batch: int = 1):
    v = graph.inputs[0]
    b = IntGraphBuilder(seed=seed)
    shape = (batch, *v.shape[1:])
    lo, hi = (-128, 127) if v.dtype == "i8" else (0, 255)
    return b.rng.integers(lo, hi + 1, shape).astype(np.int8 if v.dtype == "i8" else np.uint8)


# ---- bit-exact on random integer graphs ---------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_random_integer_graphs_are_bit_exact(seed):
    g = random_graph(seed)
    x = codes(g, seed + 100)
    assert_same(qcompile.run(g, [x], mode="int"), qtvm.build(g, {"kind": "llvm"})(x))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4, 24))
@pytest.mark.parametrize("schedule", [True, False])
def test_more_random_graphs_scheduled_or_not(seed, schedule):
    g = random_graph(seed)
    x = codes(g, seed + 100)
    module = qtvm.build(g, {"kind": "llvm"}, schedule=schedule)
    assert_same(qcompile.run(g, [x], mode="int"), module(x))


@pytest.mark.parametrize("rounding", ["gemmlowp_double", "single_half_up", "single_half_away",
                                      "shift_only"])
def test_every_rounding_at_batch_3(rounding):
    b = IntGraphBuilder("r", seed=7, rounding=rounding)
    x = b.input((None, 3, 9, 9), "u8")
    y = b.requant(b.conv(x, 6, k=3, padding=(1, 1, 1, 1), weight_zp=True), relu=True)
    y = b.requant(b.conv(y, 6, k=3, groups=6, padding=(1, 0, 1, 0), stride=2), dtype="u8")
    z = b.mul(y, b.rescale(y))
    g = b.output(b.requant(b.linear(b.op("flatten", [b.add(y, z)], axis=1), 5), axis=1))
    xs = codes(g, 3, batch=3)
    assert_same(qcompile.run(g, [xs], mode="int"), qtvm.build(g, None, batch=3)(xs))


def test_narrow_accumulator_wraps_like_the_interpreter():
    b = IntGraphBuilder("acc", seed=11, rounding="single_half_up")
    x = b.input((1, 8, 6, 6), "u8")
    acc = b.conv(x, 4, k=3, acc_bits=14)       # sums of up to 72 * 255 * 127 wrap at 14 bits
    g = b.output(acc, b.requant(b.conv(x, 4, k=1, acc_bits=12)))
    xs = codes(g, 5)
    ref = qcompile.run(g, [xs], mode="int")
    assert np.abs(ref[0]).max() < 2 ** 13      # it did wrap
    assert_same(ref, qtvm.build(g)(xs))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy on +-inf
def test_boundary_quantize_and_dequantize_match_at_ties():
    g = Graph("q")
    x = g.add_input("x", TensorType((2, 64), "f32"))
    q1 = g.add_node("quantize", [x], {"dtype": "i8", "rounding": "half_even"}, name="qe")
    q1.output.quant = QuantParams((0.05,), (3,), 8, True)
    q2 = g.add_node("quantize", [x], {"dtype": "u8", "rounding": "half_away"}, name="qa")
    q2.output.quant = QuantParams((0.05,), (128,), 8, False)
    d1 = g.add_node("dequantize", [q1.output], name="d1")
    d2 = g.add_node("dequantize", [q2.output], name="d2")
    g.outputs = [q1.output, q2.output, d1.output, d2.output]
    rng = np.random.default_rng(0)
    ties = ((np.arange(64) - 32) + 0.5).astype(np.float32) * np.float32(0.05)
    xs = np.stack([ties, rng.normal(0, 4, 64).astype(np.float32)])
    xs[1, :3] = [np.inf, -np.inf, 1e30]
    assert_same(qcompile.run(g, [xs], mode="int"), qtvm.build(g)(xs))


# ---- real models -------------------------------------------------------------------------------

def _zoo():
    sys.path.insert(0, str(ROOT / "examples"))
    import zoo
    return zoo


def _integer_graph(name: str):
    torch = pytest.importorskip("torch")
    from qcompile.passmanager import PassContext, run_pipeline
    zoo = _zoo()
    if name == "digits":
        X_tr, X, _, _ = zoo.digits_data()
        model = zoo.digits_cnn()
        pipeline = "fold-bn,calibrate,quantize,lower-integer"
    else:
        pytest.importorskip("skimage")
        try:
            model = zoo.mtcnn_rnet()
        except zoo.ZooError as exc:
            pytest.skip(str(exc))
        X, _ = zoo.lfw_face_data(24)
        X_tr = X[:100]
        pipeline = "fold-bn,calibrate,quantize,lower-integer{float_islands=true}"
    g = qcompile.from_torch(model, (torch.from_numpy(X[:2]),), dynamic_batch=True)
    run_pipeline(g, pipeline, PassContext(calibration_data=zoo.calibration_batches(X_tr, n=64)))
    return g, X


@pytest.mark.slow
def test_digits_cnn_is_bit_exact_and_round_trips_through_files(tmp_path):
    g, X = _integer_graph("digits")
    x = X[:8]
    ref = qcompile.run(g, [x], mode="int")
    module = qtvm.build(g, None, batch=8)
    assert_same(ref, module(x))
    assert qtvm.export(module, tmp_path) == ["model.so", "model.params", "model.json"]
    assert_same(ref, qtvm.load(tmp_path)(x))


@pytest.mark.slow
def test_rnet_integer_outputs_are_bit_exact_softmax_island_close():
    g, X = _integer_graph("rnet")
    x = X[:8]
    # the graph has a float softmax island: run the interpreter in float mode, in which the
    # integer ops compute exactly what they do in "int" mode
    ref = qcompile.run(g, [x], mode="float")
    out = qtvm.build(g, None, batch=8)(x)
    np.testing.assert_array_equal(ref[1], out[1])            # dequantized integer output
    np.testing.assert_allclose(ref[0], out[0], rtol=0, atol=1e-6)  # softmax: TVM's exp
    probe = g.copy()
    probe.outputs = [probe.value("linear_1.q"), probe.value("linear_2.q")]
    assert_same(qcompile.run(probe, [x], mode="int"), qtvm.build(probe, None, batch=8)(x))


# ---- other targets -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_module_is_generated_and_compiles(tmp_path, arch):
    g = random_graph(3)
    module = qtvm.build(g, {"kind": "cuda", "arch": arch})
    src = module.source
    assert src is not None and "__global__" in src and "extern \"C\"" in src
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed: the CUDA source was generated but not compiled")
    cu = tmp_path / "kernels.cu"
    cu.write_text(src)
    r = subprocess.run(["nvcc", f"-arch={arch}", "--ptx", str(cu), "-o", str(tmp_path / "k.ptx")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert ".entry" in (tmp_path / "k.ptx").read_text()


def test_aarch64_cross_target_writes_an_arm_object(tmp_path):
    g = random_graph(1)
    module = qtvm.build(g, AARCH64)
    files = qtvm.export(module, tmp_path)
    assert files == ["model.o", "model.params", "model.json"]
    head = (tmp_path / "model.o").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    with pytest.raises(TVMBackendError, match="cannot run here"):
        module(codes(g, 0))


def test_catalog_targets_translate_to_tvm_targets():
    from qcompile.targets.catalog import get_target
    from qcompile.targets.tvm.target import make_target
    assert make_target(get_target("x86-64-avx2")).attrs["mcpu"] == "haswell"
    assert make_target(get_target("aarch64")).attrs["mtriple"] == "aarch64-linux-gnu"
    assert str(make_target(get_target("cuda-sm90")).attrs["arch"]) == "sm_90"
    assert parse_target_string("llvm -mattr=+avx2,+fma") == {"kind": "llvm",
                                                             "mattr": ["+avx2", "+fma"]}


# ---- the registered backend ----------------------------------------------------------------------

def test_emit_writes_deterministic_files(tmp_path):
    from qcompile.targets.catalog import get_target
    g = random_graph(2)
    emit = get_backend("tvm")
    target = get_target("x86-64-avx2")
    r1 = emit(g, target, tmp_path / "a", None)
    r2 = emit(g, target, tmp_path / "b", None)
    assert r1.files == r2.files == ["model.so", "model.params", "model.json"]
    for f in ("model.so", "model.params", "model.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert r1.metrics["constant_bytes"] > 0
    x = codes(g, 1)
    assert_same(qcompile.run(g, [x], mode="int"), qtvm.load(tmp_path / "a")(x))


# ---- errors ------------------------------------------------------------------------------------

def test_an_op_without_a_lowering_is_named():
    b = IntGraphBuilder("bad", seed=0)
    x = b.input((1, 4), "i8")
    g = b.output(b.op("abs", [x]))
    with pytest.raises(TVMBackendError, match=r"%abs \(abs\)"):
        qtvm.build(g)


def test_a_target_tvm_rejects_is_named():
    with pytest.raises(TVMTargetError, match="nosuchkind"):
        qtvm.build(random_graph(0), {"kind": "nosuchkind"})
    with pytest.raises(TVMTargetError, match="'llvm mcpu'"):
        qtvm.build(random_graph(0), "llvm mcpu")


def test_missing_tvm_is_one_line(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tvm" else real(name, *a))
    with pytest.raises(BackendUnavailable) as info:
        qtvm.build(random_graph(0))
    assert "pip install 'qcompile[tvm]'" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_compile_command_for_the_x86_target_gives_a_bit_exact_module(tmp_path):
    """`qcompile compile --target x86-64-avx2` end to end: the folder's model.so, loaded with
    `qcompile.targets.tvm.load`, equals the interpreter's integer graph on real test images."""
    from qcompile.compile import CompileOptions, compile_model
    from qcompile.targets import get_target
    models = ROOT / "examples" / "models"
    out = tmp_path / "x86"
    r = subprocess.run([sys.executable, "-m", "qcompile", "compile", str(models / "digits_cnn.onnx"),
                        "--target", "x86-64-avx2", "--calibration", str(models / "digits_calib.npz"),
                        "-o", str(out), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {"model.so", "model.params", "model.json", "report.json"} <= {p.name for p in out.iterdir()}
    # The same compile through the Python API gives the integer graph the module was built from.
    result = compile_model(CompileOptions(model=str(models / "digits_cnn.onnx"),
                                          target=get_target("x86-64-avx2"), output=str(tmp_path / "api"),
                                          calibration=str(models / "digits_calib.npz")))
    module = qtvm.load(out)
    test = np.load(models / "digits_test.npz")
    hits = 0
    for i in range(40):
        x = test["x"][i:i + 1]
        (ours,) = module(x)
        (ref,) = qcompile.run(result.graph, [x], mode="int")
        assert np.array_equal(ours, ref), f"image {i}"
        hits += int(ours.argmax() == test["y"][i])
    assert hits >= 39
