"""Build one-operator int8 .tflite models from the flatbuffer schema that ships with LiteRT, and
run them on TFLite's reference kernels. TensorFlow is not needed.

    x = Tensor("x", (1, 8, 8, 3), "int8", scale=0.05, zero_point=-3)          # a model input
    w = Tensor("w", w_data.shape, "int8", scale=ws, zero_point=0, axis=0, data=w_data)
    model = build_model("CONV_2D", [x, w, b], [y], conv2d_options(...))
    (out,) = run_reference(model, [x_data])

Only the reference kernels (`OpResolverType.BUILTIN_REF`) are used: the default resolver's
XNNPACK delegate, and the optimized kernels, are not bit-exact with TFLite's own reference
arithmetic, so they are no conformance target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ai_edge_litert import schema_py_generated as S
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from ai_edge_litert.tools import flatbuffer_utils as fu

from qcompile.quant.intmath import round_half_away

_TYPES = {"int8": (S.TensorType.INT8, np.int8), "uint8": (S.TensorType.UINT8, np.uint8),
          "int32": (S.TensorType.INT32, np.int32), "float32": (S.TensorType.FLOAT32, np.float32)}

ACTIVATIONS = {"none": S.ActivationFunctionType.NONE, "relu": S.ActivationFunctionType.RELU,
               "relu6": S.ActivationFunctionType.RELU6,
               "relu_n1_to_1": S.ActivationFunctionType.RELU_N1_TO_1}

PADDINGS = {"same": S.Padding.SAME, "valid": S.Padding.VALID}


@dataclass
class Tensor:
    """One tensor of the model. `data` makes it a constant (weights, bias); without it, a tensor
    that is an operator input is a model input and one that is an operator output is an output.
    `scale`/`zero_point` may be per-channel sequences along `axis` (TFLite's quantizedDimension)."""
    name: str
    shape: Sequence[int]
    dtype: str
    scale: object = None
    zero_point: object = 0
    axis: int = 0
    data: Optional[np.ndarray] = None

    def to_flatbuffer(self, buffer_index: int):
        t = S.TensorT()
        t.name, t.shape, t.buffer = self.name, [int(d) for d in self.shape], buffer_index
        t.type = _TYPES[self.dtype][0]
        if self.scale is not None:
            q = S.QuantizationParametersT()
            scales = np.atleast_1d(np.asarray(self.scale, np.float32))  # TFLite stores float32
            zps = np.broadcast_to(np.atleast_1d(self.zero_point), scales.shape)
            q.scale = [float(s) for s in scales]
            q.zeroPoint = [int(z) for z in zps]
            q.quantizedDimension = int(self.axis)
            t.quantization = q
        return t


def _buffer(arr: Optional[np.ndarray]):
    b = S.BufferT()
    b.data = None if arr is None else list(np.ascontiguousarray(arr).view(np.uint8).reshape(-1))
    return b


def build_model(op: str, inputs: Sequence[Optional[Tensor]], outputs: Sequence[Tensor],
                options: Optional[tuple] = None, version: int = 1) -> bytes:
    """A model holding the single builtin operator `op` (a `BuiltinOperator` name).

    `inputs` are the operator's inputs in order (None for an omitted optional input, e.g. a
    FULLY_CONNECTED without bias); the model's inputs are the operator inputs without data, in
    that order. `options` is `(BuiltinOptions.X, XOptionsT)` or None."""
    tensors: list[Tensor] = []
    for t in list(inputs) + list(outputs):
        if t is not None and all(t is not u for u in tensors):
            tensors.append(t)
    index = {id(t): i for i, t in enumerate(tensors)}
    for t in tensors:
        if t.data is not None and np.asarray(t.data).dtype != _TYPES[t.dtype][1]:
            raise TypeError(f"tensor {t.name}: data is {np.asarray(t.data).dtype}, declared {t.dtype}")

    m = S.ModelT()
    m.version = 3
    code = getattr(S.BuiltinOperator, op)
    oc = S.OperatorCodeT()
    # Codes above 127 only fit the extended field; the deprecated one then holds the placeholder.
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
    m.operatorCodes = [oc]
    m.buffers = [_buffer(None)]  # buffer 0 is the conventional empty buffer
    fb_tensors = []
    for t in tensors:
        m.buffers.append(_buffer(t.data))
        fb_tensors.append(t.to_flatbuffer(len(m.buffers) - 1))

    operator = S.OperatorT()
    operator.opcodeIndex = 0
    operator.inputs = [-1 if t is None else index[id(t)] for t in inputs]
    operator.outputs = [index[id(t)] for t in outputs]
    if options is not None:
        operator.builtinOptionsType, operator.builtinOptions = options
    sg = S.SubGraphT()
    sg.tensors = fb_tensors
    sg.inputs = [index[id(t)] for t in inputs if t is not None and t.data is None]
    sg.outputs = list(operator.outputs)
    sg.operators = [operator]
    sg.name = "main"
    m.subgraphs = [sg]
    m.description = "conformance"
    return bytes(fu.convert_object_to_bytearray(m))


def run_reference(model: bytes, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run `model` once on TFLite's reference kernels; returns its outputs."""
    it = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    details = it.get_input_details()
    if len(details) != len(inputs):
        raise ValueError(f"model takes {len(details)} inputs, got {len(inputs)}")
    for d, x in zip(details, inputs):
        it.set_tensor(d["index"], np.ascontiguousarray(x))
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


# --------------------------------------------------------------------------- builtin options

def conv2d_options(stride=(1, 1), dilation=(1, 1), padding="valid", activation="none") -> tuple:
    o = S.Conv2DOptionsT()
    o.padding = PADDINGS[padding]
    o.strideH, o.strideW = stride
    o.dilationHFactor, o.dilationWFactor = dilation
    o.fusedActivationFunction = ACTIVATIONS[activation]
    return S.BuiltinOptions.Conv2DOptions, o


def depthwise_conv2d_options(depth_multiplier: int, stride=(1, 1), dilation=(1, 1),
                             padding="valid", activation="none") -> tuple:
    o = S.DepthwiseConv2DOptionsT()
    o.padding = PADDINGS[padding]
    o.strideH, o.strideW = stride
    o.dilationHFactor, o.dilationWFactor = dilation
    o.depthMultiplier = depth_multiplier
    o.fusedActivationFunction = ACTIVATIONS[activation]
    return S.BuiltinOptions.DepthwiseConv2DOptions, o


def fully_connected_options(activation="none") -> tuple:
    o = S.FullyConnectedOptionsT()
    o.fusedActivationFunction = ACTIVATIONS[activation]
    return S.BuiltinOptions.FullyConnectedOptions, o


def add_options(activation="none") -> tuple:
    o = S.AddOptionsT()
    o.fusedActivationFunction = ACTIVATIONS[activation]
    return S.BuiltinOptions.AddOptions, o


def mul_options(activation="none") -> tuple:
    o = S.MulOptionsT()
    o.fusedActivationFunction = ACTIVATIONS[activation]
    return S.BuiltinOptions.MulOptions, o


def pool2d_options(filter_hw, stride=(1, 1), padding="valid", activation="none") -> tuple:
    o = S.Pool2DOptionsT()
    o.padding = PADDINGS[padding]
    o.strideH, o.strideW = stride
    o.filterHeight, o.filterWidth = filter_hw
    o.fusedActivationFunction = ACTIVATIONS[activation]
    return S.BuiltinOptions.Pool2DOptions, o


# --------------------------------------------------------------------------- TFLite's arithmetic setup

def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TFLite's SAME: output ceil(size / stride); an odd total puts
    the extra element after (ComputePaddingHeightWidth)."""
    out = -(-size // stride)
    effective = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def out_size(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    effective = (kernel - 1) * dilation + 1
    if padding == "same":
        return -(-size // stride)
    return (size - effective) // stride + 1


def activation_range(activation: str, scale: float, zero_point: int, qmin=-128, qmax=127) -> tuple[int, int]:
    """TFLite's CalculateActivationRangeQuantized: the fused activation's bounds are quantized as
    zero_point + TfLiteRound(float(bound) / float(scale)) (float32 division, ties away)."""
    def q(bound: float) -> int:
        return zero_point + int(round_half_away(np.float32(bound) / np.float32(scale)))

    if activation == "none":
        return qmin, qmax
    if activation == "relu":
        return max(qmin, q(0.0)), qmax
    if activation == "relu6":
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if activation == "relu_n1_to_1":
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    raise ValueError(f"unknown fused activation {activation!r}")
