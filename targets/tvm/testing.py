"""Test support for the TVM backend's exact arithmetic (arith.py, the isqrt stages): compile
a small kernel over 1-D integer inputs for this CPU, once per key, and run it on Python
lists, so a helper can be compared with Python integers at its rounding boundaries. A
`list_kernel` is a TE pipeline of scalar expressions; a `lanes_kernel` builds whole vectors,
as the pixel-lanes MAC kernels' epilogues do."""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import numpy as np

import tvm
from tvm import te
from tvm import tirx as tir

_BUILT: dict = {}


def list_kernel(key: Hashable, stages: Callable, in_dtypes: Sequence[str]
                ) -> Callable[..., np.ndarray]:
    """fn(*lists) -> y: `stages(*placeholders)` builds the output tensor from 1-D placeholders
    of `in_dtypes` (all of length n; with any intermediate stages the real kernel has),
    compiled for this CPU the first time `key` is seen."""
    if key not in _BUILT:
        n = te.var("n")
        ins = [te.placeholder((n,), dt, name=f"in{i}") for i, dt in enumerate(in_dtypes)]
        out = stages(*ins)
        func = te.create_prim_func([*ins, out])
        _BUILT[key] = (tvm.tirx.build(tvm.IRModule({"main": func}), target="llvm"),
                        str(out.dtype))
    lib, out_dtype = _BUILT[key]

    def run(*lists) -> np.ndarray:
        dev = tvm.cpu(0)
        y = tvm.runtime.tensor(np.zeros(len(lists[0]), out_dtype), dev)
        lib["main"](*(tvm.runtime.tensor(np.asarray(v, dt), dev)
                      for v, dt in zip(lists, in_dtypes)), y)
        return y.numpy()
    return run


def lanes_kernel(key: Hashable, body: Callable, lanes: int, in_dtypes: Sequence[str],
                 out_dtype: str) -> Callable[..., np.ndarray]:
    """fn(*lists) -> y for a kernel that computes whole vectors: `body(first, *buffers)`
    gives the `lanes`-wide value stored at out[first:first + lanes] (it loads the input
    buffers itself, as vectors or as one scalar per vector), the way the pixel-lanes MAC
    kernels hand their epilogue a vector. The lists' length must be a multiple of `lanes`;
    one build per (key, length)."""
    def run(*lists) -> np.ndarray:
        n = len(lists[0])
        assert n % lanes == 0, f"{n} values are not whole vectors of {lanes}"
        if (key, n) not in _BUILT:
            def fcompute(ins, outs):
                i = tir.Var("i", "int32")
                first = i * lanes
                store = tir.BufferStore(outs[0], body(first, *ins), [tir.Ramp(first, 1, lanes)])
                return tir.For(i, 0, n // lanes, tir.ForKind.SERIAL, store)
            ins = [te.placeholder((n,), dt, name=f"in{k}") for k, dt in enumerate(in_dtypes)]
            out = te.extern([(n,)], ins, fcompute, dtype=out_dtype, name="out")
            func = te.create_prim_func([*ins, out])
            _BUILT[key, n] = tvm.tirx.build(tvm.IRModule({"main": func}), target="llvm")
        dev = tvm.cpu(0)
        y = tvm.runtime.tensor(np.zeros(n, out_dtype), dev)
        _BUILT[key, n]["main"](*(tvm.runtime.tensor(np.asarray(v, dt), dev)
                                  for v, dt in zip(lists, in_dtypes)), y)
        return y.numpy()
    return run


# ---- one-node integer graphs for the MAC kernels' exactness tests ------------------------------

def quantized_input(b, shape, dtype: str, zp: int):
    """An input of an IntGraphBuilder graph with scale 0.05 and zero point `zp`."""
    from qcompile.ir.types import QuantParams
    x = b.input(shape, dtype)
    bits = 16 if dtype.endswith("16") else 8
    x.quant = QuantParams((0.05,), (zp,), bits, dtype.startswith("i"))
    return x


def random_codes(x, rng, extreme: bool = False) -> np.ndarray:
    """Codes for input `x` (u8, i8 or i16); `extreme`: only its two end codes, the largest
    products a kernel can see."""
    lo, hi = {"u8": (0, 255), "i8": (-128, 127), "i16": (-32768, 32767)}[x.dtype]
    dt = {"u8": np.uint8, "i8": np.int8, "i16": np.int16}[x.dtype]
    if extreme:
        return rng.choice([lo, hi], x.shape).astype(dt)
    return rng.integers(lo, hi + 1, x.shape).astype(dt)


def extreme_weights(g, name_prefix: str = "") -> None:
    """Set every third i8 weight (of the constants named `name_prefix`...) with zero points
    0 to -128 and the next to 127, the ends of i8."""
    for v in g.constants.values():
        if v.name.startswith(name_prefix) and v.dtype == "i8" and v.quant is not None \
                and not any(v.quant.zero_point):
            flat = v.data.reshape(-1)
            flat[::3] = -128
            flat[1::3] = 127
