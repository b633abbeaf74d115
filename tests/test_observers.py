"""Calibration observers and choose_qparams: hand-computed cases, streaming == batch, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qcompile.quant import (EntropyObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                            MSEObserver, PercentileObserver, QuantError, choose_qparams)
from qcompile.quant.observers import kl_divergences


def _chunks(x, rng, n=7):
    cuts = np.sort(rng.choice(np.arange(1, x.size), n - 1, replace=False))
    return np.split(x, cuts)


# --------------------------------------------------------------------------- choose_qparams

def test_choose_qparams_hand_computed():
    s, z = choose_qparams(-1.0, 2.0, 8, True, False)
    assert s == pytest.approx(3 / 255) and z == -43  # rint(-128 + 85)
    s, z = choose_qparams(-1.0, 2.0, 8, True, True)
    assert s == pytest.approx(2 / 127) and z == 0
    s, z = choose_qparams(-1.0, 2.0, 8, False, True)
    assert s == pytest.approx(2 / 127) and z == 128
    s, z = choose_qparams(1.0, 3.0, 8, False, False)  # widened to [0, 3]
    assert s == pytest.approx(3 / 255) and z == 0
    s, z = choose_qparams(-1.0, 2.0, 8, True, False, pow2=True)
    assert s == 2.0 ** -6 and z == -64
    s, z = choose_qparams(-4.0, 4.0, 4, True, True, pow2=True)  # 4/7 -> 1.0 (rounded up)
    assert s == 1.0 and z == 0
    s, z = choose_qparams(-127.0, 127.0, 8, True, True, pow2=True)  # exactly 1.0 stays 1.0
    assert s == 1.0


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("signed", [False, True])
def test_choose_qparams_degenerate_and_zero_exact(symmetric, signed):
    s, z = choose_qparams(np.zeros(3), np.zeros(3), 8, signed, symmetric)
    assert np.all(s == 1.0) and np.all(np.isfinite(s))
    lo, hi = (-128, 127) if signed else (0, 255)
    assert np.all((z >= lo) & (z <= hi))
    s, z = choose_qparams(1e-45, 1e-45, 8, signed, symmetric)  # tiny: stays a normal float32
    assert s >= np.finfo(np.float32).tiny and np.float32(s) > 0


def test_choose_qparams_covers_range_per_channel():
    rng = np.random.default_rng(0)
    lo = -rng.uniform(0, 10, 500) * (rng.uniform(size=500) < 0.8)
    hi = rng.uniform(0, 10, 500)
    for pow2 in (False, True):
        for sym in (False, True):
            s, z = choose_qparams(lo, hi, 8, True, sym, pow2)
            assert s.shape == (500,) and z.shape == (500,)
            rep_lo, rep_hi = (-128 - z) * s, (127 - z) * s
            slack = 0.5 * s + 1e-12  # zero-point rounding moves the grid by at most half a step
            assert np.all(rep_lo <= lo + slack) and np.all(rep_hi >= hi - slack)
            if pow2:
                assert np.all(np.exp2(np.round(np.log2(s))) == s)


def test_choose_qparams_errors():
    with pytest.raises(QuantError, match="not finite"):
        choose_qparams(np.nan, 1.0)
    with pytest.raises(QuantError, match="lo"):
        choose_qparams(2.0, 1.0)
    with pytest.raises(QuantError, match="bit width"):
        choose_qparams(0.0, 1.0, bits=1)


# --------------------------------------------------------------------------- min/max observers

def test_minmax_per_tensor_and_per_channel():
    x = np.array([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]])
    o = MinMaxObserver()
    o.observe(x)
    lo, hi = o.range()
    assert lo.shape == () and (float(lo), float(hi)) == (-6.0, 5.0)
    oc = MinMaxObserver(axis=1)
    oc.observe(x)
    oc.observe(np.array([[10.0, 0.0, 0.0]]))
    lo, hi = oc.range()
    assert lo.tolist() == [1.0, -2.0, -6.0] and hi.tolist() == [10.0, 5.0, 3.0]
    assert lo.dtype == np.float64


def test_moving_average_hand_computed():
    o = MovingAverageMinMaxObserver(momentum=0.5)
    o.observe(np.array([0.0, 1.0]))
    o.observe(np.array([-2.0, 3.0]))
    o.observe(np.array([-2.0, 3.0]))
    lo, hi = o.range()
    assert float(lo) == pytest.approx(0.25 * 0 + 0.75 * -2) and float(hi) == pytest.approx(0.25 * 1 + 0.75 * 3)
    with pytest.raises(QuantError, match="momentum"):
        MovingAverageMinMaxObserver(momentum=1.0)


def test_observer_errors():
    o = MinMaxObserver(name="conv1.out")
    with pytest.raises(QuantError, match="conv1.out.*no data"):
        o.range()
    with pytest.raises(QuantError, match="conv1.out.*1 NaN and 2 Inf"):
        o.observe(np.array([1.0, np.nan, np.inf, -np.inf]))
    o.observe(np.zeros((0,)))  # empty batch: still no data
    with pytest.raises(QuantError, match="no data"):
        o.range()
    oc = MinMaxObserver(axis=0, name="w")
    oc.observe(np.ones((4, 3)))
    with pytest.raises(QuantError, match="3 channels.*4"):
        oc.observe(np.ones((3, 3)))
    with pytest.raises(QuantError, match="axis 2 out of range"):
        MinMaxObserver(axis=2).observe(np.ones((4, 3)))
    for cls in (PercentileObserver, MSEObserver, EntropyObserver):
        with pytest.raises(QuantError, match="no data"):
            cls().range()
        with pytest.raises(QuantError, match="NaN"):
            cls().observe(np.array([np.nan]))


# --------------------------------------------------------------------------- histogram observers

def _observers():
    return [MinMaxObserver(), PercentileObserver(99.0), MSEObserver(bits=8), MSEObserver(bits=4, symmetric=True),
            EntropyObserver(bits=8), PercentileObserver(99.9, axis=1), MSEObserver(axis=1)]


def test_streaming_equals_batch_exactly():
    rng = np.random.default_rng(1)
    x = np.concatenate([np.zeros(300), rng.laplace(0, 0.01, 3000), rng.standard_t(3, 20000) * 5]).reshape(-1, 4)
    # The first chunks hold only zeros and tiny values; later ones widen the range by ~1e4.
    for make in range(len(_observers())):
        batch, stream = _observers()[make], _observers()[make]
        batch.observe(x)
        for c in _chunks(x, rng):
            stream.observe(c)
        b, s = batch.range(), stream.range()
        assert np.array_equal(b[0], s[0]) and np.array_equal(b[1], s[1]), type(batch).__name__
        if hasattr(batch, "_hists"):
            for hb, hs in zip(batch._hists, stream._hists):
                assert hb.exp == hs.exp and hb.first == hs.first and np.array_equal(hb.counts, hs.counts)


def test_histogram_grid_resolution_bound():
    rng = np.random.default_rng(2)
    for bins in (64, 2048):
        o = PercentileObserver(100.0, bins=bins)
        data = rng.uniform(-3.7, 11.2, 10000)
        o.observe(data)
        h = o._hists[0]
        assert h.counts.size <= bins and h.counts.sum() == data.size
        assert h.width < 2 * (data.max() - data.min()) / (bins - 2)


def test_percentile_on_known_array():
    x = np.arange(10001) / 10000.0  # 0, 0.0001, ..., 1
    o = PercentileObserver(99.0)
    o.observe(x)
    lo, hi = o.range()
    w = o._hists[0].width
    assert abs(float(hi) - 0.99) <= w and abs(float(lo) - 0.01) <= w
    o100 = PercentileObserver(100.0)
    o100.observe(x)
    assert tuple(map(float, o100.range())) == (0.0, 1.0)


def test_percentile_vs_numpy_within_bin_width():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200000, 3)) * np.array([1.0, 5.0, 0.1])
    o = PercentileObserver(99.9, axis=1)
    o.observe(x)
    lo, hi = o.range()
    ref_lo, ref_hi = np.percentile(x, [0.1, 99.9], axis=0)
    widths = np.array([h.width for h in o._hists])
    assert np.all(np.abs(hi - ref_hi) <= widths) and np.all(np.abs(lo - ref_lo) <= widths)


def _exact_mse(x, lo, hi, bits=8, signed=True, symmetric=False):
    s, z = choose_qparams(lo, hi, bits, signed, symmetric)
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    q = np.clip(np.rint(x / s) + z, qmin, qmax)
    return float((((q - z) * s - x) ** 2).sum())


def test_mse_histogram_estimate_matches_exact_error():
    rng = np.random.default_rng(4)
    x = rng.laplace(0, 1, 50000)
    o = MSEObserver(bits=6)
    o.observe(x)
    alphas, err = o.errors(o._hists[0])
    for j in (4, 19, 49, 99):
        exact = _exact_mse(x, alphas[j] * x.min(), alphas[j] * x.max(), bits=6)
        assert err[j] == pytest.approx(exact, rel=0.02)


def test_mse_clips_heavy_tails_but_not_uniform():
    rng = np.random.default_rng(5)
    lap = rng.laplace(0, 1, 100000)
    o = MSEObserver(bits=4, symmetric=True)
    o.observe(lap)
    lo, hi = o.range()
    assert float(hi) < 0.6 * lap.max() and float(lo) > 0.6 * lap.min()
    # The choice is (near) optimal on the data themselves, not just on the histogram model.
    assert _exact_mse(lap, lo, hi, 4, True, True) < 0.5 * _exact_mse(lap, lap.min(), lap.max(), 4, True, True)
    uni = rng.uniform(-1, 3, 100000)
    ou = MSEObserver(bits=8)
    ou.observe(uni)
    assert tuple(map(float, ou.range())) == (uni.min(), uni.max())


def test_mse_constant_data():
    o = MSEObserver()
    o.observe(np.full(100, 2.5))
    lo, hi = o.range()
    assert float(lo) == 0.0 and 0 < float(hi) <= 2.5


def test_kl_divergences_hand_computed():
    # hist [4, 2, 0, 1], 2 quantization bins; candidates i = 2, 3, 4 (see kl_divergences docs).
    got = kl_divergences([4, 2, 0, 1], 2)
    want = [4 / 7 * math.log(6 / 7) + 3 / 7 * math.log(9 / 7),
            4 / 7 * math.log(6 / 7) + 2 / 7 * math.log(12 / 7) + 1 / 7 * math.log(6 / 7),
            4 / 7 * math.log(4 / 3) + 2 / 7 * math.log(2 / 3)]
    assert got == pytest.approx(want, abs=1e-12)
    # A histogram already at quantization resolution costs nothing at the full threshold.
    assert kl_divergences([3, 1, 4, 1], 4) == pytest.approx([0.0])


def test_entropy_clips_outliers_and_keeps_dense_ranges():
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.uniform(-1, 1, 200000), [8.0, -7.0, 10.0]])
    o = EntropyObserver(bits=8)
    o.observe(x)
    lo, hi = o.range()
    assert 0.95 < float(hi) < 1.1 and -1.1 < float(lo) < -0.95
    lap = rng.laplace(0, 1, 200000)
    o = EntropyObserver(bits=8)
    o.observe(lap)
    lo, hi = o.range()
    assert 4 < float(hi) < 0.9 * np.abs(lap).max() and float(lo) == -float(hi)
    relu = rng.uniform(0, 6, 100000)  # one-sided data: lo stays at the data minimum
    o2 = EntropyObserver(bits=8, signed=False)
    o2.observe(relu)
    lo, hi = o2.range()
    assert float(lo) == relu.min() and float(hi) > 5.5


def test_entropy_never_clips_one_sided_data_to_an_empty_range():
    """All-positive data far from zero (token counts in [9, 21]): the KL search must not pick a
    threshold below the smallest value, which would give lo > hi."""
    from qcompile.quant.observers import EntropyObserver
    rng = np.random.default_rng(0)
    obs = EntropyObserver()
    obs.observe(rng.integers(9, 22, 4096).astype(np.float32))
    lo, hi = (float(np.asarray(v)) for v in obs.range())
    assert 9.0 - 1e-6 <= lo <= hi <= 21.0 + 1e-6 and hi >= 9.0
