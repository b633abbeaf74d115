"""The C backend: emitted code built with the host gcc, run, and compared bit for bit with the
integer interpreter; the API, the build files and the errors."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qcompile
from qcompile.ir.graph import Graph
from qcompile.ir.types import QuantParams, TensorType
from qcompile.targets import get_backend, get_target
from qcompile.targets.c import CBackendError, emit_c, toolchain as tc
from qcompile.targets.c.testing import IntGraphBuilder, boundary_arrays, random_graph

ROOT = Path(__file__).resolve().parents[1]
needs_gcc = pytest.mark.skipif(not tc.have_host_cc(), reason="no host C compiler (gcc)")
needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="arm-none-eabi-gcc is not installed")


def run_c(graph: Graph, inputs, tmp_path: Path, dsp: bool, batch: int = 1):
    """Emit, build with the test driver, run; returns (C outputs, interpreter outputs)."""
    out = tmp_path / f"dsp{int(dsp)}"
    prog = emit_c(graph, out, dsp=dsp, batch=batch)
    ins, ref = boundary_arrays(graph, inputs, prog)
    exe = tc.host_build(out, out / "model_test", dsp=dsp)
    return tc.run_host(exe, prog, ins, out), ref, prog


def assert_bit_exact(graph: Graph, inputs, tmp_path: Path, batch: int = 1):
    for dsp in (False, True):
        got, ref, prog = run_c(graph, inputs, tmp_path, dsp, batch)
        assert len(got) == len(ref)
        for i, (g, r) in enumerate(zip(got, ref)):
            assert g.dtype == r.dtype and g.shape == r.shape
            diff = np.argwhere(g != r)
            assert diff.size == 0, (f"output {i} (dsp={dsp}) differs at {len(diff)} places, "
                                    f"first {diff[0]}: C {g[tuple(diff[0])]} vs {r[tuple(diff[0])]}")
    return prog


# ---- random integer graphs -----------------------------------------------------------------------

@needs_gcc
@pytest.mark.parametrize("seed", range(3))
def test_random_graphs_are_bit_exact(seed, tmp_path):
    g = random_graph(seed)
    x = IntGraphBuilder(seed=seed + 100).random_codes(g.inputs[0])
    assert_bit_exact(g, [x], tmp_path)


@needs_gcc
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 30))
def test_many_random_graphs_are_bit_exact(seed, tmp_path):
    g = random_graph(seed)
    x = IntGraphBuilder(seed=seed + 100).random_codes(g.inputs[0])
    assert_bit_exact(g, [x], tmp_path)


def conv_stack(rounding: str, act: str = "i8", acc_bits: int = 32, seed: int = 0) -> Graph:
    """Every convolution shape the kernels special-case, one rounding mode throughout."""
    b = IntGraphBuilder(f"stack_{rounding}", seed, rounding=rounding)
    x = b.input((2, 5, 11, 9), act)
    y = b.requant(b.conv(x, 6, k=3, padding=(1, 0, 2, 1), stride=(2, 1), acc_bits=acc_bits,
                         weight_zp=True), relu=True)
    y = b.requant(b.conv(y, 12, k=3, padding=(1, 1, 1, 1), groups=6, dilation=2))   # depthwise x2
    y = b.requant(b.conv(y, 7, k=1))                                                 # 1x1
    y = b.requant(b.conv(y, 4, k=(1, 3), groups=1, padding=(0, 1, 0, 1), dilation=(1, 2)),
                  dtype="u8")
    y = b.requant(b.conv(y, 6, k=2, groups=2, stride=2), per_channel=False)          # grouped
    y = b.op("flatten", [y], axis=1)
    y = b.requant(b.linear(y, 5), axis=1)
    return b.output(y)


@needs_gcc
@pytest.mark.parametrize("rounding", ["gemmlowp_double", "single_half_up", "single_half_away",
                                      "shift_only"])
def test_every_rounding_mode_and_conv_shape(rounding, tmp_path):
    g = conv_stack(rounding, act="u8" if rounding == "single_half_up" else "i8")
    x = IntGraphBuilder(seed=3).random_codes(g.inputs[0])
    assert_bit_exact(g, [x], tmp_path)


@needs_gcc
def test_narrow_accumulator_wraps_like_the_interpreter(tmp_path):
    wide, narrow = conv_stack("gemmlowp_double", acc_bits=32), conv_stack("gemmlowp_double",
                                                                          acc_bits=14)
    x = IntGraphBuilder(seed=4).random_codes(wide.inputs[0])
    firsts = []
    for g in (wide, narrow):
        interp = qcompile.Interpreter(g, "int", keep_all=True)
        interp.run([x])
        firsts.append(interp.values["rq"])
    assert (firsts[0] != firsts[1]).mean() > 0.3  # the 14-bit accumulator does wrap
    assert_bit_exact(narrow, [x], tmp_path)


@needs_gcc
def test_data_movement_ops_and_several_outputs(tmp_path):
    b = IntGraphBuilder("moves", 5)
    x = b.input((1, 3, 5, 6), "i8")
    t = b.op("transpose", [x], perm=(0, 2, 3, 1))                       # (1, 5, 6, 3)
    s = b.op("slice", [t], axes=(1, 2), starts=(4, 1), ends=(-100, 5), steps=(-2, 2))
    p = b.op("pad", [s], pads=(0, 1, 0, 2, 0, 0, 1, 1), mode="constant",
             value=float(x.quant.zero_point[0]))
    e = b.op("expand", [b.op("slice", [x], axes=(1,), starts=(0,), ends=(1,))], shape=(1, 3, 5, 6))
    c = b.op("concat", [x, e], axis=1)
    r = b.op("reshape", [c], shape=(6, 30))
    u = b.op("unsqueeze", [b.op("squeeze", [b.op("identity", [x])], axes=(0,))], axes=(0,))
    g = b.output(p, r, u)
    xin = b.random_codes(x)
    prog = assert_bit_exact(g, [xin], tmp_path)
    assert len(prog.outputs) == 3


@needs_gcc
def test_matmul_mul_prelu_lut_pools_and_wide_types(tmp_path):
    b = IntGraphBuilder("misc", 6, rounding="single_half_away")
    x = b.input((2, 4, 6, 6), "u8")
    acc = b.conv(x, 4, k=3, padding=(1, 1, 1, 1))
    wide = b.requant(acc, dtype="i16")                                  # 16-bit activations
    narrow = b.rescale(wide, dtype="i8")
    m = b.mul(narrow, b.op("slice", [narrow], axes=(2, 3), starts=(0, 0), ends=(1, 1)))
    mm = b._node("qmatmul", [m, b.op("transpose", [m], perm=(0, 1, 3, 2))], {"acc_bits": 32},
                 QuantParams(1.0, 0, 32, True), "qmatmul")
    y = b.requant(mm, per_channel=False)
    y = b.avg_pool(b.prelu(b.lut(y, "u8")), k=3, stride=(2, 2), padding=(1, 1, 1, 1),
                   ceil_mode=True, count_include_pad=False)
    z = b.avg_pool(narrow, k=2, padding=(1, 0, 1, 0), count_include_pad=True)
    mp = b.max_pool(narrow, k=3, stride=(2, 2), padding=(1, 1, 1, 1), ceil_mode=True,
                    dilation=(1, 2))
    g = b.output(y, z, mp, acc)                                         # acc: an i32 output
    assert_bit_exact(g, [b.random_codes(x)], tmp_path)


@needs_gcc
def test_average_pool_with_a_fused_activation_clamp(tmp_path):
    """lower-integer folds a relu/relu6 on the pool's grid into qavg_pool2d's clamp."""
    b = IntGraphBuilder("poolclamp", 3)
    x = b.input((1, 3, 7, 7), "i8")
    zp = x.quant.zero_point[0]
    y = b.avg_pool(x, k=3, stride=(2, 2), padding=(1, 1, 1, 1), count_include_pad=False,
                   clamp=(zp, min(127, zp + 20)))
    g = b.output(y)
    codes = b.random_codes(x)
    (ref,) = qcompile.run(g, [codes], mode="int")
    assert ref.min() == zp and ref.max() == min(127, zp + 20)  # the clamp really bites
    assert_bit_exact(g, [codes], tmp_path)


@needs_gcc
def test_unfused_accumulator_feeding_two_requantizes(tmp_path):
    b = IntGraphBuilder("twice", 7)
    x = b.input((1, 3, 7, 7), "i8")
    acc = b.conv(x, 8, k=3)
    g = b.output(b.add(b.requant(acc), b.requant(acc), sub=True))
    prog = assert_bit_exact(g, [b.random_codes(x)], tmp_path)
    assert not any(c.op.endswith("+requantize") for c in prog.calls)


# ---- real models ---------------------------------------------------------------------------------

def _real(name):
    pytest.importorskip("torch")
    from qcompile.targets.c.testing import lowered_model
    try:
        return lowered_model(name)
    except (ImportError, FileNotFoundError, OSError) as exc:
        pytest.skip(f"{name} is not available: {exc}")


@needs_gcc
@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits", "mnist", "rnet"])
def test_real_models_are_bit_exact(name, tmp_path):
    g, x = _real(name)
    prog = assert_bit_exact(g, [x], tmp_path, batch=len(x))
    assert prog.macs() > 0 and not any(n.op in ("quantize", "dequantize")
                                       for c in prog.calls for n in [c])
    if name == "rnet":
        assert len(prog.outputs) == 2


# ---- generated files -----------------------------------------------------------------------------

def test_emission_is_deterministic_and_lists_its_files(tmp_path):
    results = []
    for d in ("a", "b"):
        res = get_backend("c")(random_graph(1), get_target("cortex-m4"), tmp_path / d, None)
        results.append(res)
    assert results[0].files == results[1].files
    assert {"model.h", "model.c", "model_weights.c", "qc_kernels.h", "qc_kernels.c",
            "CMakeLists.txt", "model.mk"} == set(results[0].files)
    for f in results[0].files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
        assert str(tmp_path) not in (tmp_path / "a" / f).read_text()
    m = results[0].metrics
    assert m["arena_bytes"] >= m["arena_lower_bound_bytes"] > 0 and m["macs"] > 0
    assert m["dsp"] is True and m["constant_bytes"] > 0


def test_header_documents_the_boundary(tmp_path):
    b = IntGraphBuilder("hdr", 8)
    x = g_in = b.g.add_input("img", TensorType((None, 1, 4, 4), "f32"))
    q = b._node("quantize", [g_in], {"rounding": "half_away", "dtype": "u8"},
                QuantParams(0.25, 3, 8, False), "q")
    y = b.requant(b.conv(q, 2, k=3), dtype="i8")
    deq = b.g.add_node("dequantize", [y], {}, name="out")
    g = b.output(deq.output)
    emit_c(g, tmp_path)
    h = (tmp_path / "model.h").read_text()
    for macro in ("MODEL_INPUT_SCALE 0.25f", "MODEL_INPUT_ZERO_POINT (3)", "MODEL_INPUT_QMIN (0)",
                  "MODEL_INPUT_QMAX (255)", "MODEL_INPUT_ROUNDING_HALF_AWAY 1",
                  "MODEL_INPUT_SHAPE {1, 1, 4, 4}", "MODEL_OUTPUT_SIZE 8",
                  "typedef uint8_t model_input_t", "typedef int8_t model_output_t",
                  "MODEL_ARENA_SIZE", "int model_run(const model_input_t *in, model_output_t *out)",
                  "int model_run_arena("):
        assert macro in h, macro
    assert x is g.inputs[0]


@needs_gcc
def test_unity_build_caller_arena_and_misaligned_arena(tmp_path):
    """All sources as one translation unit (what `qcompile compile` adds), with -Werror; and
    model_run_arena refuses an arena that is not 4-byte aligned."""
    g = random_graph(2)
    prog = emit_c(g, tmp_path)
    (tmp_path / "all.c").write_text("".join(f'#include "{f}"\n' for f in
                                            ("model.c", "model_weights.c", "qc_kernels.c")))
    (tmp_path / "main.c").write_text(
        '#include <string.h>\n#include "model.h"\n'
        "static uint32_t a[MODEL_ARENA_SIZE / 4 + 2];\n"
        "int main(void) {\n"
        "  static model_input_t in[MODEL_INPUT_SIZE]; static model_output_t o1[MODEL_OUTPUT_SIZE], o2[MODEL_OUTPUT_SIZE];\n"
        "  memset(in, 3, sizeof in);\n"
        "  if (model_run_arena(in, o1, (uint8_t *)a + 1) != -1) return 10;\n"
        "  if (model_run_arena(in, o1, (uint8_t *)a) != 0) return 11;\n"
        "  if (model_run(in, o2) != 0) return 12;\n"
        "  return memcmp(o1, o2, sizeof o1) != 0 ? 13 : 0;\n}\n")
    exe = tmp_path / "unity"
    tc.run(["gcc", *tc.WARNINGS, "-O2", f"-I{tmp_path}", tmp_path / "all.c", tmp_path / "main.c",
            "-o", exe])
    assert subprocess.run([exe]).returncode == 0
    assert prog.plan.arena_size % 4 == 0


@needs_gcc
def test_makefile_fragment_builds(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    emit_c(random_graph(3), tmp_path / "model", dsp=True)
    (tmp_path / "Makefile").write_text(
        "include model/model.mk\n"
        "CFLAGS += $(MODEL_CFLAGS) -Wall -Wextra -Werror\n"
        f"app: $(MODEL_OBJS) {tc.SUPPORT / 'driver.c'}\n"
        "\t$(CC) $(CFLAGS) $^ -o $@\n")
    tc.run(["make", "-s", "app"], cwd=tmp_path)
    assert (tmp_path / "app").exists()


# ---- integer only ---------------------------------------------------------------------------------

@needs_arm
@pytest.mark.parametrize("dsp", [False, True])
def test_no_floating_point_in_the_compiled_model(dsp, tmp_path):
    g = random_graph(0)
    emit_c(g, tmp_path / "src", dsp=dsp)
    objs = tc.cross_compile_objects(tmp_path / "src", tmp_path / "obj", "cortex-m4", dsp,
                                    float_abi="soft")
    assert tc.float_symbols(objs) == []
    # the check itself works: float code does pull in the helpers
    (tmp_path / "f.c").write_text("float f(float a, float b) { return a / b; }\n")
    tc.run(["arm-none-eabi-gcc", "-O2", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft", "-c",
            tmp_path / "f.c", "-o", tmp_path / "f.o"])
    assert tc.float_symbols([tmp_path / "f.o"]) == ["__aeabi_fdiv"]


# ---- errors ---------------------------------------------------------------------------------------

def test_float_ops_left_in_the_graph_are_named():
    b = IntGraphBuilder("floaty", 0)
    x = b.input((1, 2, 4, 4), "i8")
    deq = b.g.add_node("dequantize", [x], {}, name="deq").output
    r = b.g.add_node("relu", [deq], {}, name="act").output
    q = b._node("quantize", [r], {"rounding": "half_even", "dtype": "i8"}, x.quant, "requant_in")
    g = b.output(q)
    with pytest.raises(CBackendError, match=r"float ops.*%deq \(dequantize\).*%act \(relu\)"):
        emit_c(g, "/nonexistent/never-written")


def test_float_input_without_quantize_is_an_error(tmp_path):
    g = Graph("f")
    x = g.add_input("x", TensorType((1, 4), "f32"))
    g.outputs = [g.add_node("relu", [x], {}, name="r").output]
    with pytest.raises(CBackendError, match="graph input %x is f32"):
        emit_c(g, tmp_path)


def test_op_without_a_c_kernel_is_named(tmp_path):
    b = IntGraphBuilder("cast", 0)
    x = b.input((1, 4), "i8")
    g = b.output(b._node("cast", [x], {"dtype": "i16"}, None, "widen"))
    with pytest.raises(CBackendError, match=r"no kernel for %widen \(cast\)"):
        emit_c(g, tmp_path)


def _tight(**memory):
    t = get_target("cortex-m4")
    return dataclasses.replace(t, memory={**t.memory, **memory})


def test_arena_larger_than_ram_names_sizes_and_biggest_tensors(tmp_path):
    g = conv_stack("gemmlowp_double")
    with pytest.raises(CBackendError, match=r"needs a \d+-byte arena .* ram_bytes = 100; the "
                                            r"largest buffers are %rq"):
        emit_c(g, tmp_path, target=_tight(ram_bytes=100))


def test_weights_larger_than_flash_are_an_error(tmp_path):
    g = conv_stack("gemmlowp_double")
    with pytest.raises(CBackendError, match=r"\d+ bytes of constant data .* flash_bytes = 64; the "
                                            r"largest arrays are qcw_"):
        emit_c(g, tmp_path, target=_tight(flash_bytes=64))


# ---- the firmware example and the compile command --------------------------------------------------

def _float_model():
    """digits CNN as a float-in float-out integer graph (quantize ... dequantize)."""
    return _real("digits")


@needs_gcc
@pytest.mark.slow
def test_firmware_example_builds_with_cmake_and_matches_the_interpreter(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    g, _ = _float_model()
    emit_c(g, tmp_path / "model", target=get_target("cortex-m4"), dsp=False)
    build = tmp_path / "build"
    tc.run(["cmake", "-S", ROOT / "examples/firmware", "-B", build,
            f"-DMODEL_DIR={tmp_path / 'model'}", "-DCMAKE_BUILD_TYPE=Release"])
    tc.run(["cmake", "--build", build])
    out = subprocess.run([build / "firmware"], capture_output=True, text=True, check=True).stdout
    codes = [int(line.split()[3]) for line in out.splitlines() if line.startswith("output")]
    # the same synthetic frame through the whole graph, quantize node included
    n = int(np.prod(g.inputs[0].shape[1:]))
    frame = (np.float32((np.arange(n) * 37) % 17) / np.float32(16.0)).reshape(1, *g.inputs[0].shape[1:])
    prog = emit_c(g, tmp_path / "again")
    _, ref = boundary_arrays(g, [frame.astype(np.float32)], prog)
    assert codes == ref[0].reshape(-1).tolist()
    assert f"class {int(np.argmax(ref[0]))}" in out


@needs_gcc
@pytest.mark.slow
def test_compile_command_writes_the_c_model_and_its_figures(tmp_path):
    model, calib = ROOT / "examples/models/digits_cnn.onnx", ROOT / "examples/models/digits_calib.npz"
    if not model.exists():
        pytest.skip("examples/models/digits_cnn.onnx is missing")
    out = tmp_path / "digits"
    r = subprocess.run([sys.executable, "-m", "qcompile", "compile", str(model), "--target",
                        "cortex-m4", "--calibration", str(calib), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for f in ("model.h", "model.c", "model_weights.c", "qc_kernels.c", "CMakeLists.txt",
              "model.mk", "report.json"):
        assert (out / f).exists(), f
    import json
    report = json.loads((out / "report.json").read_text())
    text = json.dumps(report)
    assert "arena_bytes" in text and "arena_lower_bound_bytes" in text
    # the folder builds as it is (the unity source includes every .c file)
    tc.run(["gcc", *tc.WARNINGS, "-O2", f"-I{out}", "-c", out / "qcompile_all.c", "-o",
            tmp_path / "all.o"])
