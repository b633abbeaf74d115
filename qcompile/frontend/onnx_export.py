"""ONNX export: any float or quantized `Graph` as an ONNX model in QDQ form.

A float value that carries `QuantParams` is written the way ONNX quantization tools write it:
activations go through a QuantizeLinear -> DequantizeLinear pair, weights become an integer
initializer followed by a DequantizeLinear (per-tensor or per-axis). onnxruntime, with graph
optimisations off, then computes what the interpreter's `fakequant` mode computes (up to
round-half-to-even ties, which ONNX evaluates in float32 and the interpreter in float64).

Bit widths ONNX has no type for (2..7, 9..15) are stored in the next wider type; activations
are clamped to the narrow range before quantizing so the pair still saturates where the IR does.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Union

import numpy as np

from ..errors import FrontendError
from ..ir.graph import Graph, Node, Value
from ..ir.types import QuantParams, is_float, numpy_dtype

OPSET = 21

_ELEM = {"f32": 1, "f16": 10, "i64": 7, "i32": 6, "i8": 3, "u8": 2, "i16": 5, "u16": 4, "bool": 9}


def _elem(dtype: str) -> int:
    if dtype in _ELEM:
        return _ELEM[dtype]
    np_dt = numpy_dtype(dtype)  # narrow ints live in the next wider ONNX type
    return {np.dtype(np.int8): 3, np.dtype(np.uint8): 2, np.dtype(np.int16): 5,
            np.dtype(np.uint16): 4, np.dtype(np.int32): 6}[np_dt]


def _storage(q: QuantParams) -> np.dtype:
    if q.bits <= 8:
        return np.dtype(np.int8 if q.signed else np.uint8)
    if q.bits <= 16:
        return np.dtype(np.int16 if q.signed else np.uint16)
    return np.dtype(np.int32)


class _Exporter:
    def __init__(self, graph: Graph, opset: int):
        self.g = graph
        self.opset = opset
        self.nodes: list = []
        self.inits: list = []
        self.names: set[str] = set(graph.values)
        self.use: dict[int, str] = {}  # id(Value) -> ONNX tensor name consumers read
        self.unsupported: dict[str, list[str]] = {}

    # ---- naming and constants ------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        name, k = hint, 0
        while name in self.names:
            k += 1
            name = f"{hint}_{k}"
        self.names.add(name)
        return name

    def const(self, hint: str, array) -> str:
        from onnx import numpy_helper
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, hint: str, values) -> str:
        return self.const(hint, np.asarray(list(values), dtype=np.int64))

    def node(self, op_type: str, inputs: list, outputs: list, name: str = "", **attrs) -> None:
        from onnx import helper
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name or outputs[0],
                                           **attrs))

    # ---- quantization --------------------------------------------------------------------
    def _qdq_consts(self, hint: str, q: QuantParams) -> tuple[str, str, dict]:
        st = _storage(q)
        scale = np.asarray(q.scale, dtype=np.float32)
        zp = np.asarray(q.zero_point).astype(st)
        attrs = {}
        if q.axis is not None:
            attrs["axis"] = q.axis
        else:
            scale, zp = scale.reshape(()), zp.reshape(())
        return self.const(hint + "::scale", scale), self.const(hint + "::zero_point", zp), attrs

    def quantized(self, v: Value) -> bool:
        return v.quant is not None and is_float(v.dtype) and (v.quant.bits < 32 or v.is_constant)

    def qdq(self, v: Value, src: str, out: str) -> None:
        """`out` = DequantizeLinear(QuantizeLinear(`src`)) with `v`'s params."""
        q = v.quant
        scale, zp, attrs = self._qdq_consts(v.name, q)
        st = _storage(q)
        if (q.qmin, q.qmax) != (np.iinfo(st).min, np.iinfo(st).max):
            # The storage type saturates wider than the IR's bit width: clamp first.
            rank = v.type.rank
            lo = ((q.qmin - q.zero_point_array(rank)) * q.scale_array(rank)).astype(np.float32)
            hi = ((q.qmax - q.zero_point_array(rank)) * q.scale_array(rank)).astype(np.float32)
            clamped = self.fresh(v.name + "::clamped")
            low = self.fresh(v.name + "::low")
            self.node("Max", [src, self.const(v.name + "::qlo", lo)], [low])
            self.node("Min", [low, self.const(v.name + "::qhi", hi)], [clamped])
            src = clamped
        qname = self.fresh(v.name + "::q")
        self.node("QuantizeLinear", [src, scale, zp], [qname], **attrs)
        self.node("DequantizeLinear", [qname, scale, zp], [out], **attrs)

    def constant(self, v: Value) -> None:
        if v.data is None:
            raise FrontendError(f"constant %{v.name} has no data (a graph parsed from a summary "
                                f"dump); dump with full=True to export it")
        if not self.quantized(v):
            self.use[id(v)] = self.const(v.name, v.data)
            return
        q = v.quant
        rank = v.data.ndim
        ints = np.clip(np.rint(v.data.astype(np.float64) / q.scale_array(rank))
                       + q.zero_point_array(rank), q.qmin, q.qmax).astype(_storage(q))
        stored = self.const(v.name + "::quantized", ints)
        scale, zp, attrs = self._qdq_consts(v.name, q)
        out = self.fresh(v.name + "::dq")
        self.node("DequantizeLinear", [stored, scale, zp], [out], **attrs)
        self.use[id(v)] = out

    # ---- walk ----------------------------------------------------------------------------
    def run(self):
        import onnx
        from onnx import helper

        g = self.g
        inputs = []
        for v in g.inputs:
            inputs.append(_value_info(v, v.name))
            if self.quantized(v):
                out = self.fresh(v.name + "::dq")
                self.qdq(v, v.name, out)
                self.use[id(v)] = out
            else:
                self.use[id(v)] = v.name
        for v in g.constants.values():
            self.constant(v)
        for n in g.nodes:
            self._node(n)
        if self.unsupported:
            lines = [f"graph @{g.name} cannot be exported to ONNX; unsupported ops "
                     f"({', '.join(sorted(self.unsupported))}):"]
            for op, where in sorted(self.unsupported.items()):
                lines += [f"  {op}: {w}" for w in where]
            raise FrontendError("\n".join(lines))
        outputs = []
        for v in g.outputs:
            name = self.use[id(v)]
            if v.producer is None:  # an input or a constant returned as is: give it its own name
                name_out = self.fresh(v.name + "::out")
                self.node("Identity", [name], [name_out])
                name = name_out
            outputs.append(_value_info(v, name))
        model = helper.make_model(
            helper.make_graph(self.nodes, g.name, inputs, outputs, self.inits),
            opset_imports=[helper.make_opsetid("", self.opset)], producer_name="qcompile")
        model.ir_version = min(model.ir_version, 10)  # what current onnxruntime reads
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise FrontendError(f"graph @{g.name}: the exported ONNX model is invalid: {exc}") from exc
        return model

    def _node(self, n: Node) -> None:
        fn = _EXPORT.get(n.op)
        if fn is None:
            self.unsupported.setdefault(n.op, []).append(f"%{n.name}" + (f" at {n.loc}" if n.loc else ""))
            return
        ins = ["" if v is None else self.use.get(id(v), "") for v in n.inputs]
        outs = []
        for v in n.outputs:
            if self.quantized(v) and n.op != "quantize":
                src = self.fresh(v.name + "::float")
                outs.append(src)
            else:
                outs.append(v.name)
            self.use[id(v)] = v.name
        fn(self, n, ins, outs)
        for v, src in zip(n.outputs, outs):
            if src != v.name:
                self.qdq(v, src, v.name)


def _value_info(v: Value, name: str):
    from onnx import helper
    shape = [d if d is not None else ("batch" if i == 0 else f"dim{i}") for i, d in enumerate(v.shape)]
    return helper.make_tensor_value_info(name, _elem(v.dtype), shape)


# ---- per-op export: (exporter, node, input names, output names) ---------------------------------
_EXPORT: dict[str, Callable] = {}


def _e(*ops: str):
    def deco(fn):
        for op in ops:
            _EXPORT[op] = fn
        return fn
    return deco


def _simple(onnx_op: str, **fixed):
    def fn(ex, n, ins, outs):
        ex.node(onnx_op, [i for i in ins], outs, **fixed)
    return fn


for _op, _onnx in (("relu", "Relu"), ("sigmoid", "Sigmoid"), ("tanh", "Tanh"), ("exp", "Exp"),
                   ("sqrt", "Sqrt"), ("neg", "Neg"), ("erf", "Erf"), ("abs", "Abs"),
                   ("hardswish", "HardSwish"), ("add", "Add"), ("sub", "Sub"), ("mul", "Mul"),
                   ("div", "Div"), ("pow", "Pow"), ("maximum", "Max"), ("minimum", "Min"),
                   ("where", "Where"), ("matmul", "MatMul"), ("identity", "Identity"),
                   ("global_avg_pool", "GlobalAveragePool")):
    _EXPORT[_op] = _simple(_onnx)

_EXPORT["hardsigmoid"] = _simple("HardSigmoid", alpha=1.0 / 6.0, beta=0.5)


@_e("rsqrt")
def _rsqrt(ex, n, ins, outs):
    mid = ex.fresh(outs[0] + "::sqrt")
    ex.node("Sqrt", ins, [mid])
    ex.node("Reciprocal", [mid], outs)


@_e("leaky_relu")
def _leaky(ex, n, ins, outs):
    ex.node("LeakyRelu", ins, outs, alpha=n.attrs["alpha"])


@_e("gelu")
def _gelu(ex, n, ins, outs):
    ex.node("Gelu", ins, outs, approximate=n.attrs["approximate"])


@_e("softmax")
def _softmax(ex, n, ins, outs):
    ex.node("Softmax", ins, outs, axis=n.attrs["axis"])


@_e("clip")
def _clip(ex, n, ins, outs):
    lo = ex.const(outs[0] + "::min", np.float32(n.attrs["min"]))
    hi = ex.const(outs[0] + "::max", np.float32(n.attrs["max"]))
    ex.node("Clip", [ins[0], lo, hi], outs)


@_e("prelu")
def _prelu(ex, n, ins, outs):
    x, slope = n.inputs
    trailing = x.type.rank - 1 - n.attrs["axis"] % x.type.rank
    if slope.type.rank == 1 and trailing > 0 and slope.shape[0] != 1:
        shaped = ex.fresh(outs[0] + "::slope")
        ex.node("Reshape", [ins[1], ex.ints(outs[0] + "::slope_shape", [-1] + [1] * trailing)],
                [shaped])
        ins = [ins[0], shaped]
    ex.node("PRelu", ins, outs)


@_e("conv2d")
def _conv(ex, n, ins, outs):
    a = n.attrs
    kernel = list(n.inputs[1].shape[2:])
    ex.node("Conv", ins[:3] if len(ins) > 2 and ins[2] else ins[:2], outs,
            kernel_shape=kernel, strides=list(a["stride"]), pads=list(a["padding"]),
            dilations=list(a["dilation"]), group=a["groups"])


@_e("linear")
def _linear(ex, n, ins, outs):
    x = n.inputs[0]
    has_bias = len(ins) > 2 and ins[2]
    if x.type.rank == 2:
        ex.node("Gemm", ins[:3] if has_bias else ins[:2], outs, transB=1)
        return
    wt = ex.fresh(outs[0] + "::wT")
    ex.node("Transpose", [ins[1]], [wt], perm=[1, 0])
    if not has_bias:
        ex.node("MatMul", [ins[0], wt], outs)
        return
    mm = ex.fresh(outs[0] + "::mm")
    ex.node("MatMul", [ins[0], wt], [mm])
    ex.node("Add", [mm, ins[2]], outs)


@_e("batch_norm")
def _bn(ex, n, ins, outs):
    if n.attrs["axis"] % n.inputs[0].type.rank != 1:
        ex.unsupported.setdefault("batch_norm (axis != 1)", []).append(f"%{n.name}")
        return
    ex.node("BatchNormalization", ins, outs, epsilon=n.attrs["eps"])


@_e("layer_norm")
def _ln(ex, n, ins, outs):
    x = n.inputs[0]
    axis = n.attrs["axis"] % x.type.rank
    ins = list(ins) + [""] * (3 - len(ins))
    if not ins[1]:
        norm_shape = x.shape[axis:]
        if any(d is None for d in norm_shape):
            ex.unsupported.setdefault("layer_norm (dynamic, no gamma)", []).append(f"%{n.name}")
            return
        ins[1] = ex.const(outs[0] + "::gamma", np.ones(norm_shape, np.float32))
    ex.node("LayerNormalization", ins if ins[2] else ins[:2], outs, axis=axis,
            epsilon=n.attrs["eps"])


@_e("concat")
def _concat(ex, n, ins, outs):
    ex.node("Concat", ins, outs, axis=n.attrs["axis"])


@_e("reshape")
def _reshape(ex, n, ins, outs):
    shape = list(n.attrs["shape"])
    extra = {"allowzero": 1} if 0 in shape else {}
    ex.node("Reshape", [ins[0], ex.ints(outs[0] + "::shape", shape)], outs, **extra)


@_e("flatten")
def _flatten(ex, n, ins, outs):
    ex.node("Flatten", ins, outs, axis=n.attrs["axis"])


@_e("transpose")
def _transpose(ex, n, ins, outs):
    ex.node("Transpose", ins, outs, perm=list(n.attrs["perm"]))


@_e("squeeze", "unsqueeze")
def _squeeze(ex, n, ins, outs):
    ex.node("Squeeze" if n.op == "squeeze" else "Unsqueeze",
            [ins[0], ex.ints(outs[0] + "::axes", n.attrs["axes"])], outs)


@_e("expand")
def _expand(ex, n, ins, outs):
    ex.node("Expand", [ins[0], ex.ints(outs[0] + "::shape", n.attrs["shape"])], outs)


@_e("slice")
def _slice(ex, n, ins, outs):
    a = n.attrs
    big = 2 ** 62
    ends = [min(max(e, -big), big) for e in a["ends"]]
    ex.node("Slice", [ins[0], ex.ints(outs[0] + "::starts", a["starts"]),
                      ex.ints(outs[0] + "::ends", ends), ex.ints(outs[0] + "::axes", a["axes"]),
                      ex.ints(outs[0] + "::steps", a["steps"])], outs)


@_e("pad")
def _pad(ex, n, ins, outs):
    a = n.attrs
    extra = [ex.const(outs[0] + "::value", np.asarray(a["value"], numpy_dtype(n.inputs[0].dtype)))] \
        if a["mode"] == "constant" else []
    ex.node("Pad", [ins[0], ex.ints(outs[0] + "::pads", a["pads"])] + extra, outs, mode=a["mode"])


@_e("max_pool2d")
def _max_pool(ex, n, ins, outs):
    a = n.attrs
    ex.node("MaxPool", ins, outs, kernel_shape=list(a["kernel"]),
            strides=list(a["stride"] or a["kernel"]), pads=list(a["padding"]),
            dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]))


@_e("avg_pool2d")
def _avg_pool(ex, n, ins, outs):
    a = n.attrs
    ex.node("AveragePool", ins, outs, kernel_shape=list(a["kernel"]),
            strides=list(a["stride"] or a["kernel"]), pads=list(a["padding"]),
            ceil_mode=int(a["ceil_mode"]), count_include_pad=int(a["count_include_pad"]))


def _reduce(onnx_op: str):
    def fn(ex, n, ins, outs):
        ex.node(onnx_op, [ins[0], ex.ints(outs[0] + "::axes", n.attrs["axes"])], outs,
                keepdims=int(n.attrs["keepdims"]))
    return fn


_EXPORT["mean"] = _reduce("ReduceMean")
_EXPORT["reduce_sum"] = _reduce("ReduceSum")
_EXPORT["reduce_max"] = _reduce("ReduceMax")


@_e("gather")
def _gather(ex, n, ins, outs):
    ex.node("Gather", ins, outs, axis=n.attrs["axis"])


@_e("cast")
def _cast(ex, n, ins, outs):
    ex.node("Cast", ins, outs, to=_elem(n.attrs["dtype"]))


@_e("quantize")
def _quantize(ex, n, ins, outs):
    q = n.outputs[0].quant
    if q is None:
        ex.unsupported.setdefault("quantize (output without QuantParams)", []).append(f"%{n.name}")
        return
    if n.attrs.get("rounding", "half_even") != "half_even":
        ex.unsupported.setdefault("quantize (rounding half_away; ONNX rounds half to even)",
                                  []).append(f"%{n.name}")
        return
    scale, zp, attrs = ex._qdq_consts(n.outputs[0].name, q)
    ex.node("QuantizeLinear", [ins[0], scale, zp], outs, **attrs)


@_e("dequantize")
def _dequantize(ex, n, ins, outs):
    q = n.inputs[0].quant
    if q is None:
        ex.unsupported.setdefault("dequantize (input without QuantParams)", []).append(f"%{n.name}")
        return
    scale, zp, attrs = ex._qdq_consts(n.inputs[0].name, q)
    ex.node("DequantizeLinear", [ins[0], scale, zp], outs, **attrs)


# ---- public entry point -------------------------------------------------------------------------
def to_onnx(graph: Graph, path: Optional[Union[str, os.PathLike]] = None, opset: int = OPSET):
    """The graph as an `onnx.ModelProto` (QDQ form for quantized values); saved to `path` if given."""
    import onnx

    model = _Exporter(graph, opset).run()
    if path is not None:
        try:
            onnx.save(model, str(path))
        except OSError as exc:
            raise FrontendError(f"cannot write ONNX model to {path}: {exc}") from exc
    return model


__all__ = ["to_onnx", "OPSET"]
