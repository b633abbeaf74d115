"""Emitted C cross-compiled for Cortex-M4 (mps2-an386) and Cortex-M7 (mps2-an500), run under
qemu-system-arm with semihosting, and compared bit for bit with the integer interpreter."""
from __future__ import annotations

import numpy as np
import pytest

from qcompile.targets import get_target
from qcompile.targets.c import emit_c, toolchain as tc
from qcompile.targets.c.testing import IntGraphBuilder, boundary_arrays, random_graph

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not tc.have_arm(),
                       reason="the Cortex-M toolchain is missing (needs arm-none-eabi-gcc with "
                              "newlib, arm-none-eabi-size and qemu-system-arm)"),
]

CPUS = ["cortex-m4", "cortex-m7"]


from test_c_backend import _real  # noqa: E402  (the real models, or a skip)


def run_on_board(graph, inputs, cpu, dsp, tmp_path):
    prog = emit_c(graph, tmp_path / "src", target=get_target(cpu), dsp=dsp)
    ins, ref = boundary_arrays(graph, inputs, prog)
    elf = tc.cross_build(tmp_path / "src", tmp_path / "fw.elf", cpu, dsp)
    got = tc.run_qemu(elf, cpu, prog, ins, tmp_path)
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype and g.shape == r.shape
        assert np.array_equal(g, r), f"{(g != r).sum()} of {g.size} outputs differ"
    return prog


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("dsp", [False, True])
def test_random_graph_on_the_board(cpu, dsp, tmp_path):
    g = random_graph(0)
    run_on_board(g, [IntGraphBuilder(seed=9).random_codes(g.inputs[0])], cpu, dsp, tmp_path)


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("dsp", [False, True])
def test_digits_cnn_on_the_board(cpu, dsp, tmp_path):
    g, x = _real("digits")
    run_on_board(g, [x[:1]], cpu, dsp, tmp_path)


@pytest.mark.parametrize("cpu", CPUS)
def test_mtcnn_rnet_on_the_board(cpu, tmp_path):
    g, x = _real("rnet")
    prog = run_on_board(g, [x[3:4]], cpu, True, tmp_path)
    assert len(prog.outputs) == 2


def test_measure_reports_flash_ram_and_instructions():
    from qcompile.targets.c.measure import measure
    g, _ = _real("digits")
    m = measure(g, "cortex-m4", target=get_target("cortex-m4"))
    assert m["bit_exact"] is True and m["float_symbols"] == []
    assert m["macs"] > 0 and m["instructions"] > m["macs"]
    assert m["instructions_per_mac"] == pytest.approx(m["instructions"] / m["macs"], abs=1e-3)
    assert m["flash_bytes"] > m["constant_bytes"] > 0
    assert m["ram_bytes"] >= m["arena_bytes"] >= m["arena_lower_bound_bytes"] > 0
    assert m["stack_bytes"] > 0
    # the count is deterministic (icount), and the DSP path executes fewer instructions
    assert measure(g, "cortex-m4", dsp=True)["instructions"] == m["instructions"]
    assert measure(g, "cortex-m4", dsp=False)["instructions"] > m["instructions"]


def test_compile_measure_puts_flash_ram_and_instructions_into_the_report(tmp_path):
    """`qcompile compile --measure` for a Cortex-M target: report.json carries the QEMU figures."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    models = Path(__file__).resolve().parents[1] / "examples" / "models"
    out = tmp_path / "m7"
    r = subprocess.run([sys.executable, "-m", "qcompile", "compile", str(models / "digits_cnn.onnx"),
                        "--target", "cortex-m7", "--calibration", str(models / "digits_calib.npz"),
                        "-o", str(out), "--measure", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    measured = json.loads((out / "report.json").read_text())["memory"]["backend"]["measured"]
    assert measured["cpu"] == "cortex-m7" and measured["bit_exact"] is True
    assert measured["instructions"] > measured["macs"] > 400_000  # the digits CNN: 452k MACs
    assert 0 < measured["flash_bytes"] and measured["ram_bytes"] >= measured["arena_bytes"]
    assert measured["float_symbols"] == []
