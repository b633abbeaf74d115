"""The calibrate pass and the calibration data reader: the ranges and statistics it records are
those of the data, every observer method works, and bad data gives errors naming the input or
the value that went wrong."""
from __future__ import annotations

import numpy as np
import pytest

import qcompile
from qcompile.errors import QCompileError
from qcompile.interp import Interpreter
from qcompile.ir import Graph, TensorType
from qcompile.passmanager import PassContext, run_pipeline
from qcompile.quant.calibration import CalibrationError, iter_calibration, nonnegative_values


def small_graph(batch=None) -> Graph:
    """x -> linear -> relu -> linear (the graph input and three activations)."""
    rng = np.random.default_rng(0)
    g = Graph("mlp")
    x = g.add_input("x", TensorType((batch, 2, 5)))
    w1 = g.add_constant("w1", rng.standard_normal((6, 5)).astype(np.float32))
    h = g.add_node("linear", [x, w1, None], name="h").output
    r = g.add_node("relu", [h], name="r").output
    w2 = g.add_constant("w2", rng.standard_normal((3, 6)).astype(np.float32))
    g.outputs = [g.add_node("linear", [r, w2, None], name="y").output]
    return g


def batches(n=4, rows=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((rows, 2, 5)).astype(np.float32) * (i + 1) for i in range(n)]


def all_values(g: Graph, data: list) -> dict[str, np.ndarray]:
    """Every activation over all batches, concatenated (the reference the pass must match)."""
    interp = Interpreter(g, keep_all=True)
    out: dict[str, list] = {"x": []}
    for b in data:
        interp.run([b])
        out["x"].append(b)
        for name, v in interp.values.items():
            out.setdefault(name, []).append(v)
    return {k: np.concatenate(v) for k, v in out.items()}


def calibrate(g: Graph, data, pipeline: str = "calibrate") -> PassContext:
    return run_pipeline(g, pipeline, PassContext(calibration_data=data, verify=True))


# ---- what it records ------------------------------------------------------------------------
def test_minmax_ranges_and_stats_match_the_data():
    g, data = small_graph(), batches()
    ctx = calibrate(g, data)
    ref = all_values(g, data)
    assert set(g.meta["ranges"]) == {"x", "h", "r", "y"}
    for name, arr in ref.items():
        lo, hi = g.meta["ranges"][name]
        assert lo.shape == () and float(lo) == arr.min() and float(hi) == arr.max()
        st = g.meta["calib_stats"][name]
        assert st["min"] == arr.min() and st["max"] == arr.max() and st["count"] == 12
        np.testing.assert_allclose(st["mean"], arr.mean(axis=(0, 2)), rtol=1e-6, atol=1e-9)
    assert ctx.records[0].changed is False  # only meta is written


def test_batches_option_limits_the_data_seen():
    g, data = small_graph(), batches()
    calibrate(g, data, "calibrate{batches=2}")
    ref = all_values(g, data[:2])
    assert float(g.meta["ranges"]["y"][1]) == ref["y"].max()
    assert g.meta["calib_stats"]["x"]["count"] == 6


def test_per_channel_ranges_along_axis_1():
    g, data = small_graph(), batches()
    calibrate(g, data, "calibrate{per_channel=true}")
    ref = all_values(g, data)
    lo, hi = g.meta["ranges"]["h"]
    assert lo.shape == (2,)
    np.testing.assert_array_equal(hi, ref["h"].max(axis=(0, 2)))


@pytest.mark.parametrize("method", ["minmax", "ema", "percentile", "mse", "entropy"])
def test_every_method_gives_ranges_inside_the_data(method):
    g, data = small_graph(), batches(n=6, rows=8)
    calibrate(g, data, f"calibrate{{method={method}}}")
    ref = all_values(g, data)
    for name, (lo, hi) in g.meta["ranges"].items():
        assert ref[name].min() - 1e-9 <= lo <= hi <= ref[name].max() + 1e-9, (method, name)


def test_percentile_clips_an_outlier():
    g = small_graph()
    data = batches(n=4, rows=64)
    data[0][0, 0, 0] = 1000.0
    calibrate(g, data, "calibrate{method=percentile,percentile=99.9}")
    assert g.meta["ranges"]["x"][1] < 100


def test_data_sources_npz_array_dict_and_tuples(tmp_path):
    g = small_graph()
    arr = np.concatenate(batches())
    np.savez(tmp_path / "by_name.npz", x=arr)
    np.savez(tmp_path / "single.npz", images=arr)
    expected = float(arr.max())
    for source in (str(tmp_path / "by_name.npz"), tmp_path / "single.npz", arr, {"x": arr},
                   [(b,) for b in batches()], [{"x": b} for b in batches()]):
        calibrate(g, source)
        assert float(g.meta["ranges"]["x"][1]) == expected


def test_a_dataset_is_cut_into_batches_and_fixed_batch_graphs_get_their_size():
    arr = np.concatenate(batches(n=4, rows=5))  # 20 samples
    assert [b["x"].shape[0] for b in iter_calibration(arr, small_graph(), batch_size=8)] == [8, 8, 4]
    fixed = small_graph(batch=1)
    assert len(list(iter_calibration(arr, fixed))) == 20
    assert len(list(iter_calibration(batches(n=2, rows=3), fixed))) == 6
    calibrate(fixed, arr)
    assert float(fixed.meta["ranges"]["x"][1]) == arr.max()
    with pytest.raises(CalibrationError, match="fixed batch size of 4"):
        list(iter_calibration(arr[:10], small_graph(batch=4)))


def test_two_input_graph_takes_tuples_and_dicts():
    g = Graph("two")
    a = g.add_input("a", TensorType((None, 3)))
    b = g.add_input("b", TensorType((None, 3)))
    g.outputs = [g.add_node("add", [a, b], name="s").output]
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((2, 3)).astype(np.float32),
              rng.standard_normal((2, 3)).astype(np.float32)) for _ in range(3)]
    calibrate(g, pairs)
    assert float(g.meta["ranges"]["s"][1]) == max(float((p + q).max()) for p, q in pairs)
    with pytest.raises(CalibrationError, match="takes 2 inputs"):
        calibrate(g, [p for p, _ in pairs])
    with pytest.raises(CalibrationError, match="%b"):
        calibrate(g, [{"a": p} for p, _ in pairs])


# ---- errors ---------------------------------------------------------------------------------
def test_empty_and_missing_data_are_errors(tmp_path):
    g = small_graph()
    with pytest.raises(CalibrationError, match="empty"):
        calibrate(g, [])
    with pytest.raises(CalibrationError, match="empty"):
        calibrate(g, np.zeros((0, 2, 5), np.float32))
    with pytest.raises(CalibrationError, match="no calibration data"):
        calibrate(g, None)
    with pytest.raises(CalibrationError, match="no such file"):
        calibrate(g, str(tmp_path / "nope.npz"))
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2, 5)), b=np.zeros((2, 2, 5)))
    with pytest.raises(CalibrationError, match=r"%x"):
        calibrate(g, str(tmp_path / "two.npz"))


def test_wrong_shape_names_input_expected_and_got():
    g = small_graph()
    with pytest.raises(CalibrationError, match=r"batch 1: input %x expects shape \(\?, 2, 5\).*\(3, 5, 2\)"):
        calibrate(g, [batches()[0], np.zeros((3, 5, 2), np.float32)])
    with pytest.raises(CalibrationError, match=r"%x expects shape"):
        calibrate(g, [np.zeros((2, 5), np.float32)])


def test_wrong_dtype_names_input():
    with pytest.raises(CalibrationError, match=r"input %x expects f32 data, got dtype int64"):
        calibrate(small_graph(), [np.zeros((3, 2, 5), np.int64)])


def test_nan_activation_names_value_and_node():
    g = Graph("nan")
    x = g.add_input("x", TensorType((None, 4)))
    g.outputs = [g.add_node("sqrt", [x], name="root").output]
    with pytest.raises(CalibrationError, match=r"%root \(output of node root, op sqrt\).*NaN"):
        calibrate(g, [np.array([[1.0, -1.0, 4.0, 0.0]], np.float32)])
    with pytest.raises(CalibrationError, match=r"graph input %x.*1 Inf"):
        calibrate(g, [np.array([[1.0, np.inf, 4.0, 0.0]], np.float32)])


def test_errors_are_user_errors_that_name_the_pass():
    with pytest.raises(QCompileError, match=r"pass 'calibrate'.*empty"):
        calibrate(small_graph(), [])


@pytest.mark.parametrize("spec, option", [("method=median", "method"), ("percentile=20", "percentile"),
                                          ("bits=1", "bits"), ("batches=-1", "batches")])
def test_bad_options(spec, option):
    with pytest.raises(qcompile.PipelineError, match=f"option '{option}'"):
        calibrate(small_graph(), batches(), f"calibrate{{{spec}}}")


# ---- structure ------------------------------------------------------------------------------
def test_nonnegative_values_are_structural():
    g = small_graph()
    sig = g.add_node("sigmoid", [g.value("y")], name="sig").output
    pooled = g.add_node("flatten", [g.value("r")], name="flat").output
    g.outputs = [sig, pooled]
    assert nonnegative_values(g) == {"r", "sig", "flat"}


def test_calibration_is_vectorised():
    """Observers cost O(elements) numpy work, no Python loop per element: 64 batches of six
    131k-element activations (50 M observed values) take well under the bound even with the
    histogram-based percentile observer. The graph is element-wise so observers dominate."""
    import time
    g = Graph("wide")
    x = g.add_input("x", TensorType((None, 16, 32, 32)))
    h = x
    for i in range(5):
        h = g.add_node("relu" if i % 2 else "neg", [h], name=f"n{i}").output
    g.outputs = [h]
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((8, 16, 32, 32)).astype(np.float32) for _ in range(64)]
    start = time.perf_counter()
    calibrate(g, data, "calibrate{method=percentile}")
    assert time.perf_counter() - start < 8.0
    assert len(g.meta["ranges"]) == 6
