"""MetaSchedule tuning for the TVM backend: the database, applying it, and bit-exactness."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompile  # noqa: E402
from qcompile.cli_commands import _backend_option  # noqa: E402
from qcompile.errors import QCompileError  # noqa: E402
from qcompile.targets import tvm as qtvm  # noqa: E402
from qcompile.targets.c.testing import IntGraphBuilder  # noqa: E402
from qcompile.targets.tvm import tune as tuning  # noqa: E402
from qcompile.targets.tvm.tune import TuningDatabase, TVMTuningError  # noqa: E402

LLVM = {"kind": "llvm"}


def small_graph(channels: int = 8, size: int = 8):
    """conv (fused requantize) -> linear: one kernel of each tuned kind."""
    b = IntGraphBuilder("tiny", seed=3, rounding="single_half_up")
    x = b.input((1, 4, size, size), "u8")
    y = b.requant(b.conv(x, channels, k=3, padding=(1, 1, 1, 1)), relu=True)
    g = b.output(b.requant(b.linear(b.op("flatten", [y], axis=1), 5), axis=1))
    xs = b.rng.integers(0, 256, (1, 4, size, size)).astype(np.uint8)
    return g, xs


def assert_exact(graph, module, x):
    ref = qcompile.run(graph, [x], mode="int")
    out = module(x)
    assert len(ref) == len(out)
    for r, o in zip(ref, out):
        assert r.dtype == o.dtype and r.shape == o.shape
        np.testing.assert_array_equal(r, o)


# ---- the database folder ------------------------------------------------------------------------

def test_missing_database_folder_is_a_clear_error(tmp_path):
    g, _ = small_graph()
    with pytest.raises(TVMTuningError, match=r"tuning database .*missing.* does not exist"):
        qtvm.build(g, LLVM, database=tmp_path / "missing")
    assert issubclass(TVMTuningError, QCompileError)


def test_database_that_is_a_file_or_not_ours_is_refused(tmp_path):
    g, _ = small_graph()
    f = tmp_path / "db.json"
    f.write_text("{}")
    with pytest.raises(TVMTuningError, match="is not a folder"):
        qtvm.build(g, LLVM, database=f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TVMTuningError, match="has no records.json"):
        qtvm.build(g, LLVM, database=tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "records.json").write_text("{not json")
    with pytest.raises(TVMTuningError, match="not readable JSON"):
        qtvm.build(g, LLVM, database=bad)
    (bad / "records.json").write_text(json.dumps({"format": "other", "kernels": {}}))
    with pytest.raises(TVMTuningError, match="is not a qcompile-tvm-tuning/1 file"):
        qtvm.build(g, LLVM, database=bad)
    (bad / "records.json").write_text(json.dumps(
        {"format": tuning.FORMAT, "kernels": {"k": {"winner": "tuned"}}}))
    with pytest.raises(TVMTuningError, match="record k needs a winner"):
        qtvm.build(g, LLVM, database=bad)


def test_negative_trials_and_gpu_targets_are_refused(tmp_path):
    g, _ = small_graph()
    with pytest.raises(TVMTuningError, match="tune=-1"):
        qtvm.build(g, LLVM, tune=-1)
    with pytest.raises(TVMTuningError, match="cannot be tuned here"):
        qtvm.build(g, {"kind": "cuda", "arch": "sm_80"}, tune=2)


def test_an_empty_database_builds_the_hand_scheduled_module(tmp_path):
    g, xs = small_graph()
    TuningDatabase({}, tmp_path).save()
    module = qtvm.build(g, LLVM, database=tmp_path)
    assert_exact(g, module, xs)
    files = qtvm.export(module, tmp_path / "out")
    assert "tuning/records.json" in files
    assert json.loads((tmp_path / "out" / "tuning" / "records.json").read_text())["kernels"] == {}


# ---- tuning -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tune_records_then_a_second_build_applies_without_tuning(tmp_path, monkeypatch):
    g, xs = small_graph()
    db_dir = tmp_path / "db"
    tuned = qtvm.build(g, LLVM, tune=4, database=db_dir)
    assert_exact(g, tuned, xs)
    doc = json.loads((db_dir / "records.json").read_text())
    recs = list(doc["kernels"].values())
    assert sorted(r["kind"] for r in recs) == ["conv2d", "dense"]
    for r in recs:
        assert r["hand_us"] > 0
        if "tuned_us" in r:  # the faster of the two won
            assert r["winner"] == ("tuned" if r["tuned_us"] < r["hand_us"] else "hand")
    # the records apply without any search: make a search fail loudly
    monkeypatch.setattr(tuning, "search", lambda *a, **k: pytest.fail("searched again"))
    again = qtvm.build(g, LLVM, tune=4, database=db_dir)
    assert_exact(g, again, xs)
    applied = qtvm.build(g, LLVM, database=db_dir)
    assert_exact(g, applied, xs)
    qtvm.export(applied, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "tuning" / "records.json").read_text()) == doc
    assert_exact(g, qtvm.load(tmp_path / "out"), xs)


def test_a_tuned_kernel_slower_than_the_hand_schedule_does_not_win(tmp_path, monkeypatch):
    g, xs = small_graph(channels=4, size=6)
    hands = []
    real_timed = tuning._timed

    def timed(func, target):
        real_timed(func, target)              # still compiles and runs the candidate
        return 1.0 if any(func.same_as(h) for h in hands) else 2.0

    real_tune = tuning.tune

    def tune(kernels, *a, **k):
        hands.extend(k_.hand for k_ in kernels)
        return real_tune(kernels, *a, **k)
    monkeypatch.setattr(tuning, "_timed", timed)
    monkeypatch.setattr(tuning, "tune", tune)
    module = qtvm.build(g, LLVM, tune=2, database=tmp_path)
    recs = json.loads((tmp_path / "records.json").read_text())["kernels"].values()
    assert recs and all(r["winner"] == "hand" and r["tuned_us"] > r["hand_us"] for r in recs)
    assert_exact(g, module, xs)


def test_a_tuned_schedule_is_bit_exact_on_a_replayed_record():
    """A candidate of the search, replayed from its record, computes the same integers."""
    g, xs = small_graph(channels=4, size=6)
    from qcompile.targets.tvm.lower import lower_graph
    from qcompile.targets.tvm.target import make_target
    tgt = make_target(LLVM)
    spec = {"kind": "llvm"}
    kernels = tuning.collect_kernels(lambda s: lower_graph(g, 1, s), None, spec)
    conv = next(k for k in kernels if k.kind == "conv2d")
    ctx, post = tuning._context(conv.func, tuning._tuning_target(tgt))
    space = list(ctx.generate_design_space())[0]
    decisions, sch = tuning.sample(conv.func, space, post, seed=7)
    assert sch is not None
    db = TuningDatabase({conv.key: {"kind": "conv2d", "winner": "tuned", "hand_us": 1.0,
                                    "schedule": {"space": 0, "decisions": decisions}}})
    from qcompile.targets.tvm.compiler import build
    module = build(g, LLVM, database=db)
    assert_exact(g, module, xs)


# ---- the compile driver's option -------------------------------------------------------------

def test_backend_option_values():
    assert _backend_option("tune=64") == ("tune", 64)
    assert _backend_option("tuning=examples/tuning/x") == ("tuning", "examples/tuning/x")
    assert _backend_option("fast=true") == ("fast", True)
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        _backend_option("tune")


def test_compile_reuses_the_records_left_in_the_output_folder(tmp_path):
    from qcompile.targets.tvm import _tuning_database
    ctx = SimpleNamespace(options={"output_dir": str(tmp_path / "out")})
    assert _tuning_database(None, 0, ctx) is None
    TuningDatabase({}, tmp_path / "out" / "tuning").save()
    db = _tuning_database(None, 8, ctx)
    assert db is not None and db.folder is None   # read, never written back into the old output
    with pytest.raises(TVMTuningError, match="does not exist"):
        _tuning_database(tmp_path / "nowhere", 0, ctx)
