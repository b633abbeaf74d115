"""Element-wise ops: activations and broadcasting arithmetic."""
from __future__ import annotations

import numpy as np

from ..registry import AttrSpec, register_op
from .common import broadcast_shapes


@register_op("relu", traits=("elementwise", "positively_homogeneous"))
def relu(x):
    """max(x, 0)"""
    return x


@relu.kernel("float")
def _relu(x):
    return np.maximum(x, np.zeros((), x.dtype))


@register_op("add", inputs=("a", "b"), traits=("elementwise", "broadcast", "commutative"))
def add(a, b):
    """a + b with numpy broadcasting"""
    return a.with_shape(broadcast_shapes(a.shape, b.shape, "add"))


@add.kernel("float")
def _add(a, b):
    return a + b
