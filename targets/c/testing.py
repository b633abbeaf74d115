"""Random integer graphs for testing backends against the integer interpreter.

`IntGraphBuilder` writes integer-op graphs directly (no float model, no lowering), with random
weights, zero points and requantization constants chosen so values use their range without
saturating everywhere. `random_graph(seed)` composes the builder's ops into one network whose
structure, dtypes, rounding modes and attributes all vary with the seed.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from qcompile.ir.graph import Graph, Value
from qcompile.ir.types import QuantParams, TensorType, int_bits, int_range, is_signed

ROUNDINGS = ("gemmlowp_double", "single_half_up", "single_half_away", "shift_only")


class IntGraphBuilder:
    def __init__(self, name: str = "rand", seed: int = 0, rounding: Optional[str] = None):
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.rounding = rounding
        # rough standard deviation of each value's codes, so rescalings keep outputs spread
        # over about +-30 codes instead of saturating or collapsing to a few codes
        self.std: dict[str, float] = {}

    # ---- values ---------------------------------------------------------------------------
    def qparams(self, dtype: str, channels: int = 0, axis: Optional[int] = None) -> QuantParams:
        bits, signed = int_bits(dtype), is_signed(dtype)
        lo, hi = int_range(bits, signed)
        zp = int(self.rng.integers(lo // 2, hi // 2 + 1)) if signed else int(self.rng.integers(0, hi // 2))
        n = channels or 1
        scales = tuple(float(s) for s in self.rng.uniform(0.01, 0.1, n))
        if axis is None:
            return QuantParams(scales[:1], (zp,), bits, signed)
        return QuantParams(scales, (0,) * n, bits, signed, axis=axis)

    def input(self, shape, dtype: str = "i8", name: str = "x") -> Value:
        v = self.g.add_input(name, TensorType(tuple(shape), dtype), self.qparams(dtype))
        self.std[v.name] = 0.29 * (1 << int_bits(dtype))  # uniform codes
        return v

    def _std(self, v: Value) -> float:
        return self.std.get(v.name, 30.0)

    def random_codes(self, v: Value) -> np.ndarray:
        lo, hi = int_range(int_bits(v.dtype), is_signed(v.dtype))
        from qcompile.ir.types import numpy_dtype
        return self.rng.integers(lo, hi + 1, v.shape).astype(numpy_dtype(v.dtype))

    def _node(self, op: str, inputs, attrs: dict, quant: Optional[QuantParams], name: str = "",
              std: Optional[float] = None):
        node = self.g.add_node(op, inputs, attrs, name=name or op)
        node.output.quant = quant
        if std is None:
            std = getattr(self, "_pending_std", None) if op in ("qconv2d", "qlinear") else \
                (self._std(inputs[0]) if inputs and inputs[0] is not None else 30.0)
        self.std[node.output.name] = float(std)
        return node.output

    def _rounding(self) -> str:
        return self.rounding or str(self.rng.choice(ROUNDINGS))

    def _multipliers(self, n: int, magnitude: float, rounding: str):
        """(m0s, shifts) scaling values of about `magnitude` to about 30."""
        target = 30.0 / max(magnitude, 1.0)
        m0 = [int(v) for v in self.rng.integers(1 << 30, (1 << 31) - 1, n)]
        base = math.floor(math.log2(target)) + 1
        shifts = [int(base + self.rng.integers(-1, 1)) for _ in range(n)]
        shifts = [max(-31, min(30, s)) for s in shifts]
        if rounding == "shift_only":
            m0 = [0] * n
        return m0, shifts

    # ---- ops ------------------------------------------------------------------------------
    def conv(self, x: Value, o: int, k=3, stride=1, padding=(0, 0, 0, 0), dilation=1, groups=1,
             acc_bits: int = 32, bias: bool = True, weight_zp: bool = False) -> Value:
        c = x.shape[1]
        w = self.rng.integers(-127, 128, (o, c // groups, k, k) if isinstance(k, int)
                              else (o, c // groups, *k))
        wzp = self.rng.integers(-20, 21, o) if weight_zp else np.zeros(o, dtype=np.int64)
        w = np.clip(w, -128 + np.maximum(wzp, 0)[:, None, None, None],
                    127 + np.minimum(wzp, 0)[:, None, None, None])
        wq = QuantParams(tuple(self.rng.uniform(0.001, 0.01, o)), tuple(int(z) for z in wzp), 8,
                         True, axis=0)
        wv = self.g.add_constant("w", w, "i8", wq)
        bv = None
        if bias:
            bv = self.g.add_constant("b", self.rng.integers(-2000, 2000, o), "i32",
                                     QuantParams((1.0,) * o, (0,) * o, 32, True, axis=0))
        kk = (k, k) if isinstance(k, int) else tuple(k)
        st = (stride, stride) if isinstance(stride, int) else tuple(stride)
        dl = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
        acc_q = QuantParams((1.0,) * o, (0,) * o, 32, True, axis=1)
        kdim = (c // groups) * kk[0] * kk[1]
        self._pending_std = math.sqrt(kdim) * self._std(x) * 73.0 + (1155.0 if bias else 0.0)
        return self._node("qconv2d", [x, wv, bv], {"stride": st, "padding": tuple(padding),
                                                   "dilation": dl, "groups": groups,
                                                   "acc_bits": acc_bits}, acc_q, "conv")

    def linear(self, x: Value, o: int, acc_bits: int = 32, bias: bool = True) -> Value:
        k = x.shape[-1]
        wv = self.g.add_constant("fc.w", self.rng.integers(-127, 128, (o, k)), "i8",
                                 QuantParams(tuple(self.rng.uniform(0.001, 0.01, o)), (0,) * o,
                                             8, True, axis=0))
        bv = self.g.add_constant("fc.b", self.rng.integers(-2000, 2000, o), "i32",
                                 QuantParams((1.0,) * o, (0,) * o, 32, True, axis=0)) if bias else None
        self._pending_std = math.sqrt(k) * self._std(x) * 73.0 + (1155.0 if bias else 0.0)
        return self._node("qlinear", [x, wv, bv], {"acc_bits": acc_bits},
                          QuantParams((1.0,) * o, (0,) * o, 32, True, axis=len(x.shape) - 1), "fc")

    def requant(self, acc: Value, dtype: str = "i8", per_channel: bool = True,
                relu: bool = False, axis: int = 1, rounding: Optional[str] = None) -> Value:
        rounding = rounding or self._rounding()
        ch = acc.shape[axis] if per_channel else 1
        m0, sh = self._multipliers(ch, self._std(acc), rounding)
        q = self.qparams(dtype)
        lo, hi = q.qmin, q.qmax
        if relu:
            lo = max(lo, q.zero_point[0])
        return self._node("requantize", [acc], {"multiplier": m0, "shift": sh, "axis": axis,
                                                "rounding": rounding, "clamp_min": lo,
                                                "clamp_max": hi, "dtype": dtype}, q, "rq", 30.0)

    def rescale(self, x: Value, dtype: str = "i8") -> Value:
        """requantize of an 8-bit activation (a zero point on both sides)."""
        rounding = self._rounding()
        m0, sh = self._multipliers(1, self._std(x), rounding)
        q = self.qparams(dtype)
        return self._node("requantize", [x], {"multiplier": m0, "shift": sh, "axis": 1,
                                              "rounding": rounding, "clamp_min": q.qmin,
                                              "clamp_max": q.qmax, "dtype": dtype}, q, "rescale",
                          30.0)

    def add(self, a: Value, b: Value, sub: bool = False, dtype: str = "i8") -> Value:
        rounding = self._rounding()
        q = self.qparams(dtype)
        am, ash = self._multipliers(1, 2.0 ** 20 * 40.0 / 0.5, rounding)
        bm, bsh = self._multipliers(1, 2.0 ** 20 * 40.0 / 0.5, rounding)
        om, osh = self._multipliers(1, 80.0, rounding)
        return self._node("qsub" if sub else "qadd", [a, b], {
            "a_multiplier": am[0] or 1 << 30, "a_shift": ash[0], "b_multiplier": bm[0] or 1 << 30,
            "b_shift": bsh[0], "out_multiplier": om[0] or 1 << 30, "out_shift": osh[0],
            "left_shift": 20, "rounding": rounding, "clamp_min": q.qmin, "clamp_max": q.qmax,
            "dtype": dtype}, q, "add")

    def mul(self, a: Value, b: Value, dtype: str = "i8") -> Value:
        rounding = self._rounding()
        q = self.qparams(dtype)
        m, s = self._multipliers(1, 80.0 * 80.0, rounding)
        return self._node("qmul", [a, b], {"multiplier": m[0] or 1 << 30, "shift": s[0],
                                           "rounding": rounding, "clamp_min": q.qmin,
                                           "clamp_max": q.qmax, "dtype": dtype}, q, "mul")

    def prelu(self, x: Value, dtype: str = "i8") -> Value:
        rounding = self._rounding()
        c = x.shape[1]
        slope = self.g.add_constant("slope", self.rng.integers(-30, 100, c), "i8",
                                    QuantParams(tuple([0.01] * c), (0,) * c, 8, True, axis=0))
        q = self.qparams(dtype)
        pm, ps = self._multipliers(1, 80.0, rounding)
        nm, ns = self._multipliers(c, 80.0 * 60, rounding)
        return self._node("qprelu", [x, slope], {
            "pos_multiplier": pm[0] or 1 << 30, "pos_shift": ps[0],
            "neg_multiplier": [m or 1 << 30 for m in nm], "neg_shift": ns, "axis": 1,
            "rounding": rounding, "clamp_min": q.qmin, "clamp_max": q.qmax, "dtype": dtype},
            q, "prelu")

    def lut(self, x: Value, dtype: str = "i8") -> Value:
        lo, hi = int_range(int_bits(dtype), is_signed(dtype))
        n = 1 << int_bits(x.dtype)
        table = [int(v) for v in self.rng.integers(lo, hi + 1, n)]
        return self._node("lut", [x], {"table": table, "dtype": dtype}, self.qparams(dtype), "lut")

    def max_pool(self, x: Value, k=2, stride=(), padding=(0, 0, 0, 0), ceil_mode=False,
                 dilation=(1, 1)) -> Value:
        kk = (k, k) if isinstance(k, int) else tuple(k)
        return self._node("max_pool2d", [x], {"kernel": kk, "stride": tuple(stride),
                                               "padding": tuple(padding), "dilation": tuple(dilation),
                                               "ceil_mode": ceil_mode}, x.quant, "maxpool")

    def avg_pool(self, x: Value, k=2, stride=(), padding=(0, 0, 0, 0), ceil_mode=False,
                 count_include_pad=True, clamp: Optional[tuple] = None) -> Value:
        kk = (k, k) if isinstance(k, int) else tuple(k)
        attrs = {"kernel": kk, "stride": tuple(stride), "padding": tuple(padding),
                 "ceil_mode": ceil_mode, "count_include_pad": count_include_pad}
        if clamp is not None:  # a fused relu/relu6 (lower-integer folds it into the pool)
            attrs["clamp_min"], attrs["clamp_max"] = clamp
        return self._node("qavg_pool2d", [x], attrs, x.quant, "avgpool")

    def op(self, op: str, inputs, **attrs) -> Value:
        return self._node(op, inputs, attrs, inputs[0].quant, op)

    def output(self, *values: Value) -> Graph:
        self.g.outputs = list(values)
        return self.g


def random_graph(seed: int) -> Graph:
    """A small CNN of integer ops whose structure and constants vary with `seed`."""
    rng = np.random.default_rng(seed + 1000)
    b = IntGraphBuilder(f"rand{seed}", seed)
    act = str(rng.choice(["i8", "u8"]))
    c_in = int(rng.integers(1, 5))
    h = int(rng.integers(6, 13))
    x = b.input((1, c_in, h, h + int(rng.integers(0, 3))), act)
    c1 = int(rng.integers(3, 12))
    pad = tuple(int(p) for p in rng.integers(0, 2, 4))
    acc_bits = int(rng.choice([32, 32, 20]))
    y = b.requant(b.conv(x, c1, k=3, stride=int(rng.integers(1, 3)), padding=pad,
                         acc_bits=acc_bits, weight_zp=bool(rng.integers(0, 2))),
                  dtype=str(rng.choice(["i8", "u8"])), relu=bool(rng.integers(0, 2)),
                  per_channel=bool(rng.integers(0, 2)))
    if rng.integers(0, 2):  # depthwise 3x3 (channel multiplier 1 or 2), maybe dilated
        mult = int(rng.integers(1, 3))
        y = b.requant(b.conv(y, c1 * mult, k=3, padding=(1, 1, 1, 1), groups=c1,
                             dilation=int(rng.integers(1, 3)) if y.shape[2] > 5 else 1),
                      dtype="i8")
        c1 *= mult
    if rng.integers(0, 2):
        y = b.max_pool(y, k=2, ceil_mode=bool(rng.integers(0, 2)))
    if rng.integers(0, 2):  # residual: 1x1 conv branch added back
        z = b.requant(b.conv(y, c1, k=1, bias=bool(rng.integers(0, 2))), dtype="i8")
        y = b.add(y, z, sub=bool(rng.integers(0, 2)))
    if rng.integers(0, 2):
        y = b.lut(y, dtype=str(rng.choice(["i8", "u8"])))
    if rng.integers(0, 2):
        y = b.prelu(y)
    y = b.avg_pool(y, k=(y.shape[2], y.shape[3]))
    y = b.op("flatten", [y], axis=1)
    logits = b.requant(b.linear(y, int(rng.integers(2, 11))), dtype="i8", axis=1,
                       per_channel=bool(rng.integers(0, 2)))
    return b.output(logits)


def boundary_arrays(graph: Graph, inputs, prog) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run `graph` in the integer interpreter on `inputs` (float or integer, as the graph takes
    them) and return the integer tensors at the C program's boundary: what model_run reads
    (the outputs of the input quantize nodes) and what it must write (the inputs of the output
    dequantize nodes)."""
    from qcompile.interp import Interpreter
    interp = Interpreter(graph, "int", keep_all=True)
    outs = interp.run(inputs)
    env = dict(interp.values)
    for v, a in zip(graph.inputs, inputs if isinstance(inputs, (list, tuple)) else [inputs]):
        env[v.name] = np.asarray(a)
    for v, a in zip(graph.outputs, outs):
        env.setdefault(v.name, a)
    ins = [np.asarray(env[p.value.name]) for p in prog.inputs]
    res = [np.asarray(env[p.value.name]) for p in prog.outputs]
    return ins, res


# ---------------------------------------------------------------------------------- real models

_REAL = {}


def lowered_model(name: str, target_name: str = "cortex-m4"):
    """(integer graph, float test inputs) of a zoo model run through the target's default
    pipeline (RNet with `quantize{transformer=true}`, so its softmax becomes qsoftmax).

    Needs the repository's examples/ (zoo.py and its weights) and torch; raises ImportError or
    FileNotFoundError otherwise. Cached per process: lowering takes seconds."""
    key = (name, target_name)
    if key in _REAL:
        g, x = _REAL[key]
        return g.copy(), x
    import importlib
    import sys
    from pathlib import Path

    import torch

    from qcompile.frontend.torch_import import from_torch
    from qcompile.passmanager import PassContext, run_pipeline
    from qcompile.targets import get_target

    examples = Path(__file__).resolve().parents[2] / "examples"
    if not (examples / "zoo.py").exists():
        raise FileNotFoundError(f"{examples / 'zoo.py'} not found (a source checkout is needed)")
    if str(examples) not in sys.path:
        sys.path.insert(0, str(examples))
    zoo = importlib.import_module("zoo")
    if name == "digits":
        x_tr, x_te, _, _ = zoo.digits_data()
        model = zoo.digits_cnn()
    elif name == "mnist":
        x_tr, x_te, _, _ = zoo.mnist_data()
        model = zoo.mnist_cnn()
    elif name == "rnet":
        model = zoo.mtcnn_rnet()
        x_te, _ = zoo.lfw_face_data(24)
        x_tr = x_te[np.random.default_rng(0).permutation(len(x_te))[:100]]
    else:
        raise ValueError(f"unknown model {name!r}: digits, mnist or rnet")
    target = get_target(target_name)
    g = from_torch(model, (torch.from_numpy(x_te[:2]),), dynamic_batch=True)
    g.name = f"{name}_{'cnn' if name != 'rnet' else 'mtcnn'}"
    pipeline = target.default_pipeline
    if name == "rnet":
        pipeline = pipeline.replace("quantize,", "quantize{transformer=true},")
    calib = zoo.calibration_batches(x_tr, n=min(256, len(x_tr)))
    run_pipeline(g, pipeline, PassContext(target=target, calibration_data=calib))
    _REAL[key] = (g, x_te[:16].copy())
    return g.copy(), x_te[:16].copy()
