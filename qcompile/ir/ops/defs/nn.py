"""Neural-network layers: convolution, linear, normalisation, pooling."""
from __future__ import annotations

import numpy as np

from ....errors import OpError
from ...types import TensorType
from ..registry import AttrSpec, register_op


def _conv_out(size, k, stride, pad_lo, pad_hi, dilation, ceil_mode=False):
    if size is None:
        return None
    span = size + pad_lo + pad_hi - dilation * (k - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        # PyTorch/ONNX rule: the last window must start inside the input or left padding.
        if (out - 1) * stride >= size + pad_lo:
            out -= 1
        return out
    return span // stride + 1


@register_op("conv2d", inputs=("x", "weight", "bias?"),
             attrs={"stride": AttrSpec("ints", (1, 1)),
                    "padding": AttrSpec("ints", (0, 0, 0, 0), doc="top, left, bottom, right"),
                    "dilation": AttrSpec("ints", (1, 1)),
                    "groups": AttrSpec("int", 1)},
             traits=("mac",))
def conv2d(x, weight, bias=None, *, stride, padding, dilation, groups):
    """2-D convolution, NCHW input, OIHW weight (I = C / groups); padding is (top, left, bottom, right)."""
    if x.rank != 4 or weight.rank != 4:
        raise OpError(f"conv2d expects rank-4 input and weight, got {x.shape} and {weight.shape}")
    n, c, h, w = x.shape
    o, i, kh, kw = weight.shape
    if c is not None and c != i * groups:
        raise OpError(f"conv2d: input has {c} channels but weight expects {i} x groups={groups}")
    if o % groups:
        raise OpError(f"conv2d: {o} output channels not divisible by groups={groups}")
    if bias is not None and bias.shape != (o,):
        raise OpError(f"conv2d: bias shape {bias.shape}, expected ({o},)")
    oh = _conv_out(h, kh, stride[0], padding[0], padding[2], dilation[0])
    ow = _conv_out(w, kw, stride[1], padding[1], padding[3], dilation[1])
    if (oh is not None and oh <= 0) or (ow is not None and ow <= 0):
        raise OpError(f"conv2d: output would be empty for input {x.shape} and kernel {(kh, kw)}")
    return TensorType((n, o, oh, ow), x.dtype)


@register_op("linear", inputs=("x", "weight", "bias?"), traits=("mac",))
def linear(x, weight, bias=None):
    """y = x @ weight.T + bias; weight is (out_features, in_features)."""
    if weight.rank != 2 or x.shape[-1] not in (weight.shape[1], None):
        raise OpError(f"linear: input {x.shape} does not fit weight {weight.shape}")
    return TensorType(x.shape[:-1] + (weight.shape[0],), x.dtype)


@linear.kernel("float")
def _linear(x, weight, bias=None):
    y = np.matmul(x, weight.T)
    return y if bias is None else y + bias
