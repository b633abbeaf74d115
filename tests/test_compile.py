"""`qcompile compile` end to end: artifacts, determinism, calibration sources, depfiles, the
errors a user can cause (exit 2, nothing written), and `qcompile inspect`'s views."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qcompile
from qcompile import cli
from qcompile.ir.graph import Graph
from qcompile.ir.printer import write_file
from qcompile.ir.types import TensorType
from qcompile.passmanager import all_passes
from qcompile.targets import backend_available

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "examples" / "models"
HAS_LOWERING = "lower-integer" in all_passes()
FLOAT_PIPELINE = "fold-bn,calibrate,quantize"


def tiny_graph() -> Graph:
    """conv 3x3 -> relu -> flatten -> linear: small enough to compile in well under a second."""
    rng = np.random.default_rng(0)
    g = Graph("tiny")
    x = g.add_input("x", TensorType((None, 1, 6, 6)))
    w = g.add_constant("conv.w", (rng.normal(size=(4, 1, 3, 3)) * 0.5).astype(np.float32))
    b = g.add_constant("conv.b", (rng.normal(size=4) * 0.1).astype(np.float32))
    conv = g.add_node("conv2d", [x, w, b], {"padding": [1, 1, 1, 1]}, name="conv")
    relu = g.add_node("relu", [conv.output], name="relu")
    flat = g.add_node("flatten", [relu.output], {"axis": 1}, name="flat")
    w2 = g.add_constant("fc.w", (rng.normal(size=(3, 144)) * 0.1).astype(np.float32))
    b2 = g.add_constant("fc.b", np.zeros(3, np.float32))
    out = g.add_node("linear", [flat.output, w2, b2], name="logits")
    g.outputs = [out.output]
    return g


@pytest.fixture
def tiny(tmp_path) -> dict:
    """The tiny model as .qir (+ .npz weights), calibration data, and labelled test data."""
    folder = tmp_path / "in"
    folder.mkdir()
    g = tiny_graph()
    write_file(g, str(folder / "tiny.qir"), full=True)
    rng = np.random.default_rng(1)
    calib = rng.uniform(0, 1, size=(32, 1, 6, 6)).astype(np.float32)
    np.savez(folder / "calib.npz", x=calib)
    test_x = rng.uniform(0, 1, size=(40, 1, 6, 6)).astype(np.float32)
    labels = np.argmax(qcompile.run(g, [test_x])[0], axis=-1)
    np.savez(folder / "test.npz", x=test_x, y=labels)
    return {"model": folder / "tiny.qir", "calib": folder / "calib.npz",
            "test": folder / "test.npz", "dir": tmp_path}


def compile_args(t: dict, out: Path, *extra: str) -> list[str]:
    pipeline = [] if HAS_LOWERING else ["--pipeline", FLOAT_PIPELINE]
    return ["compile", str(t["model"]), "-t", "c99", "--backend", "none", "-c", str(t["calib"]),
            "-o", str(out), "--quiet", *pipeline, *extra]


def hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Temporary folders a failed compile must not leave behind."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def qc(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qcompile", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


# ---- artifacts -----------------------------------------------------------------------------------
def test_compile_writes_the_folder_manifest_and_report(tiny, capsys):
    out = tiny["dir"] / "out"
    assert cli.main(compile_args(tiny, out, "--report", "json,html",
                                 "--evaluate", str(tiny["test"]))) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json", "model.npz", "model.qir", "report.html", "report.json",
                     "timings.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["qcompile"] == qcompile.__version__
    assert manifest["target"]["name"] == "c99" and manifest["target"]["file"] == "c99.toml"
    assert manifest["target"]["sha256"] == hashlib.sha256(
        (ROOT / "targets" / "catalog" / "c99.toml").read_bytes()).hexdigest()
    assert manifest["calibration"] == {
        "kind": "npz", "source": "calib.npz",
        "sha256": manifest["calibration"]["sha256"]}
    assert set(manifest["files"]) == {"model.npz", "model.qir", "report.html", "report.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "qcompile-report/1"
    assert report["target"]["name"] == "c99" and report["target"]["backend"] == "none"
    layers = {r["name"]: r for r in report["layers"]}
    assert layers["relu"]["bits"] == 8 and layers["conv"]["weight_bits"] == 8
    assert layers["conv"]["weight_bytes"] == 4 * 9 + 4 * 4  # int8 weights, int32 bias
    assert layers["logits"]["sqnr_db"] > 20
    assert report["memory"]["weight_bytes"] > 0
    assert report["memory"]["peak_activation_bytes"] == max(
        s["live_bytes"] for s in report["memory"]["schedule"])
    assert report["evaluation"]["float_accuracy"] == 1.0
    assert report["evaluation"]["simulated_accuracy"] >= 0.9
    if HAS_LOWERING:
        assert report["evaluation"]["integer_accuracy"] >= 0.9
        assert {a["op"] for a in report["accumulators"].values()} == {"qconv2d", "qlinear"}
        assert layers["conv"]["accumulator"]["margin_bits"] > 0
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["passes"]) >= {"calibrate", "quantize"}
    graph = qcompile.parse_file(out / "model.qir")  # the written IR runs
    x = np.load(tiny["test"])["x"][:4]
    assert qcompile.run(graph, [x], mode="int" if HAS_LOWERING else "fakequant")[0].shape == (4, 3)


def test_compiling_twice_gives_byte_identical_files(tiny):
    a, b = tiny["dir"] / "a", tiny["dir"] / "b"
    for out in (a, b):
        assert cli.main(compile_args(tiny, out, "--report", "json,html",
                                     "--dump-ir", "all")) == 0
    ha, hb = hashes(a), hashes(b)
    assert set(ha) == set(hb) and "ir/000_input.qir" in ha
    different = [f for f in ha if ha[f] != hb[f]]
    assert different in ([], ["timings.json"])  # only the timings may differ


def test_dump_ir_after_named_passes(tiny):
    out = tiny["dir"] / "out"
    assert cli.main(compile_args(tiny, out, "--dump-ir", "after=quantize")) == 0
    dumps = sorted(p.name for p in (out / "ir").iterdir())
    assert dumps[0] == "000_input.qir" and dumps[1].endswith("_after_quantize.qir")
    assert len(dumps) == 2
    assert "quant<" in (out / "ir" / dumps[1]).read_text()


def test_pipeline_plus_extends_the_targets_default(tiny):
    out = tiny["dir"] / "out"
    args = compile_args(tiny, out)
    if "--pipeline" in args:
        args[args.index("--pipeline") + 1] = FLOAT_PIPELINE + ",dce"
    else:
        args += ["--pipeline", "+dce"]
    assert cli.main(args) == 0
    pipeline = json.loads((out / "manifest.json").read_text())["pipeline"]
    assert pipeline.endswith(",dce") and "quantize" in pipeline


def test_depfile_lists_model_weights_calibration_and_target(tiny):
    out, dep = tiny["dir"] / "out", tiny["dir"] / "deps" / "model.d"
    assert cli.main(compile_args(tiny, out, "--depfile", str(dep))) == 0
    text = dep.read_text()
    head, _, rest = text.partition(":")
    assert head == str((out / "manifest.json").resolve())
    deps = [d.strip(" \\\n") for d in rest.split("\\\n") if d.strip(" \\\n")]
    assert deps == [str(tiny["model"].resolve()), str(tiny["model"].with_suffix(".npz").resolve()),
                    str(tiny["calib"].resolve()),
                    str((ROOT / "targets" / "catalog" / "c99.toml").resolve())]


def test_force_replaces_an_output_folder(tiny):
    out = tiny["dir"] / "out"
    assert cli.main(compile_args(tiny, out)) == 0
    (out / "stale.txt").write_text("from an older build")
    assert cli.main(compile_args(tiny, out, "--force")) == 0
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()
    assert leftovers(tiny["dir"]) == []


# ---- --evaluate runs the compiled C model --------------------------------------------------------
def _has_gcc() -> bool:
    if not backend_available("c"):
        return False
    from qcompile.targets.c import toolchain
    return toolchain.have_host_cc()


needs_c = pytest.mark.skipif(not (HAS_LOWERING and _has_gcc()),
                             reason="needs lower-integer, the C backend and a host gcc")


def c_args(t: dict, out: Path, *extra: str) -> list[str]:
    """compile_args for the target's own backend (c99: the C backend), with a summary."""
    args = [a for a in compile_args(t, out, *extra) if a not in ("--backend", "none", "--quiet")]
    return args


def emitted_c(folder: Path) -> dict:
    return {f: h for f, h in hashes(folder).items() if f.endswith((".c", ".h", ".mk", ".txt"))}


@needs_c
def test_evaluate_builds_and_runs_the_emitted_c_outside_the_output(tiny, capsys):
    plain, evaluated = tiny["dir"] / "plain", tiny["dir"] / "evaluated"
    assert cli.main(c_args(tiny, plain, "-q")) == 0
    capsys.readouterr()
    assert cli.main(c_args(tiny, evaluated, "--evaluate", str(tiny["test"]),
                           "--report", "json,html")) == 0
    stdout = capsys.readouterr().out
    ev = json.loads((evaluated / "report.json").read_text())["evaluation"]
    compiled = ev["compiled"]
    assert compiled["runner"] == "host gcc"
    assert compiled["bit_exact"] is True and compiled["mismatches"] == 0
    assert compiled["compared"] == 40 * 3           # every sample, every logit
    assert compiled["accuracy"] == ev["integer_accuracy"]
    assert (f"integer {100 * ev['integer_accuracy']:.2f} %, compiled C (host gcc) "
            f"{100 * compiled['accuracy']:.2f} %, bit-exact with the interpreter\nwrote"
            ) in stdout
    # the output folder holds what it holds without --evaluate: same C bytes, no build files
    assert "compiled C accuracy (host gcc)" in (evaluated / "report.html").read_text()
    assert emitted_c(evaluated) == emitted_c(plain) and emitted_c(plain)
    manifest = json.loads((evaluated / "manifest.json").read_text())
    assert sorted(p.name for p in evaluated.iterdir()) == sorted(
        [*manifest["files"], "manifest.json", "timings.json"])
    assert leftovers(tiny["dir"]) == []


@needs_c
def test_compiled_evaluation_counts_outputs_that_differ(tiny, tmp_path):
    import re
    from qcompile import report as reports
    from qcompile.compile import CompileOptions, compile_model
    from qcompile.targets import get_target
    from qcompile.targets.c import FILES
    target = get_target("c99")
    result = compile_model(CompileOptions(model=str(tiny["model"]), target=target,
                                          output=str(tmp_path / "out"),
                                          calibration=str(tiny["calib"])))
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for f in FILES:
        (tampered / f).write_bytes((result.output / f).read_bytes())
    weights = (tampered / "model_weights.c").read_text()
    # the first bias array (the conv's): its first channel shifted far off
    changed = re.sub(r"(const int32_t qcb_\w+\[\d+\] = \{\s*)(-?\d+)", r"\g<1>(\2 + 100000)",
                     weights, count=1)
    assert changed != weights
    (tampered / "model_weights.c").write_text(changed)
    args = (result.graph, target, "c")
    good = reports.evaluate_compiled(*args, result.output, FILES, str(tiny["test"]))
    bad = reports.evaluate_compiled(*args, tampered, FILES, str(tiny["test"]))
    assert good["bit_exact"] is True and good["mismatches"] == 0
    assert bad["bit_exact"] is False and 0 < bad["mismatches"] <= bad["compared"] == 120
    assert "skipped" not in bad


@needs_c
def test_dataset_runner_cuts_the_set_into_calls_of_the_emitted_batch(tiny, tmp_path):
    """Code emitted for 3 samples per call, run on 40: 14 calls, the last one padded."""
    from qcompile.compile import CompileOptions, compile_model
    from qcompile.targets import get_target
    from qcompile.targets.c import emit_c, toolchain
    from qcompile.targets.c.testing import boundary_arrays
    result = compile_model(CompileOptions(model=str(tiny["model"]), target=get_target("c99"),
                                          output=str(tmp_path / "out"),
                                          calibration=str(tiny["calib"])))
    prog = emit_c(result.graph, tmp_path / "batch3", batch=3)
    assert toolchain.call_batch(prog) == 3
    exe = toolchain.host_build(tmp_path / "batch3", tmp_path / "run", driver="dataset_driver.c")
    ins, ref = boundary_arrays(result.graph, [np.load(tiny["test"])["x"]], prog)
    got = toolchain.run_host_dataset(exe, prog, ins, tmp_path)
    assert len(got) == 1 and got[0].shape == ref[0].shape == (40, 3)
    assert got[0].dtype == ref[0].dtype and np.array_equal(got[0], ref[0])
    assert (tmp_path / "dataset_out.bin").stat().st_size == 14 * 3 * 3  # i8 logits


def test_compiled_evaluation_says_why_it_did_not_run(tiny, capsys, monkeypatch):
    out = tiny["dir"] / "out"
    args = [a for a in compile_args(tiny, out, "--evaluate", str(tiny["test"])) if a != "--quiet"]
    assert cli.main(args) == 0
    compiled = json.loads((out / "report.json").read_text())["evaluation"]["compiled"]
    assert compiled == {"runner": None, "accuracy": None, "bit_exact": None, "mismatches": None,
                        "compared": None, "skipped": "the backend is 'none', not 'c'"}
    assert "compiled C not run (the backend is 'none', not 'c')" in \
        " ".join(capsys.readouterr().out.split())  # rich may wrap the long line
    if not (HAS_LOWERING and backend_available("c")):
        return
    from qcompile.targets.c import toolchain
    monkeypatch.setattr(toolchain, "have_host_cc", lambda: False)
    assert cli.main(c_args(tiny, tiny["dir"] / "no_gcc", "--evaluate", str(tiny["test"]))) == 0
    assert "compiled C not run (no host C compiler (gcc) on PATH)" in \
        " ".join(capsys.readouterr().out.split())


# ---- calibration sources -------------------------------------------------------------------------
def _write_images(folder: Path, n: int = 6) -> None:
    from PIL import Image
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(12, 12), dtype=np.uint8), "L").save(
            folder / f"img{i}.png")


def test_calibration_from_a_folder_of_images(tiny):
    pytest.importorskip("PIL")
    images = tiny["dir"] / "images"
    _write_images(images)
    (images / "preprocess.json").write_text(json.dumps({"scale": 1 / 255, "mean": 0.0}))
    out = tiny["dir"] / "out"
    args = compile_args(tiny, out)
    args[args.index("-c") + 1] = str(images)
    assert cli.main(args) == 0
    calibration = json.loads((out / "manifest.json").read_text())["calibration"]
    assert calibration["kind"] == "images" and calibration["source"] == "images"
    # the 12x12 images were resized to the model's 6x6 input and scaled to 0..1: the input's
    # quantization covers that range
    x = qcompile.parse_file(out / "model.qir").inputs[0]
    q = x.quant or next(n for n in qcompile.parse_file(out / "model.qir").nodes
                        if n.op == "quantize").outputs[0].quant
    lo, hi = (q.qmin - q.zero_point[0]) * q.scale[0], (q.qmax - q.zero_point[0]) * q.scale[0]
    assert lo <= 0.05 and 0.5 <= hi <= 1.01  # bilinear resizing averages the extremes away


def test_unreadable_image_is_an_error_naming_the_file(tiny, capsys):
    pytest.importorskip("PIL")
    images = tiny["dir"] / "images"
    _write_images(images, 2)
    (images / "broken.png").write_bytes(b"not a png at all")
    out = tiny["dir"] / "out"
    args = compile_args(tiny, out)
    args[args.index("-c") + 1] = str(images)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "calibration image" in err and "broken.png" in err and "cannot read it" in err
    assert not out.exists() and leftovers(tiny["dir"]) == []


def test_preprocess_spec_typo_is_reported(tiny, capsys):
    pytest.importorskip("PIL")
    images = tiny["dir"] / "images"
    _write_images(images, 2)
    (images / "preprocess.json").write_text(json.dumps({"sacle": 0.5}))
    args = compile_args(tiny, tiny["dir"] / "out")
    args[args.index("-c") + 1] = str(images)
    assert cli.main(args) == 2
    assert "unknown key 'sacle'; did you mean 'scale'?" in capsys.readouterr().err


def test_calibration_from_a_python_function(tiny):
    module = tiny["dir"] / "calib_data.py"
    module.write_text("import numpy as np\n\n"
                      "def batches():\n"
                      "    rng = np.random.default_rng(3)\n"
                      "    for _ in range(4):\n"
                      "        yield rng.uniform(0, 1, size=(8, 1, 6, 6)).astype(np.float32)\n")
    outs = []
    for name in ("a", "b"):
        out = tiny["dir"] / name
        args = compile_args(tiny, out)
        args[args.index("-c") + 1] = f"{module}:batches"
        assert cli.main(args) == 0
        outs.append(json.loads((out / "manifest.json").read_text())["calibration"])
    assert outs[0]["kind"] == "function" and outs[0] == outs[1]  # same data, same hash
    assert outs[0]["sha256"] != hashlib.sha256(b"").hexdigest()


# ---- errors: exit 2, nothing written -------------------------------------------------------------
def test_unknown_target_exits_2_with_suggestions(tiny):
    out = tiny["dir"] / "out"
    r = qc("compile", tiny["model"], "-t", "cortex-m44", "-c", tiny["calib"], "-o", out)
    assert r.returncode == 2, r.stderr
    assert "error: unknown target 'cortex-m44'; did you mean cortex-m4" in r.stderr
    assert not out.exists()


def test_target_file_typo_exits_2_naming_file_and_key(tiny):
    tfile = tiny["dir"] / "board.toml"
    text = (ROOT / "targets" / "catalog" / "c99.toml").read_text()
    tfile.write_text(text.replace("accumulator_bits", "acumulator_bits"))
    out = tiny["dir"] / "out"
    r = qc("compile", tiny["model"], "--target-file", tfile, "-c", tiny["calib"], "-o", out)
    assert r.returncode == 2
    assert f"{tfile}: unknown key 'acumulator_bits'; did you mean 'accumulator_bits'" in r.stderr
    assert not out.exists()


def test_existing_output_folder_is_refused(tiny, capsys):
    out = tiny["dir"] / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    assert cli.main(compile_args(tiny, out)) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    # --force replaces qcompile's folders only, never an arbitrary one
    assert cli.main(compile_args(tiny, out, "--force")) == 2
    assert "is not a qcompile output (no manifest.json)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_unavailable_backend_exits_2_and_writes_nothing(tiny, monkeypatch, capsys):
    from qcompile.targets import backend as backend_mod
    monkeypatch.delitem(backend_mod._BACKENDS, "hls", raising=False)
    monkeypatch.setitem(sys.modules, "qcompile.targets.hls", None)
    out = tiny["dir"] / "out"
    args = [a for a in compile_args(tiny, out) if a not in ("--backend", "none")]
    args[args.index("-t") + 1] = "ultra96-v2"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "target 'ultra96-v2' uses backend 'hls', which is not available" in err
    assert "--backend none" in err
    assert not out.exists() and leftovers(tiny["dir"]) == []


@pytest.mark.parametrize("pipeline, message", [
    ("fold-bn,calibrate,quantize{w=4},lower-integer",
     "quantize{w=4} but the target supports weight bits 8"),
    ("fold-bn,calibrate,quantize,lower-integer{rounding=single_half_up}",
     "lower-integer{rounding=single_half_up} but the target rounds gemmlowp_double"),
    ("fold-bn,calibrate,quantize", "backend 'c' needs an integer graph"),
])
def test_a_pipeline_the_target_cannot_run_exits_2(tiny, capsys, pipeline, message):
    if "lower-integer" in pipeline and not HAS_LOWERING:
        pytest.skip("lower-integer is not registered")
    out = tiny["dir"] / "out"
    args = [a for a in compile_args(tiny, out) if a not in ("--backend", "none")]
    if "--pipeline" in args:
        args[args.index("--pipeline") + 1] = pipeline
    else:
        args += ["--pipeline", pipeline]
    args[args.index("-t") + 1] = "cortex-m4"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "does not fit target 'cortex-m4'" in err and message in err
    assert not out.exists()


def test_an_unknown_backend_option_exits_2_naming_it(tiny, capsys):
    out = tiny["dir"] / "out"
    args = [a for a in compile_args(tiny, out) if a not in ("--backend", "none")]
    args[args.index("-t") + 1] = "cortex-m4"
    assert cli.main(args + ["--backend-option", "tune=8"]) == 2
    err = capsys.readouterr().err
    assert "has no backend option 'tune'" in err and "dsp" in err
    assert not out.exists()


def test_a_model_over_the_memory_budget_exits_2(tiny, capsys):
    text = (ROOT / "targets" / "catalog" / "cortex-m4.toml").read_text()
    tfile = tiny["dir"] / "tiny_mcu.toml"
    tfile.write_text(text.replace('name = "cortex-m4"', 'name = "tiny-mcu"')
                     .replace("ram_bytes = 196608", "ram_bytes = 100"))
    out = tiny["dir"] / "out"
    args = compile_args(tiny, out)
    args[args.index("-t"):args.index("-t") + 2] = ["--target-file", str(tfile)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "does not fit target 'tiny-mcu'" in err and "ram_bytes is 100" in err
    assert not out.exists() and leftovers(tiny["dir"]) == []


def test_bad_calibration_data_fails_inside_the_pipeline_and_writes_nothing(tiny, capsys):
    bad = tiny["dir"] / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3, 6, 6), np.float32))
    out = tiny["dir"] / "out"
    args = compile_args(tiny, out)
    args[args.index("-c") + 1] = str(bad)
    assert cli.main(args) == 2
    assert "expects shape (?, 1, 6, 6)" in capsys.readouterr().err
    assert not out.exists() and leftovers(tiny["dir"]) == []


def test_missing_calibration_is_reported_before_work(tiny, capsys):
    args = compile_args(tiny, tiny["dir"] / "out")
    i = args.index("-c")
    del args[i:i + 2]
    assert cli.main(args) == 2
    assert "runs calibrate, which needs --calibration" in capsys.readouterr().err


# ---- inspect views -------------------------------------------------------------------------------
def test_inspect_after_diff_and_drawings(tiny, capsys):
    model, calib = str(tiny["model"]), str(tiny["calib"])
    base = ["inspect", model, "-p", FLOAT_PIPELINE, "--calibration", calib]
    assert cli.main(base + ["--after", "calibrate"]) == 0
    after_calibrate = capsys.readouterr().out
    assert "quant<" not in after_calibrate
    assert cli.main(base) == 0
    assert "quant<" in capsys.readouterr().out
    assert cli.main(base + ["--diff", "calibrate", "quantize"]) == 0
    diff = capsys.readouterr().out
    assert diff.startswith("--- after calibrate\n+++ after quantize\n")
    assert any(line.startswith("+") and "quant<" in line for line in diff.splitlines())
    assert cli.main(base + ["--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "tiny" {') and dot.count(" -> ") == 5  # input, 3 inner edges, output
    assert cli.main(base + ["--format", "svg", "--after", "quantize"]) == 0
    svg = capsys.readouterr().out
    assert svg.startswith("<svg") and svg.count('<g class="node">') == 4
    assert cli.main(base + ["--after", "dce"]) == 2
    assert "pass 'dce' is not in the pipeline" in capsys.readouterr().err


def test_inspect_with_a_target_uses_its_scheme(tiny, capsys):
    args = ["inspect", str(tiny["model"]), "-t", "pynq-z2", "-p", FLOAT_PIPELINE,
            "--calibration", str(tiny["calib"])]
    assert cli.main(args) == 0
    g = qcompile.parse(capsys.readouterr().out)
    w = g.value("conv.w").quant
    assert w.pow2 and w.axis is None  # shift-only target: per-tensor power-of-two scales


# ---- the bundled model ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not HAS_LOWERING, reason="lower-integer is not registered yet")
def test_digits_model_compiles_and_keeps_its_accuracy(tmp_path):
    backend = [] if backend_available("c") else ["--backend", "none"]
    out = tmp_path / "digits"
    r = qc("compile", MODELS / "digits_cnn.onnx", "-t", "c99", *backend,
           "-c", MODELS / "digits_calib.npz", "--evaluate", MODELS / "digits_test.npz",
           "-o", out, "--report", "json,html")
    assert r.returncode == 0, r.stderr
    assert "accuracy on 450 samples: float" in r.stdout and "integer" in r.stdout
    ev = json.loads((out / "report.json").read_text())["evaluation"]
    assert ev["float_accuracy"] > 0.98
    assert ev["integer_accuracy"] >= ev["float_accuracy"] - 0.01
    # the generated code is deterministic too
    again = tmp_path / "again"
    r = qc("compile", MODELS / "digits_cnn.onnx", "-t", "c99", *backend,
           "-c", MODELS / "digits_calib.npz", "--evaluate", MODELS / "digits_test.npz",
           "-o", again, "--report", "json,html", "-q")
    assert r.returncode == 0, r.stderr
    first, second = hashes(out), hashes(again)
    assert {f for f in first if first[f] != second.get(f)} == {"timings.json"}
    assert set(first) == set(second)


@pytest.mark.slow
@needs_c
def test_digits_compiled_c_model_matches_the_interpreter(tmp_path):
    out = tmp_path / "digits"
    r = qc("compile", MODELS / "digits_cnn.onnx", "-t", "c99",
           "-c", MODELS / "digits_calib.npz", "--evaluate", MODELS / "digits_test.npz", "-o", out)
    assert r.returncode == 0, r.stderr
    ev = json.loads((out / "report.json").read_text())["evaluation"]
    compiled = ev["compiled"]
    assert compiled["runner"] == "host gcc" and compiled["accuracy"] >= 0.991
    assert compiled["bit_exact"] is True and compiled["mismatches"] == 0
    assert compiled["compared"] == 450 * 10
    assert compiled["accuracy"] == ev["integer_accuracy"]
    assert (f"integer {100 * ev['integer_accuracy']:.2f} %, compiled C (host gcc) "
            f"{100 * compiled['accuracy']:.2f} %, bit-exact with the interpreter") in r.stdout
