"""intmath against TFLite's reference kernels (LiteRT, BUILTIN_REF resolver), bit for bit.

Models are built with `conformance.tflite_builder` (the flatbuffer schema shipped with
ai-edge-litert, so TensorFlow is not needed) and run on the reference kernels only: the default
resolver's XNNPACK delegate is not bit-exact with TFLite's own reference arithmetic. The op-level
conformance of qcompile's integer ops is `conformance/test_tflite_int8.py`.
"""
from __future__ import annotations

import numpy as np
import pytest

from qcompile.quant import (REQUANT_ROUNDINGS, quantize_float, quantize_multiplier, requantize,
                            round_half_away, saturate)

pytest.importorskip("ai_edge_litert.interpreter")

from conformance.tflite_builder import (Tensor, build_model, conv2d_options,  # noqa: E402
                                        fully_connected_options, run_reference)


# --------------------------------------------------------------------------- model building

def _run_ref(model: bytes, x: np.ndarray) -> np.ndarray:
    return run_reference(model, [x])[0]


def _layer_tensors(x_shape, w, bias, xs, xz, ws, ys, yz, out_shape):
    bias_scale = np.float32(xs) * np.asarray(ws, np.float32)  # TFLite checks bias scale = xs * ws
    return ([Tensor("x", x_shape, "int8", xs, xz), Tensor("w", w.shape, "int8", ws, 0, 0, w),
             Tensor("b", (w.shape[0],), "int32", bias_scale, 0, 0, bias)],
            [Tensor("y", out_shape, "int8", ys, yz)])


def _conv_model(x_shape, w, bias, xs, xz, ws, ys, yz):
    kh, kw = w.shape[1:3]
    out_shape = (1, x_shape[1] - kh + 1, x_shape[2] - kw + 1, w.shape[0])
    return build_model("CONV_2D", *_layer_tensors(x_shape, w, bias, xs, xz, ws, ys, yz, out_shape),
                       conv2d_options())


def _fc_model(x_shape, w, bias, xs, xz, ws, ys, yz):
    return build_model("FULLY_CONNECTED",
                       *_layer_tensors(x_shape, w, bias, xs, xz, ws, ys, yz, (x_shape[0], w.shape[0])),
                       fully_connected_options())


def _effective_multiplier(xs, ws, ys):
    """TFLite: double(input_scale) * double(filter_scale) / double(output_scale), float32 params."""
    return (np.float64(np.float32(xs)) * np.asarray(ws, np.float32).astype(np.float64)
            / np.float64(np.float32(ys)))


def _random_scales(rng, cout, per_channel):
    xs = float(np.float32(10.0 ** rng.uniform(-3, 0)))
    ws = (10.0 ** rng.uniform(-4, -1, cout if per_channel else 1)).astype(np.float32)
    # Output scales spread the multiplier over ~1e-6 .. ~2, so both right and left shifts occur.
    ys = float(np.float32(xs * float(ws.max()) * 10.0 ** rng.uniform(-0.3, 5.5)))
    return xs, np.broadcast_to(ws, (cout,)).copy(), ys


def _random_conv_case(rng):
    k = int(rng.choice([1, 3]))
    h, w_, cin, cout = int(rng.integers(k, 7)), int(rng.integers(k, 7)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    x = rng.integers(-128, 128, (1, h, w_, cin), dtype=np.int8)
    w = rng.integers(-127, 128, (cout, k, k, cin), dtype=np.int8)
    bias = rng.integers(-3000, 3000, (cout,), dtype=np.int32)
    xs, ws, ys = _random_scales(rng, cout, per_channel=bool(rng.integers(0, 2)))
    return x, w, bias, xs, int(rng.integers(-128, 128)), ws, ys, int(rng.integers(-128, 128))


def _conv_acc(x, w, bias, xz):
    kh, kw = w.shape[1:3]
    patches = np.lib.stride_tricks.sliding_window_view(x[0].astype(np.int64) - xz, (kh, kw), axis=(0, 1))
    # patches: (H', W', Cin, kh, kw); w: (Cout, kh, kw, Cin)
    return np.einsum("yxcij,oijc->yxo", patches, w.astype(np.int64))[None] + bias


def _requantized(acc, xs, ws, ys, yz, rounding):
    enc = [quantize_multiplier(float(m)) for m in _effective_multiplier(xs, ws, ys)]
    m0, shift = np.array([e[0] for e in enc]), np.array([e[1] for e in enc])
    return saturate(requantize(acc, m0, shift, rounding) + yz, 8, True), shift


def test_conv2d_per_channel_matches_tflite_reference_bit_exactly():
    """CONV_2D int8 (per-channel multipliers; TFLite's ConvPerChannel uses the Q31 path)."""
    rng = np.random.default_rng(1)
    mismatch = {r: 0 for r in REQUANT_ROUNDINGS}
    outputs, shifts = 0, set()
    for _ in range(200):
        x, w, bias, xs, xz, ws, ys, yz = _random_conv_case(rng)
        got = _run_ref(_conv_model(x.shape, w, bias, xs, xz, ws, ys, yz), x).astype(np.int64)
        acc = _conv_acc(x, w, bias, xz)
        for r in REQUANT_ROUNDINGS:
            ours, shift = _requantized(acc, xs, ws, ys, yz, r)
            mismatch[r] += int((ours != got).sum())
        shifts.update(int(s) for s in shift)
        outputs += got.size
    print(f"{outputs} outputs, mismatches per rounding: {mismatch}")
    assert mismatch["gemmlowp_double"] == 0, mismatch
    assert outputs > 5000
    assert min(shifts) < -10 and max(shifts) >= 1  # right shifts and left shifts both exercised
    # The sweep discriminates between the roundings: single rounding is off by 1 LSB somewhere.
    assert mismatch["single_half_up"] > 0 and mismatch["single_half_away"] > 0


def test_conv2d_double_rounding_tie_cases():
    """Multipliers 2**-k hit exact ties, where the three requantization roundings all differ."""
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, 16, 16, 1)
    w, bias = np.ones((1, 1, 1, 1), np.int8), np.zeros(1, np.int32)
    for ws in (0.5, 0.25, 0.125, 1.5, 3.0):
        got = _run_ref(_conv_model(x.shape, w, bias, 1.0, 0, np.float32([ws]), 1.0, 0), x).astype(np.int64)
        acc = _conv_acc(x, w, bias, 0)
        ours, _ = _requantized(acc, 1.0, np.float32([ws]), 1.0, 0, "gemmlowp_double")
        assert np.array_equal(got, ours), ws
        if ws < 1:  # ties occur: some single-rounding mode must disagree with TFLite here
            others = [_requantized(acc, 1.0, np.float32([ws]), 1.0, 0, r)[0]
                      for r in ("single_half_up", "single_half_away")]
            assert any((o != got).any() for o in others), ws


def test_fully_connected_reference_rescales_in_double():
    """Pins a fact backends must know: this LiteRT's reference FULLY_CONNECTED (int8, per-tensor)
    does not use the Q31 multiplier; it computes round_half_away(acc * double(M)). The Q31
    double-rounding result differs from it on some outputs."""
    rng = np.random.default_rng(3)
    q31_mismatch = 0
    for _ in range(60):
        x = rng.integers(-128, 128, (int(rng.integers(1, 5)), int(rng.integers(1, 65))), dtype=np.int8)
        w = rng.integers(-127, 128, (int(rng.integers(1, 17)), x.shape[1]), dtype=np.int8)
        bias = rng.integers(-3000, 3000, (w.shape[0],), dtype=np.int32)
        xs, ws, ys = _random_scales(rng, 1, per_channel=False)
        xz, yz = int(rng.integers(-128, 128)), int(rng.integers(-128, 128))
        got = _run_ref(_fc_model(x.shape, w, bias, xs, xz, float(ws[0]), ys, yz), x).astype(np.int64)
        acc = (x.astype(np.int64) - xz) @ w.astype(np.int64).T + bias
        m = float(_effective_multiplier(xs, ws, ys)[0])
        expected = saturate(round_half_away(acc * m).astype(np.int64) + yz, 8, True)
        assert np.array_equal(got, expected)
        q31, _ = _requantized(acc, xs, ws[:1], ys, yz, "gemmlowp_double")
        q31_mismatch += int((q31 != got).sum())
    assert q31_mismatch > 0


# --------------------------------------------------------------------------- QUANTIZE

def _quantize_model(shape, scale, zp):
    return build_model("QUANTIZE", [Tensor("x", shape, "float32")], [Tensor("y", shape, "int8", scale, zp)])


@pytest.mark.parametrize("scale,zp", [(0.5, 0), (0.25, -3), (2.0 ** -7, 10), (0.1, 5), (0.0235, -100),
                                      (1.7, 0)])
def test_quantize_matches_tflite_half_away_on_ties(scale, zp):
    rng = np.random.default_rng(int(scale * 1e6) + zp + 1000)
    k = np.arange(-140, 140)
    ties = ((k + 0.5) * np.float32(scale)).astype(np.float32)           # ties (exact for pow2 scales)
    near = ties * (1 + rng.uniform(-1e-7, 1e-7, ties.size)).astype(np.float32)  # just around them
    wide = rng.uniform(-300 * scale, 300 * scale, 400).astype(np.float32)     # incl. saturation
    x = np.concatenate([ties, near, wide, np.float32([0.0, -0.0])])
    got = _run_ref(_quantize_model(x.shape, scale, zp), x).astype(np.int64)
    ours = quantize_float(x, np.float32(scale), zp, -128, 127, "half_away")
    assert np.array_equal(got, ours), f"max diff {np.abs(got - ours).max()}"
    # Ties really occur here, and ties-to-even would have disagreed on them.
    v = x / np.float32(scale)
    exact_ties = (v - np.floor(v) == 0.5) & (np.abs(v) < 120)
    assert exact_ties.sum() > 50
    even = quantize_float(x, np.float32(scale), zp, -128, 127, "half_even")
    assert (even != got).any()
