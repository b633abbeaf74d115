"""Element-wise ops: activations and broadcasting arithmetic.

Float kernels keep the input dtype. Transcendental functions are evaluated in float64 and
rounded once to the input dtype, so they agree with PyTorch's float32 results to within an ulp
or two whatever the platform's libm does.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from ...types import TensorType
from ..registry import AttrSpec, register_op
from .common import (broadcast_shapes, fail, fmt, norm_axis, require_float, require_numeric,
                     same_dtype)

# ---- unary ops ---------------------------------------------------------------------------------


def _unary(name: str, doc: str, fn: Callable, *, float_only: bool = True,
           traits: tuple = ("elementwise",), attrs: Optional[dict] = None,
           check: Optional[Callable] = None):
    """Declare a one-input op whose output has the input's type."""
    def infer(x: TensorType, **attrs) -> TensorType:
        (require_float if float_only else require_numeric)(name, x)
        if check is not None:
            check(x, **attrs)
        return x
    infer.__doc__ = doc
    infer.__name__ = name
    opdef = register_op(name, attrs=attrs or {}, traits=traits, doc=doc)(infer)
    opdef.kernel("float")(fn)
    return opdef


def _in_f64(fn: Callable) -> Callable:
    """Evaluate `fn` in float64 and round the result back to the input's dtype."""
    def kernel(x, **attrs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return fn(x.astype(np.float64), **attrs).astype(x.dtype)
    kernel.__name__ = fn.__name__
    return kernel


# erf: numpy has none and scipy is not a core dependency, so it is computed here in float64:
# the Maclaurin series for |x| < 2 (34 terms reach double precision at |x| = 2) and the
# continued fraction of erfc beyond, where it converges within 60 terms to double precision.
_ERF_SERIES = np.array([(-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(34)][::-1])


def erf_f64(x: np.ndarray) -> np.ndarray:
    """The error function of a float64 array, accurate to a few ulp of float64."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    ax = np.abs(x)
    small = ax < 2.0
    xs = x[small]
    z = xs * xs
    acc = np.zeros_like(z)
    for c in _ERF_SERIES:
        acc = acc * z + c
    out[small] = (2.0 / math.sqrt(math.pi)) * xs * acc
    xl = ax[~small]
    if xl.size:
        # erfc(x) = exp(-x^2) / sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), evaluated
        # from the tail; inf inputs give 1/(inf) -> erfc 0, as they should.
        with np.errstate(invalid="ignore", over="ignore"):
            k = xl.copy()
            for n in range(60, 0, -1):
                k = xl + (n / 2.0) / k
            erfc = np.exp(-xl * xl) / (math.sqrt(math.pi) * k)
        erfc = np.where(np.isinf(xl), 0.0, erfc)
        out[~small] = np.copysign(1.0 - erfc, x[~small])
    return out


def _sigmoid64(x):
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _relu6(x):
    return np.clip(x, 0, 6)


_unary("sigmoid", "1 / (1 + exp(-x)), evaluated without overflow", _in_f64(_sigmoid64))
_unary("tanh", "hyperbolic tangent", _in_f64(np.tanh))
_unary("exp", "e ** x (overflow gives inf)", _in_f64(np.exp))
_unary("sqrt", "square root (negative inputs give nan)", _in_f64(np.sqrt))
_unary("rsqrt", "1 / sqrt(x) (0 gives inf, negative inputs give nan)",
       _in_f64(lambda x: 1.0 / np.sqrt(x)))
_unary("erf", "the Gauss error function", _in_f64(erf_f64))
_unary("hardsigmoid", "relu6(x + 3) / 6, PyTorch's hardsigmoid",
       lambda x: (_relu6(x + 3) / 6).astype(x.dtype))
_unary("hardswish", "x * relu6(x + 3) / 6, PyTorch's hardswish",
       lambda x: (x * _relu6(x + 3) / 6).astype(x.dtype))
_unary("round", "round to the nearest integer, ties to even (ONNX Round; nan and +-inf kept)",
       np.rint)
_unary("neg", "-x", np.negative, float_only=False)
_unary("abs", "|x|", np.abs, float_only=False)
_unary("relu", "max(x, 0)", lambda x: np.maximum(x, np.zeros((), x.dtype)), float_only=False,
       traits=("elementwise", "positively_homogeneous"))
_unary("leaky_relu", "x if x >= 0 else alpha * x",
       lambda x, alpha: np.where(x >= 0, x, x * x.dtype.type(alpha)),
       traits=("elementwise", "positively_homogeneous"),
       attrs={"alpha": AttrSpec("float", 0.01, doc="slope for negative inputs")})


def _check_clip(x, *, min, max):  # noqa: A002 - the catalog's attribute names
    if not min <= max:
        fail("clip", f"min {min} is greater than max {max}")


_unary("clip", "min(max(x, min), max); relu6 is clip{min=0, max=6}",
       lambda x, min, max: np.clip(x, min, max).astype(x.dtype, copy=False),
       float_only=False, check=_check_clip,
       attrs={"min": AttrSpec("float", doc="lower bound"), "max": AttrSpec("float", doc="upper bound")})


def _gelu(x, approximate):
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
        return 0.5 * x * (1.0 + np.tanh(inner))
    return 0.5 * x * (1.0 + erf_f64(x / math.sqrt(2.0)))


_unary("gelu", "x * Phi(x) with the normal CDF Phi exact (erf) or its tanh approximation, as torch",
       _in_f64(_gelu),
       attrs={"approximate": AttrSpec("str", "none", choices=("none", "tanh"),
                                      doc="'tanh': 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))")})


@register_op("prelu", inputs=("x", "slope"), attrs={"axis": AttrSpec("int", 1, doc="channel axis")},
             traits=("elementwise", "positively_homogeneous"))
def prelu(x, slope, *, axis):
    """x if x >= 0 else slope * x; slope is (C,) along `axis` or (1,)."""
    require_float("prelu", x)
    same_dtype("prelu", x, slope)
    if slope.rank != 1:
        fail("prelu", f"slope must have rank 1, got {fmt(slope.shape)} for input {fmt(x.shape)}")
    ax = norm_axis("prelu", axis, x.rank)
    c = x.shape[ax]
    if slope.shape[0] not in (1, c, None) and c is not None:
        fail("prelu", f"slope {fmt(slope.shape)} fits neither (1,) nor ({c},) along axis {axis} "
                      f"of input {fmt(x.shape)}")
    return x


@prelu.kernel("float")
def _prelu(x, slope, *, axis):
    shape = [1] * x.ndim
    shape[axis % x.ndim] = slope.shape[0]
    return np.where(x >= 0, x, x * slope.reshape(shape))


# ---- binary ops ----------------------------------------------------------------------------------


def _binary(name: str, doc: str, fn: Callable, commutative: bool = False):
    def infer(a: TensorType, b: TensorType) -> TensorType:
        require_numeric(name, a, "a")
        dtype = same_dtype(name, a, b)
        return TensorType(broadcast_shapes(a.shape, b.shape, name), dtype)
    infer.__doc__ = doc
    infer.__name__ = name
    traits = ("elementwise", "broadcast") + (("commutative",) if commutative else ())
    opdef = register_op(name, inputs=("a", "b"), traits=traits, doc=doc)(infer)
    opdef.kernel("float")(fn)
    return opdef


def _div(a, b):
    if np.issubdtype(a.dtype, np.integer):
        # Integer division truncates toward zero (ONNX Div, C); numpy's // floors.
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) != (b < 0), -q, q).astype(a.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b)


def _pow(a, b):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.power(a, b)


_binary("add", "a + b with numpy broadcasting", np.add, commutative=True)
_binary("sub", "a - b with numpy broadcasting", np.subtract)
_binary("mul", "a * b with numpy broadcasting", np.multiply, commutative=True)
_binary("div", "a / b with numpy broadcasting (integers: truncated toward zero)", _div)
_binary("pow", "a ** b with numpy broadcasting (negative base, fractional exponent: nan)", _pow)
_binary("maximum", "element-wise max(a, b), nan if either is nan", np.maximum, commutative=True)
_binary("minimum", "element-wise min(a, b), nan if either is nan", np.minimum, commutative=True)


@register_op("where", inputs=("cond", "a", "b"), traits=("elementwise", "broadcast"))
def where(cond, a, b):
    """a where cond is true else b, broadcasting all three (numpy where)"""
    if cond.dtype != "bool":
        fail("where", f"cond must be bool, got {cond.dtype} {fmt(cond.shape)}")
    dtype = same_dtype("where", a, b)
    shape = broadcast_shapes(broadcast_shapes(cond.shape, a.shape, "where"), b.shape, "where")
    return TensorType(shape, dtype)


@where.kernel("float")
def _where(cond, a, b):
    return np.where(cond, a, b)
