"""Pooling over NCHW images: max, average (PyTorch semantics, ceil_mode included), global average.

The kernels loop over kernel taps (a handful), never over pixels: each tap is a strided view of
the padded input and is folded into the result with one vectorised maximum or add.
"""
from __future__ import annotations

import numpy as np

from ...types import TensorType
from ..registry import AttrSpec, register_op
from .common import fail, fmt, require_float, require_numeric
from .nn import _conv_out, ceil_extra, check_window_attrs, pad_nchw, tap_views, window_out_shape

_WINDOW_ATTRS = {
    "kernel": AttrSpec("ints", doc="(kh, kw)"),
    "stride": AttrSpec("ints", (), doc="(sh, sw); empty means equal to kernel"),
    "padding": AttrSpec("ints", (0, 0, 0, 0), doc="(top, left, bottom, right)"),
}


def _stride(kernel, stride):
    return tuple(stride) if stride else tuple(kernel)


def _out_hw(x_shape, kernel, stride, padding, dilation, ceil_mode):
    h, w = x_shape[2:]
    return (_conv_out(h, kernel[0], stride[0], padding[0], padding[2], dilation[0], ceil_mode),
            _conv_out(w, kernel[1], stride[1], padding[1], padding[3], dilation[1], ceil_mode))


def _padded(x, kernel, stride, padding, dilation, oh, ow, value):
    """x padded per `padding`, plus whatever high-side overrun ceil_mode windows need."""
    h, w = x.shape[2:]
    top, left, bottom, right = padding
    bottom += ceil_extra(h, oh, kernel[0], stride[0], dilation[0], top, bottom)
    right += ceil_extra(w, ow, kernel[1], stride[1], dilation[1], left, right)
    return pad_nchw(x, top, left, bottom, right, value)


def _check_pool_padding(op, kernel, padding, dilation=(1, 1)):
    # PyTorch's rule; it also guarantees no window lies entirely in the padding.
    for k, d, lo, hi, axis in ((kernel[0], dilation[0], padding[0], padding[2], "height"),
                               (kernel[1], dilation[1], padding[1], padding[3], "width")):
        half = (d * (k - 1) + 1) // 2
        if lo > half or hi > half:
            fail(op, f"padding {tuple(padding)} exceeds half the effective kernel ({half}) "
                     f"along {axis}")


@register_op("max_pool2d",
             attrs={**_WINDOW_ATTRS,
                    "dilation": AttrSpec("ints", (1, 1)),
                    "ceil_mode": AttrSpec("bool", False, doc="round the output size up")})
def max_pool2d(x, *, kernel, stride, padding, dilation, ceil_mode):
    """Max over each (dilated) window as torch max_pool2d; padding never wins (it is -inf).

    With ceil_mode the output size rounds up, but the last window must start inside the input
    or the top/left padding (the PyTorch and ONNX rule); windows may then run past the padded
    input, and only real elements count. Padding may be at most half the effective kernel.
    """
    require_numeric("max_pool2d", x)
    stride = _stride(kernel, stride)
    check_window_attrs("max_pool2d", x, kernel, stride, padding, dilation)
    _check_pool_padding("max_pool2d", kernel, padding, dilation)
    return TensorType(window_out_shape("max_pool2d", x, x.shape[1], kernel, stride, padding,
                                       dilation, ceil_mode), x.dtype)


@max_pool2d.kernel("float")
def _max_pool2d(x, *, kernel, stride, padding, dilation, ceil_mode):
    stride = _stride(kernel, stride)
    oh, ow = _out_hw(x.shape, kernel, stride, padding, dilation, ceil_mode)
    lowest = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    xp = _padded(x, kernel, stride, padding, dilation, oh, ow, lowest)
    out = None
    for _, view in tap_views(xp, kernel, stride, dilation, oh, ow):
        if out is None:
            out = view.copy()
        else:
            np.maximum(out, view, out=out)
    return out


@register_op("avg_pool2d",
             attrs={**_WINDOW_ATTRS,
                    "ceil_mode": AttrSpec("bool", False, doc="round the output size up"),
                    "count_include_pad": AttrSpec("bool", True, doc="padding counts in the divisor")})
def avg_pool2d(x, *, kernel, stride, padding, ceil_mode, count_include_pad):
    """Mean over each window as torch avg_pool2d (divisor: see count_include_pad and ceil_mode).

    With count_include_pad the divisor is the window clipped to the padded input (so a ceil_mode
    window that runs past the padding divides by fewer elements); without it, the number of
    real input elements in the window.
    """
    require_float("avg_pool2d", x)
    stride = _stride(kernel, stride)
    check_window_attrs("avg_pool2d", x, kernel, stride, padding, (1, 1))
    _check_pool_padding("avg_pool2d", kernel, padding)
    return TensorType(window_out_shape("avg_pool2d", x, x.shape[1], kernel, stride, padding,
                                       (1, 1), ceil_mode), x.dtype)


def _divisor_1d(size, out, k, stride, pad_lo, pad_hi, count_include_pad):
    start = np.arange(out) * stride - pad_lo
    end = np.minimum(start + k, size + pad_hi)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


@avg_pool2d.kernel("float")
def _avg_pool2d(x, *, kernel, stride, padding, ceil_mode, count_include_pad):
    stride = _stride(kernel, stride)
    oh, ow = _out_hw(x.shape, kernel, stride, padding, (1, 1), ceil_mode)
    xp = _padded(x, kernel, stride, padding, (1, 1), oh, ow, 0)
    acc = np.zeros((x.shape[0], x.shape[1], oh, ow), dtype=np.float64 if x.dtype == np.float16
                   else x.dtype)
    for _, view in tap_views(xp, kernel, stride, (1, 1), oh, ow):
        acc += view
    h, w = x.shape[2:]
    dh = _divisor_1d(h, oh, kernel[0], stride[0], padding[0], padding[2], count_include_pad)
    dw = _divisor_1d(w, ow, kernel[1], stride[1], padding[1], padding[3], count_include_pad)
    return (acc / np.outer(dh, dw).astype(acc.dtype)).astype(x.dtype, copy=False)


@register_op("global_avg_pool")
def global_avg_pool(x):
    """Mean over H and W keeping dims: (N, C, H, W) -> (N, C, 1, 1)."""
    require_float("global_avg_pool", x)
    if x.rank != 4:
        fail("global_avg_pool", f"expects an NCHW input of rank 4, got {fmt(x.shape)}")
    return TensorType(x.shape[:2] + (1, 1), x.dtype)


@global_avg_pool.kernel("float")
def _global_avg_pool(x):
    return x.mean(axis=(2, 3), keepdims=True, dtype=np.float64 if x.dtype == np.float16
                  else x.dtype).astype(x.dtype, copy=False)
