"""`QuantScheme`: the choices a quantization makes (bit widths, granularity, symmetry, scale
constraints) and which ops get quantized at all. The `quantize` pass builds one from its options,
starting from a target's `quant_scheme` when the target has one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .intmath import QuantError

#: Bit widths allowed for weights and activations.
ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)

#: Ops that forward their input's values unchanged (a subset, reordered or reshaped), so their
#: output can reuse the input's QuantParams: every "shape" op plus max pooling.
PASS_THROUGH_OPS = frozenset({"max_pool2d", "reshape", "flatten", "transpose", "squeeze",
                              "unsqueeze", "expand", "slice", "identity"})

#: Activations an integer kernel applies as a clamp on the producer's requantized output, so the
#: producer's own output is never materialised.
FUSABLE_ACTIVATIONS = frozenset({"relu", "clip"})

#: Producers whose output a following relu/clip fuses into: they requantize an accumulator (or a
#: per-channel affine) and can clamp while doing so.
FUSING_PRODUCERS = frozenset({"conv2d", "linear", "matmul", "add", "sub", "mul", "batch_norm"})

#: Ops with an integer recipe: MACs, element-wise arithmetic, activations (clamps or lookup
#: tables), pooling, data movement. `batch_norm` is a per-channel affine (a depthwise 1x1
#: multiplier), so it is quantized like any op: its output is materialised unless a relu/clip
#: follows. Softmax, layer_norm, division, exp and friends stay float by default.
DEFAULT_QUANTIZE_OPS = frozenset({
    "conv2d", "linear", "matmul", "batch_norm",
    "add", "sub", "mul", "maximum", "minimum",
    "relu", "clip", "prelu", "leaky_relu", "hardswish", "hardsigmoid", "sigmoid", "tanh",
    "max_pool2d", "avg_pool2d", "global_avg_pool", "mean", "pad", "concat",
}) | PASS_THROUGH_OPS

#: Ops with integer-only transformer recipes (I-BERT style, passes/lower_integer_transformer.py):
#: the `quantize` pass adds them with `transformer=true`, so a BERT-like encoder lowers to an
#: integer-only graph. `gather` is quantized as data movement (the table takes its output's
#: params); softmax outputs get the fixed grid of FIXED_GRID_OPS.
TRANSFORMER_QUANTIZE_OPS = frozenset({"softmax", "masked_softmax", "layer_norm", "gelu",
                                      "gather", "reduce_sum", "div"})

#: Ops whose quantized output has a fixed grid instead of a calibrated one: probabilities in
#: [0, 1] with scale 2**-bits (1/256 for 8 bits; TFLite's softmax output), zero point 0 when
#: unsigned, qmin when signed.
FIXED_GRID_OPS = frozenset({"softmax", "masked_softmax"})


@dataclass(frozen=True)
class QuantScheme:
    """How to quantize. `unsigned_activations` stores values that are non-negative by
    construction (after relu, relu6, sigmoid, ...) as unsigned with zero point 0, which doubles
    the resolution a symmetric scheme would otherwise waste on the negative half."""

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    weight_symmetric: bool = True
    act_symmetric: bool = False
    unsigned_activations: bool = True
    pow2: bool = False
    bias_bits: int = 32
    quantize_ops: frozenset = DEFAULT_QUANTIZE_OPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantize_ops", frozenset(self.quantize_ops))
        for name in ("weight_bits", "act_bits"):
            check_bits(getattr(self, name), name)
        if self.bias_bits not in (16, 32):
            raise QuantError(f"bias_bits must be 16 or 32, got {self.bias_bits}")

    def replace(self, **changes: Any) -> "QuantScheme":
        """A copy with `changes`; keys whose value is None are ignored (meaning "keep")."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def check_bits(bits: Any, option: str) -> None:
    """Raise a QuantError naming `option` unless `bits` is an allowed width."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ALLOWED_BITS:
        allowed = ", ".join(map(str, ALLOWED_BITS))
        raise QuantError(f"option '{option}': bit width {bits!r} is not supported; "
                         f"expected one of {allowed}")
