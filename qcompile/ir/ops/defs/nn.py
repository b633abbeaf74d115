"""Neural-network layers: convolution, linear, matmul, normalisation, softmax.

The conv2d float kernel is what calibration runs real CNNs through, so it is vectorised:
im2col through a strided view of the padded input (no Python loop over pixels) and one BLAS
matmul per group, over chunks of the batch so the column buffer stays cache-sized; depthwise
convolutions skip im2col and accumulate one shifted view per kernel tap instead.
"""
from __future__ import annotations

import numpy as np

from ...types import TensorType
from ..registry import AttrSpec, register_op
from .common import broadcast_shapes, fail, fmt, norm_axis, require_float, same_dtype


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


def check_window_attrs(op: str, x: TensorType, kernel: tuple, stride: tuple, padding: tuple,
                       dilation: tuple) -> None:
    """Shared checks for conv/pool attributes on an NCHW input."""
    if x.rank != 4:
        fail(op, f"expects an NCHW input of rank 4, got {fmt(x.shape)}")
    for name, val, n, lo in (("kernel", kernel, 2, 1), ("stride", stride, 2, 1),
                             ("padding", padding, 4, 0), ("dilation", dilation, 2, 1)):
        if len(val) != n or any(v < lo for v in val):
            fail(op, f"{name} must be {n} ints >= {lo}, got {tuple(val)}")


def window_out_shape(op: str, x: TensorType, channels, kernel, stride, padding, dilation,
                     ceil_mode: bool = False) -> tuple:
    n, _, h, w = x.shape
    oh = _conv_out(h, kernel[0], stride[0], padding[0], padding[2], dilation[0], ceil_mode)
    ow = _conv_out(w, kernel[1], stride[1], padding[1], padding[3], dilation[1], ceil_mode)
    if (oh is not None and oh <= 0) or (ow is not None and ow <= 0):
        fail(op, f"output would be empty: input {fmt(x.shape)}, kernel {tuple(kernel)}, "
                 f"padding {tuple(padding)}, dilation {tuple(dilation)}")
    return (n, channels, oh, ow)


# ---- kernel helpers shared with pool.py --------------------------------------------------------


def pad_nchw(x: np.ndarray, top: int, left: int, bottom: int, right: int, value) -> np.ndarray:
    """`x` with constant borders (a copy only when there is padding)."""
    if not (top or left or bottom or right):
        return x
    n, c, h, w = x.shape
    out = np.full((n, c, h + top + bottom, w + left + right), value, dtype=x.dtype)
    out[:, :, top:top + h, left:left + w] = x
    return out


def strided(base: np.ndarray, shape: tuple, strides: tuple, offset: int = 0) -> np.ndarray:
    """A read-only view into C-contiguous `base` (like numpy's as_strided, which costs several
    microseconds a call through its array-interface detour; kernels make many of these)."""
    view = np.ndarray(shape, base.dtype, buffer=base, offset=offset, strides=strides)
    view.flags.writeable = False
    return view


def tap_views(xp: np.ndarray, kernel, stride, dilation, oh: int, ow: int):
    """For each kernel tap (i, j): the (N, C, OH, OW) strided view of the inputs it reads."""
    xp = np.ascontiguousarray(xp)
    sn, sc, sh, sw = xp.strides
    n, c = xp.shape[:2]
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield (i, j), strided(xp, (n, c, oh, ow), (sn, sc, sh * stride[0], sw * stride[1]),
                                  i * dilation[0] * sh + j * dilation[1] * sw)


def ceil_extra(size: int, out: int, k: int, stride: int, dilation: int, pad_lo: int,
               pad_hi: int) -> int:
    """Extra high-side padding so the last window of `out` fits (ceil_mode may overrun)."""
    need = (out - 1) * stride + dilation * (k - 1) + 1
    return max(0, need - (size + pad_lo + pad_hi))


# ---- conv2d ------------------------------------------------------------------------------------


@register_op("conv2d", inputs=("x", "weight", "bias?"),
             attrs={"stride": AttrSpec("ints", (1, 1), doc="(sh, sw)"),
                    "padding": AttrSpec("ints", (0, 0, 0, 0), doc="(top, left, bottom, right)"),
                    "dilation": AttrSpec("ints", (1, 1), doc="(dh, dw)"),
                    "groups": AttrSpec("int", 1, doc="input and output channels split in groups")},
             traits=("mac",))
def conv2d(x, weight, bias=None, *, stride, padding, dilation, groups):
    """2-D cross-correlation as torch.nn.functional.conv2d; NCHW input, OIHW weight (I = C / groups).

    Padding is asymmetric, (top, left, bottom, right), with zeros. Output (N, O, OH, OW) with
    OH = floor((H + top + bottom - dh * (KH - 1) - 1) / sh) + 1, likewise OW.
    """
    require_float("conv2d", x)
    same_dtype("conv2d", x, weight)
    if weight.rank != 4:
        fail("conv2d", f"weight must be OIHW of rank 4, got {fmt(weight.shape)}")
    o, i, kh, kw = weight.shape
    check_window_attrs("conv2d", x, (kh, kw), stride, padding, dilation)
    c = x.shape[1]
    if groups < 1:
        fail("conv2d", f"groups must be >= 1, got {groups}")
    if c is not None and c != i * groups:
        fail("conv2d", f"input {fmt(x.shape)} has {c} channels but weight {fmt(weight.shape)} "
                       f"expects {i} x groups={groups}")
    if o % groups:
        fail("conv2d", f"weight {fmt(weight.shape)}: {o} output channels not divisible by "
                       f"groups={groups}")
    if bias is not None and bias.shape != (o,):
        fail("conv2d", f"bias shape {fmt(bias.shape)}, expected ({o},) for weight {fmt(weight.shape)}")
    return TensorType(window_out_shape("conv2d", x, o, (kh, kw), stride, padding, dilation), x.dtype)


# Column buffers up to this size are built in one go; larger batches are processed in chunks of
# images so the buffer stays in cache instead of streaming hundreds of MB through memory.
_IM2COL_BYTES = 1 << 22


@conv2d.kernel("float")
def _conv2d(x, weight, bias=None, *, stride, padding, dilation, groups):
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    oh = _conv_out(h, kh, stride[0], padding[0], padding[2], dilation[0])
    ow = _conv_out(w, kw, stride[1], padding[1], padding[3], dilation[1])
    xp = np.ascontiguousarray(pad_nchw(x, *padding, 0))
    weight = weight.astype(x.dtype, copy=False)
    if groups > 1 and cg == 1:
        out = _depthwise(xp, weight, (kh, kw), stride, dilation, groups, oh, ow)
    else:
        out = _grouped_im2col(xp, weight, (kh, kw), stride, dilation, groups, oh, ow)
    if bias is not None:
        out += bias.astype(out.dtype, copy=False).reshape(1, o, 1, 1)
    return out


def _grouped_im2col(xp, weight, kernel, stride, dilation, groups, oh, ow):
    n, c = xp.shape[:2]
    o, cg, kh, kw = weight.shape
    og, k, cols_per_image = o // groups, cg * kh * kw, oh * ow
    sn, sc, sh, sw = xp.strides
    w_g = weight.reshape(groups, og, k)
    chunk = max(1, _IM2COL_BYTES // (k * cols_per_image * xp.itemsize))
    if n == 1:  # the GEMM result is already NCHW
        chunk = 1
        out = None
    else:
        out = np.empty((n, o, oh, ow), dtype=xp.dtype)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        # (G, Cg, KH, KW, m, OH, OW) view; the reshape to (G, K, m*OH*OW) is the im2col copy.
        view = strided(xp, (groups, cg, kh, kw, m, oh, ow),
                       (sc * cg, sc, sh * dilation[0], sw * dilation[1], sn,
                        sh * stride[0], sw * stride[1]), start * sn)
        cols = view.reshape(groups, k, m * cols_per_image)
        res = np.matmul(w_g, cols)  # (G, Og, m*L): one GEMM per group
        res = res.reshape(o, m, oh, ow)
        if out is None:
            return res.reshape(1, o, oh, ow)
        if m == 1:
            out[start] = res[:, 0]
        else:
            out[start:start + m] = res.transpose(1, 0, 2, 3)
    return out


def _depthwise(xp, weight, kernel, stride, dilation, groups, oh, ow):
    """groups == C with one input channel per group: sum over taps of view * per-channel weight."""
    o = weight.shape[0]
    mult = o // groups
    if mult > 1:  # each input channel feeds `mult` consecutive output channels
        xp = np.repeat(xp, mult, axis=1)
    out = None
    for (i, j), view in tap_views(xp, kernel, stride, dilation, oh, ow):
        term = view * weight[:, 0, i, j].reshape(1, o, 1, 1)
        if out is None:
            out = term
        else:
            out += term
    return out


# ---- linear / matmul -----------------------------------------------------------------------------


@register_op("linear", inputs=("x", "weight", "bias?"), traits=("mac",))
def linear(x, weight, bias=None):
    """x @ weight.T + bias over the last axis of x; weight is (out_features, in_features)."""
    require_float("linear", x)
    same_dtype("linear", x, weight)
    if weight.rank != 2:
        fail("linear", f"weight must be (out, in) of rank 2, got {fmt(weight.shape)}")
    k = weight.shape[1]
    if x.rank < 1 or (x.shape[-1] is not None and k is not None and x.shape[-1] != k):
        fail("linear", f"input {fmt(x.shape)} does not fit weight {fmt(weight.shape)} "
                       f"(expected last dimension {k})")
    if bias is not None and bias.shape != (weight.shape[0],):
        fail("linear", f"bias shape {fmt(bias.shape)}, expected ({weight.shape[0]},)")
    return TensorType(x.shape[:-1] + (weight.shape[0],), x.dtype)


@linear.kernel("float")
def _linear(x, weight, bias=None):
    y = np.matmul(x, weight.T)
    return y if bias is None else y + bias


@register_op("matmul", inputs=("a", "b"), traits=("mac",))
def matmul(a, b):
    """numpy matmul: batched over leading dims with broadcasting; rank-1 operands as vectors."""
    require_float("matmul", a, "a")
    same_dtype("matmul", a, b)
    if a.rank == 0 or b.rank == 0:
        fail("matmul", f"operands must have rank >= 1, got {fmt(a.shape)} and {fmt(b.shape)}")
    sa = (1,) + a.shape if a.rank == 1 else a.shape
    sb = b.shape + (1,) if b.rank == 1 else b.shape
    ka, kb = sa[-1], sb[-2]
    if ka is not None and kb is not None and ka != kb:
        fail("matmul", f"inner dimensions differ: {fmt(a.shape)} @ {fmt(b.shape)}")
    batch = broadcast_shapes(sa[:-2], sb[:-2], "matmul")
    shape = batch + ((sa[-2],) if a.rank > 1 else ()) + ((sb[-1],) if b.rank > 1 else ())
    return TensorType(shape, a.dtype)


@matmul.kernel("float")
def _matmul(a, b):
    return np.asarray(np.matmul(a, b))


# ---- normalisation -------------------------------------------------------------------------------


@register_op("batch_norm", inputs=("x", "gamma", "beta", "mean", "var"),
             attrs={"eps": AttrSpec("float", 1e-5), "axis": AttrSpec("int", 1, doc="channel axis")})
def batch_norm(x, gamma, beta, mean, var, *, eps, axis):
    """Inference batch norm along `axis`: (x - mean) / sqrt(var + eps) * gamma + beta; params (C,)."""
    require_float("batch_norm", x)
    ax = norm_axis("batch_norm", axis, x.rank)
    c = x.shape[ax]
    for name, t in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        if t.rank != 1 or (c is not None and t.shape[0] not in (c, None)):
            fail("batch_norm", f"{name} shape {fmt(t.shape)}, expected ({c},) for input "
                               f"{fmt(x.shape)} along axis {axis}")
    if eps < 0:
        fail("batch_norm", f"eps must be >= 0, got {eps}")
    return x


@batch_norm.kernel("float")
def _batch_norm(x, gamma, beta, mean, var, *, eps, axis):
    # Fold into one scale and shift per channel (in float64), then one multiply-add pass.
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    out = x * scale.astype(x.dtype).reshape(shape)
    out += shift.astype(x.dtype).reshape(shape)
    return out


@register_op("softmax", attrs={"axis": AttrSpec("int", -1)})
def softmax(x, *, axis):
    """exp(x - max) / sum(exp(x - max)) along `axis` (numerically stable)."""
    require_float("softmax", x)
    norm_axis("softmax", axis, x.rank)
    return x


@softmax.kernel("float")
def _softmax(x, *, axis):
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


@register_op("layer_norm", inputs=("x", "gamma?", "beta?"),
             attrs={"axis": AttrSpec("int", -1, doc="normalise over dims axis..end"),
                    "eps": AttrSpec("float", 1e-5)})
def layer_norm(x, gamma=None, beta=None, *, axis, eps):
    """ONNX LayerNormalization: (x - mean) / sqrt(var + eps) * gamma + beta over dims axis..end.

    mean and (biased) variance are taken over the normalised dims; gamma and beta broadcast
    against x.shape[axis:].
    """
    require_float("layer_norm", x)
    ax = norm_axis("layer_norm", axis, x.rank)
    norm_shape = x.shape[ax:]
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t is None:
            continue
        same_dtype("layer_norm", x, t)
        try:
            ok = broadcast_shapes(norm_shape, t.shape, "layer_norm") == norm_shape
        except Exception:
            ok = False
        if not ok:
            fail("layer_norm", f"{name} shape {fmt(t.shape)} does not broadcast to the normalised "
                               f"shape {fmt(norm_shape)} of input {fmt(x.shape)}")
    if eps < 0:
        fail("layer_norm", f"eps must be >= 0, got {eps}")
    return x


@layer_norm.kernel("float")
def _layer_norm(x, gamma=None, beta=None, *, axis, eps):
    axes = tuple(range(axis % x.ndim, x.ndim))
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=axes, keepdims=True)
    d = x64 - mu
    y = d / np.sqrt((d * d).mean(axis=axes, keepdims=True) + eps)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y.astype(x.dtype)
