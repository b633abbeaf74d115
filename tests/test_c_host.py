"""The C backend built for the host CPU (`targets/c/host.py`): a shared library called with
ctypes, float in and float out, bit-exact with the integer interpreter at any batch."""
from __future__ import annotations

import gc

import numpy as np
import pytest

import qcompile
from qcompile.ir.graph import Graph
from qcompile.ir.types import QuantParams, TensorType
from qcompile.targets.c import CBackendError, toolchain as tc
from qcompile.targets.c.host import HostInputError, build_host
from qcompile.targets.c.testing import IntGraphBuilder, random_graph

needs_gcc = pytest.mark.skipif(not tc.have_host_cc(), reason="no host C compiler (gcc)")


def float_cnn(rounding: str = "half_even", seed: int = 0, batch=None) -> Graph:
    """quantize -> conv -> requantize -> linear -> requantize -> dequantize, batch `batch`
    (None: dynamic); the input quantize rounds with `rounding`."""
    b = IntGraphBuilder(f"float_cnn_{rounding}", seed)
    x = b.g.add_input("x", TensorType((batch, 2, 7, 6), "f32"))
    q = b.g.add_node("quantize", [x], {"rounding": rounding, "dtype": "i8"}, name="q")
    q.output.quant = QuantParams((0.05,), (-3,), 8, True)
    y = b.requant(b.conv(q.output, 4, k=3, padding=(1, 1, 1, 1)), relu=True)
    y = b.op("flatten", [y], axis=1)
    y = b.requant(b.linear(y, 5), axis=1)
    d = b.g.add_node("dequantize", [y], name="dq")
    return b.output(d.output)


def assert_same(got, ref):
    assert len(got) == len(ref)
    for i, (a, r) in enumerate(zip(got, ref)):
        assert a.dtype == r.dtype and a.shape == r.shape, (i, a.dtype, a.shape, r.dtype, r.shape)
        bad = np.argwhere(a != r)
        assert bad.size == 0, f"output {i} differs at {len(bad)} places, first {bad[0]}"


# ---- small graphs (fast) -------------------------------------------------------------------------

@needs_gcc
@pytest.mark.parametrize("rounding", ["half_even", "half_away"])
def test_float_graph_is_bit_exact_at_any_batch(rounding):
    g = float_cnn(rounding)
    model = build_host(g)
    rng = np.random.default_rng(1)
    for batch in (1, 8, 3):
        x = rng.normal(0, 3, (batch, 2, 7, 6)).astype(np.float32)
        # exact ties of x / scale, where the two roundings differ, and values that saturate
        x.reshape(-1)[:6] = np.float32(0.05) * np.float32([0.5, 1.5, -2.5, 2.5, 1e4, -1e4])
        got = model(x)
        assert_same(got, qcompile.run(g, x, mode="int"))
        assert got[0].dtype == np.float32 and got[0].shape == (batch, 5)


@needs_gcc
def test_float64_input_is_converted_as_the_interpreter_does(tmp_path):
    g = float_cnn()
    x = np.random.default_rng(2).normal(0, 3, (4, 2, 7, 6))
    model = build_host(g, tmp_path)
    assert_same(model(x), qcompile.run(g, x, mode="int"))
    assert_same(model({"x": x}), qcompile.run(g, x, mode="int"))


@needs_gcc
@pytest.mark.parametrize("seed", range(2))
def test_integer_graph_runs_a_batch_of_calls(seed):
    """An integer input passes as is; a static batch of 1 takes any batch, one call a sample."""
    g = random_graph(seed)
    model = build_host(g)
    assert model.call_batch == 1
    xs = np.concatenate([IntGraphBuilder(seed=seed + s).random_codes(g.inputs[0])
                         for s in range(5)])
    got = model(xs)
    ref = [np.concatenate(r) for r in
           zip(*[qcompile.run(g, xs[i:i + 1], mode="int") for i in range(len(xs))])]
    assert_same(got, ref)


@needs_gcc
def test_quantize_run_dequantize_compose_to_call():
    g = float_cnn()
    model = build_host(g)
    x = np.random.default_rng(3).normal(0, 3, (2, 2, 7, 6)).astype(np.float32)
    codes = model.quantize_inputs(x)
    assert codes[0].dtype == np.int8
    ints = model.run_codes(*codes)
    assert ints[0].dtype == np.int8 and ints[0].shape == (2, 5)
    assert_same(model.dequantize_outputs(ints), model(x))


@needs_gcc
def test_out_dir_keeps_sources_and_library(tmp_path):
    model = build_host(float_cnn(), tmp_path, cflags=("-O1",))
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.h", "model.c", "host_entry.c"} <= names
    assert model.shared_object.parent == tmp_path and model.shared_object.exists()
    assert model.cflags[0] == "-O1"


@needs_gcc
def test_temporary_build_folder_goes_with_the_model():
    model = build_host(float_cnn())
    folder = model.source_dir
    assert folder.exists()
    del model
    gc.collect()
    assert not folder.exists()


# ---- errors ----------------------------------------------------------------------------------

def test_missing_gcc_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(tc.ToolchainError, match="gcc is not on PATH"):
        build_host(float_cnn())


@needs_gcc
def test_float_op_is_refused_naming_the_node():
    g = float_cnn()
    x = g.inputs[0]
    r = g.add_node("relu", [x], name="float_relu")
    g.outputs.append(r.output)
    with pytest.raises(CBackendError, match="float_relu"):
        build_host(g)


@needs_gcc
def test_bad_inputs_are_clear_errors():
    model = build_host(float_cnn())
    with pytest.raises(HostInputError, match=r"input %x: expected shape \(N, 2, 7, 6\)"):
        model(np.zeros((1, 2, 7, 7), np.float32))
    with pytest.raises(HostInputError, match="takes 1 inputs"):
        model(np.zeros((1, 2, 7, 6), np.float32), np.zeros((1, 2, 7, 6), np.float32))
    with pytest.raises(HostInputError, match="missing"):
        model({"y": np.zeros((1, 2, 7, 6), np.float32)})
    with pytest.raises(HostInputError, match="expected int8 codes"):
        model.run_codes(np.zeros((1, 2, 7, 6), np.int16))


@needs_gcc
def test_static_batch_must_divide_the_batch():
    model = build_host(float_cnn(batch=2))
    assert model.call_batch == 2
    with pytest.raises(HostInputError, match="2 samples per call"):
        model(np.zeros((3, 2, 7, 6), np.float32))
    x = np.random.default_rng(4).normal(0, 3, (4, 2, 7, 6)).astype(np.float32)
    ref = [np.concatenate(r) for r in zip(*[qcompile.run(float_cnn(batch=2), x[i:i + 2],
                                                         mode="int") for i in (0, 2)])]
    assert_same(model(x), ref)


# ---- real models (slow: lowering them takes seconds) ---------------------------------------------

from test_c_backend import _real  # noqa: E402  (the real models, or a skip)


@needs_gcc
@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits", "rnet"])
def test_real_models_are_bit_exact_at_batch_1_and_8(name):
    g, x = _real(name)
    model = build_host(g)
    for batch in (1, 8):
        xb = np.ascontiguousarray(x[:batch])
        got = model(xb)
        assert_same(got, qcompile.run(g, xb, mode="int"))
        assert all(o.shape[0] == batch for o in got)
    if name == "rnet":
        assert len(got) == 2
