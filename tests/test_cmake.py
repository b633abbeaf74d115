"""QCompile.cmake: the example project configures, builds and runs with cmake + gcc, and the
depfile rebuilds the model exactly when something qcompile read changed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qcompile.ir.printer import write_file
from qcompile.passmanager import all_passes
from qcompile.targets import backend_available

from test_compile import tiny_graph

ROOT = Path(__file__).resolve().parents[1]
QCOMPILE = f"{sys.executable};-m;qcompile"

pytestmark = [
    pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("cc") is None,
                       reason="needs cmake and a C compiler"),
    pytest.mark.skipif(not backend_available("c"), reason="the C backend (qcompile.targets.c) "
                       "is not available"),
    pytest.mark.skipif("lower-integer" not in all_passes(),
                       reason="lower-integer is not registered yet"),
]


def run(*cmd, cwd=None) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600,
                       cwd=cwd)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def generator() -> list[str]:
    return ["-G", "Ninja"] if shutil.which("ninja") else []


@pytest.mark.slow
def test_the_cmake_example_builds_and_runs_the_digits_model(tmp_path):
    build = tmp_path / "build"
    run("cmake", "-S", ROOT / "examples" / "cmake", "-B", build, *generator(),
        f"-DQCOMPILE_COMMAND={QCOMPILE}")
    run("cmake", "--build", build)
    manifest = build / "digits" / "manifest.json"
    assert manifest.is_file() and (build / "digits" / "report.json").is_file()
    run(sys.executable, ROOT / "examples" / "cmake" / "export_test_data.py",
        ROOT / "examples" / "models" / "digits_test.npz", build)
    out = run(build / "digits_demo", build / "inputs.f32", build / "labels.u8").stdout
    m = re.search(r"integer accuracy on 450 samples: ([\d.]+) %", out)
    assert m, out
    assert float(m.group(1)) > 97.0


PROJECT = """\
cmake_minimum_required(VERSION 3.20)
project(depfile_check C)
list(APPEND CMAKE_MODULE_PATH "{cmake_dir}")
include(QCompile)
qcompile_add_model(tiny MODEL tiny.qir TARGET c99 CALIBRATION images)
add_executable(app main.c)
target_link_libraries(app PRIVATE tiny)
"""

MAIN = """\
#include <stdio.h>
#include "model.h"
int main(void) {
    model_input_t in[MODEL_INPUT_SIZE] = {0};
    model_output_t out[MODEL_OUTPUT_SIZE];
    int i;
    if (model_run(in, out) != 0) return 1;
    for (i = 0; i < MODEL_OUTPUT_SIZE; i++) printf("%d ", (int)out[i]);
    printf("\\n");
    return 0;
}
"""


@pytest.mark.slow
def test_depfile_rebuilds_the_model_when_a_calibration_image_changes(tmp_path):
    from PIL import Image
    src, build = tmp_path / "src", tmp_path / "build"
    (src / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8), "L").save(
            src / "images" / f"{i}.png")
    write_file(tiny_graph(), str(src / "tiny.qir"), full=True)
    cmake_dir = run(*QCOMPILE.split(";"), "--cmake-dir").stdout.strip()
    (src / "CMakeLists.txt").write_text(PROJECT.format(cmake_dir=cmake_dir))
    (src / "main.c").write_text(MAIN)
    run("cmake", "-S", src, "-B", build, *generator(), f"-DQCOMPILE_COMMAND={QCOMPILE}")
    run("cmake", "--build", build)
    manifest = build / "tiny" / "manifest.json"
    first = manifest.stat().st_mtime_ns
    assert run(build / "app").stdout.strip()

    run("cmake", "--build", build)  # nothing changed: qcompile does not run again
    assert manifest.stat().st_mtime_ns == first

    time.sleep(1.1)  # coarse file-system timestamps
    img = src / "images" / "2.png"
    Image.fromarray(np.full((6, 6), 255, np.uint8), "L").save(img)
    log = run("cmake", "--build", build).stdout
    assert "qcompile: compiling" in log
    assert manifest.stat().st_mtime_ns > first
    assert os.path.getsize(build / "tiny" / "qcompile_all.c") > 0
