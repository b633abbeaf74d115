"""ONNX's integer operators, imported as integer IR.

The ONNX importer turns QuantizeLinear -> DequantizeLinear pairs into QuantParams on float
values (the QDQ form). This module adds what a model with *integer tensors* needs:

* QuantizeLinear whose result is used as an integer (a graph output, or read by anything other
  than a DequantizeLinear) becomes a real `quantize` node; DequantizeLinear of an integer
  run-time tensor (a graph input, or an integer op's result) becomes a real `dequantize` node.
  The integer value gets the node's scale and zero point as its QuantParams.
* QLinearConv -> `qconv2d` + `requantize_float`, QLinearMatMul -> `qmatmul` (or `qlinear` for a
  constant 2-D right operand) + `requantize_float`: ONNX requantizes with a float multiplier and
  ties to even, which `requantize_float` reproduces exactly (see its definition).
* ConvInteger -> `qconv2d`, MatMulInteger -> `qmatmul`/`qlinear` (int32 results). These ONNX ops
  carry zero points but no scales; their values get scale 1, so each integer is its own real.
* DynamicQuantizeLinear -> `dynamic_quantize_linear` (scale chosen at run time; its u8 result
  carries no QuantParams, so ops that need a compile-time zero point cannot consume it).
* QuantizeLinear / DequantizeLinear whose parameters QuantParams cannot describe (blocked
  scales, a scale or zero point computed at run time, float8/float4 storage, float16 data or
  scales) -> `quantize_linear` / `dequantize_linear`, which take the parameters as inputs and
  compute exactly what the ONNX reference does (see their definitions). The expanded form of
  DynamicQuantizeLinear (ReduceMin/ReduceMax ... Cast feeding QuantizeLinear) imports this way.

Scales and zero points of the integer ops must be import-time constants (QuantParams are
compile-time facts); `freeze_inputs` turns graph inputs that hold them into initializers.
"""
from __future__ import annotations

import weakref
from typing import Any, Mapping, Optional

import numpy as np

from ..errors import FrontendError
from ..ir.graph import Value
from ..ir.types import QuantParams, is_int, is_narrow_float, numpy_dtype
from ..quant.intmath import quantize_float
from ._build import Const, Unsupported, _clean_name, transposed
from .onnx_import import _ELEM, _HANDLERS, _QOut, _conv_pads, _h, _shape

# The QDQ-pair handlers this module falls back to when a Q/DQ is not an integer boundary.
_PAIR_QUANTIZE = _HANDLERS["QuantizeLinear"]
_PAIR_DEQUANTIZE = _HANDLERS["DequantizeLinear"]

# ONNX element types of integer quantized tensors -> (bits, signed).
_ONNX_INT = {3: (8, True), 2: (8, False), 5: (16, True), 4: (16, False), 6: (32, True),
             22: (4, True), 21: (4, False), 26: (2, True), 25: (2, False)}
# numpy dtype names (ml_dtypes for the narrow ones) -> (bits, signed).
_NP_INT = {"int8": (8, True), "uint8": (8, False), "int16": (16, True), "uint16": (16, False),
           "int32": (32, True), "int4": (4, True), "uint4": (4, False), "int2": (2, True),
           "uint2": (2, False)}
_SCALE_DTYPE = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
# numpy dtype names of quantized storage (ml_dtypes for the narrow ones) -> IR dtypes.
_NP_QTYPE = {"int8": "i8", "uint8": "u8", "int16": "i16", "uint16": "u16", "int32": "i32",
             "int4": "i4", "uint4": "u4", "int2": "i2", "uint2": "u2",
             "float8_e4m3fn": "f8e4m3fn", "float8_e5m2": "f8e5m2", "float4_e2m1fn": "f4e2m1"}
_NP_FLOAT = {"float32": "f32", "float16": "f16"}


# ---- public helper ------------------------------------------------------------------------------
def freeze_inputs(model: Any, values: Mapping[str, Any]):
    """A copy of `model` (an `onnx.ModelProto`) whose graph inputs named in `values` are
    initializers holding those arrays: scales and zero points fed at run time become the
    compile-time constants qcompile's QuantParams need."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    names = {vi.name for vi in g.input}
    unknown = sorted(set(values) - names)
    if unknown:
        raise FrontendError(f"freeze_inputs: {unknown} are not inputs of graph "
                            f"{g.name or 'main'} (inputs: {sorted(names)})")
    kept = [vi for vi in g.input if vi.name not in values]
    del g.input[:]
    g.input.extend(kept)
    for name, arr in values.items():
        g.initializer.append(_tensor_proto(numpy_helper, arr, name))
    return out


def _tensor_proto(numpy_helper, arr, name: str):
    from onnx import TensorProto
    if isinstance(arr, TensorProto):
        t = TensorProto()
        t.CopyFrom(arr)
        t.name = name
        return t
    return numpy_helper.from_array(np.asarray(arr), name)


# ---- operands and parameters ---------------------------------------------------------------------
def _int_kind(x) -> Optional[tuple]:
    """(bits, signed) of an integer operand, or None for a float one."""
    if isinstance(x, Value):
        if not is_int(x.dtype) or x.dtype == "i64":
            return None
        return int(x.dtype[1:]), x.dtype.startswith("i")
    if isinstance(x, Const):
        return _NP_INT.get(x.array.dtype.name)
    return None


def _scale_dtype(im, scale, what: str) -> str:
    arr = im.need_const(scale, what)
    dt = _SCALE_DTYPE.get(np.asarray(arr).dtype)
    if dt is None:
        raise Unsupported(f"its {what} is {np.asarray(arr).dtype} (only float32 and float16 "
                          f"scales are imported)")
    return dt


def _params(im, scale, zero_point, kind: tuple, rank: int, axis: Optional[int],
            what: str) -> QuantParams:
    """QuantParams from constant scale / zero-point operands; `axis` is where a 1-D scale of
    more than one element runs (None: only per-tensor parameters are accepted)."""
    s = np.asarray(im.need_const(scale, f"{what} scale"), dtype=np.float64)
    if zero_point is None:
        z = np.zeros(s.shape, np.int64)
    else:
        z = np.asarray(im.need_const(zero_point, f"{what} zero point")).astype(np.int64)
    if s.ndim > 1 or z.ndim > 1:
        raise Unsupported(f"{what} has blocked quantization parameters (scale {s.shape}); "
                          f"QuantParams hold one scale per tensor or per channel of one axis")
    if s.size > 1 or z.size > 1:
        if axis is None:
            raise Unsupported(f"{what} has {max(s.size, z.size)} scales / zero points; only "
                              f"per-tensor parameters are supported here")
        n = max(s.size, z.size)
        s, z = np.broadcast_to(s.reshape(-1), (n,)), np.broadcast_to(z.reshape(-1), (n,))
        return QuantParams(tuple(s), tuple(z), kind[0], kind[1], axis % max(rank, 1))
    return QuantParams(tuple(s.reshape(-1)), tuple(z.reshape(-1)), kind[0], kind[1], None)


def _zp_kind(zero_point, attrs: dict, default: tuple = (8, False)) -> tuple:
    """Storage type of a QuantizeLinear result: the zero point's type, else `output_dtype`."""
    if isinstance(zero_point, Const):
        name = zero_point.array.dtype.name
        if name not in _NP_INT:
            raise Unsupported(f"quantization to {name} (integer and float8/float4 types only)")
        return _NP_INT[name]
    out = attrs.get("output_dtype", 0)
    if out:
        if out not in _ONNX_INT:
            raise Unsupported(f"quantization to ONNX element type {out} (integer and "
                              f"float8/float4 types only)")
        return _ONNX_INT[out]
    return default


def _attach(x, q: QuantParams, name: str):
    """`x` carrying `q`: the integer operand of a quantized op gets the op's scale and zero point
    as its QuantParams; a value already quantized differently cannot take them."""
    kind = _int_kind(x)
    if kind is None or kind != (q.bits, q.signed):
        have = x.dtype if isinstance(x, Value) else x.array.dtype.name
        raise Unsupported(f"{name} is {have}, but its quantization parameters describe "
                          f"{q.storage_dtype}")
    if isinstance(x, Const):
        if x.quant is not None and x.quant != q:
            raise Unsupported(f"{name} is quantized twice with different parameters")
        return Const(x.name, x.array, q)
    if x.quant is not None and x.quant != q:
        raise Unsupported(f"{name} already carries scale {x.quant.scale} / zero point "
                          f"{x.quant.zero_point}; here it is read with {q.scale} / {q.zero_point}")
    x.quant = q
    return x


def _acc_params(qa: QuantParams, qb: QuantParams, axis: Optional[int]) -> QuantParams:
    """The int32 accumulator of a product of `qa` and `qb` values: scale s_a * s_b (exact in
    float64 for float32 and float16 scales), zero point 0, per channel along `axis` when qb is."""
    scale = np.asarray(qa.scale, np.float64) * np.asarray(qb.scale, np.float64)
    per_channel = qb.axis is not None
    return QuantParams(tuple(scale), (0,) * scale.size, 32, True, axis if per_channel else None)


def _unit(kind: tuple) -> QuantParams:
    return QuantParams((1.0,), (0,), kind[0], kind[1])


# ---- QuantizeLinear / DequantizeLinear at integer boundaries -------------------------------------
_CONSUMERS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _read_as_integer(im, name: str) -> bool:
    """Is tensor `name` used as an integer: a graph output, or an input of a non-DQ node?"""
    table = _CONSUMERS.get(im)
    if table is None:
        table = {}
        for n in im.proto.graph.node:
            for i in n.input:
                table.setdefault(i, set()).add(n.op_type)
        for vi in im.proto.graph.output:
            table.setdefault(vi.name, set()).add("<output>")
        _CONSUMERS[im] = table
    return bool(table.get(name, set()) - {"DequantizeLinear"})


@_h("QuantizeLinear")
def _quantize_linear(im, node, inputs, attrs):
    if _beyond_quant_params(inputs, attrs, _q_dtype(inputs, attrs)):
        return _quantize_interchange(im, node, inputs, attrs)
    if not _read_as_integer(im, node.output[0]):
        return _PAIR_QUANTIZE(im, node, inputs, attrs)
    x = inputs[0]
    if _float_kind(x) == "f16" or _float_kind(inputs[1]) == "f16":
        return _quantize_interchange(im, node, inputs, attrs)  # ONNX divides in float16
    if attrs.get("precision", 0) not in (0, 1):
        raise Unsupported(f"QuantizeLinear with precision={attrs['precision']} (the quantize op "
                          f"divides in float32)")
    x_dtype = x.dtype if isinstance(x, Value) else str(x.array.dtype)
    if x_dtype not in ("f32", "float32"):
        raise Unsupported(f"QuantizeLinear of a {x_dtype} tensor (ONNX divides in the input's "
                          f"precision; the quantize op divides in float32)")
    zp = inputs[2] if len(inputs) > 2 else None
    rank = len(_shape(x))
    q = _params(im, inputs[1], zp, _zp_kind(zp, attrs), rank, int(attrs.get("axis", 1)),
                f"{node.output[0]}'s")
    if isinstance(x, Const):  # weights quantized in the model: the integers, at import time
        ints = quantize_float(x.array, q.scale_array(rank).astype(np.float32),
                              q.zero_point_array(rank), q.qmin, q.qmax, "half_even")
        return Const(node.output[0], ints.astype(numpy_dtype(q.storage_dtype)), q)
    y = im.emit("quantize", [x], {"rounding": "half_even", "dtype": q.storage_dtype})
    y.quant = q
    return y


@_h("DequantizeLinear")
def _dequantize_linear(im, node, inputs, attrs):
    x = inputs[0]
    if isinstance(x, _QOut):
        return _PAIR_DEQUANTIZE(im, node, inputs, attrs)
    if _beyond_quant_params(inputs, attrs, _storage_dtype(x)):
        return _dequantize_interchange(im, node, inputs, attrs)
    if not isinstance(x, Value):
        return _PAIR_DEQUANTIZE(im, node, inputs, attrs)
    kind = _int_kind(x)
    if kind is None:
        raise Unsupported(f"DequantizeLinear of {node.input[0]}, a {x.dtype} tensor (integer "
                          f"and float8/float4 inputs only)")
    if _float_kind(inputs[1]) != "f32" or attrs.get("output_dtype", 0) not in (0, 1):
        return _dequantize_interchange(im, node, inputs, attrs)  # a float16 result
    if x.dtype == "i32":
        # ONNX converts int32 codes to float32 before subtracting the zero point, which rounds
        # above 2**24; the IR's dequantize is exact there, so keep ONNX's arithmetic
        return _dequantize_interchange(im, node, inputs, attrs)
    q = _params(im, inputs[1], inputs[2] if len(inputs) > 2 else None, kind, len(x.shape),
                int(attrs.get("axis", 1)), f"{node.input[0]}'s")
    return im.emit("dequantize", [_attach(x, q, node.input[0])])


# ---- QuantizeLinear / DequantizeLinear beyond QuantParams ----------------------------------------
def _storage_dtype(x) -> Optional[str]:
    """The IR dtype of a quantized operand (None when it is none of them)."""
    if isinstance(x, Value):
        return x.dtype
    if isinstance(x, Const):
        return _NP_QTYPE.get(x.array.dtype.name)
    return None


def _float_kind(x) -> Optional[str]:
    if isinstance(x, Value):
        return x.dtype
    if isinstance(x, Const):
        return _NP_FLOAT.get(x.array.dtype.name)
    return None


def _q_dtype(inputs, attrs) -> Optional[str]:
    """A QuantizeLinear's result dtype: its zero point's, else `output_dtype`'s, else u8."""
    zp = inputs[2] if len(inputs) > 2 else None
    if zp is not None:
        return _storage_dtype(zp)
    out = attrs.get("output_dtype", 0)
    return _ELEM.get(out) if out else "u8"


def _beyond_quant_params(inputs, attrs, storage: Optional[str]) -> bool:
    """Whether a Q/DQ's parameters are more than QuantParams hold: blocked, computed at run
    time, or float8/float4 storage."""
    params = [p for p in inputs[1:3] if p is not None]
    return (bool(attrs.get("block_size", 0)) or any(isinstance(p, Value) for p in params)
            or (storage is not None and is_narrow_float(storage)))


def _interchange_operand(x, dtype: str):
    """`x` as an input of the interchange ops: a constant of a narrow integer type (ml_dtypes
    int4, ... as onnx reads them) is held one code per int8/uint8 element, as every IR value
    of those dtypes is."""
    if isinstance(x, Const) and x.array.dtype.name in ("int4", "uint4", "int2", "uint2"):
        return Const(x.name, x.array.astype(numpy_dtype(dtype)), x.quant)
    return x


def _materialize(im, operands: list, dtypes: list) -> list:
    """Constants whose default graph constant would have another dtype (an i4 zero point held in
    int8, an i32 one the builder widens to i64) become graph constants of their IR dtype here,
    unless every operand is constant (the node then folds at import time)."""
    if all(o is None or isinstance(o, Const) for o in operands):
        return operands
    out = []
    for o, dt in zip(operands, dtypes):
        if isinstance(o, Const) and o.quant is None and (
                o.array.dtype == np.int32 or _NP_QTYPE.get(o.array.dtype.name, dt) != dt):
            own = Const(o.name, o.array)  # a copy: other readers keep the default constant
            own.value = im.b.graph.add_constant(_clean_name(o.name), o.array, dtype=dt)
            o = own
        out.append(o)
    return out


def _float_zero_point(im, zp, storage: str, what: str) -> None:
    """float8/float4 zero points must be 0 (ONNX): checked here, then not passed on."""
    if zp is None:
        return
    arr = np.asarray(im.need_const(zp, f"{what} zero point")).astype(np.float32)
    if arr.any():
        raise Unsupported(f"its {storage} zero point is {arr.reshape(-1)[:4].tolist()}; ONNX "
                          f"requires float8/float4 zero points to be 0")


def _param_axis(x, attrs) -> int:
    rank = len(_shape(x))
    axis = int(attrs.get("axis", 1))
    return axis % rank if rank and -rank <= axis < rank else axis


def _quantize_interchange(im, node, inputs, attrs):
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    dtype = _q_dtype(inputs, attrs)
    if dtype is None or dtype == "i64" or not (is_int(dtype) or is_narrow_float(dtype)):
        what = (zp.dtype if isinstance(zp, Value) else zp.array.dtype.name) if zp is not None \
            else f"ONNX element type {attrs.get('output_dtype')}"
        raise Unsupported(f"quantization to {what} (integer and float8/float4 types only)")
    out = attrs.get("output_dtype", 0)
    if zp is not None and out and _ELEM.get(out) != dtype:
        raise Unsupported(f"output_dtype {out} differs from its zero point's type {dtype}")
    xf, sf = _float_kind(x), _float_kind(scale)
    if xf not in ("f32", "f16") or sf not in ("f32", "f16"):
        raise Unsupported(f"QuantizeLinear of {xf or 'a non-float'} data with a "
                          f"{sf or 'non-float'} scale (f32 and f16 only)")
    quotient = "f16" if xf == sf == "f16" else "f32"
    precision = attrs.get("precision", 0)
    if precision and _ELEM.get(precision) != quotient:
        raise Unsupported(f"QuantizeLinear with precision={precision} (the quotient of "
                          f"{xf} data and a {sf} scale is {quotient})")
    if is_narrow_float(dtype):
        _float_zero_point(im, zp, dtype, node.output[0])
        zp = None
    operands = _materialize(im, [x, scale, _interchange_operand(zp, dtype)],
                            [xf, sf, dtype])
    return im.emit("quantize_linear", operands,
                   {"axis": _param_axis(x, attrs), "block_size": int(attrs.get("block_size", 0)),
                    "dtype": dtype, "saturate": bool(attrs.get("saturate", 1))})


def _dequantize_interchange(im, node, inputs, attrs):
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    storage = _storage_dtype(x)
    if storage is None or storage == "i64" or not (is_int(storage) or is_narrow_float(storage)):
        raise Unsupported(f"DequantizeLinear of {node.input[0]}, not an integer or "
                          f"float8/float4 tensor")
    sf = _float_kind(scale)
    if sf not in ("f32", "f16"):
        raise Unsupported(f"its scale is {sf or 'not a float tensor'} (f32 and f16 only)")
    out = attrs.get("output_dtype", 0)
    if out and _ELEM.get(out) != sf:
        raise Unsupported(f"output_dtype {out} differs from its {sf} scale's type")
    if is_narrow_float(storage):
        _float_zero_point(im, zp, storage, node.input[0])
        zp = None
    operands = _materialize(im, [_interchange_operand(x, storage), scale,
                                 _interchange_operand(zp, storage)], [storage, sf, storage])
    return im.emit("dequantize_linear", operands,
                   {"axis": _param_axis(x, attrs), "block_size": int(attrs.get("block_size", 0))})


# ---- QLinearConv / ConvInteger -------------------------------------------------------------------
def _conv_attrs(x, w, attrs: dict, node) -> dict:
    w_shape = _shape(w)
    if len(w_shape) != 4:
        raise Unsupported(f"{len(w_shape) - 2}-D convolution (only 2-D is in the IR)")
    kernel = tuple(attrs.get("kernel_shape", w_shape[2:]))
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    pads = _conv_pads(_shape(x), kernel, strides, dilations, attrs, node)
    return {"stride": strides, "padding": tuple(pads), "dilation": dilations,
            "groups": int(attrs.get("group", 1)), "acc_bits": 32}


def _out_kind(im, y_zero_point, q_in: QuantParams) -> tuple:
    """Storage type of a QLinear* result: its zero point's type, else the input's (ONNX)."""
    if y_zero_point is None:
        return q_in.bits, q_in.signed
    name = np.asarray(im.need_const(y_zero_point, "y_zero_point")).dtype.name
    if name not in _NP_INT:
        raise Unsupported(f"an output of type {name} (integer outputs only)")
    return _NP_INT[name]


def _kind_of(x, name: str) -> tuple:
    kind = _int_kind(x)
    if kind is None:
        raise Unsupported(f"{name} is not an integer tensor")
    return kind


@_h("QLinearConv")
def _qlinear_conv(im, node, inputs, attrs):
    x, xs, xz, w, ws, wz, ys = inputs[:7]
    yz = inputs[7] if len(inputs) > 7 else None
    b = inputs[8] if len(inputs) > 8 else None
    sd = {_scale_dtype(im, s, n) for s, n in ((xs, "x_scale"), (ws, "w_scale"), (ys, "y_scale"))}
    if len(sd) != 1:
        raise Unsupported(f"scales of different float types {sorted(sd)}")
    qx = _params(im, xs, xz, _kind_of(x, node.input[0]), 4, None, node.input[0])
    qw = _params(im, ws, wz, _kind_of(w, node.input[3]), 4, 0, node.input[3])
    y_kind = _out_kind(im, yz, qx)
    qy = _params(im, ys, yz, y_kind, 4, None, node.output[0])
    acc_q = _acc_params(qx, qw, axis=1)
    if b is not None:
        bias_q = QuantParams(acc_q.scale, acc_q.zero_point, 32, True,
                             0 if acc_q.axis is not None else None)
        b = _attach(b, bias_q, node.input[8])
    conv = _conv_attrs(x, w, attrs, node)
    acc = im.emit("qconv2d", [_attach(x, qx, node.input[0]), _attach(w, qw, node.input[3]), b],
                  conv, name=node.output[0] + "_acc")
    acc.quant = acc_q
    y = im.emit("requantize_float", [acc], {"scale_dtype": sd.pop(), "dtype": qy.storage_dtype})
    y.quant = qy
    return y


@_h("ConvInteger")
def _conv_integer(im, node, inputs, attrs):
    x, w = inputs[0], inputs[1]
    xz = inputs[2] if len(inputs) > 2 else None
    wz = inputs[3] if len(inputs) > 3 else None
    qx = _zero_point_params(im, xz, _kind_of(x, node.input[0]), 4, None, node.input[0])
    qw = _zero_point_params(im, wz, _kind_of(w, node.input[1]), 4, 0, node.input[1])
    acc = im.emit("qconv2d", [_attach(x, qx, node.input[0]), _attach(w, qw, node.input[1])],
                  _conv_attrs(x, w, attrs, node))
    acc.quant = _acc_params(qx, qw, axis=1)
    return acc


def _zero_point_params(im, zero_point, kind: tuple, rank: int, axis: Optional[int],
                       what: str) -> QuantParams:
    """Scale-less ONNX integer ops (ConvInteger, MatMulInteger): scale 1 beside each zero point."""
    if zero_point is None:
        return _unit(kind)
    z = np.asarray(im.need_const(zero_point, f"{what} zero point"))
    ones = Const(f"{what}.unit_scale", np.ones(z.shape, np.float32))
    return _params(im, ones, zero_point, kind, rank, axis, what)


# ---- QLinearMatMul / MatMulInteger ---------------------------------------------------------------
def _matmul_int(im, node, a, qa: QuantParams, b, qb: QuantParams, name: str):
    """The int32 accumulator of a @ b: `qlinear` for a constant 2-D b (weights, (out, in) after
    the transpose), else `qmatmul` (per-tensor b only)."""
    a = _attach(a, qa, node.input[0])
    if isinstance(b, Const) and b.array.ndim == 2 and isinstance(a, Value):
        w = transposed(_attach(b, qb, node.input[1]))
        acc = im.emit("qlinear", [a, w, None], {"acc_bits": 32}, name=name)
        acc.quant = _acc_params(qa, w.quant, axis=len(_shape(a)) - 1)
        return acc
    if qb.axis is not None:
        raise Unsupported(f"per-column parameters of {node.input[1]}, a run-time operand (only a "
                          f"constant 2-D right operand can have them)")
    acc = im.emit("qmatmul", [a, _attach(b, qb, node.input[1])], {"acc_bits": 32}, name=name)
    acc.quant = _acc_params(qa, qb, axis=None)
    return acc


@_h("QLinearMatMul")
def _qlinear_matmul(im, node, inputs, attrs):
    a, as_, az, b, bs, bz, ys = inputs[:7]
    yz = inputs[7] if len(inputs) > 7 else None
    sd = {_scale_dtype(im, s, n) for s, n in ((as_, "a_scale"), (bs, "b_scale"), (ys, "y_scale"))}
    if len(sd) != 1:
        raise Unsupported(f"scales of different float types {sorted(sd)}")
    qa = _params(im, as_, az, _kind_of(a, node.input[0]), len(_shape(a)), None, node.input[0])
    qb = _params(im, bs, bz, _kind_of(b, node.input[3]), len(_shape(b)), -1, node.input[3])
    y_kind = _out_kind(im, yz, qa)
    qy = _params(im, ys, yz, y_kind, 2, None, node.output[0])
    acc = _matmul_int(im, node, a, qa, b, qb, node.output[0] + "_acc")
    y = im.emit("requantize_float", [acc], {"scale_dtype": sd.pop(), "dtype": qy.storage_dtype})
    y.quant = qy
    return y


@_h("MatMulInteger")
def _matmul_integer(im, node, inputs, attrs):
    a, b = inputs[0], inputs[1]
    az = inputs[2] if len(inputs) > 2 else None
    bz = inputs[3] if len(inputs) > 3 else None
    qa = _zero_point_params(im, az, _kind_of(a, node.input[0]), len(_shape(a)), None,
                            node.input[0])
    qb = _zero_point_params(im, bz, _kind_of(b, node.input[1]), len(_shape(b)), -1,
                            node.input[1])
    return _matmul_int(im, node, a, qa, b, qb, node.output[0])


# ---- DynamicQuantizeLinear -----------------------------------------------------------------------
@_h("DynamicQuantizeLinear")
def _dynamic_quantize_linear(im, node, inputs, attrs):
    x = inputs[0]
    if not isinstance(x, Value) or x.dtype != "f32":
        raise Unsupported("DynamicQuantizeLinear of a non-f32 tensor")
    return im.emit("dynamic_quantize_linear", [x])


__all__ = ["freeze_inputs"]
