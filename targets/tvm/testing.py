"""Test support for the TVM backend's exact float64 helpers (arith.py, the isqrt stages):
compile a small TE pipeline over 1-D integer inputs for this CPU, once per key, and run it on
Python lists, so a helper can be compared with Python integers at its rounding boundaries."""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import numpy as np

import tvm
from tvm import te

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
