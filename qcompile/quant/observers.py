"""Calibration observers and the mapping from an observed range to (scale, zero_point).

Every observer streams: `observe(batch)` any number of times, then `range()` gives `(lo, hi)` as
float64 arrays, shape `()` per-tensor or `(C,)` per-channel along `axis`. Observers that need a
distribution (percentile, MSE, entropy) keep a histogram whose grid depends only on the extremes
seen so far, so observing in chunks gives exactly the same histogram, and range, as observing
everything at once (see `_Histogram`).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from numpy.typing import ArrayLike

from .intmath import QuantError


# --------------------------------------------------------------------------- choose_qparams

def choose_qparams(lo: ArrayLike, hi: ArrayLike, bits: int = 8, signed: bool = True,
                   symmetric: bool = False, pow2: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scale float64, zero_point int64) arrays covering [lo, hi] (broadcast; per-channel ok).

    The range is first widened to contain 0, so 0 is always exactly representable (it is the
    integer zero point). Symmetric: zero point 0 (signed) or 2**(bits-1) (unsigned) and
    `scale = max(|lo|, |hi|) / (2**(bits-1) - 1)`, so the most negative code is unused, as in
    TFLite. Asymmetric: `scale = (hi - lo) / (qmax - qmin)` and `zero_point = clamp(rint(qmin -
    lo/scale))`. A zero-width range gives scale 1.0; scales never go below the smallest normal
    float32. `pow2` rounds the scale *up* to a power of two (the range stays covered)."""
    if not (2 <= bits <= 16 or bits == 32):
        raise QuantError(f"choose_qparams: bit width {bits} not in 2..16 or 32")
    lo_a = np.asarray(lo, dtype=np.float64)
    hi_a = np.asarray(hi, dtype=np.float64)
    for name, arr in (("lo", lo_a), ("hi", hi_a)):
        if not np.all(np.isfinite(arr)):
            raise QuantError(f"choose_qparams: range bound {name} is not finite: {arr}")
    if np.any(lo_a > hi_a):
        raise QuantError(f"choose_qparams: empty range, lo {lo_a} > hi {hi_a}")
    lo_a, hi_a = np.broadcast_arrays(np.minimum(lo_a, 0.0), np.maximum(hi_a, 0.0))
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if symmetric:
        half_levels = (1 << (bits - 1)) - 1
        scale = np.maximum(-lo_a, hi_a) / half_levels
    else:
        scale = (hi_a - lo_a) / (qmax - qmin)
    scale = np.where(scale == 0, 1.0, np.maximum(scale, np.finfo(np.float32).tiny))
    if pow2:
        mant, exp = np.frexp(scale)  # scale = mant * 2**exp, mant in [0.5, 1)
        scale = np.ldexp(1.0, np.where(mant == 0.5, exp - 1, exp))
    if symmetric:
        zp = np.full(scale.shape, 0 if signed else 1 << (bits - 1), dtype=np.int64)
    else:
        zp = np.clip(np.rint(qmin - lo_a / scale), qmin, qmax).astype(np.int64)
    return np.asarray(scale, dtype=np.float64), np.asarray(zp, dtype=np.int64)


# --------------------------------------------------------------------------- base class

class Observer:
    """Streaming range observer. `axis=None` is per-tensor; an int is per-channel along it.
    `name` (the observed value) appears in error messages."""

    def __init__(self, axis: Optional[int] = None, name: str = "tensor"):
        self.axis, self.name = axis, name
        self._channels: Optional[int] = None
        self.count = 0  # elements seen per channel

    # ---- public API
    def observe(self, x: ArrayLike) -> None:
        rows = self._rows(np.asarray(x))
        if rows.shape[1] == 0:
            return
        self._update(rows)
        self.count += rows.shape[1]

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count == 0:
            raise QuantError(f"{type(self).__name__} for {self.name} has observed no data; "
                             "cannot give a range (was calibration run?)")
        lo, hi = self._range()
        return self._shape_out(lo), self._shape_out(hi)

    # ---- subclass hooks: rows is (C, N) float64, finite
    def _update(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # ---- helpers
    def _rows(self, a: np.ndarray) -> np.ndarray:
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise QuantError(f"observer for {self.name}: expected a numeric array, got dtype {a.dtype}")
        a = a.astype(np.float64)  # exact for f16/f32 and ints up to 2**53
        nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        if nan or inf:
            raise QuantError(f"observed data for {self.name} contains "
                             f"{nan} NaN and {inf} Inf values; calibration needs finite data")
        if self.axis is None:
            rows = a.reshape(1, -1)
        else:
            if not -a.ndim <= self.axis < a.ndim:
                raise QuantError(f"observer for {self.name}: channel axis {self.axis} out of range "
                                 f"for an array of shape {a.shape}")
            rows = np.moveaxis(a, self.axis, 0).reshape(a.shape[self.axis], -1)
        if self._channels is None:
            self._channels = rows.shape[0]
        elif rows.shape[0] != self._channels:
            raise QuantError(f"observer for {self.name}: got {rows.shape[0]} channels along axis "
                             f"{self.axis}, earlier batches had {self._channels}")
        return rows

    def _shape_out(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        return v.reshape(()) if self.axis is None else v.reshape(-1)


class MinMaxObserver(Observer):
    """Running minimum and maximum (exact)."""

    def __init__(self, axis: Optional[int] = None, name: str = "tensor"):
        super().__init__(axis, name)
        self._min = self._max = None

    def _update(self, rows):
        mn, mx = rows.min(axis=1), rows.max(axis=1)
        if self._min is None:
            self._min, self._max = mn, mx
        else:
            self._min, self._max = np.minimum(self._min, mn), np.maximum(self._max, mx)

    def _range(self):
        return self._min, self._max


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of each batch's min and max. The first batch sets the range;
    later ones update `run = momentum * run + (1 - momentum) * batch`, so `momentum` is the
    weight kept by the running value (0.99 equals PyTorch's averaging_constant 0.01)."""

    def __init__(self, momentum: float = 0.9, axis: Optional[int] = None, name: str = "tensor"):
        if not 0.0 <= momentum < 1.0:
            raise QuantError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(axis, name)
        self.momentum = momentum
        self._min = self._max = None

    def _update(self, rows):
        mn, mx = rows.min(axis=1), rows.max(axis=1)
        if self._min is None:
            self._min, self._max = mn, mx
        else:
            m = self.momentum
            self._min = m * self._min + (1 - m) * mn
            self._max = m * self._max + (1 - m) * mx

    def _range(self):
        return self._min, self._max


# --------------------------------------------------------------------------- streaming histogram

class _Histogram:
    """A histogram of one channel whose bins are `[k*w, (k+1)*w)` with `w = 2**e`.

    `e` is the smallest exponent for which the data extremes span at most `bins` bins (and not
    below `exponent(max|x|) - 48`, which keeps `x / w` well inside int64). Because that choice is a
    monotone function of the extremes and a grid of width 2**e' is an exact coarsening of one of
    width 2**e (e' >= e), streaming rebins losslessly and ends with the same counts a single batch
    gives. The grid resolution is `w < 2 * (max - min) / (bins - 2)`."""

    def __init__(self, bins: int):
        self.bins = bins
        self.exp: Optional[int] = None
        self.first = 0  # bin index of counts[0]
        self.counts = np.zeros(0, np.int64)
        self.min, self.max = math.inf, -math.inf

    @staticmethod
    def _index(v, exp: int):
        return np.floor(np.ldexp(v, -exp)).astype(np.int64)

    def _exponent(self, mn: float, mx: float) -> int:
        amax = max(abs(mn), abs(mx))
        floor_e = math.frexp(amax)[1] - 48 if amax > 0 else -1074
        span = mx / 2 - mn / 2  # halves: no overflow near the float64 limit
        e = floor_e if span == 0 else max(floor_e, math.floor(math.log2(span) + 1 - math.log2(self.bins)) - 1)
        while int(self._index(mx, e)) - int(self._index(mn, e)) + 1 > self.bins:
            e += 1
        return e

    def add(self, v: np.ndarray) -> None:
        mn, mx = min(self.min, float(v.min())), max(self.max, float(v.max()))
        e = self._exponent(mn, mx)
        first = int(self._index(mn, e))
        n = int(self._index(mx, e)) - first + 1
        counts = np.zeros(n, np.int64)
        if self.exp is not None and self.counts.size:
            d = min(e - self.exp, 63)  # >= 0 by monotonicity; >> 63 sends every index to 0 or -1
            old_idx = (self.first + np.arange(self.counts.size, dtype=np.int64)) >> d
            np.add.at(counts, old_idx - first, self.counts)
        counts += np.bincount(self._index(v, e) - first, minlength=n)
        self.exp, self.first, self.counts, self.min, self.max = e, first, counts, mn, mx

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exp)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of each bin, clipped to the exact data extremes."""
        k = self.first + np.arange(self.counts.size, dtype=np.int64)
        lo = np.maximum(np.ldexp(k.astype(np.float64), self.exp), self.min)
        hi = np.minimum(np.ldexp((k + 1).astype(np.float64), self.exp), self.max)
        return lo, hi

    def quantile(self, q: float) -> float:
        """Value below which a fraction `q` of the data lies, assuming each bin is uniform."""
        total = int(self.counts.sum())
        target = q * total
        cum = np.cumsum(self.counts)
        j = int(np.searchsorted(cum, target, side="left"))
        j = min(j, self.counts.size - 1)
        before = cum[j] - self.counts[j]
        frac = (target - before) / self.counts[j] if self.counts[j] else 0.0
        lo, hi = self.edges()
        return float(np.clip(lo[j] + frac * (hi[j] - lo[j]), self.min, self.max))


class _HistogramObserver(Observer):
    """Keeps an exact min/max and one `_Histogram` per channel."""

    def __init__(self, bins: int, axis: Optional[int], name: str):
        if bins < 16:
            raise QuantError(f"{type(self).__name__}: need at least 16 bins, got {bins}")
        super().__init__(axis, name)
        self.bins = bins
        self._hists: list[_Histogram] = []

    def _update(self, rows):
        if not self._hists:
            self._hists = [_Histogram(self.bins) for _ in range(rows.shape[0])]
        for h, r in zip(self._hists, rows):
            h.add(r)

    def _range(self):
        pairs = [self._channel_range(h) for h in self._hists]
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    def _channel_range(self, h: _Histogram) -> tuple[float, float]:
        raise NotImplementedError


class PercentileObserver(_HistogramObserver):
    """Clips both tails: the range is the `(100 - percentile)`-th and `percentile`-th percentiles.

    Estimated from the streaming histogram by linear interpolation inside a bin, so the error
    against the exact sample percentile is at most one bin width, `w < 2 * (max - min) /
    (bins - 2)` (about 0.1 % of the range with the default 2048 bins), plus the spacing of
    neighbouring samples. `percentile=100` gives the exact min/max."""

    def __init__(self, percentile: float = 99.99, bins: int = 2048, axis: Optional[int] = None,
                 name: str = "tensor"):
        if not 50.0 < percentile <= 100.0:
            raise QuantError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(bins, axis, name)
        self.percentile = percentile

    def _channel_range(self, h):
        q = self.percentile / 100.0
        if q == 1.0:
            return h.min, h.max
        return h.quantile(1.0 - q), h.quantile(q)


# --------------------------------------------------------------------------- MSE

def _sawtooth_integral(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Integral from 0 to x of (t - s*round(t/s))**2 dt (rounding error on an unclipped grid)."""
    v = x + s / 2
    n = np.floor(v / s)
    r = v - n * s - s / 2  # in [-s/2, s/2)
    return n * s ** 3 / 12 + (r ** 3 + s ** 3 / 8) / 3 - s ** 3 / 24


def quantization_mse_integral(x: np.ndarray, scale: np.ndarray, lo_q: np.ndarray,
                              hi_q: np.ndarray) -> np.ndarray:
    """Integral from 0 to x of the squared quantization error of a grid of step `scale` through 0,
    clipped to the representable reals [lo_q, hi_q] (lo_q <= 0 <= hi_q, multiples of scale)."""
    xc = np.clip(x, lo_q, hi_q)
    inner = _sawtooth_integral(xc, scale)
    above = np.where(x > hi_q, (np.maximum(x - hi_q, 0)) ** 3 / 3, 0.0)
    below = np.where(x < lo_q, (np.maximum(lo_q - x, 0)) ** 3 / 3, 0.0)
    return inner + above - below


class MSEObserver(_HistogramObserver):
    """Searches clip ranges `alpha * [min(lo, 0), max(hi, 0)]`, alpha = 1/n .. n/n, for the one
    minimising the expected squared quantization error under `choose_qparams(bits, signed,
    symmetric, pow2)`. The error is integrated exactly over each histogram bin assuming the
    data are uniform inside a bin (rounding noise and clipping error both), so it does not
    depend on the bin grid being finer than the quantization grid. Ties keep the wider range."""

    def __init__(self, bits: int = 8, signed: bool = True, symmetric: bool = False,
                 pow2: bool = False, candidates: int = 100, bins: int = 2048,
                 axis: Optional[int] = None, name: str = "tensor"):
        super().__init__(bins, axis, name)
        if candidates < 1:
            raise QuantError(f"MSEObserver needs at least one candidate, got {candidates}")
        choose_qparams(0.0, 1.0, bits, signed, symmetric, pow2)  # validates the settings now
        self.bits, self.signed, self.symmetric, self.pow2 = bits, signed, symmetric, pow2
        self.candidates = candidates

    def errors(self, h: _Histogram) -> tuple[np.ndarray, np.ndarray]:
        """(alphas, expected total squared error for each) of one channel's histogram."""
        alphas = np.arange(1, self.candidates + 1) / self.candidates
        lo = alphas * min(h.min, 0.0)
        hi = alphas * max(h.max, 0.0)
        scale, zp = choose_qparams(lo, hi, self.bits, self.signed, self.symmetric, self.pow2)
        qmin, qmax = ((-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1) if self.signed
                      else (0, (1 << self.bits) - 1))
        lo_q, hi_q = (qmin - zp) * scale, (qmax - zp) * scale
        a, b = h.edges()
        c = h.counts.astype(np.float64)
        col = (slice(None), None)  # candidates down, bins across
        integ = (quantization_mse_integral(b[None, :], scale[col], lo_q[col], hi_q[col])
                 - quantization_mse_integral(a[None, :], scale[col], lo_q[col], hi_q[col]))
        width = (b - a)[None, :]
        # A zero-width bin (all data equal) is a point mass: use the squared error at that point.
        point = np.clip(np.rint(a[None, :] / scale[col]) * scale[col], lo_q[col], hi_q[col])
        per_bin = np.where(width > 0, integ / np.where(width > 0, width, 1.0),
                           (a[None, :] - point) ** 2)
        return alphas, (per_bin * c[None, :]).sum(axis=1)

    def _channel_range(self, h):
        alphas, err = self.errors(h)
        best = len(alphas) - 1 - int(np.argmin(err[::-1]))  # last minimum: prefer less clipping
        return alphas[best] * min(h.min, 0.0), alphas[best] * max(h.max, 0.0)


# --------------------------------------------------------------------------- entropy (KL)

def kl_divergences(hist: ArrayLike, quant_bins: int) -> np.ndarray:
    """KL(P || Q) for each candidate threshold bin count i = quant_bins .. len(hist) (TensorRT
    entropy calibration). P is hist[:i] with the mass beyond folded into its last bin; Q merges
    hist[:i] (without that outlier mass) into `quant_bins` groups of i // quant_bins bins (the
    last group takes the remainder) and spreads each group's mass evenly over the bins where P is
    non-zero. Bins where Q is 0 but P is not count with Q = 1e-12 of the mass (a large penalty)."""
    h = np.asarray(hist, dtype=np.float64)
    out = np.empty(max(h.size - quant_bins + 1, 0))
    tail = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])  # tail[i] = sum(h[i:])
    for n, i in enumerate(range(quant_bins, h.size + 1)):
        sliced = h[:i]
        p = sliced.copy()
        p[-1] += tail[i]
        group = np.minimum(np.arange(i) // (i // quant_bins), quant_bins - 1)
        nonzero = p > 0
        mass = np.bincount(group, weights=sliced, minlength=quant_bins)
        support = np.bincount(group, weights=nonzero, minlength=quant_bins)
        q = np.where(nonzero, mass[group] / np.maximum(support[group], 1), 0.0)
        pn, qn = p[nonzero] / p.sum(), q[nonzero] / q.sum()
        out[n] = float(np.sum(pn * np.log(pn / np.maximum(qn, 1e-12))))
    return out


class EntropyObserver(_HistogramObserver):
    """Clip threshold T on |x| minimising the KL divergence between the histogram of |x| and its
    `2**(bits-1)`-level (signed) or `2**bits`-level (unsigned) quantization (TensorRT's entropy
    calibration). The range is `(max(min, -T), min(max, T))`. Bins are the streaming histogram's
    folded around 0 (exact: its grid is aligned at 0); T is the upper edge of the chosen bin.
    As in TensorRT, the smallest threshold searched is `quant_bins` bins, about
    `quant_bins / bins` of the data's span, so an outlier far beyond that (>~16x the dense range
    with 4096 bins and 8 bits) cannot be clipped away; pair with a percentile observer then."""

    def __init__(self, bits: int = 8, signed: bool = True, bins: int = 4096,
                 axis: Optional[int] = None, name: str = "tensor"):
        super().__init__(bins, axis, name)
        if not 2 <= bits <= 16:
            raise QuantError(f"EntropyObserver: bit width {bits} not in 2..16")
        self.quant_bins = 1 << (bits - 1) if signed else 1 << bits

    @staticmethod
    def abs_histogram(h: _Histogram) -> np.ndarray:
        """Counts of |x| in bins [k*w, (k+1)*w), k = 0, 1, ...: bin -k-1 folds onto bin k."""
        k = h.first + np.arange(h.counts.size)
        folded = np.where(k >= 0, k, -k - 1)
        return np.bincount(folded, weights=h.counts).astype(np.int64)

    def _channel_range(self, h):
        ah = self.abs_histogram(h)
        amax = max(-h.min, h.max)
        if ah.size <= self.quant_bins:  # fewer bins than levels: nothing to gain by clipping
            return h.min, h.max
        div = np.asarray(kl_divergences(ah, self.quant_bins), dtype=np.float64)
        # Data that do not straddle zero (e.g. token counts in [9, 21]) must not be clipped below
        # their smallest magnitude: that threshold would leave an empty range.
        min_abs = 0.0 if h.min <= 0.0 <= h.max else min(abs(h.min), abs(h.max))
        thresholds = (self.quant_bins + np.arange(div.size)) * h.width
        div = np.where(thresholds >= min_abs, div, np.inf)
        if not np.isfinite(div).any():
            return h.min, h.max
        i = self.quant_bins + int(np.argmin(div))
        t = min(i * h.width, amax)
        return max(h.min, -t), min(h.max, t)
