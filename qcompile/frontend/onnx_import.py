"""ONNX front end: a `.onnx` file or `ModelProto` into a float `Graph`.

* Models of an opset older than 13 are upgraded with `onnx.version_converter` first, so the
  handlers below only see modern operator versions (plus the attribute forms they replaced).
* Initializers and `Constant` nodes are import-time constants. A node whose inputs are all
  constant is evaluated right away (with `onnx.reference`, so any operator can fold), and
  `Shape` of a tensor with a static shape is a constant too: the `Shape -> Gather -> Concat ->
  Reshape` chains exporters write for symbolic shapes become plain static reshapes once
  `input_shapes` pins the inputs.
* QuantizeLinear/DequantizeLinear pairs (QDQ models) become `QuantParams` on the value they
  wrap; `DequantizeLinear` of an integer initializer becomes the float constant it stands for,
  carrying the original scale and zero point, so the float graph is exact.
* Every node keeps its ONNX node name as its location.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import FrontendError
from ..ir.graph import Graph, Value
from ..ir.types import QuantParams, TensorType, is_narrow_float
from ._build import MISSING, Const, GraphBuilder, Unsupported, handler_table, transposed

MIN_OPSET = 13
_FLOAT_MAX = float(np.finfo(np.float32).max)

# ONNX TensorProto element types -> IR dtypes.
_ELEM = {1: "f32", 10: "f16", 11: "f32", 7: "i64", 6: "i32", 3: "i8", 2: "u8", 5: "i16", 4: "u16",
         9: "bool", 22: "i4", 21: "u4", 26: "i2", 25: "u2",
         17: "f8e4m3fn", 19: "f8e5m2", 23: "f4e2m1"}
# float8/float4 storage types: read and written by QuantizeLinear/DequantizeLinear only.
_NARROW_FLOAT_ELEM = {17, 19, 23}
# Integer element types a QuantizeLinear/DequantizeLinear pair can store: (bits, signed).
_QTYPES = {3: (8, True), 2: (8, False), 5: (16, True), 4: (16, False), 22: (4, True),
           21: (4, False), 26: (2, True), 25: (2, False), 6: (32, True)}


# ---- loading ----------------------------------------------------------------------------------
def _load(model: Any):
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(model, onnx.ModelProto):
        return model, "ONNX model" + (f" {model.graph.name}" if model.graph.name else "")
    if not isinstance(model, (str, os.PathLike)):
        raise FrontendError(f"from_onnx expects a path or an onnx.ModelProto, got {type(model).__name__}")
    path = Path(model)
    if not path.is_file():
        raise FrontendError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise FrontendError(f"{path}: not a readable ONNX model (corrupt or truncated file?): "
                            f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # protobuf raises a zoo of types for damaged data
        raise FrontendError(f"{path}: not a readable ONNX model: {type(exc).__name__}: {exc}") from exc
    if not proto.graph.node and not proto.graph.output:
        raise FrontendError(f"{path}: the file parsed but holds no graph (empty, truncated, or not ONNX)")
    return proto, f"ONNX model {path.name}"


def _opset(proto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return MIN_OPSET


def _upgrade(proto, what: str):
    import onnx
    from onnx import version_converter

    version = _opset(proto)
    if version >= MIN_OPSET:
        return proto
    try:
        return version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:
        raise FrontendError(f"{what}: opset {version} could not be upgraded to opset {MIN_OPSET} "
                            f"({type(exc).__name__}: {exc})") from exc


def _with_input_shapes(proto, input_shapes, what: str):
    """Pin input dimensions; stale intermediate shapes from the exporter are dropped so shape
    inference recomputes them from the new inputs."""
    if not input_shapes:
        return proto
    proto = _copy(proto)
    init_names = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init_names]
    if not isinstance(input_shapes, Mapping):
        shapes = list(input_shapes)
        if shapes and not isinstance(shapes[0], (list, tuple)):
            shapes = [shapes]
        if len(shapes) != len(inputs):
            raise FrontendError(f"{what}: {len(shapes)} input shapes given for {len(inputs)} "
                                f"inputs ({', '.join(i.name for i in inputs)})")
        input_shapes = {i.name: s for i, s in zip(inputs, shapes)}
    known = {i.name for i in inputs}
    unknown = [k for k in input_shapes if k not in known]
    if unknown:
        raise FrontendError(f"{what}: input_shapes names {unknown}, but the inputs are "
                            f"{sorted(known)}")
    for inp in inputs:
        if inp.name not in input_shapes:
            continue
        shape = input_shapes[inp.name]
        dims = inp.type.tensor_type.shape.dim
        if len(dims) and len(dims) != len(shape):
            raise FrontendError(f"{what}: input {inp.name} has rank {len(dims)}, "
                                f"input_shapes gives {tuple(shape)}")
        inp.type.tensor_type.ClearField("shape")
        for d in shape:
            dim = inp.type.tensor_type.shape.dim.add()
            if d is None or (isinstance(d, int) and d < 0):
                dim.dim_param = "?"
            else:
                dim.dim_value = int(d)
    del proto.graph.value_info[:]
    return proto


def _copy(proto):
    import onnx
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _infer_shapes(proto, what: str):
    import onnx
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise FrontendError(f"{what}: ONNX shape inference rejected the model: "
                            f"{type(exc).__name__}: {exc}") from exc


# ---- the importer -----------------------------------------------------------------------------
def _attrs(node) -> dict:
    import onnx
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode() for x in v]
        out[a.name] = v
    return out


def _value_type(vi, what: str) -> TensorType:
    tt = vi.type.tensor_type
    # 2- and 4-bit inputs (INT4/UINT4/INT2/UINT2) are fed unpacked, one code per element of
    # the numpy dtype that holds them (int8/uint8), as every IR value of those dtypes is.
    if tt.elem_type not in _ELEM:
        raise FrontendError(f"{what}: input {vi.name} has an element type "
                            f"({tt.elem_type}) the IR cannot hold")
    if not tt.HasField("shape"):
        raise FrontendError(f"{what}: input {vi.name} has no shape, and none can be inferred; "
                            f"pass input_shapes={{'{vi.name}': (...)}}")
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return TensorType(dims, _ELEM[tt.elem_type])


class _QOut:
    """The output of a QuantizeLinear, waiting for the DequantizeLinear that should consume it."""

    __slots__ = ("src", "quant", "dtype")

    def __init__(self, src, quant: QuantParams, dtype: int):
        self.src, self.quant, self.dtype = src, quant, dtype


class OnnxImporter:
    def __init__(self, proto, what: str):
        self.proto = proto
        self.b = GraphBuilder(Graph(_graph_name(proto)), what)
        self.env: dict[str, Any] = {"": None}
        self.opset = _opset(proto)

    def run(self) -> Graph:
        import onnx
        from onnx import numpy_helper

        g = self.proto.graph
        for init in g.initializer:
            self.env[init.name] = Const(init.name, numpy_helper.to_array(init))
        for vi in g.input:
            if vi.name in self.env:
                continue  # old models list initializers among the inputs
            self.env[vi.name] = self.b.graph.add_input(vi.name, _value_type(vi, self.b.source))
        for i, node in enumerate(g.node):
            name = node.name or f"{node.op_type}_{i}"
            self.b.loc, self.b.node_name = name, node.output[0] if node.output else name
            self._node(node, name)
        outs = []
        for vi in g.output:
            v = self.env.get(vi.name, MISSING)
            if v is MISSING:
                continue
            if isinstance(v, _QOut):
                self.b.mark_unsupported("QuantizeLinear", vi.name, "",
                                        "an integer graph output (only Q/DQ pairs are imported)")
                continue
            outs.append(self.b.value(v))
        self.b.raise_if_unsupported()
        self.b.graph.outputs = outs
        return self.b.graph

    def _node(self, node, name: str) -> None:
        op = node.op_type
        inputs = [self.env.get(n, MISSING) if n else None for n in node.input]
        attrs = _attrs(node)
        handler = _HANDLERS.get(op) if node.domain in ("", "ai.onnx") else None
        if any(x is MISSING for x in inputs):
            if handler is None:
                self.b.mark_unsupported(_qualified(node), name, "")
            self._set(node, MISSING)
            return
        if any(isinstance(x, _QOut) for x in inputs) and op != "DequantizeLinear":
            self.b.mark_unsupported(op, name, "", "reads the integer output of a QuantizeLinear; "
                                    "only QuantizeLinear->DequantizeLinear pairs are imported")
            self._set(node, MISSING)
            return
        present = [x for x in inputs if x is not None]
        if op not in _NO_FOLD and present and all(isinstance(x, Const) and x.quant is None
                                                  for x in present):
            folded = _fold_reference(node, inputs)
            if folded is not None:
                self._set(node, folded)
                return
        if handler is None:
            self.b.mark_unsupported(_qualified(node), name, "")
            self._set(node, MISSING)
            return
        try:
            result = handler(self, node, inputs, attrs)
        except Unsupported as exc:
            self.b.mark_unsupported(op, name, "", exc.reason)
            result = MISSING
        self._set(node, result)

    def _set(self, node, result) -> None:
        outs = list(result) if isinstance(result, list) else [result]
        for i, out_name in enumerate(node.output):
            if not out_name:
                continue
            self.env[out_name] = outs[i] if i < len(outs) else MISSING

    # helpers for handlers
    def emit(self, op: str, inputs: Sequence, attrs: Optional[dict] = None, name: str = ""):
        return self.b.emit(op, inputs, attrs, name=name or self.b.node_name)

    def need_const(self, x, what: str) -> np.ndarray:
        if isinstance(x, Const):
            return x.array
        raise Unsupported(f"its {what} is computed at run time (pass input_shapes so it can "
                          f"be folded, or use a model where it is a constant)")


_NO_FOLD = {"QuantizeLinear", "DequantizeLinear", "Constant"}


def _graph_name(proto) -> str:
    import re
    name = re.sub(r"[^A-Za-z0-9_]", "_", proto.graph.name or "main")
    return name or "main"


def _qualified(node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _fold_reference(node, inputs: list):
    """Evaluate one node on constant inputs with ONNX's reference implementation."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if x is not None else "" for k, x in enumerate(inputs)]
    outs = [f"o{k}" if o else "" for k, o in enumerate(node.output)]
    one = helper.make_node(node.op_type, names, outs, domain=node.domain)
    one.attribute.extend(node.attribute)
    feeds = {n: x.array for n, x in zip(names, inputs) if x is not None}
    try:
        results = ReferenceEvaluator(one).run(None, feeds)
    except Exception:
        numpy_fold = _NUMPY_FOLD.get(node.op_type)
        if numpy_fold is None:
            return None  # let the handler import it as a run-time node
        try:
            results = [numpy_fold(*[None if x is None else x.array for x in inputs], **_attrs(node))]
        except Exception:
            return None
    keep = node.op_type in _LAYOUT_ONNX and isinstance(inputs[0], Const)
    consts = []
    for out_name, r in zip([o for o in node.output if o], results):
        consts.append(Const(inputs[0].name if keep else out_name, np.asarray(r)))
    return consts if len(consts) > 1 else consts[0]


def _gather_elements(data, idx, axis=0):
    idx = np.where(idx < 0, idx + data.shape[axis], idx)
    return np.take_along_axis(data, idx, axis)


# Folds for cases where the reference evaluator itself fails (e.g. GatherElements with fewer
# indices than data along the other axes, which exporters write for `torch.gather`).
_NUMPY_FOLD = {"GatherElements": _gather_elements}

_LAYOUT_ONNX = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast", "Flatten",
                "Expand", "Slice"}


# ---- handlers: (importer, node, inputs, attrs) -> operand | list --------------------------------
_HANDLERS, _h = handler_table()


def _shape(x) -> tuple:
    return x.shape if isinstance(x, Value) else tuple(x.array.shape)


def _ints(arr) -> tuple:
    return tuple(int(v) for v in np.asarray(arr).reshape(-1))


@_h("Constant")
def _constant(im, node, inputs, attrs):
    from onnx import numpy_helper
    out = node.output[0]
    if "value" in attrs:
        return Const(out, numpy_helper.to_array(attrs["value"]))
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return Const(out, np.asarray(attrs[key], dtype=dtype))
    raise Unsupported(f"Constant with {', '.join(attrs) or 'no value'}")


@_h("Identity", "Dropout")
def _identity(im, node, inputs, attrs):
    return [inputs[0], MISSING] if len(node.output) > 1 else inputs[0]


@_h("Shape")
def _shape_op(im, node, inputs, attrs):
    shape = _shape(inputs[0])
    start, end = attrs.get("start", 0), attrs.get("end", None)
    dims = shape[start:end] if end is not None else shape[start:]
    if any(d is None for d in dims):
        raise Unsupported(f"Shape of {node.input[0]}, whose shape {tuple(shape)} is not static; "
                          f"pass input_shapes to from_onnx")
    return Const(node.output[0], np.asarray(dims, dtype=np.int64))


def _conv_pads(x_shape, kernel, strides, dilations, attrs, node) -> tuple:
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
        return pads
    if auto == "VALID":
        return (0, 0, 0, 0)
    begins, ends = [], []
    for size, k, s, d in zip(x_shape[2:], kernel, strides, dilations):
        if size is None:
            raise Unsupported(f"auto_pad={auto} on a dynamic spatial size")
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begins.append(lo)
        ends.append(total - lo)
    return tuple(begins + ends)


@_h("Conv")
def _conv(im, node, inputs, attrs):
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    if len(_shape(w)) != 4:
        raise Unsupported(f"{len(_shape(w)) - 2}-D convolution (only 2-D is in the IR)")
    kernel = attrs.get("kernel_shape", _shape(w)[2:])
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    pads = _conv_pads(_shape(x), kernel, strides, dilations, attrs, node)
    return im.emit("conv2d", [x, w, b], {"stride": strides, "padding": pads,
                                         "dilation": dilations, "groups": int(attrs.get("group", 1))})


def _bias_vector(c, out_features: int):
    """A Gemm/Add bias that broadcasts like a (out,) vector, as one, or None."""
    if not isinstance(c, Const):
        return None
    arr = c.array
    if arr.size == out_features and (arr.ndim == 1 or all(d == 1 for d in arr.shape[:-1])):
        return Const(c.name, arr.reshape(out_features), c.quant)
    return None


@_h("Gemm")
def _gemm(im, node, inputs, attrs):
    a, bmat = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if attrs.get("transA", 0):
        a = im.emit("transpose", [a], {"perm": (1, 0)}, name=node.output[0] + "_at")
    if isinstance(bmat, Const) and alpha == 1.0:
        w = bmat if attrs.get("transB", 0) else transposed(bmat)
        bias = _bias_vector(c, w.array.shape[0]) if (c is not None and beta == 1.0) else None
        if c is None or bias is not None:
            return im.emit("linear", [a, w, bias])
        y = im.emit("linear", [a, w], name=node.output[0] + "_mm")
    else:
        if attrs.get("transB", 0):
            bmat = im.emit("transpose", [bmat], {"perm": (1, 0)}, name=node.output[0] + "_bt")
        y = im.emit("matmul", [a, bmat], name=node.output[0] + "_mm")
        if alpha != 1.0:
            y = im.emit("mul", [y, Const("alpha", np.float32(alpha))], name=node.output[0] + "_alpha")
    if c is None:
        return y
    if beta != 1.0:
        c = im.emit("mul", [c, Const("beta", np.float32(beta))], name=node.output[0] + "_beta")
    return im.emit("add", [y, c])


@_h("MatMul")
def _matmul(im, node, inputs, attrs):
    a, bmat = inputs
    if isinstance(bmat, Const) and bmat.array.ndim == 2 and isinstance(a, Value):
        return im.emit("linear", [a, transposed(bmat)])
    return im.emit("matmul", [a, bmat])


@_h("BatchNormalization")
def _bn(im, node, inputs, attrs):
    if attrs.get("training_mode", 0):
        raise Unsupported("BatchNormalization in training mode")
    y = im.emit("batch_norm", inputs[:5], {"eps": float(attrs.get("epsilon", 1e-5)), "axis": 1})
    return [y] + [MISSING] * (len(node.output) - 1)


@_h("Relu")
def _relu(im, node, inputs, attrs):
    return im.emit("relu", [inputs[0]])


@_h("Clip")
def _clip(im, node, inputs, attrs):
    x = inputs[0]
    bounds = [b if k < len(inputs) else None for k, b in enumerate(inputs[1:3], 1)]
    if any(isinstance(b, Value) for b in bounds):
        # Run-time bounds: max then min is numpy's (and ONNX's reference) clip, including
        # min > max giving max everywhere.
        lo, hi = bounds
        if lo is not None:
            x = im.emit("maximum", [x, lo], name=node.output[0] + ("_lo" if hi is not None else ""))
        return x if hi is None else im.emit("minimum", [x, hi])
    lo = attrs.get("min") if len(inputs) < 2 or inputs[1] is None else \
        float(im.need_const(inputs[1], "min"))
    hi = attrs.get("max") if len(inputs) < 3 or inputs[2] is None else \
        float(im.need_const(inputs[2], "max"))
    if lo is not None and float(lo) == 0.0 and (hi is None or np.isinf(hi)):
        return im.emit("relu", [x])
    return im.emit("clip", [x], {"min": -_FLOAT_MAX if lo is None else max(float(lo), -_FLOAT_MAX),
                                 "max": _FLOAT_MAX if hi is None else min(float(hi), _FLOAT_MAX)})


@_h("PRelu")
def _prelu(im, node, inputs, attrs):
    x, slope = inputs
    if not isinstance(slope, Const):
        raise Unsupported("PRelu with a run-time slope")
    arr, rank = slope.array, len(_shape(x))
    channels = _shape(x)[1] if rank > 1 else None
    if arr.size == 1:
        vec = arr.reshape(1)
    elif arr.size == channels and (arr.ndim < rank and arr.shape[0] == channels or
                                   arr.ndim == rank and arr.shape[1] == channels):
        vec = arr.reshape(channels)  # (C, 1, 1) or (1, C, 1, 1): a per-channel slope
    else:
        raise Unsupported(f"PRelu slope of shape {arr.shape} is not per-channel along axis 1")
    return im.emit("prelu", [x, Const(slope.name, vec, slope.quant)], {"axis": 1})


@_h("LeakyRelu")
def _leaky(im, node, inputs, attrs):
    return im.emit("leaky_relu", [inputs[0]], {"alpha": float(attrs.get("alpha", 0.01))})


@_h("HardSigmoid")
def _hardsigmoid(im, node, inputs, attrs):
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
        raise Unsupported(f"HardSigmoid with alpha={alpha}, beta={beta} (only 1/6, 1/2)")
    return im.emit("hardsigmoid", [inputs[0]])


def _unary(op: str):
    def handler(im, node, inputs, attrs):
        return im.emit(op, [inputs[0]])
    return handler


for _onnx, _op in (("HardSwish", "hardswish"), ("Sigmoid", "sigmoid"), ("Tanh", "tanh"),
                   ("Exp", "exp"), ("Sqrt", "sqrt"), ("Neg", "neg"), ("Erf", "erf"), ("Abs", "abs"),
                   ("Round", "round")):
    _HANDLERS[_onnx] = _unary(_op)


@_h("Reciprocal")
def _reciprocal(im, node, inputs, attrs):
    return im.emit("div", [Const(node.output[0] + ".one", np.float32(1.0)), inputs[0]])


@_h("Gelu")
def _gelu(im, node, inputs, attrs):
    return im.emit("gelu", [inputs[0]], {"approximate": attrs.get("approximate", "none")})


@_h("Softmax")
def _softmax(im, node, inputs, attrs):
    return im.emit("softmax", [inputs[0]], {"axis": int(attrs.get("axis", -1))})


@_h("LayerNormalization")
def _layer_norm(im, node, inputs, attrs):
    x = inputs[0]
    rank = len(_shape(x))
    y = im.emit("layer_norm", [x, inputs[1] if len(inputs) > 1 else None,
                               inputs[2] if len(inputs) > 2 else None],
                {"axis": int(attrs.get("axis", -1)) % rank, "eps": float(attrs.get("epsilon", 1e-5))})
    return [y] + [MISSING] * (len(node.output) - 1)


def _binary(op: str):
    def handler(im, node, inputs, attrs):
        out = inputs[0]
        for k, other in enumerate(inputs[1:]):  # Max/Min/Sum are variadic: fold left
            last = k == len(inputs) - 2
            out = im.emit(op, [out, other], name="" if last else f"{node.output[0]}_{k}")
        return out
    return handler


for _onnx, _op in (("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div"), ("Pow", "pow"),
                   ("Max", "maximum"), ("Min", "minimum"), ("Sum", "add")):
    _HANDLERS[_onnx] = _binary(_op)


@_h("Where")
def _where(im, node, inputs, attrs):
    return im.emit("where", inputs)


@_h("Concat")
def _concat(im, node, inputs, attrs):
    return im.emit("concat", [x for x in inputs if x is not None], {"axis": int(attrs["axis"])})


@_h("Reshape")
def _reshape(im, node, inputs, attrs):
    x, shape = inputs
    target = list(_ints(im.need_const(shape, "target shape")))
    in_shape = _shape(x)
    if not attrs.get("allowzero", 0):
        for i, d in enumerate(target):
            if d == 0:  # ONNX: 0 copies the input dimension
                target[i] = -1 if in_shape[i] is None else in_shape[i]
    if target.count(-1) > 1:
        raise Unsupported(f"Reshape to {tuple(target)}: more than one unknown dimension "
                          f"(pass input_shapes to from_onnx)")
    if -1 in target and all(d is not None for d in in_shape):  # spell static shapes out
        known = int(np.prod([d for d in target if d != -1], dtype=np.int64))
        total = int(np.prod(in_shape, dtype=np.int64))
        if known and total % known == 0:
            target[target.index(-1)] = total // known
    if tuple(target) == tuple(in_shape):
        return x
    return im.emit("reshape", [x], {"shape": tuple(target)})


@_h("Flatten")
def _flatten(im, node, inputs, attrs):
    # ONNX allows axis in [-r, r]; axis == r is legal (output (prod(shape), 1)), so it must not
    # wrap around to 0 the way a modulo would.
    x = inputs[0]
    rank = len(_shape(x))
    axis = int(attrs.get("axis", 1))
    if not -rank <= axis <= rank:
        raise Unsupported(f"Flatten axis {axis} is out of range [{-rank}, {rank}] for "
                          f"{node.input[0]} of shape {tuple(_shape(x))}")
    return im.emit("flatten", [x], {"axis": axis + rank if axis < 0 else axis})


@_h("Transpose")
def _transpose(im, node, inputs, attrs):
    x = inputs[0]
    rank = len(_shape(x))
    perm = tuple(attrs.get("perm", range(rank - 1, -1, -1)))
    if isinstance(x, Const) and rank == 2 and perm == (1, 0):
        return transposed(x)
    return im.emit("transpose", [x], {"perm": tuple(int(p) % rank for p in perm)})


def _axes(im, inputs, attrs, idx: int = 1) -> Optional[tuple]:
    if "axes" in attrs:
        return tuple(attrs["axes"])
    if len(inputs) > idx and inputs[idx] is not None:
        return _ints(im.need_const(inputs[idx], "axes"))
    return None


@_h("Squeeze")
def _squeeze(im, node, inputs, attrs):
    x = inputs[0]
    shape = _shape(x)
    axes = _axes(im, inputs, attrs)
    if axes is None:
        axes = tuple(i for i, d in enumerate(shape) if d == 1)
    axes = tuple(sorted(a % len(shape) for a in axes))
    return im.emit("squeeze", [x], {"axes": axes}) if axes else x


@_h("Unsqueeze")
def _unsqueeze(im, node, inputs, attrs):
    x = inputs[0]
    axes = _axes(im, inputs, attrs)
    rank = len(_shape(x)) + len(axes)
    return im.emit("unsqueeze", [x], {"axes": tuple(sorted(a % rank for a in axes))})


@_h("Expand")
def _expand(im, node, inputs, attrs):
    x, shape = inputs
    target = _ints(im.need_const(shape, "target shape"))
    in_shape = _shape(x)
    # ONNX Expand broadcasts both ways: a 1 in the target keeps the input's dimension.
    n = max(len(target), len(in_shape))
    a = (1,) * (n - len(in_shape)) + tuple(in_shape)
    t = (1,) * (n - len(target)) + tuple(target)
    out = tuple(da if db == 1 else db for da, db in zip(a, t))
    if any(d is None for d in out):
        raise Unsupported("Expand to a dynamic shape (pass input_shapes)")
    if out == tuple(in_shape):
        return x
    return im.emit("expand", [x], {"shape": out})


@_h("Slice")
def _slice(im, node, inputs, attrs):
    x = inputs[0]
    shape = _shape(x)
    starts = _ints(im.need_const(inputs[1], "starts"))
    ends = _ints(im.need_const(inputs[2], "ends"))
    axes = _ints(im.need_const(inputs[3], "axes")) if len(inputs) > 3 and inputs[3] is not None \
        else tuple(range(len(starts)))
    steps = _ints(im.need_const(inputs[4], "steps")) if len(inputs) > 4 and inputs[4] is not None \
        else (1,) * len(starts)
    keep = [(a % len(shape), s, e, st) for a, s, e, st in zip(axes, starts, ends, steps)
            if not (s == 0 and st == 1 and shape[a % len(shape)] is not None
                    and e >= shape[a % len(shape)])]
    if not keep:
        return x
    axes, starts, ends, steps = (tuple(k[i] for k in keep) for i in range(4))
    return im.emit("slice", [x], {"axes": axes, "starts": starts, "ends": ends, "steps": steps})


@_h("Split")
def _split(im, node, inputs, attrs):
    x = inputs[0]
    shape = _shape(x)
    axis = int(attrs.get("axis", 0)) % len(shape)
    if "split" in attrs:
        sizes = list(attrs["split"])
    elif len(inputs) > 1 and inputs[1] is not None:
        sizes = list(_ints(im.need_const(inputs[1], "split sizes")))
    else:
        n = attrs.get("num_outputs", len(node.output))
        if shape[axis] is None:
            raise Unsupported("Split of a dynamic dimension")
        chunk = -(-shape[axis] // n)
        sizes = [min(chunk, shape[axis] - i * chunk) for i in range(n)]
    outs, start = [], 0
    for k, size in enumerate(sizes):
        outs.append(im.emit("slice", [x], {"axes": (axis,), "starts": (start,),
                                           "ends": (start + size,), "steps": (1,)},
                            name=node.output[k] or f"{node.output[0]}_{k}"))
        start += size
    return outs


@_h("Pad")
def _pad(im, node, inputs, attrs):
    x = inputs[0]
    rank = len(_shape(x))
    pads = _ints(im.need_const(inputs[1], "pads")) if len(inputs) > 1 else tuple(attrs["pads"])
    value = 0.0
    if len(inputs) > 2 and inputs[2] is not None:
        value = float(np.asarray(im.need_const(inputs[2], "pad value")).reshape(-1)[0])
    if len(inputs) > 3 and inputs[3] is not None:
        axes = [a % rank for a in _ints(im.need_const(inputs[3], "axes"))]
        full = [0] * (2 * rank)
        for k, a in enumerate(axes):
            full[a], full[rank + a] = pads[k], pads[len(axes) + k]
        pads = tuple(full)
    mode = attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise Unsupported(f"Pad mode {mode!r}")
    if not any(pads):
        return x
    return im.emit("pad", [x], {"pads": pads, "mode": mode, "value": value})


def _pool_attrs(node, x, attrs) -> dict:
    kernel = tuple(attrs["kernel_shape"])
    if len(kernel) != 2:
        raise Unsupported(f"{len(kernel)}-D pooling (only 2-D is in the IR)")
    strides = tuple(attrs.get("strides", kernel))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    pads = _conv_pads(_shape(x), kernel, strides, dilations, attrs, node)
    return {"kernel": kernel, "stride": strides, "padding": pads,
            "ceil_mode": bool(attrs.get("ceil_mode", 0)), "_dilation": dilations}


@_h("MaxPool")
def _max_pool(im, node, inputs, attrs):
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("MaxPool with an indices output")
    a = _pool_attrs(node, inputs[0], attrs)
    a["dilation"] = a.pop("_dilation")
    return im.emit("max_pool2d", [inputs[0]], a)


@_h("AveragePool")
def _avg_pool(im, node, inputs, attrs):
    a = _pool_attrs(node, inputs[0], attrs)
    if a.pop("_dilation") != (1, 1):
        raise Unsupported("dilated AveragePool")
    a["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
    return im.emit("avg_pool2d", [inputs[0]], a)


@_h("GlobalAveragePool")
def _gap(im, node, inputs, attrs):
    if len(_shape(inputs[0])) != 4:
        raise Unsupported("GlobalAveragePool on a non-4-D tensor")
    return im.emit("global_avg_pool", [inputs[0]])


@_h("GlobalMaxPool")
def _gmp(im, node, inputs, attrs):
    return im.emit("reduce_max", [inputs[0]], {"axes": (2, 3), "keepdims": True})


def _reduce(op: str):
    def handler(im, node, inputs, attrs):
        x = inputs[0]
        rank = len(_shape(x))
        axes = _axes(im, inputs, attrs)
        if axes is None or axes == ():
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = tuple(range(rank))
        axes = tuple(sorted(a % rank for a in axes))
        keep = bool(attrs.get("keepdims", 1))
        if op == "mean" and rank == 4 and axes == (2, 3) and keep:
            return im.emit("global_avg_pool", [x])
        return im.emit(op, [x], {"axes": axes, "keepdims": keep})
    return handler


_HANDLERS["ReduceMean"] = _reduce("mean")
_HANDLERS["ReduceSum"] = _reduce("reduce_sum")
_HANDLERS["ReduceMax"] = _reduce("reduce_max")
_HANDLERS["ReduceMin"] = _reduce("reduce_min")


@_h("Gather")
def _gather(im, node, inputs, attrs):
    data, idx = inputs
    axis = int(attrs.get("axis", 0)) % len(_shape(data))
    size = _shape(data)[axis]
    if isinstance(idx, Const) and idx.array.size and size is not None:
        # Type inference cannot see index values; an out-of-range constant index would only
        # surface as a shape mismatch far downstream (or a wrong slice), so name it here.
        lo, hi = int(idx.array.min()), int(idx.array.max())
        if lo < -size or hi >= size:
            raise FrontendError(f"{im.b.source}: node {node.name or node.output[0]}: Gather "
                                f"indices span [{lo}, {hi}], out of range [{-size}, {size}) "
                                f"for axis {axis} of {node.input[0]} {tuple(_shape(data))}")
    if isinstance(idx, Const) and idx.array.ndim == 0:  # x[:, k]: a slice, then drop the axis
        k = int(idx.array)
        end = k + 1 if k != -1 else 2 ** 63 - 1
        s = im.emit("slice", [data], {"axes": (axis,), "starts": (k,), "ends": (end,), "steps": (1,)},
                    name=node.output[0] + "_slice")
        return im.emit("squeeze", [s], {"axes": (axis,)})
    return im.emit("gather", [data, idx], {"axis": axis})


@_h("GatherND")
def _gather_nd(im, node, inputs, attrs):
    """data[idx[..., 0], idx[..., 1], ...] with constant indices (masks built from `Range`):
    flatten the indexed leading dims and gather once with the combined linear index."""
    data, idx = inputs
    if attrs.get("batch_dims", 0):
        raise Unsupported("GatherND with batch_dims")
    if not isinstance(idx, Const):
        raise Unsupported("GatherND with run-time indices")
    shape = _shape(data)
    k = idx.array.shape[-1]
    lead = shape[:k]
    if any(d is None for d in lead):
        raise Unsupported("GatherND over a dynamic dimension")
    linear = np.zeros(idx.array.shape[:-1], np.int64)
    for j, d in enumerate(lead):
        col = idx.array[..., j].astype(np.int64)
        linear = linear * d + np.where(col < 0, col + d, col)
    flat = im.emit("reshape", [data], {"shape": (int(np.prod(lead)),) + tuple(
        -1 if d is None else d for d in shape[k:])}, name=node.output[0] + "_flat")
    return im.emit("gather", [flat, Const(node.output[0] + ".index", linear)], {"axis": 0})


@_h("And", "Or")
def _logical(im, node, inputs, attrs):
    """A mask combined with an all-true (And) / all-false (Or) constant is the other mask."""
    a, b = inputs
    is_and = node.op_type == "And"
    for c, other in ((a, b), (b, a)):
        if isinstance(c, Const) and c.array.size and (c.array.all() if is_and else not c.array.any()):
            n = max(len(_shape(other)), c.array.ndim)
            s1 = (1,) * (n - len(_shape(other))) + tuple(_shape(other))
            s2 = (1,) * (n - c.array.ndim) + tuple(c.array.shape)
            out = tuple(x if y == 1 else y for x, y in zip(s1, s2))
            if out != tuple(_shape(other)):
                return im.emit("expand", [other], {"shape": out})
            return other
    raise Unsupported("boolean logic on run-time masks")


@_h("Cast", "CastLike")
def _cast(im, node, inputs, attrs):
    x = inputs[0]
    if node.op_type == "CastLike":
        like = inputs[1]
        dtype = like.dtype if isinstance(like, Value) else _np_to_ir(like.array.dtype)
        if is_narrow_float(dtype):
            raise Unsupported(f"CastLike to {dtype} (only QuantizeLinear converts to float8/float4)")
    else:
        if attrs["to"] not in _ELEM or attrs["to"] in _NARROW_FLOAT_ELEM:
            # float8/float4 casts round and saturate (ONNX's `saturate`): only QuantizeLinear
            # imports that conversion.
            raise Unsupported(f"Cast to ONNX element type {attrs['to']}")
        dtype = _ELEM[attrs["to"]]
    have = x.dtype if isinstance(x, Value) else _np_to_ir(x.array.dtype)
    if have == dtype:
        return x
    return im.emit("cast", [x], {"dtype": dtype})


def _np_to_ir(dt) -> str:
    from ..ir.types import dtype_from_numpy
    return dtype_from_numpy(dt)


# ---- QDQ --------------------------------------------------------------------------------------
def _qparams(im, node, inputs, attrs, elem_type: int) -> QuantParams:
    scale = np.asarray(im.need_const(inputs[1], "scale"), dtype=np.float64)
    zp_in = inputs[2] if len(inputs) > 2 else None
    zp = np.zeros(scale.shape, np.int64) if zp_in is None else \
        np.asarray(im.need_const(zp_in, "zero point")).astype(np.int64)
    if attrs.get("block_size", 0):
        raise Unsupported("blocked quantization (block_size)")
    if elem_type not in _QTYPES:
        raise Unsupported(f"quantization to ONNX element type {elem_type}")
    bits, signed = _QTYPES[elem_type]
    axis = None
    if scale.ndim == 1 and scale.size > 1:
        axis = int(attrs.get("axis", 1))
    return QuantParams(tuple(scale.reshape(-1)), tuple(zp.reshape(-1)), bits, signed, axis)


def _elem_type_of_zp(inputs, attrs, default: int = 2) -> int:
    zp = inputs[2] if len(inputs) > 2 else None
    if isinstance(zp, Const):
        return _np_elem(zp.array.dtype)
    return attrs.get("output_dtype", default) or default


def _np_elem(dt) -> int:
    dt = np.dtype(dt)
    table = {np.int8: 3, np.uint8: 2, np.int16: 5, np.uint16: 4, np.int32: 6}
    for k, v in table.items():
        if dt == np.dtype(k):
            return v
    name = str(dt)
    return {"int4": 22, "uint4": 21, "int2": 26, "uint2": 25}.get(name, -1)


def _axis_norm(q: QuantParams, rank: int) -> QuantParams:
    if q.axis is None:
        return q
    return QuantParams(q.scale, q.zero_point, q.bits, q.signed, q.axis % rank, q.pow2)


@_h("QuantizeLinear")
def _quantize(im, node, inputs, attrs):
    x = inputs[0]
    q = _qparams(im, node, inputs, attrs, _elem_type_of_zp(inputs, attrs))
    q = _axis_norm(q, len(_shape(x)))
    return _QOut(x, q, _elem_type_of_zp(inputs, attrs))


@_h("DequantizeLinear")
def _dequantize(im, node, inputs, attrs):
    x = inputs[0]
    if isinstance(x, _QOut):  # a Q->DQ pair: the float value carries the params
        src, q = x.src, x.quant
        dq = _axis_norm(_qparams(im, node, inputs, attrs, x.dtype), len(_shape(src)))
        if dq != q:
            raise Unsupported("DequantizeLinear parameters differ from its QuantizeLinear's")
        if isinstance(src, Const):  # weights quantized at run time: keep what they dequantize to
            from ..interp.interpreter import fake_quantize
            return Const(src.name, fake_quantize(src.array.astype(np.float32), q), q)
        if src.quant is not None and src.quant != q:
            raise Unsupported(f"{node.input[0]} is quantized twice with different parameters")
        src.quant = q
        return src
    if isinstance(x, Const):  # an integer initializer: the weight it encodes, exactly
        q = _axis_norm(_qparams(im, node, inputs, attrs, _np_elem(x.array.dtype)), x.array.ndim)
        ints = x.array.astype(np.int64)
        real = ((ints - q.zero_point_array(ints.ndim)) * q.scale_array(ints.ndim).astype(np.float32))
        return Const(x.name, real.astype(np.float32), q)
    raise Unsupported("DequantizeLinear of an integer run-time tensor (a quantized graph input); "
                      "only QDQ-wrapped float graphs are imported")


# ---- public entry point -----------------------------------------------------------------------
def from_onnx(model: Union[str, os.PathLike, Any], input_shapes: Optional[Any] = None) -> Graph:
    """Import an ONNX model (path or `onnx.ModelProto`) as a float `Graph`.

    `input_shapes` pins input dimensions, `{name: shape}` or a list in input order; it lets
    the symbolic shape arithmetic of exported models fold into static reshapes."""
    proto, what = _load(model)
    proto = _upgrade(proto, what)
    proto = _with_input_shapes(proto, input_shapes, what)
    proto = _infer_shapes(proto, what)
    graph = OnnxImporter(proto, what).run()
    from ._canonical import canonicalize_graph
    canonicalize_graph(graph)
    return graph


__all__ = ["from_onnx", "OnnxImporter"]

from . import onnx_qops  # noqa: E402,F401  (ONNX's integer operators register their handlers)
